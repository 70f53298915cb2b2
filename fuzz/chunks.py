"""Chunk-level view of a ``.jac`` file for the fuzz harness, tolerant of broken CRCs.

:func:`split` takes a file apart into :class:`Chunk` objects and :func:`join` puts them back byte for byte
(chunk framing and CRC-32: SPEC.md section 3.1), keeping a wrong CRC or a false length field wrong, so
mutations can keep or break them; :func:`unpack_jhdr` and :func:`pack_jhdr` read and write the raw JHDR
fields (SPEC.md section 3.2) without validation, so any forged value packs; :func:`derived_shapes` gives
the latent shapes a size implies; :func:`restamp` gives a file another model id and weights hash.

Nothing of ``pillow_jac`` is imported here, so that atheris can instrument it before it is imported: the
format's facts this harness needs are repeated here, and ``tests/test_fuzz.py`` checks them against the package.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAGIC = b"\x8bJAC\r\n\x1a\n"  # repeated here so that importing this module imports nothing of pillow_jac
JHDR = struct.Struct(">BBBBIIH16s8sHHHHII")
JHDR_FIELDS = (
    "major", "minor", "flags", "layout", "width", "height", "quality", "model_id", "weights_hash",
    "yh", "yw", "zh", "zw", "zlen", "ylen",
)  # fmt: skip
#: ``prvw`` data before the embedded image: format (u8), width (u16), height (u16) (SPEC.md section 5.4)
PRVW_HEAD = struct.Struct(">BHH")
#: offset in a file of the JHDR chunk's CRC (signature 8 + chunk head 8 + its 54 bytes of data)
_JHDR_CRC_AT = 8 + 8 + 54


@dataclass
class Chunk:
    """One chunk; ``length``/``crc`` are ``None`` when correct, else the forged value to write."""

    ctype: bytes
    data: bytes
    length: int | None = None
    crc: int | None = None


def crc(ctype: bytes, data: bytes) -> int:
    """CRC-32 of a chunk's type and data (SPEC.md section 3.1)."""
    return zlib.crc32(data, zlib.crc32(ctype))


def split(data: bytes) -> tuple[list[Chunk], bytes] | None:
    """The chunks of ``data`` as far as their framing holds, and the bytes after them.

    Returns ``None`` without the signature. A wrong CRC is kept as a forged ``crc``, so
    :func:`join` reproduces ``data`` exactly and edits to other chunks keep it wrong.

    Example:
        >>> split(MAGIC + struct.pack(">I", 0) + b"JEND" + struct.pack(">I", crc(b"JEND", b"")) + b"!")
        ([Chunk(ctype=b'JEND', data=b'', length=None, crc=None)], b'!')
    """
    if data[: len(MAGIC)] != MAGIC:
        return None
    chunks, pos = [], len(MAGIC)
    while pos + 12 <= len(data):
        n, ctype = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + n > len(data):
            break
        body = data[pos + 8 : pos + 8 + n]
        (stored,) = struct.unpack_from(">I", data, pos + 8 + n)
        chunks.append(Chunk(ctype, body, crc=None if stored == crc(ctype, body) else stored))
        pos += 12 + n
    return chunks, data[pos:]


def join(chunks: Iterable[Chunk], tail: bytes = b"", magic: bytes = MAGIC) -> bytes:
    """Serialize chunks (correct lengths and CRCs unless forged), then ``tail``."""
    parts = [magic]
    for c in chunks:
        n = len(c.data) if c.length is None else c.length
        parts += [
            struct.pack(">I4s", n & 0xFFFFFFFF, c.ctype),
            c.data,
            struct.pack(">I", crc(c.ctype, c.data) if c.crc is None else c.crc),
        ]
    parts.append(tail)
    return b"".join(parts)


def unpack_jhdr(data: bytes) -> dict[str, Any] | None:
    """The raw JHDR fields of a chunk's data (no validation), or None if it is not 54 bytes."""
    if len(data) != JHDR.size:
        return None
    return dict(zip(JHDR_FIELDS, JHDR.unpack(data), strict=True))


def pack_jhdr(fields: dict[str, Any]) -> bytes:
    """JHDR data from raw fields, each masked to its width (so any forged value packs)."""
    sizes = {"major": 8, "minor": 8, "flags": 8, "layout": 8, "width": 32, "height": 32, "quality": 16}
    sizes.update(yh=16, yw=16, zh=16, zw=16, zlen=32, ylen=32)
    values = [
        fields[k] & ((1 << sizes[k]) - 1) if k in sizes else bytes(fields[k])[: 16 if k == "model_id" else 8]
        for k in JHDR_FIELDS
    ]
    values[7] = values[7].ljust(16, b"\0")
    values[8] = values[8].ljust(8, b"\0")
    return JHDR.pack(*values)


def derived_shapes(width: int, height: int) -> dict[str, int]:
    """The latent shape fields SPEC.md section 3.2 derives from a (possibly forged) size."""
    zh, zw = -(-max(height, 1) // 64), -(-max(width, 1) // 64)
    return {"yh": zh * 4, "yw": zw * 4, "zh": zh, "zw": zw}


def restamp(data: bytes, model_id: str, weights_hash: bytes) -> bytes:
    """``data`` with its JHDR model fields replaced, keeping the JHDR CRC exactly as right or wrong.

    Used so that fuzz inputs and regression files made with other weights still reach the range
    decoder: only a file whose first chunk is a 54-byte ``JHDR`` is changed.
    """
    if len(data) < _JHDR_CRC_AT + 4 or data[:8] != MAGIC or data[8:16] != struct.pack(">I4s", 54, b"JHDR"):
        return data
    old = data[16:_JHDR_CRC_AT]
    new = bytearray(old)
    new[14:30] = model_id.encode("ascii").ljust(16, b"\0")[:16]
    new[30:38] = bytes(weights_hash)[:8]
    (stored,) = struct.unpack_from(">I", data, _JHDR_CRC_AT)
    fixed = crc(b"JHDR", bytes(new)) ^ stored ^ crc(b"JHDR", old)  # keeps the input's CRC error (0 if it was valid)
    return data[:16] + bytes(new) + struct.pack(">I", fixed) + data[_JHDR_CRC_AT + 4 :]
