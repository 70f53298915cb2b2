"""Write the edge vectors: valid files that exercise what the generation vectors leave out (SPEC.md 9.4).

``python format_spec/make_edge.py`` writes ``format_spec/vectors/edge/``. Each file is made from a
release-6 vector, and a decoder MUST decode it:

* ``escapes``: hyper-latents and latents far outside their tables (CODING.md section 2.3), up to the
  clamp of 4095, in both streams: escape classes 1 to 11 and their uniform values, which no encoded
  photo of the generation vectors reaches (they hold two y escapes in all);
* ``preview-and-unknown``: a ``prvw`` chunk and two unknown ancillary chunks (SPEC.md 5.3, 5.4); the
  same pixels as the vector it comes from;
* ``chunks-reordered``: the chunks between ``JHDR`` and ``JEND`` in another allowed order (SPEC.md 4.3),
  metadata after the streams; the same pixels and metadata;
* ``minor-version``: format version 1.7 (SPEC.md 9.1: a 1.0 decoder reads any 1.m file); the same pixels.
* ``ystr-one-extra-word``: one word appended to the y stream, which leaves the decoder exhausted (CODING.md
  2.4): valid, with the latents and pixels of the vector it comes from; a decoder whose end test is stricter
  than the exhausted test rejects it.
* ``metadata-empty-and-unprefixed``: an empty ``iccp`` and ``xmp `` chunk and an ``exif`` chunk without the
  6-byte ``Exif`` prefix (SPEC.md 5.2: allowed, carried as they are); the pixels of the vector it comes from.
* ``preview-short-and-spaced-type``, ``preview-unknown-format``, ``preview-png-as-jpeg``: each with one ``prvw``
  chunk a reader MUST ignore (SPEC.md 5.4: 3 bytes; format 7; a PNG labelled JPEG), the first also with an
  unknown ancillary chunk whose type holds a space (``ab c``, SPEC.md 3.1); the pixels of the vector they come
  from. One bad preview a file: a reader uses the first ``prvw`` and ignores later ones.

An ``edge.json`` entry names the vector's ``file`` and ``decoded`` pixels, where it comes ``from`` and
``what`` it exercises, and records its ``mode``, ``size``, ``model_id``, ``weights_hash``, ``file_sha256``,
``symbols_sha256``, ``pixels_sha256`` and, for a file with metadata, ``metadata_sha256`` (the SHA-256 of each
metadata chunk's data, by ``JacFile`` field: ``icc_profile``, ``exif``, ``xmp``); ``format_spec/conformance.py``
checks them as it checks a generation's. The files never change once written: the script adds the vectors it
lacks and refuses to make an existing one differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "vectors"
OUT = ROOT / "edge"
BASE = "mbt-128-192-r006"


def _chunk(ctype: bytes, data: bytes) -> bytes:
    """One chunk as SPEC.md 3.1 lays it out: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of every chunk of a valid file, in file order."""
    out, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        out.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return out


def _escapes(data: bytes) -> bytes:
    """The file with large latents written into both streams, coded by the generation's own coder."""
    from pillow_jac import codec, container, generations
    from pillow_jac.engine import get_engine

    jac = container.parse(data)
    z_hat, y_hat = (a.copy() for a in codec.decode_symbols(jac))
    rng = np.random.default_rng(7)
    for a, count in ((z_hat, 40), (y_hat, 200)):
        flat = a.reshape(-1)
        at = rng.choice(flat.size, count, replace=False)
        magnitude = np.concatenate([[4095], rng.integers(20, 4096, count - 1)])
        flat[at] = magnitude * rng.choice([-1, 1], count)
    engine = get_engine("cpu", generations.find(jac.header.model_id, jac.header.weights_hash).path)
    z, y = engine.latents.encode(z_hat, y_hat)
    header = dataclasses.replace(jac.header, z_stream_length=len(z), y_stream_length=len(y))
    return container.serialize(dataclasses.replace(jac, header=header, z_stream=z, y_stream=y))


def _preview_and_unknown(data: bytes) -> bytes:
    """A ``prvw`` chunk (a WebP of the source vector's recorded pixels) and two unknown ancillary chunks around it.

    The recorded pixels, not this machine's decode: a decode may differ by one level in a few samples on
    another machine (SPEC.md 9.4), and the preview's bytes must not.
    """
    from pillow_jac.preview import make_preview

    with Image.open(ROOT / BASE / "rgb-130x70-q7.decoded.png") as im:
        preview = make_preview(np.asarray(im.convert("RGB")), "RGB", 48)
    extra = [(b"abcd", b"an unknown ancillary chunk"), (b"prvw", preview), (b"zz9z", bytes(range(40)))]
    return _with_after_jhdr(*extra)(data)


def _reordered(data: bytes) -> bytes:
    """JHDR, the streams, the metadata in reverse, JEND: an order writers do not use but readers accept."""
    chunks = _chunks(data)
    middle = chunks[1:-1]
    streams = [c for c in middle if c[0] in (b"ZSTR", b"YSTR", b"ALPH")][::-1]
    rest = [c for c in middle if c[0] not in (b"ZSTR", b"YSTR", b"ALPH")][::-1]
    return data[:8] + b"".join(_chunk(t, d) for t, d in [chunks[0], *streams, *rest, chunks[-1]])


def _minor_version(data: bytes) -> bytes:
    """The file as version 1.7 (the JHDR's minor version byte, and its CRC)."""
    from pillow_jac import container

    jac = container.parse(data)
    return container.serialize(dataclasses.replace(jac, header=dataclasses.replace(jac.header, version=(1, 7))))


