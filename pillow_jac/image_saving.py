"""Writing PIL images as ``.jac``: Pillow's save handlers, :func:`encode_image` and :func:`pillow_jac.save`.

:mod:`pillow_jac.JacImagePlugin` registers :func:`save_handler` and :func:`save_all_handler` with Pillow.

Save options (``im.save(fp, "JAC", **options)``):

* ``quality``: number from 1 (smallest files) to 8 (best quality), fractions allowed; default
  :data:`pillow_jac.constants.DEFAULT_QUALITY`. JPEG-style values such as 75 raise ``ValueError``.
* ``effort``: 0 (default, fastest) to 3: how hard the encoder searches for a smaller file at the
  same quality (:mod:`pillow_jac.model.refine`; on Kodak, effort 2 encodes about 16 times slower
  than effort 0 and needs about 12% fewer bytes for the same PSNR, see the README). Files of any
  effort decode the same way, equally fast.
* ``icc_profile``, ``exif``, ``xmp``: metadata to store. **By default the image's own**
  ``im.info["icc_profile"]``, ``im.info["exif"]`` and ``im.info["xmp"]`` **are kept** (Pillow's own
  JPEG and WebP writers keep none of them by default), the EXIF as ``im.getexif()`` holds it when that
  was edited (:mod:`pillow_jac.save_metadata`); pass ``exif=b""`` (or ``None``) to drop one.
  ``exif`` may also be a :class:`PIL.Image.Exif`; ``xmp`` may be ``str`` or ``bytes``. A profile kept
  from ``im.info`` must describe the stored pixels: a CMYK image's CMYK
  profile is dropped, since its pixels are stored as RGB.
* ``device``: torch device for the encoder (``"cpu"``, ``"cuda"``, ``"auto"``); default from
  ``JAC_DEVICE``, see the README.
* ``target_size`` (bytes) or ``target_psnr`` (dB), instead of ``quality``: the largest quality whose file
  fits in that many bytes, or the smallest whose decoded image reaches that PSNR (:mod:`pillow_jac.targets`).
  ``ValueError`` when even quality 1 is too large, or even quality 8 not good enough.
* ``preview``: ``True`` also stores a WebP preview of at most :data:`~pillow_jac.preview.PREVIEW_SIZE`
  pixels on the long side (``preview=N``: at most N pixels), which
  :meth:`~pillow_jac.JacImagePlugin.JacImageFile.draft` and so ``thumbnail()`` decode
  instead of the image, without torch (SPEC.md section 5.4). Default ``False``, since every file
  pays for it: a 512-pixel preview of a Kodak image (768x512) takes 20.5 kB on average, nearly half of
  the quality-4 file that carries it (the image itself takes 23.2 kB); at 12 megapixels (kodim01 tiled
  to 4000x3000, quality 4) 37 kB, about 3% of the file,
  for a ``thumbnail((256, 256))`` in 5-10 ms instead of a decode of about 13 s on 2 idle CPU cores.

Other options are ignored, as Pillow ignores options a format does not know, but ``lossless=True`` (WebP's)
is refused with a ``ValueError``: JAC is lossy.

Modes: ``L``, ``LA``, ``RGB`` and ``RGBA`` are stored as they are. Other modes are converted first:
``1`` -> ``L``; ``1``, ``L`` and ``RGB`` with a colour key (``im.info["transparency"]``, PNG's tRNS) ->
``LA``, ``LA`` and ``RGBA``; ``P`` -> ``RGBA`` when it has transparency, else ``RGB``; ``PA`` -> ``RGBA``;
``La`` -> ``LA``; ``RGBa`` -> ``RGBA``; ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV`` -> ``RGB`` (Pillow's
conversions; CMYK -> RGB is Pillow's naive one, with no colour management). JAC stores 8 bits per channel, and
there is no single right way to bring high-bit-depth or float data (``I;16*``, ``I``, ``F``) to 8 bits,
so those modes (and ``LAB``) raise ``ValueError``; convert them yourself first.

A ``.jac`` file holds one image: ``save_all=True`` saves a single frame like a plain save, and a
multi-frame image or ``append_images`` raise ``ValueError`` before anything is written.

Failed saves: the whole file is encoded in memory before the first byte is written, so an error
(bad option, unsupported mode, encoder failure) never leaves a partial ``.jac``. Where the file
system can reserve space (``os.posix_fallocate``: Linux and most Unix systems), the writer reserves
it first, so a full disk also fails before the first byte; and it flushes the file before returning,
so a write error is raised by ``save`` itself, not later by ``close``. Pillow opens a path target
before calling the writer: if that path did not exist, Pillow removes it again on error; if it did
exist, Pillow has already truncated it, and it stays empty. :func:`pillow_jac.save` writes a
temporary file and renames it into place, so an error never loses an existing file (a file with other hard
links, or in a folder that takes no new file, is written in place: :func:`pillow_jac.files.write_file`).
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

from PIL import Image

from .constants import (
    DEFAULT_EFFORT,
    DEFAULT_QUALITY,
    FORMAT_NAME,
    LAYOUTS,
    UnsupportedModeError,
    validate_effort,
    validate_quality,
    wide_colour_key,
)
from .files import check_target, write_file, write_into
from .quiet_warnings import warn_at_caller
from .save_metadata import metadata_to_store

__all__ = [
    "CONVERTED_MODES",
    "NATIVE_MODES",
    "SUPPORTED_MODES",
    "encode_image",
    "save",
    "save_all_handler",
    "save_handler",
]

#: modes stored without conversion; also the modes :class:`JacImageFile` opens as.
NATIVE_MODES = tuple(sorted(LAYOUTS))  # ("L", "LA", "RGB", "RGBA")
#: modes converted before encoding (``P`` depends on transparency, see :func:`_native_mode`).
CONVERTED_MODES = {
    "1": "L",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "HSV": "RGB",
}
#: every mode :func:`save_handler` accepts.
SUPPORTED_MODES = (*NATIVE_MODES, "P", *CONVERTED_MODES)


def _sixteen_bit_key(im: Image.Image) -> bool:
    """Whether ``im``'s transparent colour is a 16-bit one (:func:`pillow_jac.constants.wide_colour_key`)."""
    return wide_colour_key(im.mode, im.info.get("transparency"))


