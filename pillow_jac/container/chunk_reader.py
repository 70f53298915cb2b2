"""Bounded reads from a binary file object: exact byte counts, and one chunk with its checks (SPEC.md 3.1, 8.1).

:class:`_Reader` reads exactly the bytes asked for, refusing at once a count the file is known not to hold,
and otherwise reading in pieces of at most :data:`~.structure._READ_PIECE` bytes, so a lying length costs
at most a piece before the end of the data is found. :func:`_read_chunk` reads one chunk and checks its
type, length and CRC before its data is trusted. :mod:`.reading` builds the file from these.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import BinaryIO

from pillow_jac import constants as C

from .structure import (
    _CHUNK_HEAD,
    _READ_PIECE,
    _TYPE,
    _U32,
    JacDataError,
    JacTruncatedError,
    _crc,
    _is_critical,
    _type_name,
)


class _Reader:
    """Exact, bounded reads from a binary file object, with the bytes left known when it can seek."""

    def __init__(self, fp: BinaryIO, know_size: bool) -> None:
        if isinstance(fp, io.TextIOBase):  # its reads would decode the bytes as text, and fail on them
            raise TypeError("a .jac file is read as bytes: open it in binary mode ('rb')")
        self.fp = fp
        self.remaining: int | None = self._remaining() if know_size else None

    def _remaining(self) -> int | None:
        try:
            if not self.fp.seekable():
                return None
            pos = self.fp.tell()
            if not isinstance(pos, int):
                return None
            self.fp.seek(0, io.SEEK_END)  # its return value is not used: some wrappers' seek returns None
            end = self.fp.tell()
            self.fp.seek(pos)
        except (AttributeError, OSError, ValueError):
            return None
        return max(0, end - pos) if isinstance(end, int) else None

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

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only where the file ends."""
        if self.remaining is not None:
            return self.read(min(n, self.remaining), "")
        buf = b""
        while len(buf) < n:
            piece = self.fp.read(n - len(buf))
            if not piece:
                break
            buf += piece[: n - len(buf)]
        return buf

    def at_end(self) -> bool:
        if self.remaining is not None:
            return self.remaining == 0
        return not self.fp.read(1)


def _what(what: str, ctype: bytes | None) -> str:
    return what.format(_type_name(ctype)) if ctype is not None else what


def _read_chunk(
    r: _Reader,
    expected_length: dict[bytes, int],
    keep: frozenset[bytes] | None,
    at_eof: str,
    on_damaged: Callable[[bytes], None] | None = None,
    head: bytes | None = None,
) -> tuple[bytes | None, bytes | None]:
    """One chunk's ``(type, data)``, its framing, length and CRC checked before its data is trusted.

    The data of a type not in ``keep`` (all types when ``keep`` is None) is read, CRC-checked and
    dropped: its ``data`` is None. An ancillary chunk whose CRC does not match is an error, unless
    ``on_damaged`` is given: it is then called with the type and the chunk is ``(None, None)``.
    ``head`` is the chunk's length and type when they were read already.
    """
    if head is None:
        head = r.read(_CHUNK_HEAD.size, "chunk header", at_eof=at_eof)
    length, ctype = _CHUNK_HEAD.unpack(head)
    if _TYPE.fullmatch(ctype) is None:
        raise JacDataError(
            f"invalid chunk type {ctype!r}: not a letter, then three letters, digits or spaces (file corrupt?)"
        )
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
        if on_damaged is not None and not _is_critical(ctype):
            on_damaged(ctype)
            return None, None
        raise JacDataError(f"CRC mismatch in chunk {_type_name(ctype)}: the file is corrupt")
    return ctype, data
