"""Tests of the .jac container (format_spec/SPEC.md sections 2-5, 8, 9). Pure standard library."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest

from pillow_jac import constants as C
from pillow_jac.container import (
    JacFile,
    JacFormatError,
    JacHeader,
    NotJacFileError,
    accept,
    compress_alpha,
    decompress_alpha,
    latent_shapes,
    parse,
    quality_to_u16,
    quantize_quality,
    read,
    read_file,
    read_header,
    serialize,
    u16_to_quality,
)

HEADER_BYTES = 8 + 12 + C.JHDR_LENGTH  # signature + JHDR chunk
LAYOUTS = ["RGB", "L", "RGBA", "LA"]


# ------------------------------------------------------------------------------------------------
# helpers


def make(layout="RGB", width=70, height=33, metadata=False, unknown=(), quality=3.5, **kw) -> JacFile:
    alpha = None
    if layout in ("RGBA", "LA"):
        _, alpha = compress_alpha(bytes(i % 251 for i in range(width * height)), width, height)
    if metadata:
        kw.setdefault("icc_profile", b"ICC" * 5)
        kw.setdefault("exif", b"Exif\0\0MM\0*" + bytes(8))
        kw.setdefault("xmp", b"<x:xmpmeta/>")
    return JacFile.create(
        width=width,
        height=height,
        layout=layout,
        quality=quality,
        model_id="mbt2018-test",
        weights_hash=bytes(range(8)),
        z_stream=b"zstream",
        y_stream=b"y-stream-bytes",
        alpha=alpha,
        unknown_chunks=list(unknown),
        **kw,
    )


def chunk(ctype: bytes, data: bytes = b"", *, length: int | None = None, crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(ctype + data)
    return struct.pack(">I", len(data) if length is None else length) + ctype + data + struct.pack(">I", crc)


def jhdr(**fields) -> bytes:
    """JHDR data of a valid 70x33 RGB file, with any field overridden."""
    f = dict(
        major=1,
        minor=0,
        flags=0,
        layout=0,
        width=70,
        height=33,
        quality=896,
        model_id=b"mbt2018-test",
        weights_hash=bytes(range(8)),
        yh=4,
        yw=8,
        zh=1,
        zw=2,
        zlen=7,
        ylen=14,
    )
    f.update(fields)
    return struct.pack(">BBBBIIH16s8sHHHHII", *f.values())


def build(*chunks: bytes, magic: bytes = C.MAGIC) -> bytes:
    return magic + b"".join(chunks)


def split_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, data) of each chunk of a well-formed file."""
    out, pos = [], len(C.MAGIC)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def body() -> list[bytes]:
    """The chunks after JHDR of the valid file jhdr() describes."""
    return [chunk(b"ZSTR", b"zstream"), chunk(b"YSTR", b"y-stream-bytes"), chunk(b"JEND")]


class Stream(io.RawIOBase):
    """A non-seekable stream that returns at most ``piece`` bytes per read and records requests."""

    def __init__(self, data: bytes, piece: int = 3):
        self.data, self.pos, self.piece, self.requests = data, 0, piece, []

    def readable(self):
        return True

    def read(self, n=-1):
        self.requests.append(n)
        n = len(self.data) - self.pos if n is None or n < 0 else n
        out = self.data[self.pos : self.pos + min(n, self.piece)]
        self.pos += len(out)
        return out


