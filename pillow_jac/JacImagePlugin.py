"""Pillow plugin for JAC (``.jac``) images: read, write, and register the format.

Importing this module (``import pillow_jac`` does it) registers the ``"JAC"`` format with Pillow:
:func:`PIL.Image.open` then recognises ``.jac`` files by their signature, and :meth:`PIL.Image.Image.save`
writes them for the ``.jac`` extension or ``format="JAC"``.

Opening a file reads and checks the whole container once (standard library only) and keeps it; the
neural decoder, and with it torch, is imported the first time pixels are needed (``load()``,
``getpixel``, ``convert``, ``save``, ...), and decodes from what was read at open.

Damaged and truncated files: since ``Image.open`` reads the whole container, a damaged file fails there,
with :class:`~pillow_jac.container.JacDataError` (:class:`~pillow_jac.container.JacTruncatedError` for a
file cut short): an ``OSError``, as Pillow's "broken" and "image file is truncated", and a ``ValueError``
like every :class:`~pillow_jac.container.JacFormatError`. A stream that does not decode fails on ``load()``
with :class:`~pillow_jac.entropy_coding.EntropyCodingError`, also both.
``ImageFile.LOAD_TRUNCATED_IMAGES`` drops a damaged ancillary chunk (metadata or preview; Pillow's PNG
reader then stops checking those CRCs) and forgives a damaged end: a file cut before or inside its
12-byte ``JEND`` chunk once every chunk the pixels need is whole, or bytes after ``JEND`` (SPEC.md
section 8.3), each with a warning that names the file and points at the caller's line. It changes
nothing else: the latents are one range-coded stream in which every symbol's probabilities depend on
the symbols before it, and the synthesis network spreads each latent over many pixels, so the bytes
before a cut in them give no usable part of the image (a truncated PNG or JPEG still has its first rows).
An opened image holds the file's chunks in memory until it is loaded or closed, as Pillow's WebP plugin
holds a WebP file.

Save options (``im.save(fp, "JAC", **options)``):

* ``quality``: number from 1 (smallest files) to 8 (best quality), fractions allowed; default
  :data:`pillow_jac.constants.DEFAULT_QUALITY`. JPEG-style values such as 75 raise ``ValueError``.
* ``effort``: 0 (default, fastest) to 3: how hard the encoder searches for a smaller file at the
  same quality (:mod:`pillow_jac.model.refine`; on Kodak, effort 2 encodes about 16 times slower
  than effort 0 and needs about 11% fewer bytes for the same PSNR, see the README). Files of any
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
* ``preview``: ``True`` also stores a WebP preview of at most :data:`PREVIEW_SIZE` pixels on the long
  side (``preview=N``: at most N pixels), which :meth:`JacImageFile.draft` and so ``thumbnail()`` decode
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

Example:
    >>> from PIL import Image
    >>> import pillow_jac  # registers the format
    >>> Image.registered_extensions()[".jac"]
    'JAC'
    >>> Image.MIME["JAC"]
    'image/x-jac'
"""

from __future__ import annotations

import os
import struct
import sys
import warnings
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, ImageFile

from . import container
from .constants import (
    ALPHA_LAYOUTS,
    DEFAULT_EFFORT,
    DEFAULT_QUALITY,
    LAYOUTS,
    MAGIC,
    METADATA_FIELDS,
    UnsupportedModeError,
    validate_effort,
    validate_quality,
)
from .files import write_into
from .preview import PREVIEW_MAX_SIZE, PREVIEW_QUALITY, PREVIEW_SIZE, make_preview, preview_for, preview_size
from .save_metadata import metadata_to_store
from .size_limit import check_declared_size

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "JacImageFile",
    "encode_image",
    "make_preview",
    "preview_size",
    "register",
    "SUPPORTED_MODES",
    "NATIVE_MODES",
    "PREVIEW_SIZE",
    "PREVIEW_QUALITY",
    "PREVIEW_MAX_SIZE",
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
#: every mode :func:`_save` accepts.
SUPPORTED_MODES = (*NATIVE_MODES, "P", *CONVERTED_MODES)


#: Pillow's accept function (whether a prefix starts with the JAC signature): :func:`container.accept`.
_accept = container.accept


