"""The fuzz harness's mutators: ``(rng, data, corpus) -> bytes``, picked by weight by :func:`mutate`.

Byte-level ones (``flip_bits``, ``set_bytes``, ``truncate``, ``insert_delete``, ``splice``,
``random_file``) leave CRCs as they are. Structure-aware ones work on the chunk list
(:mod:`fuzz.chunks`) and re-compute CRCs unless they forge them, so that forged values get past the
checksums: JHDR sizes and fields, chunk lengths, the ZSTR/YSTR streams, the ALPH plane, the ``prvw``
preview (SPEC.md section 5.4, with small JPEG and WebP files from :func:`preview_file`) and the chunk
order. :data:`MUTATORS` names them all, :data:`WEIGHTS` says how often each is picked.
"""

from __future__ import annotations

import functools
import io
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .chunks import (
    JHDR_FIELDS,
    MAGIC,
    PRVW_HEAD,
    Chunk,
    crc,
    derived_shapes,
    join,
    pack_jhdr,
    split,
    unpack_jhdr,
)  # fmt: skip

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
        image_format, pw, ph = PRVW_HEAD.unpack_from(prvw.data)
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
    data = PRVW_HEAD.pack(image_format, pw & 0xFFFF, ph & 0xFFFF) + image
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
