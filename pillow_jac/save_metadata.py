"""The ICC profile, EXIF and XMP a saved image carries into its ``.jac`` file (SPEC.md section 5.2).

What the save options give, else what the image holds (Pillow's own JPEG and WebP writers keep none of them
by default; this plugin keeps them, as README.md's "Modes and metadata" says). :func:`metadata_bytes` is the
one rule for the values given, on the Pillow save path and in :func:`pillow_jac.encode` alike.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import ExifTags, Image

from .constants import GRAY_LAYOUTS, MAX_CHUNK_BYTES, METADATA_FIELDS

__all__ = ["metadata_to_store", "metadata_bytes", "profile_fits", "carried_orientation", "without_orientation"]


def metadata_to_store(im: Image.Image, options: dict[str, Any], mode: str) -> dict[str, bytes | None]:
    """``{"icc_profile", "exif", "xmp"}``: the bytes to store for ``im`` saved in ``mode`` with ``options``.

    An option given is stored as given (a wrong type is a ``TypeError``; ``b""`` or None drops it). Otherwise
    the image's own is kept: ``im.info``'s profile and XMP, the EXIF as :func:`_image_exif` says, and
    skipped when some reader left something other than bytes there. A profile kept from the image is
    dropped when it cannot describe the stored pixels (:func:`profile_fits`: a CMYK image stored as RGB).
    """
    meta: dict[str, bytes | None] = {}
    for name in METADATA_FIELDS:
        if name in options:
            meta[name] = metadata_bytes(options[name], name)
        else:
            try:
                meta[name] = metadata_bytes(_image_exif(im) if name == "exif" else im.info.get(name), name)
            except TypeError:
                meta[name] = None
    if "icc_profile" not in options and not profile_fits(meta["icc_profile"], mode):
        meta["icc_profile"] = None
    return meta


def profile_fits(profile: bytes | None, mode: str) -> bool:
    """Whether an ICC profile can describe pixels stored in ``mode`` (a profile too short to say: True).

    Its data colour space (bytes 16-19 of the profile header, ICC.1 section 7.2.6) must be ``GRAY`` for
    L and LA, ``RGB `` for RGB and RGBA.

    Example:
        >>> header = bytes(16) + b"CMYK" + bytes(108)
        >>> profile_fits(header, "RGB"), profile_fits(header.replace(b"CMYK", b"RGB "), "RGBA")
        (False, True)
    """
    if profile is None or len(profile) < 20:
        return True
    return profile[16:20] == (b"GRAY" if mode in GRAY_LAYOUTS else b"RGB ")


def metadata_bytes(value: Any, name: str) -> bytes | None:
    r"""The bytes stored for the metadata option ``name`` (``icc_profile``, ``exif`` or ``xmp``) given ``value``.

    Bytes-like values are taken as they are; ``exif`` may also be a :class:`PIL.Image.Exif`, and ``xmp`` a
    ``str`` (stored as UTF-8). An EXIF block that starts with the TIFF header gains the ``Exif\0\0`` prefix
    (SPEC.md section 5.2: writers include it). None and ``b""`` give None: nothing is stored.

    Raises:
        TypeError: any other type (a profile or an EXIF block is binary: text would be stored as garbage).
        ValueError: more bytes than a chunk holds.

    Example:
        >>> metadata_bytes("<x/>", "xmp"), metadata_bytes(b"II*\x00", "exif"), metadata_bytes(b"", "icc_profile")
        (b'<x/>', b'Exif\x00\x00II*\x00', None)
    """
    if value is None:
        return None
    if isinstance(value, Image.Exif):
        value = value.tobytes()
    if isinstance(value, str) and name == "xmp":  # XML text; a profile or an EXIF block is binary
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        accepted = {"exif": "bytes or a PIL.Image.Exif", "xmp": "bytes or a str"}.get(name, "bytes")
        msg = f"{name} must be {accepted}, got {type(value).__name__}"
        raise TypeError(msg)
    _check_chunk_size(memoryview(value).nbytes, name)  # before copying
    value = bytes(value)
    if name == "exif" and value[:4] in (b"II*\x00", b"MM\x00*"):
        value = b"Exif\x00\x00" + value  # SPEC.md section 5.2: writers include the prefix
        _check_chunk_size(len(value), name)
    return value or None


def _check_chunk_size(size: int, name: str) -> None:
    if size > MAX_CHUNK_BYTES:
        raise ValueError(f"{name} is {size} bytes, more than the chunk limit of {MAX_CHUNK_BYTES}")


def _image_exif(im: Image.Image) -> Any:
    """The EXIF an image carries: ``im.info["exif"]`` byte for byte, unless it was edited through ``im.getexif()``.

    ``im.getexif()`` is Pillow's way to edit EXIF (``exif[Orientation] = 1``, a sub-IFD's tags): when the Exif
    object it caches on the image was made from the image's present EXIF and now serialises differently, the
    edited tags are stored, serialised by Pillow. The tags Pillow adds by itself (an Orientation copied from the
    XMP) are not an edit. A cache made before ``info["exif"]`` was removed or replaced is stale: ``info`` wins,
    so deleting ``info["exif"]`` drops the EXIF. EXIF that only ``getexif()`` reads (a PNG's "Raw profile type
    exif" text chunk, as ImageMagick writes it) is stored too. A TIFF's ``getexif()`` is its own image tags,
    not a camera's EXIF, so a TIFF keeps only ``info["exif"]`` (none, as Pillow reads it).
    """
    raw = im.info.get("exif")
    if hasattr(im, "tag_v2") or not (raw is None or isinstance(raw, (bytes, bytearray))):
        return raw
    profile = im.info.get("Raw profile type exif")
    try:
        source = bytes(raw) if raw is not None else _raw_profile(profile) if isinstance(profile, str) else None
        cached = getattr(im, "_exif", None)  # what getexif() returns without reading info again
        if cached is None or not getattr(cached, "_loaded", False):
            return raw if raw is not None else source
        if getattr(cached, "_loaded_exif", None) != source:
            return raw  # info changed after the cache was made
        as_read = Image.Exif()
        if source:
            as_read.load(source)
        for tag in list(getattr(cached, "_ifds", {})):  # a sub-IFD only read (an empty one where there is none)
            as_read.get_ifd(tag)  # serialises into both alike: a read is not an edit
        orientation = ExifTags.Base.Orientation
        if orientation not in as_read and orientation in cached and _xmp_orientation(im.info) == cached[orientation]:
            as_read[orientation] = cached[orientation]  # what getexif() copies from the XMP
        edited = cached.tobytes()
        if edited == as_read.tobytes():
            return raw if raw is not None else source
        sub_ifds = (cached.get_ifd(tag) for tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo))
        return edited if len(cached) or any(sub_ifds) else None  # no tag left anywhere: every tag deleted
    except Exception:  # EXIF that Pillow cannot parse: the bytes as they are
        return raw


def carried_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation that ``im`` saved with its own metadata would carry; None without one.

    The EXIF stored (:func:`_image_exif`: ``info["exif"]``, an edit through ``getexif()``, a PNG's raw
    profile) says it; without an orientation there, the stored XMP's ``tiff:Orientation`` does, as
    ``Image.getexif()`` reads the two. A viewer turns the image by what this returns.
    """
    exif = _image_exif(im)
    if isinstance(exif, (bytes, bytearray)) and exif:
        parsed = Image.Exif()
        try:
            parsed.load(bytes(exif))
        except Exception:  # EXIF that does not parse: a viewer finds no orientation in it
            parsed = Image.Exif()
        exif = parsed
    if isinstance(exif, Image.Exif) and ExifTags.Base.Orientation in exif:
        return exif[ExifTags.Base.Orientation]
    return _xmp_orientation({"xmp": im.info.get("xmp")})


def without_orientation(info: dict[str, Any]) -> dict[str, Any]:
    """A copy of an image's ``info`` with the orientation taken out of its EXIF, raw EXIF profile and XMP.

    For pixels already turned upright (as ``ImageOps.exif_transpose`` does for the image it turns), so that
    no viewer turns them again. EXIF that does not parse is dropped: what it says of the turn is unknown. The
    XMP's ``tiff:Orientation`` goes in every spelling Pillow reads (an attribute, or an element whose text may
    carry spaces around its digit).

    Example:
        >>> without_orientation({"xmp": b"<r tiff:Orientation = '6'/><tiff:Orientation> 6 </tiff:Orientation >"})
        {'xmp': b'<r/>'}
    """
    out = dict(info)
    orientation = ExifTags.Base.Orientation
    for key in ("exif", "Raw profile type exif"):
        value = out.get(key)
        if value is None:
            continue
        exif = Image.Exif()
        try:
            exif.load(bytes(value) if key == "exif" else _raw_profile(value))
        except Exception:
            del out[key]
            continue
        if orientation in exif:
            del exif[orientation]
            data = exif.tobytes()
            out[key] = data if key == "exif" else f"\nexif\n{len(data):8}\n{data.hex()}\n"
    for key in ("XML:com.adobe.xmp", "xmp"):
        value = out.get(key)
        if isinstance(value, (str, bytes, bytearray)):
            out[key] = _without_xmp_orientation(value)
    return out


#: the XMP's ``tiff:Orientation`` as an attribute (either quote; the white space before it goes too,
#: :func:`_without_xmp_orientation`), then as an element, taken out in that order. Each pattern starts with the
#: name, so a search takes time linear in the packet's length (a pattern that began with white space was tried at
#: every space of a run: quadratic)
_XMP_ATTRIBUTE = r"""tiff:Orientation\s*=\s*(?:"[^"]*"|'[^']*')"""
_XMP_ELEMENT = r"<tiff:Orientation\s*>[^<]*</tiff:Orientation\s*>"
_XMP_PATTERNS = {
    str: (re.compile(_XMP_ATTRIBUTE), re.compile(_XMP_ELEMENT)),
    bytes: (re.compile(_XMP_ATTRIBUTE.encode()), re.compile(_XMP_ELEMENT.encode())),
}


def _without_xmp_orientation(xmp: str | bytes | bytearray) -> str | bytes:
    """``xmp`` without its ``tiff:Orientation``: the attributes with the white space before them, then the elements.

    In that order, so that an element the attributes' removal brings together goes too.
    """
    text = isinstance(xmp, str)
    attribute, element = _XMP_PATTERNS[str if text else bytes]
    pieces, kept_to = [], 0
    for match in attribute.finditer(xmp):
        start = match.start()
        while start > kept_to and xmp[start - 1 : start].isspace():
            start -= 1
        pieces.append(xmp[kept_to:start])
        kept_to = match.end()
    pieces.append(xmp[kept_to:])
    return element.sub("" if text else b"", "".join(pieces) if text else b"".join(pieces))


def _raw_profile(text: str) -> bytes:
    """The EXIF bytes of a PNG "Raw profile type exif" text (a name line, a length line, then hex lines)."""
    return bytes.fromhex("".join(text.split("\n")[3:]))


def _xmp_orientation(info: dict[str, Any]) -> int | None:
    """The ``tiff:Orientation`` of the image's XMP, as ``Image.getexif()`` reads it; None without one."""
    for key in ("XML:com.adobe.xmp", "xmp"):
        xmp = info.get(key)
        if isinstance(xmp, (str, bytes)) and xmp:
            text = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else xmp
            match = re.search(rb'tiff:Orientation(="|>)([0-9])', text)
            return int(match[2]) if match else None
    return None
