"""The ``.jac`` container's pieces (SPEC.md sections 2-5).

Errors, constants, the header and file records and their checks, the signature test :func:`accept` and
the quality conversions.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass, field

from pillow_jac import constants as C

#: the 8-byte signature every ``.jac`` file starts with (re-exported from constants).
MAGIC = C.MAGIC


#: JHDR data: major, minor, flags, layout, width, height, quality, model_id, weights_hash,
#: y_height, y_width, z_height, z_width, z_stream_length, y_stream_length.
JHDR = struct.Struct(">BBBBIIH16s8sHHHHII")
assert JHDR.size == C.JHDR_LENGTH
_U32 = struct.Struct(">I")
_CHUNK_HEAD = struct.Struct(">I4s")
#: bytes read from a file object per ``read`` call: a lying length field costs at most this much
#: memory before the missing data is noticed.
_READ_PIECE = 1 << 20

#: a valid chunk type (SPEC.md section 3.1): a letter, then three letters, digits or spaces.
_TYPE = re.compile(rb"[A-Za-z][A-Za-z0-9 ]{3}")
_KNOWN_CRITICAL = (C.CHUNK_JHDR, C.CHUNK_ZSTR, C.CHUNK_YSTR, C.CHUNK_ALPH, C.CHUNK_JEND)
CHUNK_PRVW, PREVIEW_JPEG, PREVIEW_WEBP = C.CHUNK_PRVW, C.PREVIEW_JPEG, C.PREVIEW_WEBP
_PREVIEW_FORMATS = (PREVIEW_JPEG, PREVIEW_WEBP)
#: ``prvw`` data before the embedded image: format (u8), width (u16), height (u16).
PRVW_HEAD = struct.Struct(">BHH")
_KNOWN_ANCILLARY = (C.CHUNK_ICCP, C.CHUNK_EXIF, C.CHUNK_XMP, CHUNK_PRVW)
_KNOWN = frozenset(_KNOWN_CRITICAL + _KNOWN_ANCILLARY)
_ALPHA_LAYOUTS = C.ALPHA_LAYOUTS
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
    return (zh * C.Y_PER_Z, zw * C.Y_PER_Z), (zh, zw)


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

    def metadata_digests(self) -> dict[str, str]:
        """The SHA-256 (hex) of each metadata chunk's data the file holds, empty ones too, by field name.

        What a test vector records as ``metadata_sha256`` (SPEC.md 9.4), to hold a reader to "carried unchanged".
        """
        return {
            f: hashlib.sha256(getattr(self, f)).hexdigest() for f in C.METADATA_FIELDS if getattr(self, f) is not None
        }

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
    if not (isinstance(mid, str) and C.is_model_id(mid)):
        return f"model_id must be 1 to {C.MODEL_ID_BYTES} printable ASCII characters, got {mid!r}"
    if not (isinstance(h.weights_hash, (bytes, bytearray)) and len(h.weights_hash) == C.WEIGHTS_HASH_BYTES):
        return f"weights_hash must be {C.WEIGHTS_HASH_BYTES} bytes, got {h.weights_hash!r}"
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


def check_header(h: JacHeader) -> None:
    """Raise :class:`JacDataError` unless ``h`` is a header a reader accepts (SPEC.md section 3).

    The reader's check of every ``JHDR`` it parses, and the decoder's of a :class:`JacFile` handed to it
    already parsed (or built, or changed with :func:`dataclasses.replace`): among the rules, the latent
    shapes must be those :func:`latent_shapes` derives from the width and height, which the pixel limit
    is checked against.
    """
    problem = f"header must be a JacHeader, got {type(h).__name__}" if not isinstance(h, JacHeader) else None
    problem = problem or _header_problem(h)
    if problem:
        raise JacDataError(f"invalid JHDR: {problem}")


# The package names JacHeader and JacFile as its own (pillow_jac.container), which hides their examples from
# doctest's search of this module: listed here, they run.
__test__ = {"JacHeader": JacHeader, "JacFile": JacFile}