# --------------------------------------------------------------------------- container access


#: the folders of pillow_jac and Pillow, whose frames a warning about a file is not attributed to
_LIBRARY_DIRS = tuple(os.path.dirname(path) + os.sep for path in (__file__, Image.__file__))


def _warn(message: str) -> None:
    """Warn about a file, attributed to the first caller outside pillow_jac and Pillow (the user's line)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, stacklevel=2, skip_file_prefixes=_LIBRARY_DIRS)
        return
    frame, level = sys._getframe(1), 2  # _warn's caller is stacklevel 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _file_name(fp: IO[bytes]) -> str | None:
    """The name of the file ``fp`` reads, when it has one (a path, a zip member, ...)."""
    name = getattr(fp, "name", None)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return name if isinstance(name, str) and name else None


def _damaged_warning(name: str | None) -> Callable[[bytes], None]:
    """The ``on_damaged`` callback of a recovering read (SPEC.md section 8.3): a warning naming the file."""
    where = f"JAC file {name!r}" if name else "JAC"

    def on_damaged(ctype: bytes) -> None:
        if ctype == container.C.CHUNK_JEND:
            _warn(
                f"{where}: read without its damaged end (the file is cut short before or inside its JEND "
                "chunk, or has bytes after JEND)"
            )
        else:
            _warn(f"{where}: skipped the damaged ancillary chunk {ctype.decode('ascii').rstrip()!r} (CRC mismatch)")

    return on_damaged


def _read_container(
    fp: IO[bytes],
    header: container.JacHeader | None = None,
    keep_unknown: bool = True,
    name: str | None = None,
    quiet: bool = False,
) -> container.JacFile:
    """Read a whole ``.jac`` file (after ``header`` when given), turning stray low-level errors into ``OSError``.

    :class:`container.JacFormatError` passes through unchanged: :class:`container.JacDataError` (an
    ``OSError`` and a ``ValueError``) for a damaged file, :class:`container.NotJacFileError` for a wrong
    signature. Unknown ancillary chunks are kept unless ``keep_unknown`` is False. ``name`` (else
    ``fp.name``) names the file in warnings; ``quiet`` forgives damage as ``LOAD_TRUNCATED_IMAGES`` asks
    without warning of it (a read that is not the last word on the file).
    """
    # With LOAD_TRUNCATED_IMAGES a damaged ancillary chunk is dropped, and a damaged end forgiven (SPEC.md 8.3)
    on_damaged = None
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        on_damaged = (lambda ctype: None) if quiet else _damaged_warning(name or _file_name(fp))
    try:
        return container.read_file(fp, header, keep_unknown=keep_unknown, on_damaged=on_damaged)
    except (EOFError, struct.error, IndexError, TypeError, UnicodeDecodeError) as e:
        raise OSError(f"truncated or corrupt JAC file: {e}") from e


# --------------------------------------------------------------------------- reading


class JacImageFile(ImageFile.ImageFile):
    """A ``.jac`` image opened by :func:`PIL.Image.open`.

    After opening, ``size`` and ``mode`` (``L``, ``LA``, ``RGB`` or ``RGBA``) are known and ``info``
    holds ``jac_quality`` (float), ``model_id`` (str) and, when the file has them, ``icc_profile``,
    ``exif`` and ``xmp`` (bytes, exactly as they were stored). Pixels are decoded on ``load()``.

    Opening reads and checks the whole container once and keeps it; ``load()`` decodes
    from it without reading the file again, then drops it. So ``load()`` also works after
    ``verify()`` (which checks what opening does not: the alpha plane's zlib stream, SPEC.md section 5.1;
    it closes the file), as with WebP, AVIF and HEIF.
    A file holds one image: ``n_frames`` is 1 and ``is_animated`` is False.

    :class:`PIL.ImageFile.Parser` reads a ``.jac`` whole, as it reads PNG and JPEG: it collects what it is
    fed and opens and decodes it all at ``close()``, so trailing data, a damaged end and everything after
    a chunk boundary are judged on the whole file, as :func:`PIL.Image.open` judges them. Until the whole file
    has come, the Parser tries to open what it has after every piece (its design, for every format); a ``.jac``
    refuses such an attempt from its last 12 bytes alone until they are the JEND chunk
    (:func:`_parser_feeding`), so feeding costs time linear in the file's size. Under ``LOAD_TRUNCATED_IMAGES``
    a file cut before ``JEND`` opens, so every attempt reads what has come: a file of many chunks fed in small
    pieces then costs time that grows with the square of its size (20,000 empty chunks, 240 kB, in pieces of
    1 kB: about 13 s); such an attempt warns of nothing, since the whole file judged at ``close()`` may be sound.

    A file with a preview (``prvw``, SPEC.md section 5.4) answers :meth:`draft`, and so ``thumbnail()``,
    with the preview when it is large enough: no neural decoder, no torch.
    """

    format = "JAC"
    format_description = "JAC learned image codec"
    n_frames = 1
    is_animated = False
    #: the parsed file, from ``Image.open`` until the pixels are decoded (None afterwards).
    _jac: container.JacFile | None = None
    #: the decoded preview :meth:`draft` chose, in the file's mode, until :meth:`load` takes it.
    _preview: Image.Image | None = None
    #: set by :meth:`close`: :meth:`load` then fails at once instead of decoding for nothing.
    _jac_closed = False

    def _open(self) -> None:
        assert self.fp is not None
        if not _accept(self.fp.read(len(MAGIC))):
            msg = "not a JAC file"
            raise SyntaxError(msg)
        self.fp.seek(0)
        feeding = _parser_feeding()
        if not ImageFile.LOAD_TRUNCATED_IMAGES and feeding and not container.ends_with_jend(self.fp):
            msg = "the JAC file has not all come yet: it does not end with JEND"
            raise OSError(msg)  # the Parser waits for more, having read none of the chunks
        try:
            header = container.read_header(self.fp)
        except (EOFError, struct.error, IndexError, TypeError, UnicodeDecodeError) as e:
            raise OSError(f"truncated or corrupt JAC header: {e}") from e
        size = (header.width, header.height)
        # Refuse a bomb before reading the chunks, as Image.open would after _open (which also warns, once)
        check_declared_size(*size)

        # The metadata chunks come after JHDR: read the rest of the container (bytes only, no torch).
        filename = os.fsdecode(self.filename) if self.filename else None
        # a piece the Parser tries is not the whole file: close() judges that, and warns of what it finds
        jac = _read_container(self.fp, header, keep_unknown=False, name=filename, quiet=feeding)
        self._jac = jac
        self._size = size
        self._mode = header.layout
        # not "quality": that is every writer's save option, and im.save(out, **im.info) would pass it on (a JPEG
        # refuses 2.0, a WebP takes it as 2 of 100)
        self.info["jac_quality"] = float(header.quality)
        self.info["model_id"] = header.model_id
        for name in METADATA_FIELDS:
            value = getattr(jac, name)
            if value:
                self.info[name] = bytes(value)
        self.tile = [ImageFile._Tile("JAC", (0, 0, *size), 0, None)]  # not loaded yet: load() decodes self._jac

    def draft(self, mode: str | None, size: tuple[int, int] | None) -> tuple[str, tuple[int, int, float, float]] | None:
        """Load the file's preview instead of the image when it is at least as large as the image fitted in ``size``.

        ``thumbnail(size)`` calls this with ``size`` times its ``reducing_gap`` (2 by default), so a 512-pixel
        preview serves ``thumbnail((256, 256))``. The preview (SPEC.md section 5.4) is decoded here, by
        Pillow, and converted to the file's mode; ``mode`` is ignored. A preview that is missing, not
        smaller than the image, of another aspect ratio, too small, or that does not decode is not used;
        nor is one without alpha for an image with alpha, unless the image's alpha is all 255.

        Returns:
            ``(mode, box)``, ``box`` being the whole image in the preview's pixels, when the preview
            will be loaded; None otherwise (then :meth:`load` decodes the image).
        """
        if not size or not self.tile or self._jac is None or self._preview is not None:
            return None
        preview = preview_for(self._jac, self.mode, size)
        if preview is None:
            return None
        self._preview = preview
        self._size = preview.size
        self.tile = [ImageFile._Tile("JAC", (0, 0, *preview.size), 0, None)]
        return self.mode, (0, 0, *preview.size)

    def load_read(self, read_bytes: int) -> bytes:
        """Read from the file: the hook of Pillow's tile loader, which :meth:`load` does not use.

        Pillow's :class:`~PIL.ImageFile.Parser` decodes tiles as data arrives unless an image has this hook;
        with it (as PNG and JPEG have) the Parser waits for all the data and opens the whole file at ``close()``.
        A ``.jac`` must be read whole: a prefix ending at a chunk boundary can look like a complete file.
        """
        assert self.fp is not None
        return self.fp.read(read_bytes)

    def getexif(self) -> Image.Exif:
        """Pillow's :meth:`~PIL.Image.Image.getexif`, except that an EXIF block Pillow cannot parse reads as none.

        Pillow's parser lets ``struct.error`` or ``SyntaxError`` out of a short or garbled block (for PNG and
        WebP too), and imageio's reader and :func:`PIL.ImageOps.exif_transpose` call this on every image: a
        ``.jac`` whose pixels decode would not read at all. Here it warns and gives an empty ``Exif``;
        ``info["exif"]`` keeps the stored bytes, and the file is not touched.
        """
        try:
            return super().getexif()
        except MemoryError:
            raise
        except Exception as exc:  # what Pillow's TIFF-directory reader raises for a damaged block
            name = os.fsdecode(self.filename) if self.filename else "a JAC file"
            warnings.warn(f"{name}: its EXIF cannot be read ({type(exc).__name__}: {exc}); read as none", stacklevel=2)
            exif = Image.Exif()
            exif._loaded = True  # as Pillow's getexif() marks what it has read: not parsed again
            self._exif = exif
            return exif

    def verify(self) -> None:
        """Check what :func:`PIL.Image.open` has not: the alpha plane decompresses to the image's size.

        Everything else of the container (chunks, CRCs, the header, the metadata) was checked at open.
        Whether the streams decode, and with which installed generation, only :meth:`load` tells.
        """
        if self._jac is not None and self._jac.header.layout in ALPHA_LAYOUTS:
            h = self._jac.header
            container.decompress_alpha(self._jac.alpha_method, self._jac.alpha, h.width, h.height)
        super().verify()

    def close(self) -> None:
        """Close the image, and let go of the parsed file and of a preview :meth:`draft` decoded."""
        self._jac = self._preview = None
        self._jac_closed = True
        super().close()

    def load(self) -> Image.core.PixelAccess | None:
        """Decode the pixels from the container parsed at open (or the preview :meth:`draft` chose).

        The file object is not needed (it may be closed by now), with one exception: ``ImageFile.Parser.close()``,
        when the whole input does not open (a complete file, then trailing bytes), loads in a ``finally`` the
        image that an earlier piece opened, from data it has closed, while the error of opening the whole is on
        its way. That stale image is not decoded (seconds, and memory, for nothing): the error goes on as it is.
        Only that call is told apart (its caller is ``Parser.close``): any other load decodes.
        """
        if self.tile and self._jac_closed:
            raise ValueError("Operation on closed image")
        if self.tile and _stale_parser_load(self.fp):
            return None
        if self.tile and self._jac is not None:
            if self._preview is not None:
                raw, self._preview = self._preview.tobytes(), None
            else:
                raw = _raw_pixels(self._jac, self.mode, self.size)
            self.load_prepare()
            self.frombytes(raw, "raw", self.mode)
            self.readonly = 0  # writable pixels of its own, as Pillow's load leaves the tiles it decodes
            self.tile = []
            self._jac = None
            if self.fp is not None and self._exclusive_fp and self._close_exclusive_fp_after_loading:
                self.fp.close()
                self.fp = None
        return super().load()


def _parser_feeding() -> bool:
    """Whether :meth:`JacImageFile._open` runs for ``ImageFile.Parser.feed()``'s attempt on what has come so far.

    ``feed()`` -> ``Image.open`` -> its opener -> the class -> ``ImageFile.__init__`` -> ``_open``: its frame is
    looked for among the nearest few (any other caller opens the file as given).
    """
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code is ImageFile.Parser.feed.__code__:
            return True
    return False


def _stale_parser_load(fp: object) -> bool:
    """Whether :meth:`JacImageFile.load` is ``ImageFile.Parser.close()``'s load of a stale piece (see there)."""
    if not getattr(fp, "closed", False) or not isinstance(sys.exc_info()[1], OSError):
        return False
    caller = sys._getframe(2)  # load() -> this -> the caller of load()
    return caller.f_code is ImageFile.Parser.close.__code__


