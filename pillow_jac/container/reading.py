"""Reading and checking a ``.jac`` file in bounded pieces: :func:`read` and its variants (SPEC.md sections 3-5, 8)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import BinaryIO

from pillow_jac import constants as C

from .chunk_reader import _read_chunk, _Reader
from .structure import (
    _ALPHA_METHODS,
    _CHUNK_HEAD,
    _KNOWN,
    _U32,
    CHUNK_PRVW,
    JHDR,
    JacDataError,
    JacFile,
    JacHeader,
    JacTruncatedError,
    NotJacFileError,
    _chunk,
    _crc,
    _is_critical,
    _type_name,
    _version_problem,
    check_header,
)
from .writing import serialize  # noqa: F401 - for the examples

#: the JEND chunk, the same 12 bytes in every file: a recovering reader accepts a file cut inside it
_JEND_CHUNK = _chunk(C.CHUNK_JEND, b"")


#: how many damaged chunk types a recovering read reports (SPEC.md 8.3); the chunks of others are skipped alike
_DAMAGED_TYPES_REPORTED = 16


def _unpack_header(data: bytes) -> JacHeader:
    (major, minor, flags, layout, width, height, q16, model_id, weights_hash, yh, yw, zh, zw, zlen, ylen) = JHDR.unpack(
        data
    )
    problem = _version_problem((major, minor))
    if problem:
        raise JacDataError(problem)
    if flags != 0:
        raise JacDataError(f"JHDR flags are {flags:#04x} but must be 0 in version {major}.x (newer file?)")
    if layout >= len(C.LAYOUTS):
        raise JacDataError(f"unknown layout code {layout} in JHDR (known: 0-{len(C.LAYOUTS) - 1})")
    mid = model_id.rstrip(b"\0")
    if not C.is_model_id(mid.decode("latin-1")):
        raise JacDataError(
            f"model_id {model_id!r} is not 1 to {C.MODEL_ID_BYTES} printable ASCII characters padded with NULs"
        )
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
    check_header(header)
    return header


def _read_magic(r: _Reader) -> None:
    magic = b""
    while len(magic) < len(C.MAGIC):
        piece = r.fp.read(len(C.MAGIC) - len(magic))
        if not piece:
            break
        if not isinstance(piece, (bytes, bytearray)):  # a text stream that is no io.TextIOBase
            raise TypeError(f"a .jac file is read as bytes: open it in binary mode ('rb'), got {type(piece).__name__}")
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
    on_damaged: Callable[[bytes], None] | None = None,
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
        on_damaged: recover what can be recovered (SPEC.md section 8.3): an ancillary chunk (metadata,
            preview, unknown) whose CRC does not match is skipped as if absent, and this is called once
            with each such type (the first 16 types; a hostile file's many damaged chunks cost no
            memory). The end of the file is forgiven too, and this is called with ``b"JEND"``: a file
            that ends before or inside its JEND chunk (any first 0 to 11 of its 12 bytes) after
            complete chunks, and bytes after JEND, which are ignored. Without it, each of these makes
            the file malformed. A critical chunk is checked either way: its CRC, and that it is whole.

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
    # damaged chunk types, each once and at most _DAMAGED_TYPES_REPORTED of them (memory that does not grow
    # with a hostile file's chunk count); reported once the whole file is accepted, not for a file then rejected
    damaged: dict[bytes, None] = {}

    def skip_damaged(ctype: bytes) -> None:
        if len(damaged) < _DAMAGED_TYPES_REPORTED:
            damaged.setdefault(ctype)

    if on_damaged is None:
        skip_damaged = None  # type: ignore[assignment]
    damaged_end = False
    while True:
        head = None
        if on_damaged is not None:  # recovering: the file may end before or inside JEND (SPEC.md 8.3)
            head = r.read_upto(_CHUNK_HEAD.size)
            jend = head == _JEND_CHUNK[: _CHUNK_HEAD.size]
            if jend:
                head += r.read_upto(_U32.size)  # JEND's CRC, the same in every file
                if len(head) == len(_JEND_CHUNK):
                    if head != _JEND_CHUNK:
                        raise JacDataError("CRC mismatch in chunk 'JEND': the file is corrupt")
                    break
            if jend or len(head) < _CHUNK_HEAD.size:  # the file ends here
                if head != _JEND_CHUNK[: len(head)] or not _has_streams(found, header):
                    raise JacTruncatedError(_cut_message(head, at_eof))
                damaged_end = True
                break
        ctype, data = _read_chunk(r, expected_length, keep, at_eof, skip_damaged, head)
        if ctype is None:
            continue
        if ctype == CHUNK_PRVW:  # ancillary and ignorable (SPEC.md 5.4): a second one is skipped, not an error
            found.setdefault(ctype, data)
        elif ctype in _KNOWN:
            if ctype in found or ctype == C.CHUNK_JHDR:
                raise JacDataError(f"duplicate chunk {_type_name(ctype)}")
            if ctype == C.CHUNK_JEND:
                break
            found[ctype] = data
        elif _is_critical(ctype):
            raise JacDataError(f"unknown critical chunk {_type_name(ctype)}: not part of JAC 1.x (file corrupt?)")
        else:
            if data is not None:
                unknown.append((ctype, data))
            if on_unknown is not None:
                on_unknown(ctype)
    if not damaged_end and not r.at_end():
        if on_damaged is None:
            raise JacDataError(
                "unexpected data after the JEND chunk (bytes appended to the file, or a damaged one; a reader asked "
                "to recover ignores them, SPEC.md 8.3: with Pillow, ImageFile.LOAD_TRUNCATED_IMAGES)"
            )
        damaged_end = True  # recovering: the bytes after JEND are not read
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
    if on_damaged is not None:
        for ctype in [*damaged, *([C.CHUNK_JEND] if damaged_end else [])]:
            on_damaged(ctype)
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


def _has_streams(found: dict[bytes, bytes], header: JacHeader) -> bool:
    """Whether every chunk the pixels need (ZSTR, YSTR, and ALPH for a layout with alpha) was read whole."""
    return C.CHUNK_ZSTR in found and C.CHUNK_YSTR in found and (C.CHUNK_ALPH in found or not header.has_alpha)


def _cut_message(head: bytes, at_eof: str) -> str:
    """The error for a file that ends after ``head``, the first bytes of a chunk (none: at a chunk boundary)."""
    if not head:
        return at_eof
    if len(head) < _CHUNK_HEAD.size:
        return f"truncated JAC file: chunk header needs 8 bytes but the file ends after {len(head)}"
    return f"truncated JAC file: CRC of chunk 'JEND' needs 4 bytes but the file ends after {len(head) - 8}"


def parse(
    data: bytes,
    *,
    keep_unknown: bool = False,
    on_unknown: Callable[[bytes], None] | None = None,
    on_damaged: Callable[[bytes], None] | None = None,
) -> JacFile:
    """Parse and check the bytes of a whole ``.jac`` file.

    Args:
        data: the file (``bytes``, ``bytearray`` or ``memoryview``).
        keep_unknown: also keep the unknown ancillary chunks (see :func:`read_file`).
        on_unknown: called with the type of each unknown ancillary chunk (see :func:`read_file`).
        on_damaged: skip a damaged ancillary chunk and call this with its type (see :func:`read_file`).

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
    return read_file(io.BytesIO(data), keep_unknown=keep_unknown, on_unknown=on_unknown, on_damaged=on_damaged)