def _native_mode(im: Image.Image) -> str:
    """Return the mode ``im`` is stored as, or raise ``UnsupportedModeError`` (a ``ValueError`` and an ``OSError``).

    Example:
        >>> from PIL import Image
        >>> _native_mode(Image.new("CMYK", (1, 1)))
        'RGB'
        >>> keyed = Image.new("RGB", (1, 1))
        >>> keyed.info["transparency"] = (0, 0, 0)  # as PNG's tRNS chunk gives it
        >>> _native_mode(keyed)
        'RGBA'
        >>> _native_mode(Image.new("I;16", (1, 1)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pillow_jac.constants.UnsupportedModeError: cannot write mode I;16 as JAC: ...
    """
    mode = im.mode
    if mode in ("1", "L", "RGB") and "transparency" in im.info and not _sixteen_bit_key(im):  # PNG tRNS: alpha
        return "RGBA" if mode == "RGB" else "LA"
    if mode in NATIVE_MODES:
        return mode
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return "RGBA" if has_alpha else "RGB"
    if mode in CONVERTED_MODES:
        return CONVERTED_MODES[mode]
    msg = (
        f"cannot write mode {mode} as JAC: JAC stores 8-bit L, LA, RGB or RGBA (and converts "
        f"{', '.join(['P', *CONVERTED_MODES])}); convert the image to one of those first"
    )
    if mode.startswith("I") or mode == "F":
        msg += ", choosing how to map its values to 0-255"
    raise UnsupportedModeError(msg)


def encode_image(im: Image.Image, **options: Any) -> bytes:
    """The ``.jac`` file ``im.save(fp, "JAC", **options)`` writes, as bytes.

    ``options`` are the save options listed in the module doc (``quality``, ``effort``,
    ``icc_profile``, ``exif``, ``xmp``, ``device``, ``preview``, ``target_size``, ``target_psnr``;
    others are ignored, as Pillow does, but ``lossless=True`` is refused). The image is loaded first (some
    metadata only comes with the pixels). Modes are converted as listed there, and the ICC profile, EXIF and
    XMP in ``im.info`` are kept unless an option replaces them or drops them (``None`` or ``b""``), a profile
    only if it fits.

    Raises:
        ValueError: a bad option value, or a mode JAC cannot hold.
        TypeError: metadata of a wrong type.
        OSError: the encoder failed.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> im = Image.new("P", (8, 8))
        >>> im.info["xmp"] = b"<x:xmpmeta/>"
        >>> out = Image.open(io.BytesIO(encode_image(im, quality=2)))
        >>> out.mode, out.info["jac_quality"], out.info["xmp"]
        ('RGB', 2.0, b'<x:xmpmeta/>')
    """
    return _encode_image(im, options)