class Counting(io.BytesIO):
    """A BytesIO that records every read size and the bytes it returned."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.requests, self.returned = [], 0

    def read(self, n=-1):
        self.requests.append(n)
        out = super().read(n)
        self.returned += len(out)
        return out


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("metadata", [False, True])
@pytest.mark.parametrize("unknown", [(), ((b"abcd", b"data"), (b"zzz1", b""), (b"abcd", b"again"))])
def test_round_trip(layout, metadata, unknown):
    jac = make(layout, metadata=metadata, unknown=unknown)
    data = serialize(jac)
    assert data.startswith(C.MAGIC)
    assert accept(data[:16])
    for form in (data, bytearray(data), memoryview(data)):
        assert parse(form, keep_unknown=True) == jac
    assert read_file(io.BytesIO(data), keep_unknown=True) == jac
    assert read_file(Stream(data), keep_unknown=True) == jac
    fp = io.BytesIO(data)
    header = read_header(fp)
    assert header == jac.header
    assert header.mode == layout
    assert read_file(fp, header, keep_unknown=True) == jac
    assert serialize(parse(data, keep_unknown=True)) == data
    assert parse(data, keep_unknown=True).unknown_chunks == list(unknown)
    # by default unknown chunks are skipped: the rest is the same
    skipped = parse(data)
    assert skipped.unknown_chunks == []
    skipped.unknown_chunks = list(unknown)
    assert skipped == jac


def test_read_takes_a_path_bytes_or_a_file(tmp_path):
    jac = make("RGBA", metadata=True, unknown=[(b"abcd", b"u")])
    data = serialize(jac)
    path = tmp_path / "a.jac"
    path.write_bytes(data)
    jac.unknown_chunks = []  # skipped unless asked for
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), Stream(data)):
        assert read(source) == jac
    assert read(path, keep_unknown=True).unknown_chunks == [(b"abcd", b"u")]
    with open(path, "rb") as f:
        assert read(f) == jac
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(NotJacFileError):
        read(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.jac")


def test_writer_chunk_order():
    data = serialize(make("RGBA", metadata=True, unknown=[(b"abcd", b"x")]))
    types = [t for _, t, _ in split_chunks(data)]
    assert types == [b"JHDR", b"iccp", b"exif", b"xmp ", b"abcd", b"ALPH", b"ZSTR", b"YSTR", b"JEND"]
    assert [t for _, t, _ in split_chunks(serialize(make("L")))] == [b"JHDR", b"ZSTR", b"YSTR", b"JEND"]


def test_reader_accepts_any_chunk_order():
    data = build(
        chunk(b"JHDR", jhdr()),
        chunk(b"YSTR", b"y-stream-bytes"),
        chunk(b"exif", b"E"),
        chunk(b"ZSTR", b"zstream"),
        chunk(b"iccp", b"I"),
        chunk(b"JEND"),
    )
    jac = parse(data)
    assert (jac.z_stream, jac.y_stream, jac.exif, jac.icc_profile, jac.xmp) == (
        b"zstream",
        b"y-stream-bytes",
        b"E",
        b"I",
        None,
    )


def test_jhdr_layout_is_byte_exact():
    data = serialize(make("LA", width=130, height=65, quality=2.25))
    assert data[8:16] == struct.pack(">I", C.JHDR_LENGTH) + b"JHDR"
    assert data[16:70] == jhdr(layout=3, width=130, height=65, quality=576, yh=8, yw=12, zh=2, zw=3, zlen=7, ylen=14)


def test_header_create():
    h = JacHeader.create(100, 50, "RGB", 4.3, "demo", bytearray(8), 3, 4)
    assert h == JacHeader((1, 0), 100, 50, "RGB", 1101, "demo", bytes(8), (4, 8), (1, 2), 3, 4)
    assert h.quality == 1101 / 256
    assert JacHeader.create(100, 50, "RGB", None, "demo", bytes(8), 3, 4, q16=1101) == h
    with pytest.raises(ValueError, match="quality or q16"):
        JacHeader.create(100, 50, "RGB", 4.3, "demo", bytes(8), q16=1101)


def test_header_fields():
    h = make("RGBA", width=1000, height=1, quality=7.75).header
    assert (h.version, h.width, h.height, h.layout, h.mode, h.has_alpha) == ((1, 0), 1000, 1, "RGBA", "RGBA", True)
    assert (h.quality, h.model_id, h.weights_hash) == (7.75, "mbt2018-test", bytes(range(8)))
    assert (h.y_shape, h.z_shape) == ((4, 64), (1, 16))


def test_empty_streams_and_metadata_round_trip():
    jac = JacFile.create(
        width=1, height=1, layout="L", quality=1, model_id="m", weights_hash=bytes(8),
        z_stream=b"", y_stream=b"", icc_profile=b"", exif=b"", xmp=b"",
    )  # fmt: skip
    assert parse(serialize(jac)) == jac


def test_largest_dimensions():
    jac = make("L", width=C.MAX_DIMENSION, height=C.MAX_DIMENSION)
    assert jac.header.y_shape == (4096, 4096)
    assert parse(serialize(jac)) == jac


def test_higher_minor_version_is_readable():
    jac = make()
    jac.header.version = (C.FORMAT_VERSION[0], C.FORMAT_VERSION[1] + 3)
    assert parse(serialize(jac)).header.version == jac.header.version


def test_spec_example_matches_the_writer():
    spec = (Path(__file__).parents[1] / "format_spec" / "SPEC.md").read_text()
    block = spec.split("```example-file\n", 1)[1].split("```", 1)[0]
    expected = bytes.fromhex("".join(line.split("#")[0] for line in block.splitlines()))
    alpha = bytes.fromhex("78daedc13101000000c2a0fea9670a3fa00000000080b70154b27596")  # zlib of 5000 x FF
    jac = JacFile.create(
        width=100, height=50, layout="LA", quality=4.5, model_id="demo", weights_hash=bytes(range(1, 9)),
        z_stream=b"\x11\x22", y_stream=b"\x33\x44\x55", alpha=alpha,
    )  # fmt: skip
    assert serialize(jac) == expected
    assert parse(expected) == jac
    assert decompress_alpha(0, alpha, 100, 50) == b"\xff" * 5000


# ------------------------------------------------------------------------------------------------
# helpers of the API


def test_latent_shapes():
    assert latent_shapes(1, 1) == ((4, 4), (1, 1))
    assert latent_shapes(64, 64) == ((4, 4), (1, 1))
    assert latent_shapes(65, 128) == ((8, 8), (2, 2))
    assert latent_shapes(640, 480) == ((32, 40), (8, 10))
    for bad in [(0, 5), (5, -1), (1.5, 2)]:
        with pytest.raises(ValueError):
            latent_shapes(*bad)


def test_quality_helpers():
    assert quality_to_u16(1) == 256
    assert quality_to_u16(8) == 2048
    assert u16_to_quality(quality_to_u16(5.125)) == 5.125
    assert quantize_quality(4.3) == 1101 / 256
    for bad in [0.5, 8.01, float("nan"), "high", 75]:
        with pytest.raises(ValueError):
            quality_to_u16(bad)


def test_accept():
    assert accept(C.MAGIC)
    assert not accept(C.MAGIC[:7])
    assert not accept(b"")
    assert not accept(b"\x89PNG\r\n\x1a\n")


# ------------------------------------------------------------------------------------------------
# serialize validates its input


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("version", (2, 0), "unsupported JAC format version 2.0"),
        ("version", (1,), "version must be"),
        ("width", 0, "width must be from 1"),
        ("height", C.MAX_DIMENSION + 1, "height must be from 1"),
        ("layout", "CMYK", "unknown layout"),
        ("q16", 128, "quality must be from"),
        ("q16", 9 * 256, "quality must be from"),
        ("q16", 4.5 * 256, "quality must be from"),
        ("q16", True, "quality must be from"),
        ("model_id", "", "model_id"),
        ("model_id", "x" * 17, "model_id"),
        ("model_id", "caf\xe9", "model_id"),
        ("model_id", "a\0b", "model_id"),
        ("weights_hash", bytes(7), "weights_hash"),
        ("y_shape", (4, 4), "y shape"),
        ("z_shape", (1, 1), "z shape"),
        ("z_stream_length", 8, "z_stream is 7 bytes"),
        ("y_stream_length", 0, "y_stream is 14 bytes"),
        ("y_stream_length", -1, "y_stream_length must be"),
    ],
)
def test_serialize_rejects_bad_header(field, value, match):
    jac = make()
    setattr(jac.header, field, value)
    with pytest.raises(ValueError, match=match):
        serialize(jac)


@pytest.mark.parametrize(
    "layout, changes, match",
    [
        ("RGB", {"alpha": b"x"}, "has no alpha channel"),
        ("RGBA", {"alpha": None}, "needs alpha"),
        ("LA", {"alpha_method": 1}, "unknown alpha_method"),
        ("RGB", {"z_stream": "text"}, "z_stream must be bytes"),
        ("RGB", {"exif": 5}, "exif must be bytes or None"),
        ("RGB", {"unknown_chunks": [(b"ABCD", b"")]}, "only hold ancillary"),
        ("RGB", {"unknown_chunks": [(b"iccp", b"")]}, "known chunk"),
        ("RGB", {"unknown_chunks": [(b"ab!d", b"")]}, "invalid chunk type"),
        ("RGB", {"unknown_chunks": [(b"abc", b"")]}, "invalid chunk type"),
        ("RGB", {"unknown_chunks": [b"abcd"]}, "tuples"),
    ],
)
def test_serialize_rejects_bad_file(layout, changes, match):
    jac = make(layout)
    for k, v in changes.items():
        setattr(jac, k, v)
    with pytest.raises(ValueError, match=match):
        serialize(jac)


# ------------------------------------------------------------------------------------------------
# parse: header validation


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"major": 2}, "unsupported JAC format version 2.0"),
        ({"major": 0}, "unsupported JAC format version 0.0"),
        ({"flags": 1}, "flags"),
        ({"layout": 4}, "unknown layout code 4"),
        ({"width": 0}, "width must be from 1"),
        ({"height": 0}, "height must be from 1"),
        ({"width": C.MAX_DIMENSION + 1}, "width must be from 1"),
        ({"height": 2**32 - 1}, "height must be from 1"),
        ({"quality": 255}, "quality must be from"),
        ({"quality": 2049}, "quality must be from"),
        ({"quality": 0xFFFF}, "quality must be from"),
        ({"model_id": bytes(16)}, "model_id"),
        ({"model_id": b"ab\0cd"}, "model_id"),
        ({"model_id": b"\xffbad"}, "model_id"),
        ({"model_id": b"tab\there"}, "model_id"),
        ({"yh": 5}, "y shape"),
        ({"yw": 0}, "y shape"),
        ({"zh": 2}, "z shape"),
        ({"zw": 0xFFFF}, "z shape"),
        ({"zlen": C.MAX_CHUNK_BYTES + 1}, "z_stream_length must be"),
        ({"ylen": 2**32 - 1}, "y_stream_length must be"),
    ],
)
def test_parse_rejects_bad_jhdr(fields, match):
    data = build(chunk(b"JHDR", jhdr(**fields)), *body())
    with pytest.raises(JacFormatError, match=match):
        parse(data)
    with pytest.raises(JacFormatError, match=match):
        read_header(io.BytesIO(data))


def test_parse_accepts_valid_jhdr_variants():
    assert parse(build(chunk(b"JHDR", jhdr(minor=200)), *body())).header.version == (1, 200)
    assert parse(build(chunk(b"JHDR", jhdr(model_id=b"x" * 16)), *body())).header.model_id == "x" * 16
    assert parse(build(chunk(b"JHDR", jhdr(quality=257)), *body())).header.quality == 257 / 256


# ------------------------------------------------------------------------------------------------
# parse: structure errors


VALID_JHDR = chunk(b"JHDR", jhdr())
Z, Y, END = chunk(b"ZSTR", b"zstream"), chunk(b"YSTR", b"y-stream-bytes"), chunk(b"JEND")


@pytest.mark.parametrize(
    "chunks, match",
    [
        ([], "no JHDR chunk"),
        ([Z, VALID_JHDR, Y, END], "first chunk must be JHDR"),
        ([chunk(b"JHDR", jhdr() + b"\0"), Z, Y, END], "'JHDR' is 55 bytes but must be 54"),
        ([chunk(b"JHDR", jhdr(), crc=0), Z, Y, END], "CRC mismatch in chunk 'JHDR'"),
        ([VALID_JHDR], "no JEND chunk"),
        ([VALID_JHDR, Z, Y], "no JEND chunk"),
        ([VALID_JHDR, Z, Y, END, b"\0"], "data after the JEND chunk"),
        ([VALID_JHDR, Z, Y, END, END], "data after the JEND chunk"),
        ([VALID_JHDR, Z, Y, chunk(b"JEND", b"x")], "'JEND' is 1 bytes but must be 0"),
        ([VALID_JHDR, Z, Z, Y, END], "duplicate chunk 'ZSTR'"),
        ([VALID_JHDR, Z, Y, Y, END], "duplicate chunk 'YSTR'"),
        ([VALID_JHDR, VALID_JHDR, Z, Y, END], "duplicate chunk 'JHDR'"),
        ([VALID_JHDR, chunk(b"iccp", b"a"), chunk(b"iccp", b"b"), Z, Y, END], "duplicate chunk 'iccp'"),
        ([VALID_JHDR, chunk(b"exif"), Z, Y, chunk(b"exif"), END], "duplicate chunk 'exif'"),
        ([VALID_JHDR, chunk(b"xmp "), chunk(b"xmp "), Z, Y, END], "duplicate chunk 'xmp '"),
        ([VALID_JHDR, chunk(b"ABCD", b"?"), Z, Y, END], "unknown critical chunk 'ABCD'"),
        ([VALID_JHDR, chunk(b"ZSTR", b"zstrea"), Y, END], "'ZSTR' is 6 bytes but must be 7"),
        ([VALID_JHDR, Z, chunk(b"YSTR", b"y-stream-bytes!"), END], "'YSTR' is 15 bytes but must be 14"),
        ([VALID_JHDR, Y, END], "missing 'ZSTR' chunk"),
        ([VALID_JHDR, Z, END], "missing 'YSTR' chunk"),
        ([VALID_JHDR, chunk(b"ALPH", b"\0x"), Z, Y, END], "'ALPH' is not allowed: layout RGB"),
        ([VALID_JHDR, chunk(b"ab!d"), Z, Y, END], "invalid chunk type"),
        ([VALID_JHDR, chunk(b"1bcd"), Z, Y, END], "invalid chunk type"),
        ([VALID_JHDR, chunk(b"abcd", b"x", crc=1), Z, Y, END], "CRC mismatch in chunk 'abcd'"),
        ([VALID_JHDR, chunk(b"abcd", length=C.MAX_CHUNK_BYTES + 1), Z, Y, END], "more than the limit"),
        ([VALID_JHDR, chunk(b"abcd", length=2**32 - 1), Z, Y, END], "more than the limit"),
        ([VALID_JHDR, chunk(b"abcd", length=C.MAX_CHUNK_BYTES), Z, Y, END], "truncated JAC file"),
        ([VALID_JHDR, chunk(b"abcd", length=1000), Z, Y, END], "truncated JAC file"),
    ],
)
def test_parse_rejects_bad_structure(chunks, match):
    data = build(*chunks)
    with pytest.raises(JacFormatError, match=match):
        parse(data)
    with pytest.raises(JacFormatError, match=match):
        read_file(Stream(data, piece=5))


@pytest.mark.parametrize(
    "alph, match",
    [
        (None, "missing 'ALPH' chunk: layout RGBA"),
        (chunk(b"ALPH"), "'ALPH' is empty"),
        (chunk(b"ALPH", b"\x01payload"), "unknown alpha method 1"),
    ],
)
def test_parse_rejects_bad_alpha_chunk(alph, match):
    chunks = [chunk(b"JHDR", jhdr(layout=2)), Z, Y, END]
    if alph is not None:
        chunks.insert(1, alph)
    with pytest.raises(JacFormatError, match=match):
        parse(build(*chunks))


def test_bad_signature_is_not_jac_file_error():
    """Not a JAC file: a ValueError (JacFormatError) for array users, and a SyntaxError as Pillow expects."""
    good = serialize(make())
    for data in [b"", C.MAGIC[:5], b"\x89PNG\r\n\x1a\n" + good[8:], b"\x8bJAC\n\x1a\n" + good[8:], bytes(100)]:
        with pytest.raises(NotJacFileError, match="^not a JAC file") as info:
            parse(data)
        assert isinstance(info.value, ValueError) and isinstance(info.value, JacFormatError)
        assert isinstance(info.value, SyntaxError)
        assert str(info.value) == "not a JAC file (bad signature)"
        with pytest.raises(NotJacFileError):
            read_header(io.BytesIO(data))
        with pytest.raises(NotJacFileError):
            read_file(Stream(data))


def test_unknown_ancillary_chunks_are_kept_in_order_when_asked():
    extra = [(b"abcd", b"1"), (b"tEXt", b"k\0v"), (b"abcd", b"2"), (b"q9 z", b"")]
    data = build(VALID_JHDR, *(chunk(t, d) for t, d in extra[:2]), Z, *(chunk(t, d) for t, d in extra[2:]), Y, END)
    jac = parse(data, keep_unknown=True)
    assert jac.unknown_chunks == extra
    assert parse(serialize(jac), keep_unknown=True) == jac
    assert parse(data).unknown_chunks == []


def test_unknown_chunks_are_skipped_in_bounded_memory():
    """SPEC.md 5.3: skipped chunks cost no memory, however many there are (and are still CRC-checked)."""
    n = 5_000  # a list entry a chunk would take about 250 kB, 4 times the bound below
    data = build(VALID_JHDR, chunk(b"abcd") * n, Z, Y, END)  # 60 kB of empty unknown chunks
    tracemalloc.start()
    try:
        jac = parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert jac.unknown_chunks == []
    assert peak < 64 * 1024, f"parsing {n} empty unknown chunks took {peak} bytes"
    # the same on a stream that cannot seek
    unseekable = io.BytesIO(data)
    unseekable.seekable = lambda: False
    tracemalloc.start()
    try:
        read_file(unseekable)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    # a large unknown chunk is checked in pieces, never held whole
    big = build(VALID_JHDR, chunk(b"abcd", bytes(8 << 20)), Z, Y, END)
    tracemalloc.start()
    try:
        parse(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20
    bad = bytearray(big)
    bad[len(C.MAGIC) + 12 + C.JHDR_LENGTH + 8 + (5 << 20)] ^= 1
    with pytest.raises(JacFormatError, match="CRC mismatch in chunk 'abcd'"):
        parse(bytes(bad))


# ------------------------------------------------------------------------------------------------
# robustness: truncation, bit flips, bounded reads


SMALL_FILES = [
    serialize(make("RGB", width=5, height=3)),
    serialize(make("LA", width=5, height=3, metadata=True, unknown=[(b"abcd", b"u")])),
]


@pytest.mark.parametrize("data", SMALL_FILES)
def test_truncation_at_every_offset(data):
    for n in range(len(data)):
        cut = data[:n]
        expected = SyntaxError if n < len(C.MAGIC) else JacFormatError
        with pytest.raises(expected):
            parse(cut)
        with pytest.raises(expected):
            read_file(Stream(cut, piece=7))
        if n < HEADER_BYTES:
            with pytest.raises(expected):
                read_header(io.BytesIO(cut))
        else:
            assert read_header(io.BytesIO(cut)) == parse(data).header


@pytest.mark.parametrize("data", SMALL_FILES)
def test_every_bit_flip_is_caught(data):
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(SyntaxError if i < len(C.MAGIC) else JacFormatError):
                parse(bytes(bad))


@pytest.mark.parametrize("data", SMALL_FILES)
def test_bit_flip_in_chunk_data_reports_crc(data):
    for offset, ctype, payload in split_chunks(data):
        for i in range(len(payload)):
            bad = bytearray(data)
            bad[offset + 8 + i] ^= 0x10
            with pytest.raises(JacFormatError, match=f"CRC mismatch in chunk '{ctype.decode()}'"):
                parse(bytes(bad))
        bad = bytearray(data)
        bad[offset + 8 + len(payload)] ^= 1  # the CRC itself
        with pytest.raises(JacFormatError, match="CRC mismatch"):
            parse(bytes(bad))


def test_read_header_reads_only_the_header():
    data = serialize(make("RGBA", metadata=True))
    fp = Counting(data)
    header = read_header(fp)
    assert header.mode == "RGBA"
    assert fp.returned == HEADER_BYTES
    assert fp.tell() == HEADER_BYTES
    assert max(fp.requests) <= C.JHDR_LENGTH
    # works with nothing after the header, and on a short-read stream
    assert read_header(io.BytesIO(data[:HEADER_BYTES])) == header
    assert read_header(Stream(data, piece=1)) == header


def test_lying_lengths_allocate_nothing():
    # seekable: the length is checked against the bytes left before anything is read
    data = build(VALID_JHDR, chunk(b"abcd", length=C.MAX_CHUNK_BYTES), Z, Y, END)
    fp = Counting(data)
    with pytest.raises(JacFormatError, match="truncated JAC file: chunk 'abcd' data needs 1073741824 bytes"):
        read_file(fp)
    assert max(fp.requests) <= 1 << 20
    # not seekable: bounded pieces, the shortfall is found after one piece
    s = Stream(data, piece=1 << 30)
    with pytest.raises(JacFormatError, match="truncated JAC file"):
        read_file(s)
    assert max(r for r in s.requests if r is not None) <= 1 << 20
    # a stream length that disagrees with JHDR is rejected before its data is read
    s = Stream(build(VALID_JHDR, chunk(b"ZSTR", length=C.MAX_CHUNK_BYTES), Y, END), piece=1 << 30)
    with pytest.raises(JacFormatError, match="'ZSTR' is 1073741824 bytes but must be 7"):
        read_file(s)
    assert max(s.requests) <= C.JHDR_LENGTH


class SeekReturnsNone:
    """A file-like whose ``seek`` returns None, as some wrappers' does; Pillow needs only read, seek and tell."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)

    def read(self, n=-1):
        return self.f.read(n)

    def seek(self, offset, whence=0):
        self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def seekable(self):
        return True


