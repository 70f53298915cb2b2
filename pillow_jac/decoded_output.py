"""A decoded image written in another format: the mode that format stores, its metadata, the mark of a decode.

What ``jac decode`` and ``jac batch --to png`` (:func:`pillow_jac.conversion.decode_file`) do with the
decoded pixels before they are written, through Pillow's writers only:

* **Mode.** An image with alpha keeps it wherever the writer stores it (LA as RGBA where only that is
  stored, as in SGI or QOI); where the format stores no alpha (JPEG, BMP, PPM, PCX, EPS, PDF), the image is
  composited onto white, with a warning, rather than showing the arbitrary colours under transparent
  pixels, and where it stores only whole transparency (GIF), so are the partly transparent pixels. Grey
  goes to RGB where the writer takes no grey (QOI).
* **Metadata.** ICC profile, EXIF and XMP are passed on; one the writer refuses is left out with a
  warning rather than losing the pixels, and one it skips silently is warned of. A grey profile is left
  out, with a warning, where the writer stores grey as colour (Pillow's WebP writer), which it cannot
  describe.
* **The mark of a decode.** PNG (a ``Software`` text chunk) and JPEG (a comment) outputs say that a decode
  wrote them, so that a later decode may replace them while an original image is never replaced
  unasked (:func:`written_by_a_decode`).
"""

from __future__ import annotations

import codecs
import functools
import io
import warnings
from pathlib import Path
from typing import Any

from .quiet_warnings import first_line, ignoring

__all__ = [
    "DECODED_BY",
    "carries_mark",
    "for_format",
    "icon_sizes",
    "profile_for",
    "read_back",
    "marked_options",
    "save_keeping_what_fits",
    "warn_of_what_was_not_stored",
    "written_by_a_decode",
]

#: the ``Software`` text chunk of a PNG, and the comment of a JPEG, that a decode wrote
DECODED_BY = "pillow_jac (decoded from a .jac file)"
#: the extensions of the formats in which a decode leaves :data:`DECODED_BY` (:func:`marked_options`): every one
#: Pillow writes PNG, JPEG or TIFF for
MARKED_SUFFIXES = (".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff")

#: for each decoded mode, the modes to hand a writer, in order of preference
_MODES = {"RGBA": ("RGBA",), "LA": ("LA", "RGBA"), "RGB": ("RGB",), "L": ("L", "RGB")}
#: the mode an image with alpha becomes where the format stores no alpha
_WITHOUT_ALPHA = {"RGBA": "RGB", "LA": "L"}


#: the alpha levels of the probe images: any level, and only fully transparent or opaque
_GRADED, _ON_OFF = (0, 85, 170, 255), (0, 255)
#: how far a level read back may be from the one written and still count as kept (a lossy alpha plane)
_ALPHA_TOLERANCE = 16


