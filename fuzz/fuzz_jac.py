"""Fuzz harness for the ``.jac`` reader: the container parser and the full decode path.

Targets (``--target``):

* ``container``: :func:`pillow_jac.container.parse`, :func:`~pillow_jac.container.read_header` and
  :func:`~pillow_jac.container.read_file` on a non-seekable stream that returns a few bytes per read,
  and ``Image.open`` (header and chunks only, no pixels) with ``draft()``, which decodes the preview
  (``prvw``, SPEC.md section 5.4) with Pillow when it can stand for the image. Thousands of inputs a second.
* ``decode``: all of the above, then :func:`pillow_jac.codec.decode`, ``Image.open(...).load()`` and,
  for a file with a preview, ``thumbnail()``, for the input as it is and with its
  ``model_id``/``weights_hash`` re-stamped to the installed weights (so that inputs reach the range
  decoder and the networks whatever weights are installed).

The oracle (:func:`check_container`, :func:`check_decode`) raises :class:`Finding` when

* an exception escapes that Pillow's own fuzzers do not allow (only ``OSError``, ``SyntaxError``,
  ``ValueError``, ``MemoryError``, ``NotImplementedError``, ``OverflowError`` and the
  decompression-bomb error/warning may; ``PIL.UnidentifiedImageError`` is an ``OSError``), a
  ``BaseException`` such as constriction's ``PanicException`` included;
* an input takes longer than :attr:`Limits.seconds` or raises the peak RSS above
  :attr:`Limits.rss_mb` (``MemoryError`` counts as a memory finding too);
* the entry points disagree: ``parse`` accepts what the streaming reader or ``Image.open`` rejects
  (or the other way round), ``draft()`` fails on a file ``Image.open`` accepted or uses a preview
  SPEC.md section 5.4 rules out,
  ``codec.decode`` and ``Image.open(...).load()`` disagree on the pixels, ``thumbnail()`` fails where
  ``load()`` succeeds, or the decoded shape differs from the header.

While fuzzing, ``Image.MAX_IMAGE_PIXELS`` is lowered to :attr:`Limits.max_pixels` (default 96 x 96),
so that forged dimensions exercise the size checks but nothing decodes more than ~18k pixels;
``codec.decode`` honours the same limit (twice ``MAX_IMAGE_PIXELS``, as Pillow's error).

Engines: ``atheris`` (coverage-guided libFuzzer, with the JAC-aware :func:`mutate` as custom
mutator) when it is installed, else ``random`` (a plain mutation loop over the same mutators). The
hypothesis-driven tests in ``tests/test_fuzz.py`` reuse the mutators and the oracle. The ``random``
engine, ``replay`` and ``distill`` run each input under a :func:`watchdog` (a hang becomes a
``timeout`` finding) and write it to :data:`CURRENT_INPUT` in their output folder before running it,
so an input that kills the process is on disk afterwards.

Usage (see ``fuzz/README.md``); paths may come before or after the options, libFuzzer's own
``-flag=value`` options go to the ``atheris`` engine::

    python fuzz/fuzz_jac.py seeds                       # (re)make fuzz/seeds/*.jac
    python fuzz/fuzz_jac.py atheris --target decode WORK_DIR fuzz/seeds -- -max_total_time=600
    python fuzz/fuzz_jac.py random --target container --seconds 60 [CORPUS...]
    python fuzz/fuzz_jac.py replay FILE_OR_DIR...       # run the oracle on files, print outcomes
    python fuzz/fuzz_jac.py distill --out tests/fuzz_corpus DIR...   # smallest file per outcome
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import hashlib
import io
import json
import random
import re
import resource
import signal
import struct
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
SEEDS_DIR = HERE / "seeds"
#: the file the random engine and ``distill`` write each input to, in their output folder, before running it
CURRENT_INPUT = "current-input.jac"
MAGIC = b"\x8bJAC\r\n\x1a\n"  # repeated here so that importing this module imports nothing of pillow_jac
_JHDR = struct.Struct(">BBBBIIH16s8sHHHHII")
JHDR_FIELDS = (
    "major", "minor", "flags", "layout", "width", "height", "quality", "model_id", "weights_hash",
    "yh", "yw", "zh", "zw", "zlen", "ylen",
)  # fmt: skip
#: offsets in a file of the JHDR model_id and weights_hash fields (signature 8 + chunk head 8 + field)
_MODEL_ID_AT, _HASH_AT, _JHDR_CRC_AT = 8 + 8 + 14, 8 + 8 + 30, 8 + 8 + 54
ALLOWED: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, MemoryError, NotImplementedError, OverflowError,
)  # fmt: skip

_LIB: SimpleNamespace | None = None


def lib() -> SimpleNamespace:
    """The modules under test, imported on first use (so ``atheris`` can instrument them first)."""
    global _LIB
    if _LIB is None:
        from PIL import Image

        import pillow_jac  # noqa: F401  (registers the Pillow plugin)
        from pillow_jac import codec, container
        from pillow_jac import constants as C

        _LIB = SimpleNamespace(Image=Image, codec=codec, container=container, C=C)
    return _LIB


class Finding(AssertionError):
    """An input broke the harness's rules: a forbidden exception, a time or memory overrun, disagreement."""


class Overrun(Finding):
    """An input took too long or too much memory (re-checked once: a busy machine can cause it)."""


class Timeout(Finding):
    """An input ran past the :func:`watchdog`'s limit: it was stopped, not re-checked."""


class _Alarm(BaseException):
    """Raised by the :func:`watchdog`'s signal handler; not an ``Exception``, so ``except Exception`` lets it by."""


@dataclass
class Limits:
    """Bounds every input must stay within.

    Decoding time grows with the number of wavefront steps ``3 (Hy - 1) + Wy`` of the latent (one
    batched step each, CODING.md section 1.3), which for thin images is far more than the pixel count
    suggests (a 1 x 18432 image has 1161 steps, a 135 x 136 one 33), so the time bound of a decode
    is ``seconds + seconds_per_step * steps`` for each decoder: linear in the declared size, so that
    only super-linear behaviour (a hang) is a finding.

    Attributes:
        seconds: wall-clock time of one oracle call, before the per-step allowance.
        seconds_per_step: allowance per wavefront step and decoder (~3-10 ms measured on 1 busy core).
        rss_mb: peak resident memory of the process while one input runs, in MiB.
        max_pixels: ``Image.MAX_IMAGE_PIXELS`` while fuzzing (files above twice this are refused).
        timeout: the :func:`watchdog`'s limit on one input of the random engine, ``replay`` and
            ``distill``, in seconds; ``None``: three times the input's time bounds (:func:`time_limit`).
    """

    seconds: float = 5.0
    seconds_per_step: float = 0.015
    rss_mb: float = 3072.0
    max_pixels: int = 96 * 96
    timeout: float | None = None