def test_a_seek_that_returns_none_reads_the_file():
    data = serialize(make("RGBA"))
    assert read_file(SeekReturnsNone(data)) == parse(data)
    # and its length is still known, so a lying length allocates nothing
    lying = SeekReturnsNone(build(VALID_JHDR, chunk(b"abcd", length=C.MAX_CHUNK_BYTES), Z, Y, END))
    with pytest.raises(JacFormatError, match="needs 1073741824 bytes but only"):
        read_file(lying)


def test_read_file_leaves_no_data_unread():
    data = serialize(make("RGBA"))
    fp = io.BytesIO(data)
    read_file(fp)
    assert fp.tell() == len(data)


# ------------------------------------------------------------------------------------------------
# alpha


def test_alpha_round_trip():
    raw = bytes((x * 7 + y) % 256 for y in range(9) for x in range(13))
    method, payload = compress_alpha(raw, 13, 9)
    assert method == C.ALPHA_METHOD_ZLIB
    assert decompress_alpha(method, payload, 13, 9) == raw
    jac = parse(serialize(make("RGBA", width=13, height=9)))
    assert len(decompress_alpha(jac.alpha_method, jac.alpha, 13, 9)) == 13 * 9


def test_compress_alpha_checks_size():
    with pytest.raises(ValueError, match="expected 3x2 = 6"):
        compress_alpha(bytes(5), 3, 2)
    with pytest.raises(ValueError):
        compress_alpha(b"", 0, 0)


