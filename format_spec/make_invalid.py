"""Write the invalid vectors: files a decoder MUST reject (SPEC.md section 8.2, CODING.md section 2.4).

``python format_spec/make_invalid.py`` writes ``format_spec/vectors/invalid/``: each file is a release-6
vector with one rule broken, of the streams, the alpha plane or the container (rules 1-11 of section 8.2),
everything else valid (lengths and CRCs recomputed where they are not the rule), so that a decoder that
does not apply the rule decodes it, or rejects it only later by another rule (SPEC.md 9.4 names those).
``invalid.json`` names, for each, the vector it comes from, the rule, and the error the reference
implementation raises (informative: only rejection is normative).
``format_spec/conformance.py`` checks that every one is rejected. The files never change once written:
the script adds the vectors it lacks, and refuses to run when it would make an existing one differently.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "vectors"
OUT = ROOT / "invalid"
BASE = "mbt-128-192-r006"


def _with(jac, *, z: bytes | None = None, y: bytes | None = None, alpha: bytes | None = None) -> bytes:
    """The file of ``jac`` with other streams or alpha payload, its header lengths and CRCs made to agree."""
    from pillow_jac import container

    z = jac.z_stream if z is None else z
    y = jac.y_stream if y is None else y
    header = dataclasses.replace(jac.header, z_stream_length=len(z), y_stream_length=len(y))
    return container.serialize(
        dataclasses.replace(jac, header=header, z_stream=z, y_stream=y, alpha=jac.alpha if alpha is None else alpha)
    )


def _engine(jac):
    """The engine of the generation that made ``jac``."""
    from pillow_jac import generations
    from pillow_jac.engine import get_engine

    return get_engine("cpu", generations.find(jac.header.model_id, jac.header.weights_hash).path)


def _latent_out_of_range(part: str) -> Callable:
    """A builder that codes one latent of ``part`` (``"z"`` or ``"y"``) as 5000.

    An escape can carry it; the encoder's clamp is 4095. The y stream is coded with the hyperprior of the z.
    """

    def build(jac) -> bytes:
        from pillow_jac import codec

        latents = dict(zip(("z", "y"), codec.decode_symbols(jac), strict=True))
        latents[part] = latents[part].copy()
        latents[part][0, 0, 0] = 5000
        z_stream, y_stream = _engine(jac).latents.encode(latents["z"], latents["y"])
        return _with(jac, z=z_stream, y=y_stream)

    return build


#: a 2048x1024 image (8192 latent positions): large enough for the bounds of CODING 2.4 to bite
_LARGE = (2048, 1024)


@functools.cache
def _zero_streams(engine) -> tuple[bytes, bytes]:
    """The coded ``(z, y)`` streams of a 2048x1024 image's all-zero latents (coded once per engine)."""
    import numpy as np

    from pillow_jac.container.structure import latent_shapes

    y_shape, z_shape = latent_shapes(*_LARGE)
    z_hat = np.zeros((engine.config.N, *z_shape), np.int64)
    y_hat = np.zeros((engine.config.M, *y_shape), np.int64)
    return engine.latents.encode(z_hat, y_hat)


def _large(jac, cut: int) -> bytes:
    """A 2048x1024 file of all-zero latents whose YSTR is cut to its first ``cut`` bytes."""
    from pillow_jac.container.structure import latent_shapes

    width, height = _LARGE
    y_shape, z_shape = latent_shapes(width, height)
    z_stream, y_stream = _zero_streams(_engine(jac))
    header = dataclasses.replace(jac.header, width=width, height=height, y_shape=y_shape, z_shape=z_shape)
    return _with(dataclasses.replace(jac, header=header), z=z_stream, y=y_stream[:cut])


def _alpha_plane_short(jac) -> bytes:
    """The alpha plane one byte short of width x height, as one complete zlib stream."""
    return _with(jac, alpha=zlib.compress(zlib.decompress(jac.alpha)[:-1], 9))


def _alpha_unfinished(jac) -> bytes:
    """The alpha plane as a zlib stream flushed but never finished (no final block, no Adler-32)."""
    packer = zlib.compressobj(9)
    return _with(jac, alpha=packer.compress(zlib.decompress(jac.alpha)) + packer.flush(zlib.Z_SYNC_FLUSH))


def _alpha_bad_adler(jac) -> bytes:
    """The alpha plane's zlib stream with its Adler-32 (the last 4 bytes) off by one bit."""
    return _with(jac, alpha=jac.alpha[:-1] + bytes([jac.alpha[-1] ^ 1]))