# ---------------------------------------------------------------------------------------------
# Chunk-level view of a file: tolerant of broken CRCs, so mutations can keep or break them


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
    if len(data) != _JHDR.size:
        return None
    return dict(zip(JHDR_FIELDS, _JHDR.unpack(data), strict=True))


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
    return _JHDR.pack(*values)


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


# ---------------------------------------------------------------------------------------------
# Mutators: (rng, data, corpus) -> bytes. Structure-aware ones re-compute CRCs unless they forge them.

U16_VALUES = (0, 1, 2, 3, 4, 5, 8, 255, 256, 257, 1023, 1024, 1152, 2047, 2048, 2049, 4096, 4097, 32767, 32768, 65535)
U32_VALUES = (
    0, 1, 2, 3, 4, 5, 7, 8, 12, 255, 256, 4096, 65535, 65536,
    (1 << 30) - 1, 1 << 30, (1 << 30) + 1, 1 << 31, (1 << 32) - 1,
)  # fmt: skip
DIM_VALUES = (
    0, 1, 2, 3, 7, 8, 15, 16, 17, 63, 64, 65, 95, 96, 127, 128, 129, 135, 136, 192,
    1000, 4096, 65535, 65536, 1 << 31, (1 << 32) - 1,
)  # fmt: skip
CHUNK_TYPES = (
    b"JHDR", b"ZSTR", b"YSTR", b"ALPH", b"JEND", b"iccp", b"exif", b"xmp ", b"prvw", b"abcd", b"zz 9", b"ABCD",
    b"Jend", b"PRVW", b"a\x00bc", b"1abc", b"ab-c", b"\xffJHD", b"    ",
)  # fmt: skip
#: ``prvw`` format bytes (SPEC.md section 5.4): 0 JPEG, 1 WebP; the others are unknown formats
PREVIEW_FORMATS = (0, 1)


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def _pick_u32(rng: random.Random, current: int) -> int:
    choice = rng.random()
    if choice < 0.5:
        return rng.choice(U32_VALUES)
    if choice < 0.8:
        return max(0, current + rng.choice((-8, -4, -3, -1, 1, 3, 4, 8)))
    return rng.getrandbits(rng.choice((8, 16, 32)))


def flip_bits(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Flip 1-8 random bits (CRCs left as they are)."""
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def set_bytes(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Overwrite a few bytes with boundary values."""
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)))
    return bytes(buf)


