"""The ICC profile, EXIF and XMP a saved image carries into its ``.jac`` file (SPEC.md section 5.2).

What the save options give, else what the image holds (Pillow's own JPEG and WebP writers keep none of them
by default; this plugin keeps them, as README.md's "Modes and metadata" says).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

__all__ = ["metadata_to_store"]


def metadata_to_store(im: Image.Image, options: dict[str, Any], mode: str) -> dict[str, bytes | None]:
    """``{"icc_profile", "exif", "xmp"}``: the bytes to store for ``im`` saved in ``mode`` with ``options``.

    An option given is stored as given (a wrong type is a ``TypeError``; ``b""`` or None drops it). Otherwise
    the image's own is kept: ``im.info``'s profile and XMP, the EXIF as :func:`_image_exif` says, and
    skipped when some reader left something other than bytes there. A profile kept from the image is
    dropped when it cannot describe the stored pixels (:func:`_profile_fits`: a CMYK image stored as RGB).
    """
    meta: dict[str, bytes | None] = {}
    for name in ("icc_profile", "exif", "xmp"):
        if name in options:
            meta[name] = _metadata_bytes(options[name], name)
        else:
            try:
                meta[name] = _metadata_bytes(_image_exif(im) if name == "exif" else im.info.get(name), name)
            except TypeError:
                meta[name] = None
    if "icc_profile" not in options and not _profile_fits(meta["icc_profile"], mode):
        meta["icc_profile"] = None
    return meta


def _profile_fits(profile: bytes | None, mode: str) -> bool:
    """Whether an ICC profile can describe pixels stored in ``mode`` (a profile too short to say: True).

    Its data colour space (bytes 16-19 of the profile header, ICC.1 section 7.2.6) must be ``GRAY`` for
    L and LA, ``RGB `` for RGB and RGBA.

    Example:
        >>> header = bytes(16) + b"CMYK" + bytes(108)
        >>> _profile_fits(header, "RGB"), _profile_fits(header.replace(b"CMYK", b"RGB "), "RGBA")
        (False, True)
    """
    if profile is None or len(profile) < 20:
        return True
    return profile[16:20] == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def _metadata_bytes(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Image.Exif):
        value = value.tobytes()
    if isinstance(value, str) and name == "xmp":  # XML text; a profile or an EXIF block is binary
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        msg = f"{name} must be bytes, got {type(value).__name__}"
        raise TypeError(msg)
    value = bytes(value)
    if name == "exif" and value[:4] in (b"II*\x00", b"MM\x00*"):
        value = b"Exif\x00\x00" + value  # SPEC.md section 5.2: writers include the prefix
    return value or None


def _image_exif(im: Image.Image) -> Any:
    """The EXIF an image carries: ``im.info["exif"]`` as it came, unless ``im.getexif()`` holds something else.

    ``im.getexif()`` is Pillow's way to edit EXIF (``exif[Orientation] = 1``), and it also reads EXIF that is
    not in ``info`` (a PNG's "Raw profile type exif" text chunk, as ImageMagick writes it): its tags are
    stored then, re-serialised by Pillow. Otherwise the bytes are kept byte for byte. A TIFF's ``getexif()``
    is its own image tags, not a camera's EXIF, so a TIFF keeps only ``info["exif"]`` (none, as Pillow reads it).
    """
    raw = im.info.get("exif")
    if hasattr(im, "tag_v2") or not (raw is None or isinstance(raw, (bytes, bytearray))):
        return raw
    try:
        current = im.getexif()
        stored = Image.Exif()
        if raw:
            stored.load(bytes(raw))
        if dict(current) == dict(stored):
            return raw
        return current.tobytes() if len(current) else None
    except Exception:  # EXIF that Pillow cannot parse: the bytes as they are
        return raw
