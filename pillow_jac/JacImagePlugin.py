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
holds a WebP file, or until its ``with`` block ends: an image not loaded in the block then no longer loads,
as a PNG does not.

Writing (save options, modes, failed saves) is :mod:`pillow_jac.image_saving`, whose handlers
:func:`register` installs.

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
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from PIL import Image, ImageFile

from . import container
from .constants import ALPHA_LAYOUTS, EXTENSION, FORMAT_NAME, MAGIC, METADATA_FIELDS, MIME_TYPE
from .image_saving import NATIVE_MODES, SUPPORTED_MODES, encode_image, save_all_handler, save_handler
from .preview import PREVIEW_MAX_SIZE, PREVIEW_QUALITY, PREVIEW_SIZE, make_preview, preview_for, preview_size
from .quiet_warnings import warn_at_caller
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

#: Pillow's accept function (whether a prefix starts with the JAC signature): :func:`container.accept`.
_accept = container.accept


# --------------------------------------------------------------------------- container access


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
            warn_at_caller(
                f"{where}: read without its damaged end (the file is cut short before or inside its JEND "
                "chunk, or has bytes after JEND)"
            )
        else:
            warn_at_caller(
                f"{where}: skipped the damaged ancillary chunk {ctype.decode('ascii').rstrip()!r} (CRC mismatch)"
            )

    return on_damaged


def _read_container(fp: IO[bytes], header: container.JacHeader, name: str | None) -> container.JacFile:
    """Read the rest of a ``.jac`` file, after its ``header`` (:func:`container.read_header` read it from ``fp``).

    Raises what :func:`container.read_file` raises for a bad file: :class:`container.JacDataError` (an
    ``OSError`` and a ``ValueError``; :class:`container.JacTruncatedError` for a file cut short). With
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` a damaged ancillary chunk is dropped and a damaged end forgiven
    (SPEC.md section 8.3), each with a warning naming the file: ``name``, else ``fp.name``.
    """
    on_damaged = _damaged_warning(name or _file_name(fp)) if ImageFile.LOAD_TRUNCATED_IMAGES else None
    return container.read_file(fp, header, on_damaged=on_damaged)


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
    has come, the Parser tries to open what it has after every piece (its design, for every format); such an
    attempt (:func:`_parser_feeding`) reads the header alone (size, mode, quality, ``model_id``) and none of the
    chunks, so no piece costs more than the header whatever came before it, and it warns of nothing, since the
    whole file judged at ``close()`` may be sound. The image an attempt opened is not decoded: ``close()``
    opens and decodes the whole file.

    A file with a preview (``prvw``, SPEC.md section 5.4) answers :meth:`draft`, and so ``thumbnail()``,
    with the preview when it is large enough: no neural decoder, no torch.
    """

    format = FORMAT_NAME
    format_description = "JAC learned image codec"
    n_frames = 1
    is_animated = False
    #: the parsed file, from ``Image.open`` until the pixels are decoded (None afterwards).
    _jac: container.JacFile | None = None
    #: the decoded preview :meth:`draft` chose, in the file's mode, until :meth:`load` takes it.
    _preview: Image.Image | None = None
    #: set by :meth:`close` and on leaving a ``with`` block: :meth:`load` then fails at once.
    _jac_closed = False

    def _open(self) -> None:
        assert self.fp is not None
        if not _accept(self.fp.read(len(MAGIC))):
            msg = "not a JAC file"
            raise SyntaxError(msg)
        self.fp.seek(0)
        header = container.read_header(self.fp)
        size = (header.width, header.height)
        # Refuse a bomb before reading the chunks, as Image.open would after _open (which also warns, once)
        check_declared_size(*size)
        self._size = size
        self._mode = header.layout
        # not "quality": that is every writer's save option, and im.save(out, **im.info) would pass it on (a JPEG
        # refuses 2.0, a WebP takes it as 2 of 100)
        self.info["jac_quality"] = float(header.quality)
        self.info["model_id"] = header.model_id
        self.tile = [ImageFile._Tile("JAC", (0, 0, *size), 0, None)]  # not loaded yet: load() decodes self._jac
        if _parser_feeding():  # a piece, not the whole file: close() reads and judges every chunk
            return

        # The metadata chunks come after JHDR: read the rest of the container (bytes only, no torch).
        filename = os.fsdecode(self.filename) if self.filename else None
        jac = _read_container(self.fp, header, filename)
        self._jac = jac
        for name in METADATA_FIELDS:
            value = getattr(jac, name)
            if value:
                self.info[name] = bytes(value)

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
            name = (os.fsdecode(self.filename) if self.filename else _file_name(self.fp)) or "a JAC file"
            warn_at_caller(f"{name}: its EXIF cannot be read ({type(exc).__name__}: {exc}); read as none")
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
        self._let_go()
        super().close()

    def __exit__(self, *args: object) -> None:
        """Leave a ``with`` block: close the file, and let go of what :meth:`close` lets go of but the pixels.

        Pixels loaded in the block stay, as Pillow leaves them for its own formats; an image not loaded in
        the block no longer loads (``ValueError``), where a PNG or JPEG no longer loads either (Pillow 13
        fails on its closed file).
        """
        self._let_go()
        super().__exit__(*args)

    def _let_go(self) -> None:
        """Drop the parsed file and the preview: :meth:`load` then refuses to decode."""
        self._jac = self._preview = None
        self._jac_closed = True

    def load(self) -> Image.core.PixelAccess | None:
        """Decode the pixels from the container parsed at open (or the preview :meth:`draft` chose).

        The file object is not needed (it may be closed by now), with one exception: ``ImageFile.Parser.close()``,
        when the whole input does not open (a complete file, then trailing bytes), loads in a ``finally`` the
        image that an earlier piece opened, from data it has closed, while the error of opening the whole is on
        its way (or a Ctrl-C, or a MemoryError). That image, opened from a piece, holds no parsed file: it is left
        as it is, and the exception goes on unchanged. Only that call is told apart (its caller is
        ``Parser.close``): any other load decodes, and the image a piece opened refuses to.
        """
        if self.tile:
            if self._jac_closed:
                raise ValueError("Operation on closed image")
            if _stale_parser_load(self.fp):
                return None
            if self._jac is None:
                raise OSError("a JAC image the Parser opened from a piece is not decoded: its close() decodes the file")
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
    if not getattr(fp, "closed", False) or sys.exc_info()[1] is None:
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


def _decode_pixels(jac: container.JacFile) -> np.ndarray:
    """Run :func:`pillow_jac.codec.decode`, mapping foreign exception types to ``OSError``."""
    from .forksafe import setting_up

    with setting_up():  # a fork waits for this import (pillow_jac/forksafe.py)
        from . import codec

    try:
        return codec.decode(jac)
    except (OSError, ValueError, MemoryError):
        raise
    except Exception as e:  # torch / constriction / internal errors
        raise OSError(f"cannot decode JAC image: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- registration


def register() -> None:
    """Register the JAC format with Pillow (open, save, ``.jac``, MIME type); idempotent.

    Example:
        >>> register(); register()
        >>> from PIL import Image
        >>> "JAC" in Image.OPEN and "JAC" in Image.SAVE
        True
    """
    Image.register_open(FORMAT_NAME, JacImageFile, _accept)
    Image.register_save(FORMAT_NAME, save_handler)
    Image.register_save_all(FORMAT_NAME, save_all_handler)
    Image.register_extension(FORMAT_NAME, EXTENSION)
    Image.register_mime(FORMAT_NAME, MIME_TYPE)


register()