def _one_extra_word(data: bytes) -> bytes:
    """The file with the word ``0x78563412`` appended to its y stream (its header length and CRCs made to agree)."""
    from pillow_jac import container

    jac = container.parse(data)
    y = jac.y_stream + b"\x12\x34\x56\x78"
    header = dataclasses.replace(jac.header, y_stream_length=len(y))
    return container.serialize(dataclasses.replace(jac, header=header, y_stream=y))


def _metadata_empty_and_unprefixed(data: bytes) -> bytes:
    """The metadata vector with an empty ``iccp`` and ``xmp `` and its EXIF stored without its 6-byte prefix."""
    chunks = _chunks(data)
    changed = {b"iccp": lambda d: b"", b"xmp ": lambda d: b"", b"exif": lambda d: d.removeprefix(b"Exif\0\0")}
    assert all(t in {c[0] for c in chunks} for t in changed) and b"".join(c[1] for c in chunks).find(b"Exif\0\0") >= 0
    return data[:8] + b"".join(_chunk(t, changed[t](d) if t in changed else d) for t, d in chunks)


def _png_35x65() -> bytes:
    """A 35x65 PNG: the size of a preview of the 70x130 source, in a format a ``prvw`` cannot hold."""
    import io

    png = io.BytesIO()
    Image.new("RGB", (35, 65), (200, 100, 50)).save(png, "PNG")
    return png.getvalue()


def _with_after_jhdr(*extra: tuple[bytes, bytes]) -> Callable[[bytes], bytes]:
    """A builder that puts the chunks ``extra`` right after JHDR."""

    def build(data: bytes) -> bytes:
        chunks = _chunks(data)
        return data[:8] + b"".join(_chunk(t, d) for t, d in [chunks[0], *extra, *chunks[1:]])

    return build


#: name -> (source vector, what it exercises, how the file is made from the source's bytes)
CASES: dict[str, tuple[str, str, Callable[[bytes], bytes]]] = {
    "escapes": ("rgb-130x70-q7.jac", "CODING 2.3: z and y escapes of classes up to 11, values up to 4095", _escapes),
    "preview-and-unknown": (
        "rgb-130x70-q7.jac", "SPEC 5.3, 5.4: a prvw chunk and unknown ancillary chunks, skipped", _preview_and_unknown,
    ),
    "chunks-reordered": (
        "rgb-32x32-q4-meta.jac", "SPEC 4.3: streams before metadata, each group reversed", _reordered,
    ),
    "minor-version": ("rgba-16x16-q8.jac", "SPEC 9.1: format version 1.7 decodes as 1.0", _minor_version),
    "ystr-one-extra-word": (
        "rgb-130x70-q7.jac", "CODING 2.4: one appended word leaves the decoder exhausted: valid", _one_extra_word,
    ),
    "metadata-empty-and-unprefixed": (
        "rgb-32x32-q4-meta.jac", "SPEC 5.2: empty iccp and xmp chunks, EXIF without its Exif\\0\\0 prefix",
        _metadata_empty_and_unprefixed,
    ),
    "preview-short-and-spaced-type": (
        "rgb-130x70-q7.jac", "SPEC 5.4, 3.1: a prvw of 3 bytes, ignored; an ancillary type with a space",
        _with_after_jhdr((b"prvw", b"\x00\x00\x23"), (b"ab c", b"a type with a space")),
    ),
    "preview-unknown-format": (
        "rgb-130x70-q7.jac", "SPEC 5.4: a prvw of format 7, ignored",
        lambda data: _with_after_jhdr((b"prvw", b"\x07\x00\x23\x00\x41" + _png_35x65()))(data),
    ),
    "preview-png-as-jpeg": (
        "rgb-130x70-q7.jac", "SPEC 5.4: a prvw labelled JPEG that holds a PNG, ignored",
        lambda data: _with_after_jhdr((b"prvw", b"\x00\x00\x23\x00\x41" + _png_35x65()))(data),
    ),
}  # fmt: skip


def _entry(name: str, source: str, what: str, data: bytes, out: Path) -> dict:
    from pillow_jac import codec, container

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_vectors import digest, symbols_digest

    (out / f"{name}.jac").write_bytes(data)
    pixels = codec.decode(data)
    Image.fromarray(pixels).save(out / f"{name}.decoded.png")
    jac = container.parse(data)
    header = jac.header
    metadata = jac.metadata_digests()
    return {
        "file": f"{name}.jac",
        "from": f"{BASE}/{source}",
        "what": what,
        "decoded": f"{name}.decoded.png",
        "mode": header.layout,
        "size": [header.width, header.height],
        "model_id": header.model_id,
        "weights_hash": header.weights_hash.hex(),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "symbols_sha256": symbols_digest(data),
        "pixels_sha256": digest(pixels),
        **({"metadata_sha256": metadata} if metadata else {}),
    }


def make(out: Path = OUT) -> dict:
    """Write every edge vector into ``out`` and its ``edge.json``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, (source, what, build) in CASES.items():
        data = build((ROOT / BASE / source).read_bytes())
        table[name] = _entry(name, source, what, data, out)
    (out / "edge.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    """Add the edge vectors ``OUT`` lacks; refuse when an existing one would be made differently."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_vectors import add_missing

    return add_missing(OUT, "edge.json", make, "edge", files=("file", "decoded"))


if __name__ == "__main__":
    sys.exit(main())