def truncate(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Cut the file: anywhere, or near a chunk boundary."""
    if rng.random() < 0.5 and (parts := split(data)):
        ends, pos = [], len(MAGIC)
        for c in parts[0]:
            pos += 12 + len(c.data)
            ends.append(pos)
        cut = rng.choice(ends or [len(data)]) + rng.randint(-12, 4)
    else:
        cut = rng.randint(0, len(data))
    return data[: max(0, cut)]


def insert_delete(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Insert random bytes at, or delete a range from, a random offset."""
    pos = rng.randint(0, len(data))
    if rng.random() < 0.5:
        return data[:pos] + _rand_bytes(rng, rng.randint(1, 16)) + data[pos:]
    return data[:pos] + data[pos + rng.randint(1, 16) :]


def splice(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """A prefix of this input followed by a suffix of another (or of itself)."""
    other = rng.choice(corpus) if corpus else data
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]


def random_file(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Random bytes, usually after the signature."""
    body = _rand_bytes(rng, rng.randint(0, 200))
    return (MAGIC + body) if rng.random() < 0.8 else body


def _with_chunks(
    mutator: Callable[[random.Random, list[Chunk], Sequence[bytes]], None],
) -> Callable[[random.Random, bytes, Sequence[bytes]], bytes]:
    """Wrap a mutator of the chunk list into a mutator of bytes (byte-level fallback if unframed)."""

    def run(rng: random.Random, data: bytes, corpus: Sequence[bytes]) -> bytes:
        parts = split(data)
        if not parts or not parts[0]:
            return flip_bits(rng, data, corpus)
        chunks, tail = parts
        mutator(rng, chunks, corpus)
        return join(chunks, tail)

    run.__name__ = mutator.__name__
    run.__doc__ = mutator.__doc__
    return run


def _jhdr(chunks: list[Chunk]) -> tuple[Chunk, dict[str, Any]] | None:
    for c in chunks:
        if c.ctype == b"JHDR" and (fields := unpack_jhdr(c.data)) is not None:
            return c, fields
    return None


def _find(chunks: list[Chunk], ctype: bytes) -> Chunk | None:
    return next((c for c in chunks if c.ctype == ctype), None)


@_with_chunks
def forge_dims(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Forge width/height (boundary values), usually with matching latent shapes; CRC re-computed."""
    if not (found := _jhdr(chunks)):
        return
    c, f = found
    for name in rng.sample(["width", "height"], rng.randint(1, 2)):
        f[name] = rng.choice(DIM_VALUES) if rng.random() < 0.7 else rng.randint(1, 200)
    if rng.random() < 0.8:
        f.update(derived_shapes(f["width"], f["height"]))
    c.data = pack_jhdr(f)


@_with_chunks
def forge_field(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Forge one JHDR field (version, flags, layout, quality, model, shapes, stream lengths); CRC re-computed."""
    if not (found := _jhdr(chunks)):
        return
    c, f = found
    name = rng.choice(JHDR_FIELDS)
    if name in ("major", "minor", "flags", "layout"):
        f[name] = rng.choice((0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF))
    elif name in ("width", "height", "zlen", "ylen"):
        f[name] = _pick_u32(rng, f[name])
    elif name == "model_id":
        f[name] = rng.choice(
            (bytes(16), b"\0mbt", b"x" * 16, b"mbt\x7f", b"m\0b", b"\xffmbt", b" ", _rand_bytes(rng, 16))
        )
    elif name == "weights_hash":
        f[name] = _rand_bytes(rng, 8)
    elif name == "quality":
        f[name] = rng.choice(U16_VALUES) if rng.random() < 0.6 else rng.randint(256, 2048)
    else:
        f[name] = rng.choice(U16_VALUES) if rng.random() < 0.5 else max(0, f[name] + rng.choice((-1, 1, 4)))
    c.data = pack_jhdr(f)


@_with_chunks
def forge_length(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Write a false length field into one chunk (the CRC does not cover lengths)."""
    c = rng.choice(chunks)
    c.length = _pick_u32(rng, len(c.data))


@_with_chunks
def forge_stream(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Replace ZSTR/YSTR contents (cut, extended, random, zeros, swapped, foreign), JHDR lengths and CRCs matched."""
    found = _jhdr(chunks)
    streams = [c for c in chunks if c.ctype in (b"ZSTR", b"YSTR")]
    if not streams:
        return
    c = rng.choice(streams)
    d, kind = c.data, rng.randrange(11)
    if kind == 0:
        d = d[: len(d) - 4 * rng.randint(1, 4)]
    elif kind == 1:
        d = d[: rng.randint(0, len(d))]
    elif kind == 2:
        d = d + bytes(4 * rng.randint(1, 8))
    elif kind == 3:
        d = d + _rand_bytes(rng, rng.randint(1, 32))
    elif kind == 4:
        d = _rand_bytes(rng, 4 * rng.randint(0, 64))
    elif kind == 5:
        d = bytes([rng.choice((0, 0xFF, 0x80))]) * len(d)
    elif kind == 6 and len(streams) == 2:
        streams[0].data, streams[1].data = streams[1].data, streams[0].data
        d = c.data
    elif kind == 7 and corpus:
        other = split(rng.choice(corpus))
        donor = other and _find(other[0], c.ctype)
        d = donor.data if donor else d
    elif kind == 8:
        d = b""
    elif kind == 9 and len(d) >= 8:
        words = [d[i : i + 4] for i in range(0, len(d) - len(d) % 4, 4)]
        rng.shuffle(words)
        d = b"".join(words) + d[len(d) - len(d) % 4 :]
    else:
        d = flip_bits(rng, d, corpus)
    c.data = d
    if found and rng.random() < 0.9:
        jc, f = found
        for s in streams:
            f["zlen" if s.ctype == b"ZSTR" else "ylen"] = len(s.data)
        jc.data = pack_jhdr(f)


@_with_chunks
def forge_alpha(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Forge ALPH: method byte, zlib of the wrong size, truncated, trailing data, bounded bomb, added, removed."""
    found = _jhdr(chunks)
    w, h = (found[1]["width"], found[1]["height"]) if found else (8, 8)
    n = max(0, min(w * h, 1 << 16))
    alph = _find(chunks, b"ALPH")
    kind = rng.randrange(9)
    if kind == 0 and alph:
        chunks.remove(alph)
        return
    payloads = (
        lambda: zlib.compress(bytes(n + rng.choice((-1, 1, 7)))) if n else b"",
        lambda: zlib.compress(bytes(n))[: rng.randint(0, 8)],
        lambda: zlib.compress(bytes(n)) + _rand_bytes(rng, rng.randint(1, 4)),
        lambda: zlib.compress(bytes(min(max(n, 1) * 64, 1 << 20)), 9),  # bounded bomb
        lambda: zlib.compressobj(9, zlib.DEFLATED, -15).compress(bytes(n)) + b"",  # raw deflate, no header
        lambda: _rand_bytes(rng, rng.randint(0, 24)),
        lambda: zlib.compress(bytes(n)),
    )
    body = bytes([rng.choice((0, 0, 0, 1, 0xFF))]) + rng.choice(payloads)()
    if rng.random() < 0.1:
        body = b""
    if alph:
        alph.data = body
    else:
        chunks.insert(rng.randint(1, max(1, len(chunks) - 1)), Chunk(b"ALPH", body))


@functools.lru_cache(maxsize=512)
def preview_file(image_format: int, width: int, height: int, mode: str = "RGB") -> bytes:
    """A small JPEG (format 0) or WebP (other formats) of ``width x height`` pixels in ``mode`` (a gradient).

    ``mode`` is one WebP or JPEG can store: RGB, RGBA (WebP), L or CMYK (JPEG); WebP gets L and CMYK as RGB.
    """
    from PIL import Image

    ramp = Image.linear_gradient("L").resize((max(1, width), max(1, height)))
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    im = Image.merge(mode, [ramp.rotate(90 * i) if i % 2 else ramp for i in range(bands)])
    out = io.BytesIO()
    if image_format == 0:
        im.convert("RGB" if mode == "RGBA" else mode).save(out, "JPEG", quality=50)
    else:
        im.convert("RGBA" if mode == "RGBA" else "RGB").save(out, "WEBP", quality=50)
    return out.getvalue()


def _preview_size(rng: random.Random, width: int, height: int) -> tuple[int, int]:
    """A preview size for a ``width x height`` image: usually its size scaled down, at most 64 x 64."""
    if rng.random() < 0.8 and width > 0 and height > 0:
        scale = rng.choice((0.2, 0.5, 0.75, 0.9, 1.0, 1.5)) * min(1.0, 64 / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))
    return rng.randint(1, 64), rng.randint(1, 64)


@_with_chunks
def forge_preview(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Add, forge or drop ``prvw``: format byte, declared size, embedded JPEG/WebP (damaged, resized), a second one."""
    found = _jhdr(chunks)
    w, h = (found[1]["width"], found[1]["height"]) if found else (8, 8)
    prvw = _find(chunks, b"prvw")
    kind = rng.randrange(9)
    if kind == 0 and prvw:
        chunks.remove(prvw)
        return
    if prvw and len(prvw.data) >= 5 and kind in (1, 2, 3, 4):
        image_format, pw, ph = struct.unpack_from(">BHH", prvw.data)
        image = prvw.data[5:]
    else:  # a new preview that fits the image (or not)
        image_format = rng.choice(PREVIEW_FORMATS)
        pw, ph = _preview_size(rng, w, h)
        mode = rng.choice(("RGB", "RGBA") if image_format else ("RGB", "L", "CMYK"))
        image = preview_file(image_format, pw, ph, mode)
    if kind == 1:
        image_format = rng.choice((0, 1, 0, 1, 2, 0x7F, 0xFF))
    elif kind == 2:
        pw, ph = ((ph, pw), (pw + 1, ph), (pw, max(0, ph - 1)), (0, ph), (rng.choice(U16_VALUES), ph))[rng.randrange(5)]
    elif kind == 3:
        image = rng.choice((flip_bits, set_bytes, truncate, insert_delete))(rng, image, corpus)
    elif kind == 4:
        image = preview_file(rng.choice(PREVIEW_FORMATS), *_preview_size(rng, w, h))  # another size or format
    elif kind == 5:
        image = rng.choice((b"", b"\xff\xd8", b"RIFF", _rand_bytes(rng, rng.randint(1, 40))))
    data = struct.pack(">BHH", image_format, pw & 0xFFFF, ph & 0xFFFF) + image
    if kind == 6:
        data = data[: rng.randint(0, 5)]  # no room for the head, or no image
    if kind == 7 or not prvw:
        chunks.insert(rng.randint(1, max(1, len(chunks) - 1)), Chunk(b"prvw", data))
    else:
        prvw.data = data


@_with_chunks
def chunk_ops(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Delete, duplicate, move, insert or re-type a chunk (CRCs re-computed)."""
    kind = rng.randrange(6)
    i = rng.randrange(len(chunks))
    if kind == 0:
        del chunks[i]
    elif kind == 1:
        chunks.insert(rng.randint(0, len(chunks)), Chunk(chunks[i].ctype, chunks[i].data))
    elif kind == 2:
        chunks.insert(rng.randint(0, len(chunks) - 1), chunks.pop(i))
    elif kind == 3:
        data = _rand_bytes(rng, rng.choice((0, 1, 4, 54, 100))) if rng.random() < 0.7 else chunks[i].data
        chunks.insert(rng.randint(0, len(chunks)), Chunk(rng.choice(CHUNK_TYPES), data))
    elif kind == 4:
        chunks[i].ctype = rng.choice(CHUNK_TYPES)
    else:
        chunks[i].ctype = bytes(b ^ 0x20 if rng.random() < 0.3 else b for b in chunks[i].ctype)


@_with_chunks
def break_crc(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Give one chunk a wrong CRC."""
    c = rng.choice(chunks)
    c.crc = crc(c.ctype, c.data) ^ (1 << rng.randrange(32))


@_with_chunks
def trailing(rng: random.Random, chunks: list[Chunk], corpus: Sequence[bytes]) -> None:
    """Drop the chunks after a random one (so the file ends early but stays framed) or add a JEND early."""
    if rng.random() < 0.5:
        del chunks[rng.randint(1, len(chunks)) :]
    else:
        chunks.insert(rng.randint(1, len(chunks)), Chunk(b"JEND", b""))


MUTATORS: dict[str, Callable[[random.Random, bytes, Sequence[bytes]], bytes]] = {
    f.__name__: f
    for f in (
        flip_bits, set_bytes, truncate, insert_delete, splice, random_file, forge_dims, forge_field,
        forge_length, forge_stream, forge_alpha, forge_preview, chunk_ops, break_crc, trailing,
    )
}  # fmt: skip
#: how often each mutator is picked: forged-but-consistent files (which reach the decoder) are favoured
WEIGHTS = {
    "flip_bits": 3, "set_bytes": 2, "truncate": 2, "insert_delete": 1, "splice": 1, "random_file": 1,
    "forge_dims": 4, "forge_field": 4, "forge_length": 2, "forge_stream": 6, "forge_alpha": 3,
    "forge_preview": 2, "chunk_ops": 3, "break_crc": 1, "trailing": 1,
}  # fmt: skip


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes] = (), rounds: int | None = None) -> bytes:
    """Apply 1-3 weighted random mutators to ``data``."""
    names = list(MUTATORS)
    weights = [WEIGHTS[n] for n in names]
    for name in rng.choices(names, weights, k=rounds or rng.choice((1, 1, 1, 2, 3))):
        data = MUTATORS[name](rng, data, corpus)
    return data


# ---------------------------------------------------------------------------------------------
# The oracle


class Unseekable(io.RawIOBase):
    """A non-seekable stream returning at most ``piece`` bytes per read."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self._data, self._pos, self._piece = data, 0, piece

    def readable(self) -> bool:
        """Always readable."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``min(n, piece)`` bytes."""
        n = len(self._data) - self._pos if n is None or n < 0 else n
        out = self._data[self._pos : self._pos + min(n, self._piece)]
        self._pos += len(out)
        return out


def _bomb() -> tuple[type[BaseException], ...]:
    Image = lib().Image
    return Image.DecompressionBombError, Image.DecompressionBombWarning


def _allowed() -> tuple[type[BaseException], ...]:
    return (*ALLOWED, *_bomb())


def _call(what: str, fn: Callable[[], Any], strict_memory: bool) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", exception)``; raises :class:`Finding` for a forbidden exception."""
    try:
        return "ok", fn()
    except MemoryError as exc:
        if strict_memory:
            raise Finding(f"{what}: MemoryError on a small input: {exc}") from exc
        return "error", exc
    except _allowed() as exc:
        return "error", exc
    except BaseException as exc:  # PanicException and friends derive from BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, _Alarm)):
            raise
        raise Finding(f"{what}: forbidden exception {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc


def reset_peak_rss() -> None:
    """Reset the peak RSS that :func:`peak_rss_mb` reports (Linux; elsewhere a no-op)."""
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since the last reset where Linux allows it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pillow_open(data: bytes, load: bool) -> Any:
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            if not load:
                return im.size, im.mode, dict(im.info)
            im.load()
            import numpy as np

            return np.asarray(im)


def _pillow_draft(data: bytes, request: tuple[int, int]) -> tuple[Any, tuple[int, int], str]:
    """Open ``data`` with Pillow and ask ``draft()`` for ``request``; load the preview when it took one.

    Returns ``(draft's answer, size, mode)``, the size and mode after the load.
    """
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            answer = im.draft(None, request)
            if answer is not None:
                im.load()
            return answer, im.size, im.mode


def _pillow_thumbnail(data: bytes, size: tuple[int, int]) -> tuple[bool, tuple[int, int], str]:
    """``thumbnail(size)`` of ``data`` opened with Pillow: ``(whether draft() took the preview, size, mode)``."""
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            answers = []
            draft = im.draft

            def recorded(mode: str | None, box: tuple[int, int] | None) -> Any:
                answers.append(draft(mode, box))
                return answers[-1]

            im.draft = recorded  # type: ignore[method-assign]
            im.thumbnail(size)
            im.load()
            return any(a is not None for a in answers), im.size, im.mode


def preview_request(jac: Any) -> tuple[int, int]:
    """The size the oracle asks ``draft()`` for: the declared size of the file's preview, else half the image."""
    unpacked = lib().container.unpack_preview(jac.preview)
    if unpacked is not None:
        return unpacked[1], unpacked[2]
    width, height = jac.size
    return max(1, width // 2), max(1, height // 2)


def _check_draft(jac: Any, request: tuple[int, int], drafted: tuple[str, Any]) -> str:
    """The rules for ``draft(None, request)`` on a file Image.open accepted (SPEC.md section 5.4); a label.

    A preview is ancillary: a bad one is ignored, it never makes the file unreadable, so ``draft()`` never
    raises, not even a decompression-bomb warning for an embedded file larger than declared.
    """
    if drafted[0] != "ok":
        raise Finding(f"Image.open accepted but draft() -> {_label(drafted)}")
    answer, size, mode = drafted[1]
    if answer is None:
        return "preview:unused" if jac.preview is not None else ""
    unpacked = lib().container.unpack_preview(jac.preview)
    if unpacked is None:
        raise Finding(f"draft() answered {answer} for a file without a usable preview")
    width, height = jac.size
    pw, ph = unpacked[1:3]
    if answer != (jac.mode, (0, 0, pw, ph)) or size != (pw, ph) or mode != jac.mode:
        raise Finding(f"draft() answered {answer}, loaded {size} {mode}; the preview is {pw}x{ph}, the file {jac.mode}")
    if pw >= width and ph >= height:
        raise Finding(f"draft() used a {pw}x{ph} preview of a {width}x{height} image (not smaller)")
    scale = min(request[0] / width, request[1] / height, 1.0)
    if pw < int(width * scale) or ph < int(height * scale):
        raise Finding(f"draft({request}) used a {pw}x{ph} preview of {width}x{height}, smaller than asked for")
    return "preview:used"


def _label(outcome: tuple[str, Any]) -> str:
    """A short, size-independent label of an outcome, e.g. ``JacDataError:CRC mismatch in chunk``."""
    kind, value = outcome
    if kind == "ok":
        return "ok"
    words = re.sub(r"""b?'[^']*'|b?"[^"]*"|\([^)]*\)|0x[0-9a-f]+|\d+""", "#", str(value)).split()[:6]
    return f"{type(value).__name__}:{' '.join(words)}"


class _Budget:
    """Time and memory bound of one oracle call; raises :class:`Finding` on overrun."""

    def __init__(self, limits: Limits, what: str, seconds: float | None = None) -> None:
        self.limits, self.what = limits, what
        self.bound = limits.seconds if seconds is None else seconds

    def __enter__(self) -> _Budget:
        reset_peak_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        self.rss = peak_rss_mb()
        if exc_type is None or issubclass(exc_type, Exception):
            if self.seconds > self.bound:
                raise Overrun(f"{self.what}: took {self.seconds:.1f} s (bound {self.bound:.1f} s)") from exc
            if self.rss > self.limits.rss_mb:
                raise Overrun(f"{self.what}: peak RSS {self.rss:.0f} MiB (bound {self.limits.rss_mb:.0f})") from exc


def check_container(data: bytes, limits: Limits | None = None, strict_memory: bool = True) -> str:
    """Run every container entry point on ``data`` and check they agree; returns the outcome label.

    Raises:
        Finding: a forbidden exception, an overrun of ``limits`` or a disagreement.
    """
    limits = limits or Limits()
    L = lib()
    drafted = None
    with _Budget(limits, "container"):
        parsed = _call("container.parse", lambda: L.container.parse(data), strict_memory)
        streamed = _call("read_file(unseekable)", lambda: L.container.read_file(Unseekable(data)), strict_memory)
        header = _call("read_header", lambda: L.container.read_header(io.BytesIO(data)), strict_memory)
        opened = _call("Image.open", lambda: _pillow_open(data, load=False), strict_memory)
        if parsed[0] == "ok" and opened[0] == "ok":
            request = preview_request(parsed[1])
            drafted = _call("Image.draft", lambda: _pillow_draft(data, request), strict_memory)
    if parsed[0] != streamed[0] or (parsed[0] == "ok" and parsed[1] != streamed[1]):
        raise Finding(f"parse -> {_label(parsed)} but read_file on a stream -> {_label(streamed)}")
    if parsed[0] == "error" and streamed[0] == "error" and type(parsed[1]) is not type(streamed[1]):
        raise Finding(f"parse -> {_label(parsed)} but read_file on a stream -> {_label(streamed)}")
    if isinstance(parsed[1], SyntaxError) != isinstance(header[1], SyntaxError):
        raise Finding(f"parse -> {_label(parsed)} but read_header -> {_label(header)}")
    if parsed[0] == "ok":
        jac = parsed[1]
        if header[0] != "ok" or header[1] != jac.header:
            raise Finding(f"parse accepted but read_header -> {_label(header)}")
        if opened[0] == "ok":
            size, mode, info = opened[1]
            if size != jac.size or mode != jac.mode or info.get("model_id") != jac.header.model_id:
                raise Finding(f"Image.open reports {size} {mode}, the container {jac.size} {jac.mode}")
        elif not isinstance(opened[1], (L.Image.DecompressionBombError, L.Image.DecompressionBombWarning)):
            raise Finding(f"parse accepted but Image.open -> {_label(opened)}")
        if drafted is not None:
            preview = _check_draft(jac, request, drafted)
            if preview:
                return f"{_label(parsed)} | {preview}"
    elif opened[0] == "ok":
        raise Finding(f"parse -> {_label(parsed)} but Image.open accepted")
    return _label(parsed)


def installed_model() -> tuple[str, bytes]:
    """``(model_id, weights_hash)`` of the installed weights (builds the engine: imports torch)."""
    from pillow_jac.engine import get_engine

    engine = get_engine()
    return engine.model_id, engine.weights_hash


def check_decode(data: bytes, limits: Limits | None = None, strict_memory: bool = True) -> str:
    """Run :func:`check_container`, then ``codec.decode``, ``Image.open(...).load()`` and ``thumbnail()``.

    The decoders run on ``data`` as it is and re-stamped to the installed weights (see
    :func:`restamp`); ``thumbnail()`` (half the size of the preview) only for a file with a preview.
    Returns the outcome labels joined by ``" | "``.

    Raises:
        Finding: a forbidden exception, an overrun of ``limits``, a disagreement or a wrong shape.
    """
    limits = limits or Limits()
    L = lib()
    labels = [check_container(data, limits, strict_memory)]
    variants = [data]
    stamped = restamp(data, *installed_model())
    if stamped != data:
        variants.append(stamped)
    for variant in variants:
        preview = _preview_of(variant)
        decoders = 2 if preview is None else 3
        with _Budget(limits, "decode", limits.seconds + decoders * limits.seconds_per_step * steps(variant)):
            decoded = _call("codec.decode", lambda v=variant: L.codec.decode(v), strict_memory)
            loaded = _call("Image.open().load()", lambda v=variant: _pillow_open(v, load=True), strict_memory)
            if preview is not None:
                box = (max(1, preview[1] // 2), max(1, preview[2] // 2))
                thumb = _call("thumbnail()", lambda v=variant, b=box: _pillow_thumbnail(v, b), strict_memory)
        if preview is not None:
            _check_thumbnail(variant, box, loaded, thumb)
        bomb = (L.Image.DecompressionBombError, L.Image.DecompressionBombWarning)
        if decoded[0] == "ok":
            jac = L.container.parse(variant)
            w, h = jac.size
            want = {"L": (h, w), "LA": (h, w, 2), "RGB": (h, w, 3), "RGBA": (h, w, 4)}[jac.mode]
            if decoded[1].shape != want or decoded[1].dtype.name != "uint8":
                raise Finding(f"codec.decode returned {decoded[1].dtype} {decoded[1].shape}, header says {want}")
            if loaded[0] == "ok":
                if loaded[1].shape != want or (loaded[1] != decoded[1]).any():
                    raise Finding("Image.open().load() and codec.decode give different pixels")
            elif not isinstance(loaded[1], bomb):
                raise Finding(f"codec.decode accepted but Image.open().load() -> {_label(loaded)}")
        elif loaded[0] == "ok":
            raise Finding(f"codec.decode -> {_label(decoded)} but Image.open().load() accepted")
        labels.append(_label(decoded))
    return " | ".join(labels)


def _preview_of(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``container.unpack_preview`` of the file's ``prvw`` chunk; None if it has none or does not parse."""
    try:
        return lib().container.unpack_preview(lib().container.parse(data).preview)
    except Exception:
        return None


def _check_thumbnail(data: bytes, box: tuple[int, int], loaded: tuple[str, Any], thumb: tuple[str, Any]) -> None:
    """``thumbnail(box)`` succeeds where ``load()`` does, and elsewhere only from the preview; it fits in ``box``."""
    if thumb[0] != "ok":
        if loaded[0] == "ok":
            raise Finding(f"Image.open().load() accepted but thumbnail() -> {_label(thumb)}")
        return
    used, size, mode = thumb[1]
    if loaded[0] != "ok" and not used:
        raise Finding(f"Image.open().load() -> {_label(loaded)} but thumbnail() decoded the image")
    jac = lib().container.parse(data)
    if size[0] > box[0] or size[1] > box[1] or mode != jac.mode:
        raise Finding(f"thumbnail({box}) of a {jac.mode} file gave {size} {mode}")


def steps(data: bytes) -> int:
    """Wavefront steps of the latent ``data``'s header declares (0 if it has no valid header)."""
    try:
        h = lib().container.read_header(io.BytesIO(data))
    except Exception:
        return 0
    return 3 * (h.y_shape[0] - 1) + h.y_shape[1]


def check_confirmed(check: Callable[[bytes, Limits], str], data: bytes, limits: Limits) -> str:
    """``check(data, limits)``, where an :class:`Overrun` counts only if it happens twice in a row."""
    try:
        return check(data, limits)
    except Overrun:
        return check(data, limits)


def time_limit(data: bytes, limits: Limits, target: str) -> float:
    """The :func:`watchdog`'s limit for one input: ``limits.timeout``, else three times its time bounds.

    The bounds are those of the oracle calls :func:`check_confirmed` makes: the container's, and for
    ``decode`` those of both variants with three decoders each; three times, as an overrun is run twice.
    """
    if limits.timeout:
        return limits.timeout
    bound = limits.seconds
    if target == "decode":
        bound += 2 * (limits.seconds + 3 * limits.seconds_per_step * steps(data))
    return 3 * bound


@contextlib.contextmanager
def watchdog(seconds: float | None) -> Iterator[None]:
    """Stop the block with :class:`Timeout` once it has run ``seconds`` (POSIX main thread; elsewhere no limit).

    ``SIGALRM`` raises an exception in the block after ``seconds``, and again every second until the block
    ends (code under test may swallow one); the block then raises :class:`Timeout` whatever it raised or
    returned. Native code that never returns to Python does not see the signal: after ``2 * seconds + 10``
    s faulthandler prints the stack of every thread and ends the process with status 1. Not for the
    ``atheris`` engine: libFuzzer's ``-timeout`` uses ``SIGALRM`` itself.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"armed": True, "fired": False}

    def alarm(signum: int, frame: Any) -> None:
        if state["armed"]:
            state["fired"] = True
            raise _Alarm

    def disarm() -> None:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if backstop:
            faulthandler.cancel_dump_traceback_later()

    previous = signal.signal(signal.SIGALRM, alarm) or signal.SIG_DFL  # None: a handler not set from Python
    backstop = False
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no stderr with a file descriptor
        faulthandler.dump_traceback_later(2 * seconds + 10, exit=True, file=sys.__stderr__)
        backstop = True
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        try:
            yield
        finally:
            disarm()
    except _Alarm:
        disarm()  # again, should the alarm have come before the first one finished
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        if not state["fired"]:
            raise
    if state["fired"]:
        stopped = time.perf_counter() - start
        raise Timeout(f"timeout: still running after {seconds:.3g} s, stopped after {stopped:.3g} s")


def run_one(target: str, data: bytes, limits: Limits) -> str:
    """:func:`check_confirmed` of ``target``'s check on ``data`` under the :func:`watchdog`; the outcome label."""
    check = check_decode if target == "decode" else check_container
    with watchdog(time_limit(data, limits, target)):
        return check_confirmed(check, data, limits)


def setup(limits: Limits, threads: int | None = 1) -> None:
    """Process-wide settings for a fuzzing session: small Pillow size limit, 1 torch thread."""
    lib().Image.MAX_IMAGE_PIXELS = limits.max_pixels
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_corpus(paths: Iterable[Path]) -> list[bytes]:
    """The bytes of every file in the given files and directories (sorted by name)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
        out += [f.read_bytes() for f in files]
    return out


# ---------------------------------------------------------------------------------------------
# Seed corpus: tiny valid files of every layout, with metadata and previews


SEED_SPECS: tuple[tuple[str, str, int, int, float, tuple[str, ...]], ...] = (
    ("rgb-8x8-q1", "RGB", 8, 8, 1.0, ()),
    ("rgb-64x48-q8-meta", "RGB", 64, 48, 8.0, ("icc", "exif", "xmp")),
    ("rgb-48x64-q2.25-icc", "RGB", 48, 64, 2.25, ("icc",)),
    ("l-17x9-q3-xmp", "L", 17, 9, 3.0, ("xmp",)),
    ("l-64x64-q6", "L", 64, 64, 6.0, ()),
    ("la-33x20-q5.5-exif-unknown", "LA", 33, 20, 5.5, ("exif", "unknown")),
    ("la-1x1-q1", "LA", 1, 1, 1.0, ()),
    ("rgba-64x48-q4-meta-unknown", "RGBA", 64, 48, 4.0, ("icc", "exif", "xmp", "unknown")),
    ("rgba-8x12-q7", "RGBA", 8, 12, 7.0, ()),
    ("rgb-65x16-q4", "RGB", 65, 16, 4.0, ("exif",)),
    ("rgba-40x24-q3-preview", "RGBA", 40, 24, 3.0, ("preview",)),
    ("l-24x36-q5-xmp-preview", "L", 24, 36, 5.0, ("xmp", "preview")),
)
#: long side of the seeds' previews (``encode(..., preview=N)`` stores one when the image is larger)
SEED_PREVIEW = 16


def seed_image(layout: str, width: int, height: int, seed: int) -> Any:
    """A small smooth image with a little noise (so its streams look like a photo's), uint8."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 100 * np.sin(xx * rng.uniform(0.05, 0.3) + c) * np.cos(yy * rng.uniform(0.05, 0.3)) for c in range(4)
    ]
    image = np.clip(np.stack(planes, axis=2) + rng.normal(0, 5, (height, width, 4)), 0, 255).astype(np.uint8)
    channels = {"L": [0], "LA": [0, 3], "RGB": [0, 1, 2], "RGBA": [0, 1, 2, 3]}[layout]
    image = image[:, :, channels]
    return image[:, :, 0] if layout == "L" else image


def make_seeds(out: Path = SEEDS_DIR) -> list[Path]:
    """Encode :data:`SEED_SPECS` with the installed weights into ``out``; returns the paths."""
    L = lib()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "icc": ("icc_profile", b"\0\0\0\x30fake-icc-profile" + bytes(32)),
        "exif": ("exif", b"Exif\0\0MM\0*\0\0\0\x08\0\0"),
        "xmp": ("xmp", b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'),
    }
    paths = []
    for i, (name, layout, w, h, q, extras) in enumerate(SEED_SPECS):
        kwargs: dict[str, Any] = dict(meta[e] for e in extras if e in meta)
        if "preview" in extras:
            kwargs["preview"] = SEED_PREVIEW
        data = L.codec.encode(seed_image(layout, w, h, i), q, **kwargs)
        if "unknown" in extras:
            jac = L.container.parse(data)
            jac.unknown_chunks = [(b"abcd", b"unknown ancillary"), (b"zz 9", b"")]
            data = L.container.serialize(jac)
        path = out / f"{name}.jac"
        path.write_bytes(data)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Engines


@dataclass
class Stats:
    """Counters of a fuzzing session."""

    executions: int = 0
    findings: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


def _save(data: bytes, directory: Path, prefix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{hashlib.sha1(data).hexdigest()[:16]}.jac"
    path.write_bytes(data)
    return path


def run_random(
    target: str,
    corpus: list[bytes],
    seconds: float,
    limits: Limits,
    crashes: Path,
    keep: Path | None = None,
    seed: int | None = None,
    log: Callable[[str], None] = print,
) -> Stats:
    """Plain mutation loop: mutate corpus entries, run the oracle, save findings (and new outcomes).

    Each input runs under the :func:`watchdog` (a hang is saved as ``timeout-*.jac``, other findings as
    ``finding-*.jac``, in ``crashes``) after being written to ``crashes /`` :data:`CURRENT_INPUT`, which is
    removed when the loop ends: if the process dies (a crash, the OOM killer), that file is the input it ran.
    """
    rng = random.Random(seed)
    stats, start, pool = Stats(), time.monotonic(), list(corpus)
    last_report = start
    crashes.mkdir(parents=True, exist_ok=True)
    current = crashes / CURRENT_INPUT
    try:
        while time.monotonic() - start < seconds:
            data = mutate(rng.choice(pool), rng, pool)
            current.write_bytes(data)
            t0 = time.perf_counter()
            try:
                label = run_one(target, data, limits)
            except Finding as exc:
                stats.findings += 1
                path = _save(data, crashes, "timeout" if isinstance(exc, Timeout) else "finding")
                log(f"FINDING {path}: {exc}")
                continue
            finally:
                stats.executions += 1
                stats.max_seconds = max(stats.max_seconds, time.perf_counter() - t0)
            if label not in stats.outcomes:  # a new outcome: keep the input as a seed for more mutation
                pool.append(data)
                if keep:
                    _save(data, keep, "outcome")
            stats.outcomes[label] = stats.outcomes.get(label, 0) + 1
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                rate = stats.executions / (last_report - start)
                log(f"#{stats.executions} {rate:.1f}/s outcomes {len(stats.outcomes)} findings {stats.findings}")
    finally:
        current.unlink(missing_ok=True)
    stats.seconds = time.monotonic() - start
    return stats


def run_atheris(target: str, argv: list[str], limits: Limits, corpus: list[bytes]) -> None:
    """Coverage-guided fuzzing with atheris/libFuzzer; ``argv`` holds libFuzzer's arguments."""
    import atheris

    with atheris.instrument_imports(include=["pillow_jac"]):
        lib()
        import pillow_jac.engine  # noqa: F401
        import pillow_jac.entropy_coding  # noqa: F401
        import pillow_jac.latent_coding  # noqa: F401
    setup(limits, threads=1 if target == "decode" else None)
    if target == "decode":
        installed_model()  # build the engine before the first input (its cost is not the input's)
    check = check_decode if target == "decode" else check_container

    artifacts = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("-artifact_prefix=")), "./"))

    def one_input(data: bytes) -> None:
        try:
            check_confirmed(check, data, limits)
        except Finding:
            # libFuzzer writes crash-* too, but not always before a pending -timeout alarm kills it
            _save(data, artifacts if artifacts.is_dir() else artifacts.parent, "finding")
            raise

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.25:
            return atheris.Mutate(data, max_size)
        return mutate(data, rng, corpus)[:max_size]

    def custom_crossover(data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        return (data1[: rng.randint(0, len(data1))] + data2[rng.randint(0, len(data2)) :])[:max_out_size]

    # the hard timeout (a hang) covers two confirmed runs of the slowest admissible input
    defaults = [f"-rss_limit_mb={int(limits.rss_mb)}", "-timeout=120", "-max_len=16384"]
    given = {a.split("=")[0] for a in argv if a.startswith("-")}
    args = [sys.argv[0], *[d for d in defaults if d.split("=")[0] not in given], *argv]
    atheris.Setup(args, one_input, custom_mutator=custom_mutator, custom_crossover=custom_crossover)
    atheris.Fuzz()


# ---------------------------------------------------------------------------------------------
# Distilling a regression corpus: the smallest input per distinct outcome


def distill(inputs: Iterable[bytes], out: Path, max_bytes: int = 6000, limits: Limits | None = None) -> dict[str, str]:
    """Write the smallest input of each distinct :func:`check_decode` outcome to ``out``.

    Returns ``{file name: outcome}``. Inputs larger than ``max_bytes`` are skipped. Each input runs
    under the :func:`watchdog` (a hang is a ``FINDING timeout`` outcome) after being written to
    ``out /`` :data:`CURRENT_INPUT`, which is removed when the loop ends.
    """
    limits = limits or Limits()
    best: dict[str, bytes] = {}
    out.mkdir(parents=True, exist_ok=True)
    current = out / CURRENT_INPUT
    try:
        for data in inputs:
            if len(data) > max_bytes:
                continue
            current.write_bytes(data)
            try:
                label = run_one("decode", data, limits)
            except Finding as exc:
                label = f"FINDING {exc}"
            if label not in best or len(data) < len(best[label]):
                best[label] = data
    finally:
        current.unlink(missing_ok=True)
    index = {}
    for label, data in sorted(best.items()):
        name = f"{hashlib.sha1(data).hexdigest()[:12]}.jac"
        (out / name).write_bytes(data)
        index[name] = label
    return index


def _print_stats(stats: Stats) -> None:
    print(json.dumps({**stats.__dict__, "exec_per_s": round(stats.executions / max(stats.seconds, 1e-9), 2)}, indent=1))


#: a libFuzzer option (``-max_total_time=600``); this harness's own options all start with ``--``
LIBFUZZER_OPTION = re.compile(r"-[A-Za-z_]+=.*")


def _files(paths: Iterable[Path]) -> list[Path]:
    """The files given and those directly in the directories given (sorted by name), in order."""
    out: list[Path] = []
    for p in paths:
        out += sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring).

    Paths may come before, between or after the options. libFuzzer's own options (``-name=value``)
    and everything after ``--`` go to the ``atheris`` engine; other commands refuse them.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["seeds", "atheris", "random", "replay", "distill"])
    parser.add_argument(
        "paths", nargs="*", type=Path,
        help="atheris: WORK_DIR (libFuzzer writes new inputs there) and more corpus dirs; random: corpus "
        "(default fuzz/seeds); replay, distill: files and directories of inputs",
    )  # fmt: skip
    parser.add_argument("--target", choices=["container", "decode"], default="decode")
    parser.add_argument("--seconds", type=float, default=60.0, help="random engine: session length")
    parser.add_argument("--time-bound", type=float, default=Limits.seconds, help="seconds per input")
    parser.add_argument("--rss-mb", type=float, default=Limits.rss_mb, help="peak RSS bound")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="Image.MAX_IMAGE_PIXELS")
    parser.add_argument(
        "--timeout", type=float,
        help="random, replay, distill: stop an input after this many seconds and report a timeout "
        "(default: three times its time bounds)",
    )  # fmt: skip
    findings = Path(tempfile.gettempdir()) / "jac-fuzz-findings"
    parser.add_argument("--crashes", type=Path, default=findings, help=f"random engine: findings (default {findings})")
    parser.add_argument("--keep", type=Path, help="random engine: save inputs with new outcomes here")
    parser.add_argument("--out", type=Path, help="seeds: output directory (default fuzz/seeds); distill: required")
    parser.add_argument("--seed", type=int, help="random engine: RNG seed")
    argv = list(sys.argv[1:] if argv is None else argv)
    fuzzer_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    fuzzer_args = [a for a in ours if LIBFUZZER_OPTION.fullmatch(a)] + fuzzer_args
    args = parser.parse_intermixed_args([a for a in ours if not LIBFUZZER_OPTION.fullmatch(a)])
    if fuzzer_args and args.command != "atheris":
        parser.error(f"libFuzzer options are for the atheris engine only: {' '.join(fuzzer_args)}")
    limits = Limits(args.time_bound, Limits.seconds_per_step, args.rss_mb, args.max_pixels, args.timeout)
    if args.command == "seeds":
        if args.paths:
            parser.error("seeds takes no paths (--out names the directory)")
        for p in make_seeds(args.out or SEEDS_DIR):
            print(p, p.stat().st_size)
        return 0
    if args.command == "atheris":
        if not args.paths:
            parser.error("atheris needs WORK_DIR, where libFuzzer writes the inputs it keeps")
    elif args.command in ("replay", "distill") and not args.paths:
        parser.error(f"{args.command} needs files or directories of inputs")
    if args.command == "distill" and args.out is None:
        parser.error("distill needs --out")
    missing = [str(p) for p in args.paths[1 if args.command == "atheris" else 0 :] if not p.exists()]
    if missing:
        parser.error(f"no such file or directory: {', '.join(missing)}")
    if args.command == "atheris":
        args.paths[0].mkdir(parents=True, exist_ok=True)
        run_atheris(args.target, [*fuzzer_args, *map(str, args.paths)], limits, load_corpus([SEEDS_DIR]))
        return 0
    files = _files(args.paths or [SEEDS_DIR])
    if not files:
        parser.error(f"no input files in {', '.join(map(str, args.paths))}")
    if not faulthandler.is_enabled():  # a Python stack on a fatal signal (SIGSEGV and the like)
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no stderr with a file descriptor
            faulthandler.enable()
    decodes = args.target == "decode" or args.command == "distill"  # distill runs the decode target
    setup(limits, threads=1 if decodes else None)
    if decodes:
        installed_model()  # build the engine before the first input (its cost is not the input's)
    if args.command == "random":
        corpus = [f.read_bytes() for f in files]
        stats = run_random(args.target, corpus, args.seconds, limits, args.crashes, args.keep, args.seed)
        _print_stats(stats)
        return 1 if stats.findings else 0
    if args.command == "distill":
        index = distill((f.read_bytes() for f in files), args.out, limits=limits)
        print(json.dumps(index, indent=1))
        return 0
    status = 0
    for f in files:
        print(f"{f}\t", end="", flush=True)  # the name first: if the process dies on this file, it is the last line
        t0 = time.perf_counter()
        try:
            label = run_one(args.target, f.read_bytes(), limits)
        except Finding as exc:
            label, status = f"FINDING {exc}", 1
        print(f"{time.perf_counter() - t0:.2f}s\t{label}", flush=True)
    return status


if __name__ == "__main__":
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