def _raw_pixels(jac: container.JacFile, mode: str, size: tuple[int, int]) -> memoryview:
    """The decoded pixels of ``jac`` as raw bytes in ``mode`` (a view, not a copy), checked against the shape."""
    pixels = _decode_pixels(jac)
    width, height = size
    expected = (height, width) if mode == "L" else (height, width, len(mode))
    if tuple(pixels.shape) != expected or pixels.dtype.name != "uint8":
        msg = f"JAC decoder returned {pixels.dtype.name} {tuple(pixels.shape)}, expected uint8 {expected}"
        raise OSError(msg)
    import numpy as np  # loaded with the codec already; opening a file does not need it

    return memoryview(np.ascontiguousarray(pixels)).cast("B")


def _decode_pixels(jac: Any, device: str | None = None) -> np.ndarray:
    """Run :func:`pillow_jac.codec.decode`, mapping foreign exception types to ``OSError``."""
    from .forksafe import setting_up

    with setting_up():  # a fork waits for this import (pillow_jac/forksafe.py)
        from . import codec

    try:
        return codec.decode(jac, device=device)
    except (OSError, ValueError, MemoryError):
        raise
    except Exception as e:  # torch / constriction / internal errors
        raise OSError(f"cannot decode JAC image: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- writing


def _sixteen_bit_key(im: Image.Image) -> bool:
    """Whether ``im``'s transparent colour is a 16-bit one that its 8-bit samples cannot match.

    Pillow reads a 16-bit RGB PNG's samples as 8 bits but keeps its ``tRNS`` colour at 16, so the colour
    matches no pixel of the image, and converting it to RGBA makes every pixel opaque.
    """
    key = im.info.get("transparency")
    return im.mode == "RGB" and isinstance(key, tuple) and any(v > 255 for v in key)


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
        _warn(
            f"the transparent colour {im.info['transparency']} is a 16-bit one that no 8-bit pixel matches "
            "(Pillow reads 16-bit colour as 8 bits): stored without transparency"
        )
    meta = metadata_to_store(im, encoderinfo, mode)
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


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    if im.encoderinfo.get("append"):
        # Pillow opens the file for update without emptying it: a shorter file written there would keep the old
        # one's tail after its end, and neither image could be read back
        raise ValueError("a JAC file holds one image: append=True (adding to an existing file) is not supported")
    data = _encode_image(im, im.encoderinfo)
    # Nothing is written until the file is complete in memory (see the module docstring).
    write_into(fp, data, filename)


def _save_all(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """``save(..., save_all=True)``: one frame is saved as by :func:`_save`; more are refused.

    A ``.jac`` file holds one image, so a multi-frame image or ``append_images`` raise ``ValueError``
    before anything is encoded or written.
    """
    frames = getattr(im, "n_frames", 1) + len(list(im.encoderinfo.get("append_images") or ()))  # any iterable
    if frames > 1:
        msg = f"a JAC file holds one image, but save_all was given {frames} frames: save each frame to its own file"
        raise ValueError(msg)
    _save(im, fp, filename)


# --------------------------------------------------------------------------- registration


def register() -> None:
    """Register the JAC format with Pillow (open, save, ``.jac``, MIME type); idempotent.

    Example:
        >>> register(); register()
        >>> from PIL import Image
        >>> "JAC" in Image.OPEN and "JAC" in Image.SAVE
        True
    """
    Image.register_open(JacImageFile.format, JacImageFile, _accept)
    Image.register_save(JacImageFile.format, _save)
    Image.register_save_all(JacImageFile.format, _save_all)
    Image.register_extension(JacImageFile.format, ".jac")
    Image.register_mime(JacImageFile.format, "image/x-jac")


register()
