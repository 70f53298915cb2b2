"""A source image as the command line stores it: upright, in a mode JAC stores (README "Modes and metadata").

:func:`storable` does what ``jac encode``, ``jac batch`` and the Ray workers do to an opened image before
``Image.save`` sees it, where Pillow's own conversions would lose something: 16-bit samples reduced to 8 bits
with a warning (Pillow's plugin rejects 16-bit grey, and reads 16-bit colour as its high bytes), CMYK through
its ICC profile, the EXIF orientation applied to the pixels when the output will not carry it, and a warning
that only the first frame of an animated or multi-page image is encoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from .quiet_warnings import first_line

__all__ = [
    "EXIF_ORIENTATION",
    "SIXTEEN_BIT_GREY",
    "SIXTEEN_BIT_AS_I",
    "exif_orientation",
    "storable",
    "turned_while_loading",
    "upright",
]


def storable(im: Any, name: str | Path | None, strip: bool) -> Any:
    """``im`` (opened, not yet loaded) loaded and made storable; a new image or ``im`` itself.

    ``name``: how warnings name the source (``NAME: 16-bit grey samples reduced...``), or None where the
    caller names the file itself (a batch's report). ``strip``: the output keeps no metadata, so an EXIF
    orientation is applied to the pixels. Pillow's errors of reading the file propagate.
    """
    from .save_metadata import carried_orientation

    _warn_of_frames(im, name)
    rawmode = _rawmode(im)  # how the file's samples are stored: load() forgets it
    im.load()
    orientation = exif_orientation(im)
    kept = not strip and carried_orientation(im) == orientation  # the output's tag turns it for viewers
    if not strip:
        _tiff_tags_as_exif(im)
    im = _eight_bit_grey(im, name)
    im = _sixteen_bit_colour(im, rawmode, name)
    im = _cmyk_as_srgb(im, name)
    return im if kept else upright(im, orientation)


#: a TIFF's tags that say who made the picture, when and with what (EXIF's IFD0 has them too): ImageDescription,
#: Make, Model, Software, DateTime, Artist and Copyright; with its EXIF and GPS directories, a TIFF's EXIF
_DESCRIPTIVE_TIFF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_EXIF_DIRECTORIES = (0x8769, 0x8825)


def _tiff_tags_as_exif(im: Any) -> None:
    """Give a TIFF without ``info["exif"]`` one of its descriptive tags and EXIF and GPS directories.

    Pillow reads a TIFF's EXIF as tags of its own image directory, beside the layout's (strips, sizes), and no
    writer of another format carries them: ``jac encode`` kept none of a scan's or camera's TIFF metadata,
    without a word. The orientation is left to :func:`storable`'s turn. Tags that do not parse are left out.
    """
    if im.format != "TIFF" or im.info.get("exif"):
        return

    try:
        data = _descriptive_exif(im.getexif())
    except Exception:  # noqa: BLE001  (tags Pillow cannot parse or write back: none kept, as before)
        return
    if data is not None:
        im.info["exif"] = data


def _descriptive_exif(tags: Any) -> bytes | None:
    """EXIF of ``tags`` (a TIFF's ``PIL.Image.Exif``): its descriptive tags and EXIF and GPS directories, or None.

    Not its layout's tags (sizes, strips) nor the orientation (:func:`storable` turns the pixels by it).
    Raises what Pillow raises for tags it cannot write back.
    """
    from PIL import Image

    exif = Image.Exif()
    for tag in _DESCRIPTIVE_TIFF_TAGS:
        if tag in tags:
            exif[tag] = tags[tag]
    for tag in _EXIF_DIRECTORIES:
        directory = tags.get_ifd(tag)
        if directory:
            exif[tag] = dict(directory)  # a dict is written as a directory (Pillow 10.2 on)
    return exif.tobytes() if len(exif) else None


#: Pillow's modes of 16-bit grey samples (PNG, TIFF), whose range 0-65535 the file format defines
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
#: formats whose grey samples Pillow opens as mode ``I`` but which hold at most 16 bits, 0-65535 (a 16-bit PGM
#: is scaled to that range by Pillow's reader; a PNG opens as ``I`` in older Pillows)
SIXTEEN_BIT_AS_I = ("PPM", "PNG")


#: the EXIF tag of the orientation in which to show the stored pixels (1: as stored)
EXIF_ORIENTATION = 0x0112


def turned_while_loading(im: Any) -> bool:
    """Whether ``im`` is a TIFF opened from a path that Pillow will turn (EXIF orientation 5-8) as it loads.

    Pillow gives such a TIFF its turned size at open and, loading from a path, maps the samples of a single
    strip of an L, P, RGBA, CMYK or I;16 image straight from the file at that size: scrambled pixels of the
    unturned size (Pillow 13.0). Opened from memory, it reads them and then turns them.
    """
    try:
        return im.format == "TIFF" and bool(im.filename) and im.tag_v2.get(EXIF_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001  (tags that do not parse: load() reports them)
        return False


def exif_orientation(im: Any) -> int:
    """The EXIF orientation of an opened image, 1 to 8 (1: show as stored); 1 where there is none or it is invalid.

    Read after ``load()``: a Pillow that turns a TIFF while loading it also removes the tag then.
    """
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # EXIF that does not parse: no orientation, as a viewer would find none
        return 1
    return orientation if orientation in _TURNS else 1


#: the transposition that shows pixels of each EXIF orientation upright (as ``ImageOps.exif_transpose``)
_TURNS = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
          7: "TRANSVERSE", 8: "ROTATE_90"}  # fmt: skip


def upright(im: Any, orientation: int) -> Any:
    """``im`` turned as an EXIF ``orientation`` says, for an output whose metadata will not turn it.

    With ``--strip`` nothing is stored, and of a TIFF only ``info["exif"]`` would be (none): a phone photo
    would show on its side. The turned image keeps ``info`` (the ICC profile) without the orientation
    (:func:`~pillow_jac.save_metadata.without_orientation`), so that no tag left elsewhere turns it again.
    """
    if _TURNS.get(orientation) is None:  # 1, or not an orientation
        return im
    from PIL import Image

    from .save_metadata import without_orientation

    turned = im.transpose(getattr(Image.Transpose, _TURNS[orientation]))
    turned.info = without_orientation(turned.info)
    return turned


def _rawmode(im: Any) -> str | None:
    """The raw mode of an image not yet loaded (how its file stores the samples, such as ``LA;16B``), or None."""
    tile = getattr(im, "tile", None) or []
    args = getattr(tile[0], "args", None) if tile else None
    return args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None


def _sixteen_bit_colour(im: Any, rawmode: str | None, name: str | Path | None) -> Any:
    """16-bit colour or grey+alpha samples, which Pillow reads as 8-bit RGB, RGBA or CMYK, with a warning; else ``im``.

    Pillow keeps each 16-bit sample's high byte. A 16-bit grey+alpha PNG opens as RGBA: it becomes ``LA`` (its
    three colour planes are equal), so that the file stores grey and decodes as grey, as an 8-bit one does.
    ``rawmode``: :func:`_rawmode` before the image was loaded; ``name`` as for :func:`storable`.
    """
    if im.mode not in ("RGB", "RGBA", "CMYK") or not isinstance(rawmode, str) or ";16" not in rawmode:
        return im
    kind = "16-bit grey and alpha" if rawmode.startswith("LA") else "16-bit colour"
    warnings.warn(f"{_of(name, kind)} samples reduced to 8 bits (JAC stores 8)", stacklevel=4)
    if not rawmode.startswith("LA"):
        if "transparency" in im.info:  # Pillow keeps a tRNS colour at 16 bits: as 8-bit it would key other pixels
            key = im.info.pop("transparency")
            warnings.warn(
                f"{_of(name, 'transparent colour')} {key} is a 16-bit one that no 8-bit pixel matches: "
                "stored without transparency",
                stacklevel=4,
            )
        return im
    info = dict(im.info)
    out = im.convert("LA")  # R = G = B: the grey level, exactly
    out.info = info
    return out


def _eight_bit_grey(im: Any, name: str | Path | None) -> Any:
    """A 16-bit grey image as 8-bit ``L`` (``round(v * 255 / 65535)``), with a warning; any other image as is.

    JAC stores 8 bits per sample, and Pillow's plugin rejects these modes (its ``convert("L")`` would clip
    at 255, README "Modes and metadata"). A file's 16-bit samples span 0-65535 by definition, so the
    command line scales them, as other encoders reduce 16-bit PNGs; ``I`` and ``F`` images of other formats,
    whose range no file defines, are still rejected. ``im.info`` (ICC profile, EXIF, XMP) is kept; a
    transparent grey level (a PNG's ``tRNS``) becomes an alpha plane made from the 16-bit samples, since
    several of them share an 8-bit level. ``name`` as for :func:`storable`.
    """
    if im.mode not in SIXTEEN_BIT_GREY and not (im.mode == "I" and im.format in SIXTEEN_BIT_AS_I):
        return im
    import numpy as np
    from PIL import Image

    samples = np.asarray(im).astype(np.int64)
    if samples.min(initial=0) < 0 or samples.max(initial=0) > 65535:
        return im  # not 16-bit samples after all: the plugin rejects the mode, naming it
    grey = ((samples * 255 + 32767) // 65535).astype(np.uint8)
    info = dict(im.info)
    key = info.pop("transparency", None)
    if isinstance(key, int):
        out = Image.fromarray(np.dstack([grey, np.where(samples == key, 0, 255).astype(np.uint8)]), "LA")
    else:
        out = Image.fromarray(grey, "L")
    out.info = info
    warnings.warn(f"{_of(name, '16-bit grey')} samples reduced to 8 bits (JAC stores 8)", stacklevel=4)
    return out


def _cmyk_as_srgb(im: Any, name: str | Path | None) -> Any:
    """A CMYK image with an ICC profile as sRGB through that profile (perceptual intent), the profile sRGB's.

    JAC stores RGB, and Pillow's plugin converts CMYK without colour management (as Pillow's other writers
    do), so a print file's colours would shift; the command line converts as a colour-managed converter
    does (libvips does so too), through Pillow's ImageCms (LittleCMS), and stores an sRGB profile. A CMYK
    image without a profile, or one LittleCMS cannot use, is left to the plugin's naive conversion, with a
    warning. Any other image is returned as is. ``name`` as for :func:`storable`.
    """
    if im.mode != "CMYK":
        return im
    shown = _of(name, "CMYK")
    profile = im.info.get("icc_profile")
    if not profile or profile[16:20] != b"CMYK":
        warnings.warn(f"{shown} without a CMYK ICC profile converted to RGB naively (colours may shift)", stacklevel=4)
        return im
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without LittleCMS
        warnings.warn(f"{shown}: Pillow has no ImageCms here; converted to RGB naively", stacklevel=4)
        return im
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    try:
        out = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(profile)), srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        warnings.warn(f"{shown}: its ICC profile is unusable ({first_line(str(e))}); converted naively", stacklevel=4)
        return im
    out.info = {**im.info, "icc_profile": srgb.tobytes()}
    return out


def _of(name: str | Path | None, what: str) -> str:
    """``what`` with the source's name before it (``NAME: what``), as a warning shows it; ``what`` alone without one."""
    return what if name is None else f"{name}: {what}"


def _warn_of_frames(im: Any, name: str | Path | None) -> None:
    """Warn that only the first frame of an animated or multi-page image is encoded.

    Not for an MPO (a camera JPEG whose further images are its own previews or depth maps). Read before
    ``load()``: counting the frames seeks through them.
    """
    if im.format == "MPO" or not getattr(im, "is_animated", False):
        return
    frames = im.n_frames  # Pillow seeks back to the first frame after counting
    shown = f"{frames} frames" if name is None else f"{name} has {frames} frames"
    warnings.warn(f"{shown}; only the first is encoded", stacklevel=4)