def _encode_image(im: Image.Image, encoderinfo: dict[str, Any]) -> bytes:
    """:func:`encode_image` with the options as Pillow's ``encoderinfo`` dict."""
    if encoderinfo.get("lossless"):  # WebP's option: taken silently, it would lose what the caller asked to keep
        raise ValueError("JAC is a lossy format: lossless=True is not supported (PNG or lossless WebP keep all)")
    im.load()  # a PNG's iTXt XMP or eXIf after its pixels reach im.info only now
    targets = {name: encoderinfo[name] for name in ("target_size", "target_psnr") if encoderinfo.get(name) is not None}
    quality = encoderinfo.get("quality")
    if quality is None and not targets:
        quality = DEFAULT_QUALITY  # quality=None is the default, as encode() takes it
    if quality is not None:
        quality = validate_quality(quality)
    effort = validate_effort(DEFAULT_EFFORT if encoderinfo.get("effort") is None else encoderinfo["effort"])
    mode = _native_mode(im)
    if _sixteen_bit_key(im):
        warn_at_caller(
            f"the transparent colour {im.info['transparency']} is a 16-bit one that no 8-bit pixel matches "
            "(Pillow reads 16-bit colour as 8 bits): stored without transparency"
        )
    meta = metadata_to_store(im, encoderinfo, mode)
    own_profile = im.info.get("icc_profile")
    if (
        meta["icc_profile"] is None
        and "icc_profile" not in encoderinfo
        and isinstance(own_profile, bytes)
        and own_profile
    ):
        space = own_profile[16:20].decode("latin-1").strip() or "?"
        warn_at_caller(
            f"the image's ICC profile is left out: its colour space ({space}) cannot describe the {mode} pixels stored"
        )
    if im.mode != mode:
        im = im.convert(mode)

    from .forksafe import setting_up

    with setting_up():  # a fork waits for these imports (pillow_jac/forksafe.py)
        import numpy as np

        from . import codec

    pixels = np.asarray(im)
    try:
        return codec.encode(
            pixels, quality, effort=effort, device=encoderinfo.get("device"), model=encoderinfo.get("model"),
            preview=encoderinfo.get("preview", False), **targets, **meta,
        )  # fmt: skip
    except (OSError, ValueError, TypeError, MemoryError):
        raise
    except Exception as e:  # torch / constriction / internal errors
        raise OSError(f"cannot encode JAC image: {type(e).__name__}: {e}") from e


def save_handler(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Pillow's save handler for ``JAC``: encode ``im`` with its ``encoderinfo``, then write the file into ``fp``."""
    if im.encoderinfo.get("append"):
        # Pillow opens the file for update without emptying it: a shorter file written there would keep the old
        # one's tail after its end, and neither image could be read back
        raise ValueError("a JAC file holds one image: append=True (adding to an existing file) is not supported")
    data = _encode_image(im, im.encoderinfo)
    # Nothing is written until the file is complete in memory (see the module docstring).
    write_into(fp, data, filename)


def save_all_handler(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """``save(..., save_all=True)``: one frame is saved as by :func:`save_handler`; more are refused.

    A ``.jac`` file holds one image, so a multi-frame image or ``append_images`` raise ``ValueError``
    before anything is encoded or written.
    """
    frames = getattr(im, "n_frames", 1) + len(list(im.encoderinfo.get("append_images") or ()))  # any iterable
    if frames > 1:
        msg = f"a JAC file holds one image, but save_all was given {frames} frames: save each frame to its own file"
        raise ValueError(msg)
    save_handler(im, fp, filename)


def save(image: Any, path: str | bytes | os.PathLike, **options: Any) -> None:
    """Save a PIL image as ``.jac`` at ``path``, encoded before an existing file is touched.

    The file is written by :func:`pillow_jac.files.write_file`: a temporary file renamed into place.

    Args:
        image: a :class:`PIL.Image.Image` (any mode the plugin accepts).
        path: the target file.
        **options: the plugin's save options, as ``Image.save`` takes them (``quality``, ``effort``,
            ``target_size``, ``target_psnr``, ``preview``, ``model``, ``icc_profile``, ``exif``, ``xmp``,
            ``device``).

    Raises:
        TypeError: ``image`` is not a :class:`PIL.Image.Image`, or ``path`` is not a path.
        ValueError: bad options, an unsupported mode, or a name ending in another format's extension
            (``photo.png``) (the target is left as it was).
        OSError: ``path`` cannot be written (:func:`~pillow_jac.files.check_target`: a folder, a missing
            folder; found before encoding).

    Example:
        >>> import os, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "out.jac")
        >>> save(Image.new("RGB", (8, 8), "red"), path, quality=2)
        >>> try:
        ...     save(Image.new("RGB", (8, 8)), path, quality=75)  # not a JAC quality
        ... except ValueError:
        ...     pass
        >>> with Image.open(path) as im:
        ...     im.size  # the old file is intact
        (8, 8)
        >>> tmp.cleanup()
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"pillow_jac.save expects a PIL.Image.Image, got {type(image).__name__}")
    path = os.fsdecode(os.fspath(path))  # a TypeError now (a file object, say), not after the encode; bytes work
    jac_format = FORMAT_NAME
    if str(options.pop("format", None) or jac_format).upper() != jac_format:
        raise ValueError(f"pillow_jac.save writes {jac_format} files; use Image.save for other formats")
    other = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if other not in (None, jac_format):  # no viewer would open "photo.png" holding a .jac
        raise ValueError(
            f"pillow_jac.save writes {jac_format} files, but {path!r} names a {other} file: name it .jac "
            f"(Image.save(path, format={jac_format!r}) writes {jac_format} under any name)"
        )
    check_target(path)
    encoded = io.BytesIO()  # Pillow's whole save (loading, save_all), before the output is touched
    image.save(encoded, format=jac_format, **options)
    write_file(path, encoded.getvalue())