@pytest.mark.parametrize(
    "method, payload, match",
    [
        (1, zlib.compress(bytes(6)), "unknown alpha method 1"),
        (0, zlib.compress(bytes(5)), "decompresses to 5 bytes"),
        (0, zlib.compress(bytes(7)), "more than 3x2 = 6"),
        (0, zlib.compress(bytes(6))[:-3], "does not end"),
        (0, b"", "does not end"),
        (0, zlib.compress(bytes(6)) + b"junk", "unexpected bytes after"),
        (0, b"not zlib at all", "corrupt alpha plane"),
        (0, zlib.compress(bytes(6))[:-1] + b"\0", "corrupt alpha plane"),  # bad Adler-32
    ],
)
def test_decompress_alpha_errors(method, payload, match):
    with pytest.raises(JacFormatError, match=match):
        decompress_alpha(method, payload, 3, 2)


def test_decompress_alpha_bomb_is_bounded():
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
    tracemalloc.start()
    try:
        with pytest.raises(JacFormatError, match="more than"):
            decompress_alpha(0, bomb, 16, 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ------------------------------------------------------------------------------------------------
# import hygiene


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_importing_container_does_not_import_torch():
    # through the real package: pillow_jac/__init__.py may import Pillow and imageio, never torch
    out = _run("import sys, pillow_jac.container; print('torch' in sys.modules)")
    assert out.strip() == "False"


def test_container_module_imports_only_the_standard_library():
    # pillow_jac/__init__.py is bypassed (a bare package stub), so only the container package's own imports count
    code = (
        "import sys, types, pathlib; before = set(sys.modules); "
        "pkg = types.ModuleType('pillow_jac'); "
        f"pkg.__path__ = [{str(Path(C.__file__).parent)!r}]; "
        "sys.modules['pillow_jac'] = pkg; "
        "import pillow_jac.container; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(n for n in new if n not in sys.stdlib_module_names and n != 'pillow_jac')); "
        "print(sorted(m for m in sys.modules if m.startswith('pillow_jac')))"
    )
    container = [
        "pillow_jac.container" + m for m in ("", ".chunk_reader", ".payloads", ".reading", ".structure", ".writing")
    ]
    assert _run(code).splitlines() == ["[]", str(["pillow_jac", "pillow_jac.constants", *container])]


def test_a_large_chunk_is_read_into_memory_once(tmp_path) -> None:
    """A metadata chunk of a file whose size is known is read in one piece, not gathered and copied (that
    would hold two copies at the peak)."""
    xmp = b"x" * (24 << 20)
    jac = JacFile.create(
        width=64, height=64, layout="RGB", quality=4, model_id="demo", weights_hash=bytes(8),
        z_stream=b"z", y_stream=b"yy", xmp=xmp,
    )  # fmt: skip
    path = tmp_path / "big.jac"
    path.write_bytes(serialize(jac))
    del jac
    tracemalloc.start()
    try:
        parsed = read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.xmp == xmp
    assert peak < 1.3 * len(xmp)


def test_serialize_counts_bytes_of_any_memoryview() -> None:
    """A stream given as a memoryview of 4-byte items: its length in items passed the check, and the file
    written had a stream four times the header's length, which the reader refused."""
    import array
    import dataclasses

    from pillow_jac import container

    words = memoryview(array.array("I", [1, 2]))  # 2 items, 8 bytes
    jac = container.JacFile.create(
        width=16, height=16, layout="RGB", quality=2.0, model_id="m", weights_hash=bytes(8),
        z_stream=b"", y_stream=bytes(words),
    )  # fmt: skip
    short = dataclasses.replace(jac.header, y_stream_length=2)
    with pytest.raises(ValueError, match="y_stream is 8 bytes but header.y_stream_length is 2"):
        container.serialize(dataclasses.replace(jac, header=short, y_stream=words))
    assert container.parse(container.serialize(dataclasses.replace(jac, y_stream=words))) == jac


@pytest.mark.parametrize("data", SMALL_FILES)
def test_recovery_skips_only_a_damaged_ancillary_chunk(data):
    """SPEC.md 8.3: asked to recover, the reader drops an ancillary chunk with a bad CRC and names it; a critical
    chunk's bad CRC is rejected all the same, and without the request any bad CRC is."""
    whole = parse(data, keep_unknown=True)
    for offset, ctype, payload in split_chunks(data):
        bad = bytearray(data)
        bad[offset + 8 + len(payload)] ^= 1  # the CRC
        damaged: list[bytes] = []
        if ctype[:1].isupper():
            with pytest.raises(JacFormatError, match=f"CRC mismatch in chunk '{ctype.decode()}'"):
                parse(bytes(bad), on_damaged=damaged.append)
            assert damaged == []
            continue
        with pytest.raises(JacFormatError, match="CRC mismatch"):
            parse(bytes(bad))
        recovered = parse(bytes(bad), keep_unknown=True, on_damaged=damaged.append)
        assert damaged == [ctype]
        field = {b"iccp": "icc_profile", b"exif": "exif", b"xmp ": "xmp", b"prvw": "preview"}.get(ctype)
        if field is None:
            assert recovered.unknown_chunks == [c for c in whole.unknown_chunks if c[0] != ctype]
        else:
            assert getattr(recovered, field) is None and getattr(whole, field) is not None
        assert (recovered.header, recovered.z_stream, recovered.y_stream) == (
            whole.header,
            whole.z_stream,
            whole.y_stream,
        )


@pytest.mark.parametrize("layout", ["RGB", "LA"])
def test_recovery_forgives_only_a_damaged_end(layout):
    """SPEC.md 8.3: asked to recover, the reader takes a file cut before or inside its JEND chunk once every chunk
    the pixels need is whole, and ignores bytes after JEND, reporting b"JEND"; any other cut is rejected, and
    without the request so is each of these."""
    data = serialize(make(layout, width=5, height=3, metadata=True))
    whole = parse(data)

    def read_stream(d, **kw):
        return read_file(Stream(d, piece=5), **kw)

    damaged_ends = [data[:-n] for n in range(1, 13)] + [data + b"\0", data + data[-12:], data + b"junk" * 300]
    for damaged_end in damaged_ends:
        for reader in (parse, read_stream):
            with pytest.raises(JacFormatError):
                reader(damaged_end)
            damaged: list[bytes] = []
            assert reader(damaged_end, on_damaged=damaged.append) == whole
            assert damaged == [b"JEND"]
    for n in range(13, len(data) - HEADER_BYTES + 1):  # a cut in the chunks the pixels need, or before them
        for reader in (parse, read_stream):
            with pytest.raises(JacFormatError, match="truncated JAC file"):
                reader(data[:-n], on_damaged=lambda ctype: pytest.fail(f"reported {ctype!r}"))


def test_recovery_still_checks_the_chunks_at_the_end():
    """A recovering reader checks JEND's CRC, whole or cut, and a cut ancillary chunk after the streams is no
    damaged end: only a missing JEND (here with the chunk before it) is forgiven."""
    recover = {"on_damaged": lambda ctype: None}
    with pytest.raises(JacFormatError, match="CRC mismatch in chunk 'JEND'"):
        parse(build(VALID_JHDR, Z, Y, chunk(b"JEND", crc=0)), **recover)
    with pytest.raises(JacFormatError, match="truncated JAC file: CRC of chunk 'JEND'"):
        parse(build(VALID_JHDR, Z, Y, chunk(b"JEND", crc=0))[:-1], **recover)
    with pytest.raises(JacFormatError, match="'JEND' is 1 bytes but must be 0"):
        parse(build(VALID_JHDR, Z, Y, chunk(b"JEND", b"x")), **recover)
    extra = chunk(b"abcd", b"ancillary")
    with pytest.raises(JacFormatError, match="truncated JAC file"):
        parse(build(VALID_JHDR, Z, Y, extra[:-1]), **recover)
    with pytest.raises(JacFormatError, match="truncated JAC file"):
        parse(build(VALID_JHDR, Z, Y, extra[:5]), **recover)
    assert parse(build(VALID_JHDR, Z, Y), **recover) == parse(build(VALID_JHDR, Z, Y, extra, END))


def test_recovery_reports_damaged_chunks_only_of_a_file_it_accepts():
    """A damaged ancillary chunk of a file rejected later (cut inside its streams) is not reported as skipped."""
    data = serialize(make("RGB", width=5, height=3, metadata=True))
    chunks = {ctype: (offset, payload) for offset, ctype, payload in split_chunks(data)}
    offset, payload = chunks[b"exif"]
    bad = bytearray(data)
    bad[offset + 8 + len(payload)] ^= 1  # the exif CRC
    ystr_offset, _ = chunks[b"YSTR"]
    damaged: list[bytes] = []
    with pytest.raises(JacFormatError, match="truncated"):
        parse(bytes(bad[: ystr_offset + 10]), on_damaged=damaged.append)
    assert damaged == []
    assert parse(bytes(bad), on_damaged=damaged.append) is not None and damaged == [b"exif"]


def test_many_damaged_chunks_are_reported_once_per_type_in_bounded_memory():
    """A hostile file of many damaged ancillary chunks (SPEC.md 8.3): each type once, the first 16 types, and the
    memory does not grow with the chunk count."""

    def damaged(ctype: bytes) -> bytes:
        good = chunk(ctype, b"")
        return good[:-1] + bytes([good[-1] ^ 1])

    many_of_one = build(VALID_JHDR, damaged(b"abcd") * 20_000, Z, Y, END)
    types = [bytes([97 + i // 26, 97 + i % 26]) + b"zz" for i in range(100)]
    many_types = build(VALID_JHDR, b"".join(damaged(t) for t in types) * 200, Z, Y, END)
    for data, expected in ((many_of_one, [b"abcd"]), (many_types, types[:16])):
        reported: list[bytes] = []
        tracemalloc.start()
        try:
            parse(data, on_damaged=reported.append)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reported == expected
        assert peak < 64 * 1024, f"{len(data)} bytes of damaged chunks took {peak} bytes"


def test_read_takes_any_buffer_of_bytes_and_refuses_other_objects_by_type() -> None:
    """Only bytes, bytearray and memoryview were taken as the file's bytes: anything else was read as a file
    object, and an array of bytes (a uint8 numpy array alike) ended in AttributeError ('... has no attribute
    read')."""
    import array

    data = serialize(make())
    assert read(array.array("B", data)) == read(data)
    for other in (None, 3, [1, 2], object()):
        with pytest.raises(TypeError, match=f"got {type(other).__name__}"):
            read(other)
    with pytest.raises(ValueError, match="one dimension of contiguous bytes"):
        read(array.array("I", data[: len(data) // 4 * 4]))
