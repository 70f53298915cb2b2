"""The ``.jac`` container: a PNG-like chunked file (format_spec/SPEC.md sections 2-5, 8 and 9).

A file is the 8-byte :data:`~pillow_jac.constants.MAGIC` followed by chunks; each chunk is
``length`` (u32, data bytes only), ``type`` (4 ASCII bytes), ``data`` and ``crc`` (u32, CRC-32 of
type and data). All integers are big-endian. The first chunk is ``JHDR``, the last ``JEND``.

This module only moves bytes: it never runs the model. It imports the standard library and
:mod:`pillow_jac.constants` only (never torch or numpy), so that ``Image.open`` stays cheap.

Entry points: :func:`accept` (does a prefix start with the signature?), :func:`read` (a whole file
from a path, bytes or a file object), :func:`read_header` (the header only), :func:`serialize`
(a :class:`JacFile` to bytes); :func:`parse` and :func:`read_file` are :func:`read` for bytes and
for file objects.

Errors:

* :class:`JacFormatError` (a :class:`ValueError`): the data cannot be read as a ``.jac`` file.
* :class:`NotJacFileError`, a :class:`JacFormatError`: the data does not start with the JAC signature
  (SPEC.md section 2). It is also a :class:`SyntaxError`, Pillow's "not my format".
* :class:`JacDataError`, a :class:`JacFormatError`: the data has the signature but cannot be read (a
  damaged chunk, a malformed header, a part that needs a newer decoder). It is also an :class:`OSError`,
  as Pillow reports a broken image file.
* :class:`JacTruncatedError`, a :class:`JacDataError`: the data ends before the file does, as Pillow's
  "image file is truncated".
* :class:`ValueError`: :func:`serialize` was given an invalid :class:`JacFile`.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from pillow_jac import constants as C

#: the 8-byte signature every ``.jac`` file starts with (re-exported from constants).
MAGIC = C.MAGIC

__all__ = [
    "MAGIC",
    "JacFormatError",
    "JacDataError",
    "NotJacFileError",
    "JacTruncatedError",
    "JacHeader",
    "JacFile",
    "accept",
    "latent_shapes",
    "quality_to_u16",
    "u16_to_quality",
    "quantize_quality",
    "serialize",
    "parse",
    "read_header",
    "read_file",
    "read",
    "compress_alpha",
    "decompress_alpha",
    "CHUNK_PRVW",
    "PREVIEW_JPEG",
    "PREVIEW_WEBP",
    "pack_preview",
    "unpack_preview",
]

#: JHDR data: major, minor, flags, layout, width, height, quality, model_id, weights_hash,
#: y_height, y_width, z_height, z_width, z_stream_length, y_stream_length.
_JHDR = struct.Struct(">BBBBIIH16s8sHHHHII")
assert _JHDR.size == C.JHDR_LENGTH
_U32 = struct.Struct(">I")
_CHUNK_HEAD = struct.Struct(">I4s")
#: bytes read from a file object per ``read`` call: a lying length field costs at most this much
#: memory before the missing data is noticed.
_READ_PIECE = 1 << 20
_MODEL_ID_BYTES = 16
_WEIGHTS_HASH_BYTES = 8

#: a valid chunk type (SPEC.md section 3.1): a letter, then three letters, digits or spaces.
_TYPE = re.compile(rb"[A-Za-z][A-Za-z0-9 ]{3}")
_KNOWN_CRITICAL = (C.CHUNK_JHDR, C.CHUNK_ZSTR, C.CHUNK_YSTR, C.CHUNK_ALPH, C.CHUNK_JEND)
#: preview chunk (SPEC.md section 5.4): a small image in a format Pillow decodes, never the image itself.
CHUNK_PRVW = b"prvw"
#: ``prvw`` format byte 0: a JPEG (JFIF) file.
PREVIEW_JPEG = 0
#: ``prvw`` format byte 1: a WebP (RIFF) file.
PREVIEW_WEBP = 1
_PREVIEW_FORMATS = (PREVIEW_JPEG, PREVIEW_WEBP)
#: ``prvw`` data before the embedded image: format (u8), width (u16), height (u16).
_PRVW_HEAD = struct.Struct(">BHH")
_KNOWN_ANCILLARY = (C.CHUNK_ICCP, C.CHUNK_EXIF, C.CHUNK_XMP, CHUNK_PRVW)
_KNOWN = frozenset(_KNOWN_CRITICAL + _KNOWN_ANCILLARY)
_ALPHA_LAYOUTS = ("RGBA", "LA")
_ALPHA_METHODS = (C.ALPHA_METHOD_ZLIB,)


class JacFormatError(ValueError):
    """The data cannot be read as a ``.jac`` file: malformed, truncated, unsupported or not JAC at all."""


class NotJacFileError(JacFormatError, SyntaxError):
    """The data does not start with the JAC signature (SPEC.md section 2): it is not a ``.jac`` file.

    A :class:`ValueError` like every :class:`JacFormatError`, and a :class:`SyntaxError`, the
    exception a Pillow plugin raises for "not my format".
    """

    def __init__(self, msg: str) -> None:
        SyntaxError.__init__(self, msg)  # SyntaxError.__str__ shows its msg field


class JacDataError(JacFormatError, OSError):
    """The data starts with the JAC signature but cannot be read: damaged, malformed or too new.

    A :class:`ValueError` like every :class:`JacFormatError`, and an :class:`OSError`, what Pillow
    raises for a broken image file: ``except (UnidentifiedImageError, OSError)`` skips it like a
    damaged PNG.
    """


class JacTruncatedError(JacDataError):
    """The data ends before the file does (a missing chunk, or a length beyond the end of the data).

    An :class:`OSError` and a :class:`ValueError` like every :class:`JacDataError`, what Pillow raises
    for a truncated image file.
    """


# ---------------------------------------------------------------------------------------------
# Small helpers


def latent_shapes(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``(height, width)`` shapes of the latent ``y`` and hyper-latent ``z`` of an image.

    ``z`` is ``(ceil(H / 64), ceil(W / 64))`` and ``y`` is four times that (the image is padded to a
    multiple of :data:`~pillow_jac.constants.ALIGN`).

    Args:
        width: image width in pixels, at least 1.
        height: image height in pixels, at least 1.

    Returns:
        ``(y_shape, z_shape)``, each ``(rows, columns)``.

    Raises:
        ValueError: a dimension is not a positive integer.

    Example:
        >>> latent_shapes(100, 50)
        ((4, 8), (1, 2))
    """
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    zh, zw = -(-height // C.ALIGN), -(-width // C.ALIGN)
    f = C.ALIGN // 16
    return (zh * f, zw * f), (zh, zw)


def quality_to_u16(quality: float) -> int:
    """The JHDR quality field for ``quality``: ``round(quality * QUALITY_DENOMINATOR)``.

    Args:
        quality: a quality from 1 to 8, fractions allowed.

    Returns:
        The stored integer, from 256 to 2048.

    Raises:
        ValueError: ``quality`` is not a number from 1 to 8.

    Example:
        >>> quality_to_u16(4.5)
        1152
    """
    return round(C.validate_quality(quality) * C.QUALITY_DENOMINATOR)


def u16_to_quality(value: int) -> float:
    """The quality a JHDR quality field stands for: ``value / QUALITY_DENOMINATOR``.

    Args:
        value: the stored integer.

    Returns:
        The quality as a float (exact: the denominator is a power of two).

    Example:
        >>> u16_to_quality(1152)
        4.5
    """
    return value / C.QUALITY_DENOMINATOR


def quantize_quality(quality: float) -> float:
    """``quality`` rounded to the nearest value a file can store (a multiple of 1/256).

    Encoders must code with this value: it is the only quality a decoder sees.

    Example:
        >>> quantize_quality(4.3)
        4.30078125
    """
    return u16_to_quality(quality_to_u16(quality))


def accept(prefix: bytes) -> bool:
    r"""Whether ``prefix`` (the first bytes of a file) starts with the JAC signature.

    Example:
        >>> accept(b"\x8bJAC\r\n\x1a\n" + bytes(8)), accept(b"\x89PNG\r\n\x1a\n")
        (True, False)
    """
    return bytes(prefix[: len(C.MAGIC)]) == C.MAGIC


def _type_name(ctype: bytes) -> str:
    return repr(ctype.decode("latin-1"))


def _is_valid_type(ctype: bytes) -> bool:
    return _TYPE.fullmatch(ctype) is not None


def _is_critical(ctype: bytes) -> bool:
    return 0x41 <= ctype[0] <= 0x5A  # A-Z


def _crc(ctype: bytes, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(ctype))


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return b"".join((_U32.pack(len(data)), ctype, data, _U32.pack(_crc(ctype, data))))


# ---------------------------------------------------------------------------------------------
# Data classes


@dataclass
class JacHeader:
    """The fields of the ``JHDR`` chunk (SPEC.md section 3).

    Attributes:
        version: ``(major, minor)`` format version.
        width: image width in pixels, 1 to ``MAX_DIMENSION``.
        height: image height in pixels, 1 to ``MAX_DIMENSION``.
        layout: ``"RGB"``, ``"L"``, ``"RGBA"`` or ``"LA"`` (the Pillow mode of the decoded image).
        q16: the stored quality field, ``round(quality * 256)``, 256 to 2048: the one form the quality is
            held in (:attr:`quality` is ``q16 / 256``).
        model_id: name of the decoder generation, 1 to 16 printable ASCII characters.
        weights_hash: 8-byte hash naming the decoder generation (SPEC.md section 9.3).
        y_shape: ``(rows, columns)`` of the latent ``y``; must equal ``latent_shapes(...)[0]``.
        z_shape: ``(rows, columns)`` of the hyper-latent ``z``; must equal ``latent_shapes(...)[1]``.
        z_stream_length: byte length of the ``ZSTR`` chunk's data.
        y_stream_length: byte length of the ``YSTR`` chunk's data.
    """

    version: tuple[int, int]
    width: int
    height: int
    layout: str
    q16: int
    model_id: str
    weights_hash: bytes
    y_shape: tuple[int, int]
    z_shape: tuple[int, int]
    z_stream_length: int
    y_stream_length: int

    @property
    def mode(self) -> str:
        """The Pillow mode of the decoded image (the layout string)."""
        return self.layout

    @property
    def quality(self) -> float:
        """The quality the file was coded at: ``q16 / 256`` (exact, the denominator is a power of two)."""
        return self.q16 / C.QUALITY_DENOMINATOR

    @property
    def has_alpha(self) -> bool:
        """Whether the layout has an alpha channel (and the file an ``ALPH`` chunk)."""
        return self.layout in _ALPHA_LAYOUTS

    @classmethod
    def create(
        cls,
        width: int,
        height: int,
        layout: str,
        quality: float | None,
        model_id: str,
        weights_hash: bytes,
        z_stream_length: int = 0,
        y_stream_length: int = 0,
        *,
        q16: int | None = None,
    ) -> JacHeader:
        """A header of the current version with the latent shapes derived and the quality quantized.

        Give ``quality`` (validated and rounded to 1/256 here) or the stored field ``q16`` of a quality
        validated already (:func:`quality_to_u16`), not both.

        Example:
            >>> h = JacHeader.create(100, 50, "RGB", 4.3, "demo", bytes(8))
            >>> h.version, h.q16, h.quality, h.y_shape, h.z_shape
            ((1, 0), 1101, 4.30078125, (4, 8), (1, 2))
        """
        if (quality is None) == (q16 is None):
            raise ValueError("give quality or q16, not both")
        y_shape, z_shape = latent_shapes(width, height)
        return cls(
            version=tuple(C.FORMAT_VERSION),
            width=width,
            height=height,
            layout=layout,
            q16=quality_to_u16(quality) if q16 is None else q16,
            model_id=model_id,
            weights_hash=bytes(weights_hash),
            y_shape=y_shape,
            z_shape=z_shape,
            z_stream_length=z_stream_length,
            y_stream_length=y_stream_length,
        )


@dataclass
class JacFile:
    """The whole content of a ``.jac`` file.

    Attributes:
        header: the ``JHDR`` fields.
        z_stream: data of the ``ZSTR`` chunk (range-coder stream of ``z``).
        y_stream: data of the ``YSTR`` chunk (range-coder stream of ``y``).
        alpha: the ``ALPH`` payload after the method byte, still compressed (see
            :func:`decompress_alpha`); ``None`` for layouts without alpha.
        alpha_method: the ``ALPH`` method byte (0 = zlib).
        icc_profile: ICC profile (``iccp`` chunk) or ``None``.
        exif: EXIF bytes as Pillow gives them in ``im.info["exif"]`` (``exif`` chunk) or ``None``.
        xmp: XMP packet (``xmp `` chunk) or ``None``.
        unknown_chunks: ``(type, data)`` of ancillary chunks this implementation does not know, in
            file order; :func:`serialize` writes them back. Readers fill it only when asked
            (``keep_unknown=True``); by default they skip such chunks and leave it empty.
        preview: data of the first ``prvw`` chunk (:func:`pack_preview`, SPEC.md section 5.4) or ``None``.
    """

    header: JacHeader
    z_stream: bytes
    y_stream: bytes
    alpha: bytes | None = None
    alpha_method: int = C.ALPHA_METHOD_ZLIB
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    unknown_chunks: list[tuple[bytes, bytes]] = field(default_factory=list)
    preview: bytes | None = None

    @property
    def mode(self) -> str:
        """The Pillow mode of the decoded image."""
        return self.header.layout

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as in Pillow."""
        return self.header.width, self.header.height

    @classmethod
    def create(
        cls,
        *,
        width: int,
        height: int,
        layout: str,
        quality: float | None = None,
        model_id: str,
        weights_hash: bytes,
        z_stream: bytes,
        y_stream: bytes,
        q16: int | None = None,
        alpha: bytes | None = None,
        alpha_method: int = C.ALPHA_METHOD_ZLIB,
        icc_profile: bytes | None = None,
        exif: bytes | None = None,
        xmp: bytes | None = None,
        unknown_chunks: list[tuple[bytes, bytes]] | None = None,
        preview: bytes | None = None,
    ) -> JacFile:
        """A file with its header filled in by :meth:`JacHeader.create` from the streams.

        Example:
            >>> jac = JacFile.create(width=64, height=48, layout="L", quality=2, model_id="demo",
            ...                      weights_hash=bytes(8), z_stream=b"zz", y_stream=b"yyy")
            >>> jac.header.z_stream_length, jac.header.y_stream_length, jac.mode
            (2, 3, 'L')
        """
        header = JacHeader.create(
            width, height, layout, quality, model_id, weights_hash, len(z_stream), len(y_stream), q16=q16
        )
        return cls(
            header=header,
            z_stream=bytes(z_stream),
            y_stream=bytes(y_stream),
            alpha=None if alpha is None else bytes(alpha),
            alpha_method=alpha_method,
            icc_profile=icc_profile,
            exif=exif,
            xmp=xmp,
            unknown_chunks=list(unknown_chunks or []),
            preview=None if preview is None else bytes(preview),
        )


# ---------------------------------------------------------------------------------------------
# Validation shared by the reader and the writer: each returns a message or None.


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _version_problem(version: object) -> str | None:
    if not (isinstance(version, tuple) and len(version) == 2 and all(_is_int(v) and 0 <= v <= 255 for v in version)):
        return f"version must be a (major, minor) tuple of integers 0-255, got {version!r}"
    if version[0] != C.FORMAT_VERSION[0]:
        return (
            f"unsupported JAC format version {version[0]}.{version[1]}: "
            f"this implementation reads version {C.FORMAT_VERSION[0]}.x"
        )
    return None


def _header_problem(h: JacHeader) -> str | None:
    problem = _version_problem(h.version)
    if problem:
        return problem
    for name in ("width", "height"):
        v = getattr(h, name)
        if not (_is_int(v) and 1 <= v <= C.MAX_DIMENSION):
            return f"{name} must be from 1 to {C.MAX_DIMENSION}, got {v!r}"
    if h.layout not in C.LAYOUTS:
        return f"unknown layout {h.layout!r}: expected one of {', '.join(C.LAYOUTS)}"
    low, high = round(C.QUALITY_MIN * C.QUALITY_DENOMINATOR), round(C.QUALITY_MAX * C.QUALITY_DENOMINATOR)
    if not (_is_int(h.q16) and low <= h.q16 <= high):
        return f"quality must be from {C.QUALITY_MIN:g} to {C.QUALITY_MAX:g} (q16 {low} to {high}), got q16 {h.q16!r}"
    mid = h.model_id
    if not (isinstance(mid, str) and 1 <= len(mid) <= _MODEL_ID_BYTES and all(0x20 <= ord(ch) <= 0x7E for ch in mid)):
        return f"model_id must be 1 to {_MODEL_ID_BYTES} printable ASCII characters, got {mid!r}"
    if not (isinstance(h.weights_hash, (bytes, bytearray)) and len(h.weights_hash) == _WEIGHTS_HASH_BYTES):
        return f"weights_hash must be {_WEIGHTS_HASH_BYTES} bytes, got {h.weights_hash!r}"
    y_shape, z_shape = latent_shapes(h.width, h.height)
    if tuple(h.y_shape) != y_shape:
        return f"y shape {tuple(h.y_shape)} does not match {y_shape} derived from a {h.width}x{h.height} image"
    if tuple(h.z_shape) != z_shape:
        return f"z shape {tuple(h.z_shape)} does not match {z_shape} derived from a {h.width}x{h.height} image"
    for name in ("z_stream_length", "y_stream_length"):
        v = getattr(h, name)
        if not (_is_int(v) and 0 <= v <= C.MAX_CHUNK_BYTES):
            return f"{name} must be from 0 to {C.MAX_CHUNK_BYTES}, got {v!r}"
    return None


# ---------------------------------------------------------------------------------------------
# Writing


def _pack_header(h: JacHeader) -> bytes:
    return _JHDR.pack(
        h.version[0],
        h.version[1],
        0,  # flags
        C.LAYOUTS.index(h.layout),
        h.width,
        h.height,
        h.q16,
        h.model_id.encode("ascii").ljust(_MODEL_ID_BYTES, b"\0"),
        bytes(h.weights_hash),
        *h.y_shape,
        *h.z_shape,
        h.z_stream_length,
        h.y_stream_length,
    )


def _check_bytes(name: str, value: object, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes{' or None' if optional else ''}, got {type(value).__name__}")
    size = memoryview(value).nbytes
    if size > C.MAX_CHUNK_BYTES:
        raise ValueError(f"{name} is {size} bytes, more than the chunk limit of {C.MAX_CHUNK_BYTES}")


def serialize(jac: JacFile) -> bytes:
    """The bytes of a ``.jac`` file, after checking that ``jac`` is valid.

    Chunks are written in the order JHDR, iccp, exif, ``xmp``, prvw, unknown ancillary chunks, ALPH,
    ZSTR, YSTR, JEND.

    Args:
        jac: the file content. ``jac.header.quality`` must be a multiple of 1/256 and the header's
            stream lengths must equal the streams' lengths (:meth:`JacFile.create` ensures both).

    Returns:
        The complete file.

    Raises:
        ValueError: a field is invalid; the message names it.

    Example:
        >>> jac = JacFile.create(width=64, height=48, layout="RGB", quality=4, model_id="demo",
        ...                      weights_hash=bytes(8), z_stream=b"z", y_stream=b"yy")
        >>> data = serialize(jac)
        >>> data[:8] == MAGIC, len(data)
        (True, 113)
    """
    h = jac.header
    if not isinstance(h, JacHeader):
        raise ValueError(f"header must be a JacHeader, got {type(h).__name__}")
    problem = _header_problem(h)
    if problem:
        raise ValueError(problem)
    _check_bytes("z_stream", jac.z_stream, optional=False)
    _check_bytes("y_stream", jac.y_stream, optional=False)
    if len(jac.z_stream) != h.z_stream_length:
        raise ValueError(f"z_stream is {len(jac.z_stream)} bytes but header.z_stream_length is {h.z_stream_length}")
    if len(jac.y_stream) != h.y_stream_length:
        raise ValueError(f"y_stream is {len(jac.y_stream)} bytes but header.y_stream_length is {h.y_stream_length}")
    if h.has_alpha:
        if jac.alpha is None:
            raise ValueError(f"layout {h.layout} needs alpha (the compressed ALPH payload)")
        if jac.alpha_method not in _ALPHA_METHODS:
            raise ValueError(f"unknown alpha_method {jac.alpha_method!r}: known methods are {_ALPHA_METHODS}")
        _check_bytes("alpha", jac.alpha, optional=False)
        if len(jac.alpha) + 1 > C.MAX_CHUNK_BYTES:
            raise ValueError(f"alpha payload is larger than the chunk limit of {C.MAX_CHUNK_BYTES} bytes")
    elif jac.alpha is not None:
        raise ValueError(f"layout {h.layout} has no alpha channel but alpha is given")
    for name in ("icc_profile", "exif", "xmp", "preview"):
        _check_bytes(name, getattr(jac, name))
    for item in jac.unknown_chunks:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
            raise ValueError(f"unknown_chunks entries must be (type: bytes, data: bytes) tuples, got {item!r}")
        ctype, data = item
        if not _is_valid_type(ctype):
            raise ValueError(f"invalid chunk type {ctype!r}")
        if _is_critical(ctype):
            raise ValueError(f"unknown_chunks may only hold ancillary (lowercase) chunks, got {ctype!r}")
        if ctype in _KNOWN_ANCILLARY:
            raise ValueError(f"chunk {ctype!r} is a known chunk: use its JacFile field instead of unknown_chunks")
        _check_bytes(f"data of chunk {ctype!r}", data, optional=False)

    parts = [C.MAGIC, _chunk(C.CHUNK_JHDR, _pack_header(h))]
    ancillary = ((C.CHUNK_ICCP, jac.icc_profile), (C.CHUNK_EXIF, jac.exif), (C.CHUNK_XMP, jac.xmp))
    for ctype, value in (*ancillary, (CHUNK_PRVW, jac.preview)):
        if value is not None:
            parts.append(_chunk(ctype, bytes(value)))
    parts.extend(_chunk(ctype, bytes(data)) for ctype, data in jac.unknown_chunks)
    if h.has_alpha:
        parts.append(_chunk(C.CHUNK_ALPH, bytes([jac.alpha_method]) + bytes(jac.alpha)))
    parts.append(_chunk(C.CHUNK_ZSTR, bytes(jac.z_stream)))
    parts.append(_chunk(C.CHUNK_YSTR, bytes(jac.y_stream)))
    parts.append(_chunk(C.CHUNK_JEND, b""))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Exact, bounded reads from a binary file object, with the bytes left known when it can seek."""

    def __init__(self, fp: BinaryIO, know_size: bool) -> None:
        self.fp = fp
        self.remaining: int | None = self._remaining() if know_size else None

    def _remaining(self) -> int | None:
        try:
            if not self.fp.seekable():
                return None
            pos = self.fp.tell()
            end = self.fp.seek(0, io.SEEK_END)
            self.fp.seek(pos)
        except (AttributeError, OSError, ValueError):
            return None
        return max(0, end - pos)

    def _check_left(self, n: int, what: str, ctype: bytes | None, at_eof: str | None) -> None:
        """Refuse ``n`` bytes when the file is known to hold fewer, before anything is read."""
        if self.remaining is not None and n > self.remaining:
            if self.remaining == 0 and at_eof:
                raise JacTruncatedError(at_eof)
            what = _what(what, ctype)
            raise JacTruncatedError(f"truncated JAC file: {what} needs {n} bytes but only {self.remaining} remain")

    def read(self, n: int, what: str, ctype: bytes | None = None, at_eof: str | None = None) -> bytes:
        """Exactly ``n`` bytes.

        ``what`` names the bytes in errors (``{}`` stands for the name of ``ctype``); ``at_eof`` is the
        message when no byte at all is left.
        """
        remaining = self.remaining
        if remaining is not None and n > remaining:
            self._check_left(n, what, ctype, at_eof)
        # One read when the bytes are known to be there; else bounded pieces, so that a lying length
        # costs at most a piece before the end of the data is found.
        data = self.fp.read(n) if n <= _READ_PIECE or remaining is not None else None
        if data is None or len(data) != n:  # a long read, a short read or the end of the data
            data = self._read_pieces(n, what, ctype, at_eof, data or b"")
        if remaining is not None:
            self.remaining = remaining - n
        return data

    def _read_pieces(self, n: int, what: str, ctype: bytes | None, at_eof: str | None, start: bytes) -> bytes:
        buf = bytearray(start[:n])
        while len(buf) < n:
            piece = self.fp.read(min(_READ_PIECE, n - len(buf)))
            if not piece:
                if not buf and at_eof:
                    raise JacTruncatedError(at_eof)
                what = _what(what, ctype)
                raise JacTruncatedError(
                    f"truncated JAC file: {what} needs {n} bytes but the file ends after {len(buf)}"
                )
            buf += piece[: n - len(buf)]
        return bytes(buf)

    def crc(self, n: int, crc: int, what: str, ctype: bytes) -> int:
        """Read ``n`` bytes and return ``zlib.crc32`` of them continued from ``crc``, keeping none of them.

        At most :data:`_READ_PIECE` bytes are held at a time, however long the chunk.
        """
        if n <= _READ_PIECE:
            return zlib.crc32(self.read(n, what, ctype), crc)
        self._check_left(n, what, ctype, None)
        done = 0
        while done < n:
            piece = self.fp.read(min(_READ_PIECE, n - done))
            if not piece:
                what = _what(what, ctype)
                raise JacTruncatedError(f"truncated JAC file: {what} needs {n} bytes but the file ends after {done}")
            piece = piece[: n - done]
            crc = zlib.crc32(piece, crc)
            done += len(piece)
        if self.remaining is not None:
            self.remaining -= n
        return crc

    def at_end(self) -> bool:
        if self.remaining is not None:
            return self.remaining == 0
        return not self.fp.read(1)


def _what(what: str, ctype: bytes | None) -> str:
    return what.format(_type_name(ctype)) if ctype is not None else what


def _read_chunk(
    r: _Reader, expected_length: dict[bytes, int], keep: frozenset[bytes] | None, at_eof: str
) -> tuple[bytes, bytes | None]:
    """One chunk's ``(type, data)``, its framing, length and CRC checked before its data is trusted.

    The data of a type not in ``keep`` (all types when ``keep`` is None) is read, CRC-checked and
    dropped: its ``data`` is None.
    """
    length, ctype = _CHUNK_HEAD.unpack(r.read(_CHUNK_HEAD.size, "chunk header", at_eof=at_eof))
    if _TYPE.fullmatch(ctype) is None:
        raise JacDataError(f"invalid chunk type {ctype!r}: not 4 ASCII letters (file corrupt?)")
    if length > C.MAX_CHUNK_BYTES:
        name = _type_name(ctype)
        raise JacDataError(f"chunk {name} declares {length} bytes, more than the limit of {C.MAX_CHUNK_BYTES}")
    want = expected_length.get(ctype)
    if want is not None and length != want:
        raise JacDataError(f"chunk {_type_name(ctype)} is {length} bytes but must be {want} bytes")
    kept = keep is None or ctype in keep
    if length <= _READ_PIECE - _U32.size and r.remaining is not None and length + _U32.size <= r.remaining:
        # data and CRC in one read, when they are known to be there (else the reads below name what is missing)
        block = r.read(length + _U32.size, "chunk {} data and CRC", ctype)
        data: bytes | None = block[:length] if kept else None
        crc = zlib.crc32(memoryview(block)[:length], zlib.crc32(ctype))
        (stored,) = _U32.unpack_from(block, length)
    else:
        if kept:
            data = r.read(length, "chunk {} data", ctype)
            crc = _crc(ctype, data)
        else:
            data = None
            crc = r.crc(length, zlib.crc32(ctype), "chunk {} data", ctype)
        (stored,) = _U32.unpack(r.read(_U32.size, "CRC of chunk {}", ctype))
    if stored != crc:
        raise JacDataError(f"CRC mismatch in chunk {_type_name(ctype)}: the file is corrupt")
    return ctype, data


def _unpack_header(data: bytes) -> JacHeader:
    (major, minor, flags, layout, width, height, q16, model_id, weights_hash, yh, yw, zh, zw, zlen, ylen) = (
        _JHDR.unpack(data)
    )
    problem = _version_problem((major, minor))
    if problem:
        raise JacDataError(problem)
    if flags != 0:
        raise JacDataError(f"JHDR flags are {flags:#04x} but must be 0 in version {major}.x (newer file?)")
    if layout >= len(C.LAYOUTS):
        raise JacDataError(f"unknown layout code {layout} in JHDR (known: 0-{len(C.LAYOUTS) - 1})")
    mid = model_id.rstrip(b"\0")
    if not mid or not all(0x20 <= b <= 0x7E for b in mid):
        raise JacDataError(f"model_id {model_id!r} is not 1 to 16 printable ASCII characters padded with NULs")
    header = JacHeader(
        version=(major, minor),
        width=width,
        height=height,
        layout=C.LAYOUTS[layout],
        q16=q16,
        model_id=mid.decode("ascii"),
        weights_hash=weights_hash,
        y_shape=(yh, yw),
        z_shape=(zh, zw),
        z_stream_length=zlen,
        y_stream_length=ylen,
    )
    problem = _header_problem(header)
    if problem:
        raise JacDataError(f"invalid JHDR: {problem}")
    return header


def _read_magic(r: _Reader) -> None:
    magic = b""
    while len(magic) < len(C.MAGIC):
        piece = r.fp.read(len(C.MAGIC) - len(magic))
        if not piece:
            break
        magic += piece
    if magic != C.MAGIC:  # also when the file is shorter than the signature
        raise NotJacFileError("not a JAC file (bad signature)")
    if r.remaining is not None:
        r.remaining -= len(C.MAGIC)


def _read_jhdr(r: _Reader) -> JacHeader:
    at_eof = "truncated JAC file: no JHDR chunk after the signature"
    length, ctype = _CHUNK_HEAD.unpack(r.read(_CHUNK_HEAD.size, "JHDR chunk header", at_eof=at_eof))
    if ctype != C.CHUNK_JHDR:
        raise JacDataError(f"the first chunk must be JHDR, found {ctype!r}")
    if length != C.JHDR_LENGTH:
        raise JacDataError(f"chunk 'JHDR' is {length} bytes but must be {C.JHDR_LENGTH} bytes")
    data = r.read(length, "chunk 'JHDR' data")
    (crc,) = _U32.unpack(r.read(_U32.size, "CRC of chunk 'JHDR'"))
    if crc != _crc(ctype, data):
        raise JacDataError("CRC mismatch in chunk 'JHDR': the file is corrupt")
    return _unpack_header(data)


def read_header(fp: BinaryIO) -> JacHeader:
    """Read the signature and the ``JHDR`` chunk, and nothing more, from a binary file object.

    Reads exactly ``8 + 12 + JHDR_LENGTH`` = 74 bytes from the current position and leaves ``fp``
    just after the JHDR chunk (ready for ``read_file(fp, header)``).

    Args:
        fp: a binary file object positioned at the start of the file.

    Returns:
        The validated header.

    Raises:
        NotJacFileError: the data does not start with the JAC signature.
        JacDataError: the JHDR chunk is missing, truncated, corrupt or invalid.

    Example:
        >>> import io
        >>> jac = JacFile.create(width=640, height=480, layout="RGBA", quality=3, model_id="demo",
        ...                      weights_hash=bytes(8), z_stream=b"z", y_stream=b"y", alpha=b"a")
        >>> h = read_header(io.BytesIO(serialize(jac)))
        >>> h.mode, h.width, h.height, h.quality
        ('RGBA', 640, 480, 3.0)
    """
    r = _Reader(fp, know_size=False)
    _read_magic(r)
    return _read_jhdr(r)


def read_file(
    fp: BinaryIO,
    header: JacHeader | None = None,
    *,
    keep_unknown: bool = False,
    on_unknown: Callable[[bytes], None] | None = None,
) -> JacFile:
    r"""Read and check a whole ``.jac`` file from a binary file object, in bounded pieces.

    No more bytes are read than the chunk lengths say; a length beyond the end of the file or above
    ``MAX_CHUNK_BYTES`` is an error before anything is allocated (for files that cannot seek, reads
    go in 1 MiB pieces, so a lying length costs at most that much before it is caught).

    Unknown ancillary chunks are CRC-checked and skipped (SPEC.md section 5.3): the memory used is
    that of the known chunks, however many unknown ones the file holds.

    Args:
        fp: a binary file object, positioned at the start of the file, or just after the JHDR
            chunk when ``header`` is given.
        header: the header :func:`read_header` returned from ``fp``, if it was called already.
        keep_unknown: also keep the unknown ancillary chunks, in :attr:`JacFile.unknown_chunks`
            (for tools that rewrite a file and must carry them over). Each one then costs memory.
        on_unknown: called with the type of each unknown ancillary chunk (kept or not), in file order:
            for tools that report them without keeping them.

    Returns:
        The file content.

    Raises:
        NotJacFileError: the data does not start with the JAC signature.
        JacDataError: the file is malformed; the message names the cause.

    Example:
        >>> import io
        >>> jac = JacFile.create(width=64, height=64, layout="RGB", quality=8, model_id="demo",
        ...                      weights_hash=bytes(8), z_stream=b"z", y_stream=b"yy", exif=b"Exif\0\0")
        >>> fp = io.BytesIO(serialize(jac))
        >>> h = read_header(fp)
        >>> read_file(fp, h) == jac
        True
    """
    r = _Reader(fp, know_size=True)
    if header is None:
        _read_magic(r)
        header = _read_jhdr(r)
    expected_length = {
        C.CHUNK_JHDR: C.JHDR_LENGTH,
        C.CHUNK_ZSTR: header.z_stream_length,
        C.CHUNK_YSTR: header.y_stream_length,
        C.CHUNK_JEND: 0,
    }
    # Only the known chunks are kept (one of each at most); an unknown ancillary chunk costs no memory
    # unless keep_unknown asks for it, so parsing takes time linear in the file size and memory
    # bounded by the known chunks (SPEC.md section 5.3).
    keep = None if keep_unknown else _KNOWN
    at_eof = "truncated JAC file: no JEND chunk"
    found: dict[bytes, bytes] = {}
    unknown: list[tuple[bytes, bytes]] = []
    while True:
        ctype, data = _read_chunk(r, expected_length, keep, at_eof)
        if ctype == CHUNK_PRVW:  # ancillary and ignorable (SPEC.md 5.4): a second one is skipped, not an error
            found.setdefault(ctype, data)
        elif ctype in _KNOWN:
            if ctype in found or ctype == C.CHUNK_JHDR:
                raise JacDataError(f"duplicate chunk {_type_name(ctype)}")
            if ctype == C.CHUNK_JEND:
                break
            found[ctype] = data
        elif _is_critical(ctype):
            raise JacDataError(f"unknown critical chunk {_type_name(ctype)}: the file needs a newer decoder")
        else:
            if data is not None:
                unknown.append((ctype, data))
            if on_unknown is not None:
                on_unknown(ctype)
    if not r.at_end():
        raise JacDataError("unexpected data after the JEND chunk")
    for ctype in (C.CHUNK_ZSTR, C.CHUNK_YSTR):
        if ctype not in found:
            raise JacDataError(f"missing {_type_name(ctype)} chunk")
    alpha: bytes | None = None
    alpha_method = C.ALPHA_METHOD_ZLIB
    if header.has_alpha:
        if C.CHUNK_ALPH not in found:
            raise JacDataError(f"missing 'ALPH' chunk: layout {header.layout} has an alpha channel")
        chunk = found[C.CHUNK_ALPH]
        if not chunk:
            raise JacDataError("chunk 'ALPH' is empty: it must start with a method byte")
        alpha_method, alpha = chunk[0], chunk[1:]
        if alpha_method not in _ALPHA_METHODS:
            raise JacDataError(f"unknown alpha method {alpha_method} in chunk 'ALPH'")
    elif C.CHUNK_ALPH in found:
        raise JacDataError(f"chunk 'ALPH' is not allowed: layout {header.layout} has no alpha channel")
    return JacFile(
        header=header,
        z_stream=found[C.CHUNK_ZSTR],
        y_stream=found[C.CHUNK_YSTR],
        alpha=alpha,
        alpha_method=alpha_method,
        icc_profile=found.get(C.CHUNK_ICCP),
        exif=found.get(C.CHUNK_EXIF),
        xmp=found.get(C.CHUNK_XMP),
        unknown_chunks=unknown,
        preview=found.get(CHUNK_PRVW),
    )


def parse(data: bytes, *, keep_unknown: bool = False, on_unknown: Callable[[bytes], None] | None = None) -> JacFile:
    """Parse and check the bytes of a whole ``.jac`` file.

    Args:
        data: the file (``bytes``, ``bytearray`` or ``memoryview``).
        keep_unknown: also keep the unknown ancillary chunks (see :func:`read_file`).
        on_unknown: called with the type of each unknown ancillary chunk (see :func:`read_file`).

    Returns:
        The file content.

    Raises:
        NotJacFileError: ``data`` does not start with the JAC signature.
        JacDataError: the file is malformed; the message names the cause.

    Example:
        >>> jac = JacFile.create(width=64, height=48, layout="RGB", quality=4, model_id="demo",
        ...                      weights_hash=bytes(8), z_stream=b"z", y_stream=b"yy", xmp=b"<x/>")
        >>> parse(serialize(jac)) == jac
        True
        >>> parse(serialize(jac)[:-12])
        Traceback (most recent call last):
        ...
        pillow_jac.container.JacTruncatedError: truncated JAC file: no JEND chunk
    """
    return read_file(io.BytesIO(data), keep_unknown=keep_unknown, on_unknown=on_unknown)


def read(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    *,
    keep_unknown: bool = False,
    on_unknown: Callable[[bytes], None] | None = None,
) -> JacFile:
    r"""Read and check a whole ``.jac`` file: the one entry point for a path, bytes or a file object.

    Only the container is read (standard library only, no model): see :func:`pillow_jac.decode`
    for the pixels, which accepts the returned :class:`JacFile`.

    Args:
        source: a path (``str`` or :class:`os.PathLike`), the file's bytes (``bytes``, ``bytearray``
            or ``memoryview``), or a binary file object positioned at the start of the file.
        keep_unknown: also keep the unknown ancillary chunks (see :func:`read_file`).
        on_unknown: called with the type of each unknown ancillary chunk (see :func:`read_file`).

    Returns:
        The file content.

    Raises:
        NotJacFileError: the data does not start with the JAC signature (a :class:`JacFormatError`).
        JacDataError: the file is malformed (:class:`JacTruncatedError` when it is cut short).
        OSError: the path cannot be opened or read.

    Example:
        >>> jac = JacFile.create(width=64, height=48, layout="L", quality=2, model_id="demo",
        ...                      weights_hash=bytes(8), z_stream=b"z", y_stream=b"y")
        >>> read(serialize(jac)) == jac
        True
        >>> read(b"GIF89a")
        Traceback (most recent call last):
        ...
        pillow_jac.container.NotJacFileError: not a JAC file (bad signature)
    """
    options = {"keep_unknown": keep_unknown, "on_unknown": on_unknown}
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse(source, **options)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fp:
            return read_file(fp, **options)
    return read_file(source, **options)


# ---------------------------------------------------------------------------------------------
# Preview (SPEC.md section 5.4)


def pack_preview(image_format: int, width: int, height: int, image: bytes) -> bytes:
    r"""The data of a ``prvw`` chunk: format byte, width and height (u16), then the embedded image file.

    Args:
        image_format: :data:`PREVIEW_JPEG` or :data:`PREVIEW_WEBP`.
        width: the preview's width in pixels, 1 to 65535 (what its embedded file declares).
        height: the preview's height in pixels, 1 to 65535.
        image: the complete JPEG or WebP file.

    Raises:
        ValueError: an unknown format, a dimension out of range, or no image bytes.

    Example:
        >>> pack_preview(PREVIEW_WEBP, 512, 341, b"RIFF...")
        b'\x01\x02\x00\x01URIFF...'
    """
    if image_format not in _PREVIEW_FORMATS:
        raise ValueError(f"unknown preview format {image_format!r}: known formats are {_PREVIEW_FORMATS}")
    _check_dims(width, height)
    _check_bytes("preview image", image, optional=False)
    if not image:
        raise ValueError("the preview image is empty")
    return _PRVW_HEAD.pack(image_format, width, height) + bytes(image)


def unpack_preview(data: bytes | None) -> tuple[int, int, int, bytes] | None:
    r"""``(format, width, height, image)`` of a ``prvw`` chunk's data, or None when it cannot be used.

    A preview is ancillary (SPEC.md section 5.4): a chunk too short, with an unknown format or a zero
    dimension is ignored, not an error, and the file decodes as if it had none.

    Example:
        >>> unpack_preview(pack_preview(PREVIEW_JPEG, 4, 3, b"\xff\xd8"))
        (0, 4, 3, b'\xff\xd8')
        >>> unpack_preview(b"\x07\x00\x04\x00\x03data") is None  # format 7 is unknown
        True
    """
    if data is None or len(data) <= _PRVW_HEAD.size:
        return None
    image_format, width, height = _PRVW_HEAD.unpack_from(data)
    if image_format not in _PREVIEW_FORMATS or width < 1 or height < 1:
        return None
    return image_format, width, height, bytes(data[_PRVW_HEAD.size :])


# ---------------------------------------------------------------------------------------------
# Alpha plane


def _check_dims(width: int, height: int) -> int:
    for name, v in (("width", width), ("height", height)):
        if not (_is_int(v) and 1 <= v <= C.MAX_DIMENSION):
            raise ValueError(f"{name} must be from 1 to {C.MAX_DIMENSION}, got {v!r}")
    return width * height


def compress_alpha(raw: bytes, width: int, height: int) -> tuple[int, bytes]:
    r"""Compress a raw alpha plane for the ``ALPH`` chunk.

    Args:
        raw: ``height * width`` bytes, one per pixel, row-major, top row first.
        width: image width.
        height: image height.

    Returns:
        ``(method, payload)``: the method byte (always 0, zlib) and the payload that follows it,
        as :attr:`JacFile.alpha_method` and :attr:`JacFile.alpha`.

    Raises:
        ValueError: ``raw`` does not have ``width * height`` bytes.

    Example:
        >>> method, payload = compress_alpha(bytes(range(6)), 3, 2)
        >>> method, decompress_alpha(method, payload, 3, 2)
        (0, b'\x00\x01\x02\x03\x04\x05')
    """
    n = _check_dims(width, height)
    if len(raw) != n:
        raise ValueError(f"alpha plane has {len(raw)} bytes, expected {width}x{height} = {n}")
    return C.ALPHA_METHOD_ZLIB, zlib.compress(raw, 9)


def decompress_alpha(method: int, payload: bytes, width: int, height: int) -> bytes:
    r"""Decompress an ``ALPH`` payload to exactly ``width * height`` bytes.

    The output is bounded: decompression stops one byte past the expected size, so a zlib bomb
    costs no more memory than a valid plane.

    Args:
        method: the ``ALPH`` method byte.
        payload: the ``ALPH`` data after the method byte.
        width: image width.
        height: image height.

    Returns:
        The raw alpha plane, row-major, one byte per pixel.

    Raises:
        JacDataError: unknown method, or the payload is not one complete zlib stream of exactly
            ``width * height`` bytes.

    Example:
        >>> decompress_alpha(0, zlib.compress(b"\xff" * 4), 2, 2)
        b'\xff\xff\xff\xff'
    """
    n = _check_dims(width, height)
    if method != C.ALPHA_METHOD_ZLIB:
        raise JacDataError(f"unknown alpha method {method}")
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, n + 1)
    except zlib.error as exc:
        raise JacDataError(f"corrupt alpha plane: {exc}") from None
    if len(out) > n:
        raise JacDataError(f"alpha plane decompresses to more than {width}x{height} = {n} bytes")
    if not d.eof:
        raise JacDataError("truncated alpha plane: the zlib stream does not end")
    if len(out) < n:
        raise JacDataError(f"alpha plane decompresses to {len(out)} bytes, expected {width}x{height} = {n}")
    if d.unused_data:
        raise JacDataError(f"{len(d.unused_data)} unexpected bytes after the alpha plane's zlib stream")
    return out
