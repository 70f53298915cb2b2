"""The ``.jac`` container: a PNG-like chunked file (format_spec/SPEC.md sections 2-5, 8 and 9).

A file is the 8-byte :data:`~pillow_jac.constants.MAGIC` followed by chunks; each chunk is
``length`` (u32, data bytes only), ``type`` (4 ASCII bytes), ``data`` and ``crc`` (u32, CRC-32 of
type and data). All integers are big-endian. The first chunk is ``JHDR``, the last ``JEND``.

This package only moves bytes: it never runs the model. It imports the standard library and
:mod:`pillow_jac.constants` only (never torch or numpy), so that ``Image.open`` stays cheap. Its
modules: :mod:`.structure` (errors, the header and file records, their checks), :mod:`.writing`
(:func:`serialize`), :mod:`.reading` (:func:`read` and its variants) on :mod:`.chunk_reader`
(bounded reads, one checked chunk) and :mod:`.payloads` (the preview and alpha chunks' contents);
everything is imported from here.

Entry points: :func:`accept` (does a prefix start with the signature?), :func:`read` (a whole file
from a path, bytes or a file object), :func:`read_header` (the header only), :func:`serialize`
(a :class:`JacFile` to bytes), :func:`check_header` (the rules every ``JHDR`` read is held to, for a
header made in memory); :func:`parse` and :func:`read_file` are :func:`read` for bytes and for file objects.

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

from pillow_jac import constants as C  # noqa: F401 - container.C: the constants, as tools reach them

from .payloads import alpha_pieces, compress_alpha, decompress_alpha, pack_preview, unpack_preview
from .reading import parse, read, read_file, read_header
from .structure import (
    CHUNK_PRVW,
    MAGIC,
    PREVIEW_JPEG,
    PREVIEW_WEBP,
    JacDataError,
    JacFile,
    JacFormatError,
    JacHeader,
    JacTruncatedError,
    NotJacFileError,
    _chunk,  # noqa: F401 - the fuzz harness builds chunks with it
    accept,
    check_header,
    latent_shapes,
    quality_to_u16,
    quantize_quality,
    u16_to_quality,
)
from .writing import serialize

__all__ = [
    "MAGIC",
    "JacFormatError",
    "JacDataError",
    "NotJacFileError",
    "JacTruncatedError",
    "JacHeader",
    "JacFile",
    "accept",
    "check_header",
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
    "alpha_pieces",
    "CHUNK_PRVW",
    "PREVIEW_JPEG",
    "PREVIEW_WEBP",
    "pack_preview",
    "unpack_preview",
]

# The public classes are named by this package, where they are imported from (reprs, pickles, tracebacks).
for _public in (JacFormatError, NotJacFileError, JacDataError, JacTruncatedError, JacHeader, JacFile):
    _public.__module__ = __name__
del _public