def _preset_dictionary(jac) -> bytes:
    """The alpha plane as a zlib stream that sets FDICT (a preset dictionary)."""
    plane = zlib.decompress(jac.alpha)
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=b"jac preset dictionary")
    return _with(jac, alpha=packer.compress(plane) + packer.flush())


def _chunks(data: bytes) -> list[list[bytes]]:
    """The ``[type, data]`` of each chunk of a valid file, after its signature (SPEC.md section 3.1)."""
    from pillow_jac.constants import MAGIC

    at, chunks = len(MAGIC), []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append([data[at + 4 : at + 8], data[at + 8 : at + 8 + length]])
        at += 12 + length
    return chunks


def _file(chunks: list[list[bytes]], bad_crc: bytes | None = None) -> bytes:
    """A file of ``chunks`` with the right lengths and CRCs, except the CRC of the chunk type ``bad_crc``."""
    from pillow_jac.constants import MAGIC

    out = bytearray(MAGIC)
    for ctype, payload in chunks:
        crc = zlib.crc32(payload, zlib.crc32(ctype)) ^ (1 if ctype == bad_crc else 0)
        out += struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)
    return bytes(out)


#: JHDR's fields in order (SPEC.md section 3.2), as :func:`_jhdr_fields` names them
_JHDR_NAMES = ("major", "minor", "flags", "layout", "width", "height", "quality", "model_id", "weights_hash",
               "y_height", "y_width", "z_height", "z_width", "z_stream_length", "y_stream_length")  # fmt: skip


def _jhdr_fields(streams_empty: bool = False, **values: int) -> Callable:
    """A builder that sets JHDR's named fields to ``values`` (the CRC recomputed).

    With ``streams_empty`` it empties ``ZSTR`` and ``YSTR`` (their JHDR lengths 0), so that only the rule
    under test is broken.
    """

    def build(jac) -> bytes:
        from pillow_jac import container
        from pillow_jac.container.structure import JHDR

        chunks = _chunks(container.serialize(jac))
        fields = dict(zip(_JHDR_NAMES, JHDR.unpack(chunks[0][1]), strict=True))
        fields.update(values)
        if streams_empty:
            fields.update(z_stream_length=0, y_stream_length=0)
            for chunk in chunks:
                chunk[1] = b"" if chunk[0] in (b"ZSTR", b"YSTR") else chunk[1]
        chunks[0][1] = JHDR.pack(*fields.values())
        return _file(chunks)

    return build


def _edited(edit: Callable[[list[list[bytes]]], object], bad_crc: bytes | None = None) -> Callable:
    """A builder that edits the list of ``[type, data]`` chunks in place, then writes them out."""

    def build(jac) -> bytes:
        from pillow_jac import container

        chunks = _chunks(container.serialize(jac))
        edit(chunks)
        return _file(chunks, bad_crc)

    return build


def _index(chunks: list[list[bytes]], ctype: bytes) -> int:
    return next(i for i, (t, _) in enumerate(chunks) if t == ctype)


def _payload(ctype: bytes, change: Callable[[bytes], bytes]) -> Callable:
    """A builder that replaces the data of the chunk ``ctype`` with ``change(data)`` (its length and CRC agree)."""

    def edit(chunks: list[list[bytes]]) -> None:
        chunk = chunks[_index(chunks, ctype)]
        chunk[1] = change(chunk[1])

    return _edited(edit)