@functools.cache
def _round_trip(fmt: str, mode: str, levels: tuple[int, ...] = _ON_OFF) -> tuple[str | None, bool] | None:
    """How Pillow's ``fmt`` writer keeps a 16x16 image of ``mode``, written and read back in memory.

    None where the writer refuses the mode; else the mode Pillow reads back (None where it cannot read the
    format back, such as PDF) and whether an alpha plane of ``levels`` (columns of each, left to right) came
    back, each level within :data:`_ALPHA_TOLERANCE`. Pillow reads back an RGBA BMP (written with its alpha
    bytes) as RGB and writes PPM as RGB, GIF keeps only fully transparent pixels, and a format it cannot read
    back counts as storing none. An image read back at another size (ICNS's largest icon) is compared at the
    probe's, nearest pixel.
    """
    from PIL import Image

    im = Image.new(mode, (16, 16), (200,) * len(mode))
    if "A" in mode:
        columns = [level for level in levels for _ in range(16 // len(levels))]
        alpha = Image.new("L", im.size)
        alpha.putdata(columns * 16)
        im.putalpha(alpha)
    encoded = io.BytesIO()
    try:
        im.save(encoded, format=fmt)
    except Exception:
        return None
    try:
        with ignoring():
            with Image.open(encoded) as back:
                if "A" not in mode:
                    return back.mode, False
                alpha = back.convert("RGBA").getchannel("A")
                if alpha.size != im.size:
                    alpha = alpha.resize(im.size, Image.Resampling.NEAREST)
                pairs = zip(alpha.tobytes(), im.getchannel("A").tobytes(), strict=True)
                return back.mode, all(abs(a - b) <= _ALPHA_TOLERANCE for a, b in pairs)
    except Exception:
        return None, False


def _alpha_stored(fmt: str, mode: str) -> str | None:
    """How Pillow's ``fmt`` writer keeps the alpha of a ``mode`` image: ``"graded"``, ``"on/off"`` or None."""
    if (_round_trip(fmt, mode, _GRADED) or (None, False))[1]:
        return "graded"
    return "on/off" if (_round_trip(fmt, mode, _ON_OFF) or (None, False))[1] else None


def profile_for(profile: bytes | None, fmt: str, mode: str) -> bytes | None:
    """``profile``, or None (with a warning) where ``fmt`` stores a ``mode`` image as pixels it cannot describe.

    ``mode`` is the mode handed to the writer. Pillow's WebP writer stores grey as RGB: a grey ICC profile
    would then describe colour pixels.

    Example:
        >>> grey = bytes(16) + b"GRAY" + bytes(108)
        >>> profile_for(grey, "PNG", "L") == grey
        True
    """
    from .save_metadata import profile_fits

    stored = (_round_trip(fmt, mode) or (None, False))[0]
    if profile is None or stored is None or stored not in ("L", "LA", "RGB", "RGBA") or profile_fits(profile, stored):
        return profile
    space = profile[16:20].decode("ascii", "replace").strip() if len(profile) >= 20 else "its"
    message = f"ICC profile left out: {fmt} stores these pixels as {stored}, which a {space} profile cannot describe"
    warnings.warn(message, stacklevel=3)
    return None


def _onto_white(im: Any) -> Any:
    """``im`` (RGBA or LA) composited onto opaque white, without alpha (grey stays grey)."""
    from PIL import Image

    rgba = im.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba)
    return flat.convert(_WITHOUT_ALPHA[im.mode])


def _on_off(im: Any) -> Any:
    """``im`` (RGBA or LA) with every partly transparent pixel composited onto white and made opaque."""
    flat = _onto_white(im)  # RGB or L
    flat.putalpha(im.getchannel("A").point(lambda level: 255 if level else 0))
    return flat


def for_format(im: Any, fmt: str) -> Any:
    """``im`` in a mode Pillow's ``fmt`` writer stores, its alpha kept where the format has any.

    Raises:
        ValueError: the writer takes none of the modes ``im`` could be given (say, XBM, which stores only bilevel
            images); the message names them.

    Example:
        >>> from PIL import Image
        >>> for_format(Image.new("LA", (2, 2)), "SGI").mode, for_format(Image.new("L", (2, 2)), "QOI").mode
        ('RGBA', 'RGB')
    """
    for mode in _MODES[im.mode]:
        if _round_trip(fmt, mode) is None:
            continue
        if "A" in mode:
            stored = _alpha_stored(fmt, mode)
            if stored is None:
                continue
            if stored == "on/off" and any(im.getchannel("A").histogram()[1:255]):
                message = (
                    f"alpha reduced to on/off: {fmt} output stores no partial transparency; "
                    "partly transparent pixels are composited onto white"
                )
                warnings.warn(message, stacklevel=3)
                im = _on_off(im)
        return im if mode == im.mode else im.convert(mode)
    tried = _MODES[im.mode]
    if im.mode in _WITHOUT_ALPHA:
        flat_modes = _MODES[_WITHOUT_ALPHA[im.mode]]  # none with alpha: the writer need only take one
        if any(_round_trip(fmt, mode) is not None for mode in flat_modes):
            if im.getchannel("A").getextrema() != (255, 255):  # an opaque image loses nothing: no warning
                message = f"alpha left out: {fmt} output does not store it; the image is composited onto white"
                warnings.warn(message, stacklevel=3)
            return for_format(_onto_white(im), fmt)
        tried += flat_modes  # a format that takes the flattened image either: its error alone, naming both
    missing = _writer_missing(fmt)
    if missing:
        raise ValueError(f"Pillow has no {fmt} writer here ({missing}); choose another format")
    raise ValueError(f"Pillow's {fmt} writer takes none of the modes {', '.join(tried)}; choose another format")


def _writer_missing(fmt: str) -> str | None:
    """Why ``fmt`` cannot be written in any mode, or None: Pillow's stubs (HDF5, BUFR, GRIB, WMF) lack a handler."""
    from PIL import Image

    try:
        Image.new("L", (1, 1)).save(io.BytesIO(), format=fmt)
    except OSError as exc:
        return str(exc) if "handler not installed" in str(exc) else None
    except Exception:  # a mode the writer refuses: not a missing writer
        return None
    return None


def marked_options(fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the mark of a decode added, and PNG's XMP as the iTXt chunk Pillow's writer needs."""
    options = dict(options)
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        pnginfo = PngInfo()
        pnginfo.add_text("Software", DECODED_BY)
        if "xmp" in options and (text := _xmp_text(options.pop("xmp"))) is not None:
            pnginfo.add_itxt("XML:com.adobe.xmp", text)  # one that is not text is left out (and warned of after)
        options["pnginfo"] = pnginfo
    elif fmt == "JPEG":
        options["comment"] = DECODED_BY
    elif fmt == "TIFF":
        options["software"] = DECODED_BY  # its Software tag (one the EXIF had is replaced, as in a PNG)
        # the XMP goes in as IFD0's XMLPacket tag, beside the EXIF's; the "xmp" option stays for the check of
        # what was stored (Pillow's TIFF writer ignores it)
        if (exif := _exif_for_tiff(options.pop("exif", None), options.get("xmp"))) is not None:
            options["exif"] = exif  # an EXIF of nothing but layout tags (and no XMP) is left out
    return options


#: IFD0 tags that say how a TIFF's own pixels lie (TIFF 6.0's baseline and extension fields): sizes, samples,
#: compression, photometric interpretation, strips and tiles, colour map, sample format, JPEG and YCbCr layout
_TIFF_LAYOUT_TAGS = (
    0x00FE, 0x00FF, 0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0107, 0x0108, 0x0109, 0x010A, 0x0111, 0x0115,
    0x0116, 0x0117, 0x0118, 0x0119, 0x011C, 0x0124, 0x0125, 0x013D, 0x0140, 0x0142, 0x0143, 0x0144, 0x0145,
    0x014A, 0x0152, 0x0153, 0x0154, 0x0155, 0x0201, 0x0202, 0x0211, 0x0212, 0x0213, 0x0214,
)  # fmt: skip


def _exif_for_tiff(data: bytes | None, xmp: bytes | None = None) -> bytes | None:
    """The tags for Pillow's TIFF writer: a stored EXIF without its layout tags, and an XMP as tag 700 (XMLPacket).

    The layout tags Pillow's writer would copy over the file's own: stale ones (a photo cropped or made grey
    after its EXIF was written) gave a TIFF no reader opens, or one of another size. Every other tag stays.
    None where nothing else was there. An EXIF Pillow cannot parse is returned as it is (the writer refuses
    it, and it is left out with a warning; the XMP with it).

    Example:
        >>> from PIL import Image
        >>> tags = Image.Exif()
        >>> tags.load(_exif_for_tiff(None, b"<x:xmpmeta/>"))
        >>> tags[700]
        b'<x:xmpmeta/>'
    """
    from PIL import Image

    tags = Image.Exif()
    if data is not None:
        try:
            tags.load(data)
            for tag in (0x8769, 0x8825):  # the EXIF and GPS directories, read now: written back with the rest
                if tag in tags:  # (get_ifd makes an empty one where there is none: a pointer to nothing)
                    tags.get_ifd(tag)
            for tag in _TIFF_LAYOUT_TAGS:
                tags.pop(tag, None)
        except Exception:  # noqa: BLE001  (EXIF Pillow cannot parse: the writer refuses it; left out, warned)
            return data
    if xmp:
        tags[_XMP_TAG] = bytes(xmp)
    return tags.tobytes() if len(tags) else None


#: TIFF's XMLPacket tag (XMP Specification Part 3, section 1.1.4), where TIFF keeps an XMP packet
_XMP_TAG = 0x02BC


#: how an XMP packet in UTF-16 or UTF-32 starts: with a byte-order mark, or (the mark inside its
#: ``<?xpacket begin=`` instead) with its ``<`` in that encoding; UTF-32's before UTF-16's
_XMP_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"), (b"<\0\0\0", "utf-32-le"),
    (b"\0\0\0<", "utf-32-be"), (b"<\0", "utf-16-le"), (b"\0<", "utf-16-be"),
)  # fmt: skip


def _xmp_text(data: bytes) -> str | None:
    """An XMP packet as text: UTF-8, UTF-16 or UTF-32 (:data:`_XMP_ENCODINGS`); None for anything else.

    PNG stores XMP as UTF-8 text (an iTXt chunk): a packet in another encoding decoded as UTF-8 "with
    replacement" was written as garbage (NULs and U+FFFD) without a word.
    """
    encoding = next((name for bom, name in _XMP_ENCODINGS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def carries_mark(im: Any) -> bool:
    """Whether an opened image is a PNG, JPEG or TIFF a decode wrote (:data:`DECODED_BY`, :func:`marked_options`)."""
    if im.format == "PNG":
        return im.info.get("Software") == DECODED_BY
    if im.format == "TIFF":
        return getattr(im, "tag_v2", {}).get(0x0131) == DECODED_BY
    return im.format == "JPEG" and im.info.get("comment") == DECODED_BY.encode()


def written_by_a_decode(path: str | Path) -> bool:
    """Whether ``path`` is a PNG, JPEG or TIFF a decode wrote (:func:`carries_mark`); False for anything else."""
    from PIL import Image

    try:
        with ignoring():
            with Image.open(path) as im:
                return carries_mark(im)
    except Exception:  # not an image Pillow opens (or one too large to): not a decode of ours
        return False


#: the metadata save options, in the order they are given up when the output format refuses them
_METADATA_OPTIONS = {"exif": "EXIF", "xmp": "XMP", "pnginfo": "XMP", "icc_profile": "ICC profile"}


#: the extensions of a bare JPEG 2000 codestream (ISO/IEC 15444-1 Annex A), not a JP2 file (Annex I)
_CODESTREAM_SUFFIXES = (".j2k", ".j2c", ".jpc")


def _writable_name(name: str, fmt: str) -> bool:
    """Whether Pillow's ``fmt`` writer can write ``name`` into the file (its header, its title).

    An IM header holds only ASCII, and no writer a name that is not valid Unicode (bytes a file system allows).
    """
    try:
        name.encode("ascii" if fmt == "IM" else "utf-8")
    except UnicodeEncodeError:
        return False
    return True


def save_keeping_what_fits(im: Any, fmt: str, options: dict[str, Any], name: str = "") -> tuple[bytes, dict[str, Any]]:
    """``im`` saved as ``fmt``, and the options it was saved with; metadata the writer refuses is left out (warned).

    ``name``: the output's file name, which some of Pillow's writers read as they would from a path (SGI and IM
    files and a PDF's title carry it), given where the writer can write it (:func:`_writable_name`); a JPEG 2000
    named as a bare codestream (:data:`_CODESTREAM_SUFFIXES`) is written as one (Pillow's writer makes one only
    for a name ending in ``.j2k``).

    A JPEG holds at most 64 KiB of EXIF and a TIFF only EXIF that parses as TIFF: the decoded pixels are
    not thrown away for an optional chunk the output format cannot carry. Each piece of metadata is
    tried alone first, so only the one refused is left out (a TIFF's XMP, a tag beside the EXIF's, stays when
    the EXIF is refused).
    """
    if fmt == "JPEG2000" and Path(name).suffix.lower() in _CODESTREAM_SUFFIXES:
        options = {**options, "no_jp2": True}
    name = name if _writable_name(name, fmt) else ""

    def save(kept: dict[str, Any]) -> bytes:
        encoded = io.BytesIO()
        encoded.name = name  # type: ignore[attr-defined]  # Image.save reads a file object's name
        im.save(encoded, format=fmt, **kept)
        return encoded.getvalue()

    try:
        return save(options), options
    except Exception as e:
        error = e
    present = [name for name in _METADATA_OPTIONS if name in options]
    for left_out in [[name] for name in present] + ([present] if len(present) > 1 else []):
        kept = {k: v for k, v in options.items() if k not in left_out}
        if fmt == "TIFF" and "exif" in left_out and kept.get("xmp"):  # the XMP travelled in the refused EXIF
            kept["exif"] = _exif_for_tiff(None, kept["xmp"])  # (marked_options): alone, it stays
        try:
            data = save(kept)
        except Exception:
            continue
        names = " and ".join(dict.fromkeys(_METADATA_OPTIONS[name] for name in left_out))
        warnings.warn(f"{names} left out: {fmt} refused it ({first_line(str(error))})", stacklevel=3)
        return data, kept
    raise error


def warn_of_what_was_not_stored(data: bytes, fmt: str, given: list[str]) -> None:
    """Warn of metadata that ``fmt``'s writer skipped without an error (a BMP stores none, a GIF no EXIF).

    ``given``: the metadata passed to the writer (``icc_profile``, ``exif``, ``xmp``). The file is opened
    again (its header only) to see what it holds.
    """
    from PIL import Image

    if not given:
        return
    try:
        with ignoring():  # the decompression-bomb warning was given for the .jac already
            with Image.open(io.BytesIO(data)) as im:  # the header: info only (a PNG's getexif() would load it)
                held = {
                    "ICC profile": "icc_profile" in im.info,
                    "EXIF": "exif" in im.info or fmt == "TIFF",  # a TIFF's EXIF becomes tags of its own IFD
                    "XMP": "xmp" in im.info or "XML:com.adobe.xmp" in im.info,
                }
    except Exception:  # a file Pillow writes but cannot open again (PDF): what it holds is not known
        names, them = _listed([_METADATA_OPTIONS[name] for name in given])
        warnings.warn(f"{names} perhaps left out: Pillow cannot read {fmt} back to tell", stacklevel=3)
        return
    lost = [_METADATA_OPTIONS[name] for name in given if not held[_METADATA_OPTIONS[name]]]
    if lost:
        names, them = _listed(lost)
        warnings.warn(f"{names} left out: {fmt} output does not store {them}", stacklevel=3)


def _listed(names: list[str]) -> tuple[str, str]:
    """``("ICC profile, EXIF and XMP", "them")``: the names in a sentence, and the pronoun for them."""
    joined = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    return joined, "them" if len(names) > 1 else "it"


def icon_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """An ICO's icons for an image of ``size``: Pillow's square sizes below it, and its own fitted into 256x256."""
    scale = min(1.0, 256 / max(size))
    largest = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    return sorted({*[(s, s) for s in (16, 24, 32, 48, 64, 128, 256) if s <= min(largest)], largest})


def read_back(data: bytes, exif: bool = True) -> dict[str, Any]:
    """The size, and with ``exif`` the EXIF and XMP, of an image file Pillow wrote, as its reader finds them.

    The EXIF is as stored, without the XMP's orientation, which ``getexif()`` adds where it has none. Empty
    for a format Pillow cannot read back. Without ``exif`` the pixels are not decoded (a PNG's
    ``getexif()`` loads the image to find an ``eXIf`` chunk after the pixels).
    """
    from PIL import Image

    try:
        with ignoring(Image.DecompressionBombWarning):  # the image's own came already
            with Image.open(io.BytesIO(data)) as im:
                if not exif:
                    return {"size": im.size}
                xmp = {key: im.info.pop(key) for key in ("xmp", "XML:com.adobe.xmp") if key in im.info}
                found = im.getexif()  # without the XMP, whose orientation Pillow would copy into it
                return {"size": im.size, "exif": found.tobytes() if len(found) else None, "xmp": xmp.get("xmp")}
    except Exception:  # noqa: BLE001  (a format Pillow writes but cannot read back: no metadata found)
        return {}
