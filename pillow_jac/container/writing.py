"""Writing a ``.jac`` file: :func:`serialize` (SPEC.md sections 3-5)."""

from __future__ import annotations

from pillow_jac import constants as C

from .structure import (
    _ALPHA_METHODS,
    _KNOWN_ANCILLARY,
    CHUNK_PRVW,
    JHDR,
    MAGIC,  # noqa: F401 - for the example
    JacFile,
    JacHeader,
    _chunk,
    _header_problem,
    _is_critical,
    _is_valid_type,
)

# ---------------------------------------------------------------------------------------------
# Writing


def _pack_header(h: JacHeader) -> bytes:
    return JHDR.pack(
        h.version[0],
        h.version[1],
        0,  # flags
        C.LAYOUTS.index(h.layout),
        h.width,
        h.height,
        h.q16,
        h.model_id.encode("ascii").ljust(C.MODEL_ID_BYTES, b"\0"),
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
    for name, stream, declared in (("z", jac.z_stream, h.z_stream_length), ("y", jac.y_stream, h.y_stream_length)):
        size = memoryview(stream).nbytes  # bytes, whatever the items of a memoryview
        if size != declared:
            raise ValueError(f"{name}_stream is {size} bytes but header.{name}_stream_length is {declared}")
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
    for name in (*C.METADATA_FIELDS, "preview"):
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