#: name -> (source vector, rule, the reference implementation's error, how the file is made from the source's)
CASES: dict[str, tuple[str, str, str, Callable]] = {
    "ystr-partial-word": (
        "rgb-130x70-q7.jac", "CODING 2.4: a stream is whole 32-bit words", "EntropyCodingError",
        lambda jac: _with(jac, y=jac.y_stream + b"\x00"),
    ),
    "ystr-two-extra-words": (
        "rgb-130x70-q7.jac", "CODING 2.4: no data after the last symbol", "EntropyCodingError",
        lambda jac: _with(jac, y=jac.y_stream + b"\x12\x34\x56\x78" * 2),
    ),
    "zstr-cut-short": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 12: ZSTR cut to one word (data left after its last z symbol)",
        "EntropyCodingError",
        lambda jac: _with(jac, z=jac.z_stream[:4]),
    ),
    "y-latent-out-of-range": (
        "rgb-130x70-q7.jac", "CODING 1.4: decoded latents lie in -4095..4095", "EntropyCodingError",
        _latent_out_of_range("y"),
    ),
    "ystr-invalid-data": (
        "rgb-130x70-q7.jac", "CODING 2.4: the point lies outside every symbol's interval (invalid data)",
        "EntropyCodingError",
        lambda jac: _with(jac, y=b"\xff" * 8 + jac.y_stream[8:]),
    ),
    "ystr-too-short": (
        "rgb-130x70-q7.jac", "CODING 2.4: a stream shorter than its symbols' length bound (2048x1024, 4 bytes)",
        "EntropyCodingError",
        lambda jac: _large(jac, 4),
    ),
    "ystr-runs-out": (
        "rgb-130x70-q7.jac", "CODING 2.4: the data runs out with more symbols to decode (2048x1024, 8 bytes)",
        "EntropyCodingError",
        lambda jac: _large(jac, 8),
    ),
    "z-latent-out-of-range": (
        "rgb-130x70-q7.jac", "CODING 1.4: decoded latents lie in -4095..4095 (z)", "EntropyCodingError",
        _latent_out_of_range("z"),
    ),
    "alph-plane-short": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 12: the alpha plane is width x height bytes", "JacDataError",
        _alpha_plane_short,
    ),
    "alph-trailing-byte": (
        "la-20x33-q2.jac", "SPEC 5.1: nothing follows the zlib stream", "JacDataError",
        lambda jac: _with(jac, alpha=jac.alpha + b"\x00"),
    ),
    "alph-preset-dictionary": (
        "la-20x33-q2.jac", "SPEC 5.1: FDICT is 0", "JacDataError",
        _preset_dictionary,
    ),
    "ends-before-jend": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 1: the file ends before JEND", "JacTruncatedError",
        _edited(lambda chunks: chunks.pop()),
    ),
    "chunk-longer-than-file": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 2: a chunk length beyond the bytes left", "JacTruncatedError",
        lambda jac: _file(_chunks(_with(jac))[:-1]) + struct.pack(">I", 1000) + b"abcd" + bytes(16),
    ),
    "chunk-type-not-a-letter": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 3: chunk type byte 0 is an ASCII letter", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, [b"1abc", b""])),
    ),
    "ystr-bad-crc": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 4: a critical chunk's CRC does not match", "JacDataError",
        _edited(lambda chunks: None, bad_crc=b"YSTR"),
    ),
    "first-chunk-not-jhdr": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 5: the first chunk is JHDR", "JacDataError",
        _edited(lambda chunks: chunks.insert(0, [b"abcd", b"x"])),
    ),
    "jhdr-major-version-2": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: major version 1", "JacDataError", _jhdr_fields(major=2),
    ),
    "jhdr-flags-set": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: flags are 0", "JacDataError", _jhdr_fields(flags=1),
    ),
    "jhdr-quality-above-2048": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: quality 256 to 2048", "JacDataError",
        _jhdr_fields(quality=2049),
    ),
    "jhdr-model-id-after-nul": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: nothing but NULs after the model_id's first NUL", "JacDataError",
        _jhdr_fields(model_id=b"mbt-128-192-r\x0006"),
    ),
    "jhdr-latent-shape": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: the latent shapes are those derived from the size", "JacDataError",
        _jhdr_fields(y_height=6),
    ),
    "unknown-critical-chunk": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 7: a critical chunk type this version does not define", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, [b"QUUX", b""])),
    ),
    "second-ystr": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 8: one YSTR", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, list(chunks[_index(chunks, b"YSTR")]))),
    ),
    "ystr-length-not-jhdrs": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 9: YSTR's length is JHDR's y stream length", "JacDataError",
        _payload(b"YSTR", lambda data: data + bytes(4)),
    ),
    "alph-in-rgb": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 10: no ALPH for RGB", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, [b"ALPH", b"\x00" + zlib.compress(bytes(130 * 70), 9)])),
    ),
    "alph-empty": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 10: ALPH is not empty", "JacDataError",
        _payload(b"ALPH", lambda data: b""),
    ),
    "jend-not-empty": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 11: JEND is empty", "JacDataError",
        _payload(b"JEND", lambda data: b"\x00"),
    ),
    "byte-after-jend": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 11: nothing follows JEND", "JacDataError",
        lambda jac: _with(jac) + b"\x00",
    ),
    "exif-bad-crc": (
        "rgb-32x32-q4-meta.jac", "SPEC 8.2 rule 4: an ancillary chunk's CRC does not match (only a reader asked to "
        "recover may skip it, SPEC 8.3)", "JacDataError",
        _edited(lambda chunks: None, bad_crc=b"exif"),
    ),
    "jhdr-bad-crc": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 4: JHDR's CRC does not match", "JacDataError",
        _edited(lambda chunks: None, bad_crc=b"JHDR"),
    ),
    "jend-bad-crc": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rules 4 and 11: JEND's CRC does not match", "JacDataError",
        _edited(lambda chunks: None, bad_crc=b"JEND"),
    ),
    "chunk-type-byte-3-not-allowed": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 3: chunk type bytes 1 to 3 are letters, digits or spaces",
        "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, [b"abc-", b""])),
    ),
    "jhdr-55-bytes": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 5: JHDR is 54 bytes long", "JacDataError",
        _edited(lambda chunks: chunks[0].__setitem__(1, chunks[0][1] + b"\x00")),
    ),
    "jhdr-layout-4": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: layout code 0 to 3", "JacDataError", _jhdr_fields(layout=4),
    ),
    "jhdr-width-0": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: width 1 to 65535 (latent widths 0 and empty streams agree with it)",
        "JacDataError",
        _jhdr_fields(streams_empty=True, width=0, y_width=0, z_width=0),
    ),
    "jhdr-height-65536": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: height 1 to 65535 (the latent heights agree with it)",
        "JacDataError",
        _jhdr_fields(height=65536, y_height=4096, z_height=1024),
    ),
    "jhdr-quality-below-256": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: quality 256 to 2048", "JacDataError", _jhdr_fields(quality=255),
    ),
    "jhdr-model-id-all-nul": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: a model_id of at least one byte", "JacDataError",
        _jhdr_fields(model_id=bytes(16)),
    ),
    "jhdr-model-id-not-printable": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 6: model_id bytes 0x20 to 0x7E", "JacDataError",
        _jhdr_fields(model_id=b"mbt-128-192-r00\x7f"),
    ),
    "second-jhdr": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 8: one JHDR", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, list(chunks[0]))),
    ),
    "second-zstr": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 8: one ZSTR", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, list(chunks[_index(chunks, b"ZSTR")]))),
    ),
    "second-exif": (
        "rgb-32x32-q4-meta.jac", "SPEC 8.2 rule 8: at most one exif", "JacDataError",
        _edited(lambda chunks: chunks.insert(-1, list(chunks[_index(chunks, b"exif")]))),
    ),
    "zstr-missing": (
        "rgb-130x70-q7.jac", "SPEC 8.2 rule 9: ZSTR present", "JacDataError",
        _edited(lambda chunks: chunks.pop(_index(chunks, b"ZSTR"))),
    ),
    "rgba-without-alph": (
        "rgba-16x16-q8.jac", "SPEC 8.2 rule 10: ALPH present for RGBA", "JacDataError",
        _edited(lambda chunks: chunks.pop(_index(chunks, b"ALPH"))),
    ),
    "alph-method-1": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 10: ALPH method 0", "JacDataError",
        _payload(b"ALPH", lambda data: b"\x01" + data[1:]),
    ),
    "alph-plane-long": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 12: the alpha plane is width x height bytes (one more here)",
        "JacDataError",
        lambda jac: _with(jac, alpha=zlib.compress(zlib.decompress(jac.alpha) + b"\xff", 9)),
    ),
    "alph-bad-adler32": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 12: one complete zlib stream (its Adler-32 matches)", "JacDataError",
        _alpha_bad_adler,
    ),
    "alph-unfinished": (
        "la-20x33-q2.jac", "SPEC 8.2 rule 12: one complete zlib stream (this one has no final block)",
        "JacDataError",
        _alpha_unfinished,
    ),
    "zstr-partial-word": (
        "rgb-130x70-q7.jac", "CODING 2.4: a stream is whole 32-bit words (ZSTR)", "EntropyCodingError",
        lambda jac: _with(jac, z=jac.z_stream + b"\x00"),
    ),
}  # fmt: skip


def make(out: Path = OUT) -> dict:
    """Write every invalid vector into ``out`` and its ``invalid.json``; returns the table."""
    from pillow_jac import container

    out.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, (source, rule, error, build) in CASES.items():
        data = build(container.parse((ROOT / BASE / source).read_bytes()))
        (out / f"{name}.jac").write_bytes(data)
        table[name] = {
            "file": f"{name}.jac",
            "from": f"{BASE}/{source}",
            "rule": rule,
            "error": error,
            "file_sha256": hashlib.sha256(data).hexdigest(),
        }
    (out / "invalid.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    """Add the invalid vectors ``OUT`` lacks; refuse when an existing one would be made differently."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_vectors import add_missing

    return add_missing(OUT, "invalid.json", make, "invalid")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