def read(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    *,
    keep_unknown: bool = False,
    on_unknown: Callable[[bytes], None] | None = None,
    on_damaged: Callable[[bytes], None] | None = None,
) -> JacFile:
    r"""Read and check a whole ``.jac`` file: the one entry point for a path, bytes or a file object.

    Only the container is read (standard library only, no model): see :func:`pillow_jac.decode`
    for the pixels, which accepts the returned :class:`JacFile`.

    Args:
        source: a path (``str`` or :class:`os.PathLike`), the file's bytes (``bytes``, ``bytearray``,
            ``memoryview`` or another buffer of one dimension of bytes, a uint8 array say), or a binary file
            object positioned at the start of the file (an ``mmap`` is one).
        keep_unknown: also keep the unknown ancillary chunks (see :func:`read_file`).
        on_unknown: called with the type of each unknown ancillary chunk (see :func:`read_file`).
        on_damaged: skip a damaged ancillary chunk and call this with its type (see :func:`read_file`).

    Returns:
        The file content.

    Raises:
        NotJacFileError: the data does not start with the JAC signature (a :class:`JacFormatError`).
        JacDataError: the file is malformed (:class:`JacTruncatedError` when it is cut short).
        OSError: the path cannot be opened or read.
        TypeError: ``source`` is none of these.
        ValueError: ``source`` is a buffer of other than one dimension of bytes.

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
    options = {"keep_unknown": keep_unknown, "on_unknown": on_unknown, "on_damaged": on_damaged}
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse(source, **options)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fp:
            return read_file(fp, **options)
    if hasattr(source, "read"):
        return read_file(source, **options)
    return parse(_buffer_bytes(source), **options)


def _buffer_bytes(source: object) -> bytes:
    """The bytes of any other buffer of one dimension and 1-byte items (``array.array("B")``, a uint8 array).

    TypeError for an object that is no buffer, ValueError for a buffer of other items or shape.
    """
    try:
        view = memoryview(source)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"expected a path, the file's bytes or a binary file object, got {type(source).__name__}"
        ) from None
    with view:
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            raise ValueError(
                f"expected the file's bytes: a buffer of one dimension of contiguous bytes, got {view.ndim} "
                f"dimension(s) of {view.itemsize}-byte items"
            )
        return view.tobytes()
