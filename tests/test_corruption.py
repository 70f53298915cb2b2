"""Corruption is detected and named: checksums, stream lengths, unknown models and weights.

Every corrupted file is rejected by ``container.parse``, ``codec.decode`` and Pillow alike, with an
error whose message names the cause (SPEC.md section 8.2).
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from fuzz import fuzz_jac as fz
from pillow_jac import codec, container
from pillow_jac.container import JacFormatError
from pillow_jac.engine import get_engine
from pillow_jac.entropy_coding import EntropyCodingError


@pytest.fixture(scope="module")
def rgba_jac() -> bytes:
    """A valid 24x16 RGBA file with every metadata chunk and an unknown ancillary chunk."""
    image = fz.seed_image("RGBA", 24, 16, seed=3)
    data = codec.encode(image, 3, icc_profile=b"icc" * 8, exif=b"Exif\0\0MM\0*" + bytes(8), xmp=b"<x/>")
    jac = container.parse(data)
    jac.unknown_chunks = [(b"abcd", b"unknown")]
    return container.serialize(jac)


def test_not_a_jac_file_is_a_value_error() -> None:
    """Array users get a ValueError for data that is not JAC at all; Pillow moves on to other formats."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    for data in (b"junk", b"", png.getvalue()):
        with pytest.raises(ValueError, match="not a JAC file"):
            codec.decode(data)
        with pytest.raises(container.NotJacFileError):
            container.parse(data)
    with Image.open(png) as im:
        assert im.format == "PNG"
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(b"junk"))


def edit(data: bytes, ctype: bytes, fn) -> bytes:
    """``data`` with ``fn(chunk)`` applied to its first chunk of type ``ctype`` (CRC re-computed unless forged)."""
    chunks, tail = fz.split(data)
    fn(next(c for c in chunks if c.ctype == ctype))
    return fz.join(chunks, tail)


def set_jhdr(data: bytes, **fields: int) -> bytes:
    """``data`` with JHDR fields replaced and the JHDR CRC re-computed (so only the fields are wrong)."""

    def change(c: fz.Chunk) -> None:
        f = fz.unpack_jhdr(c.data)
        f.update(fields)
        c.data = fz.pack_jhdr(f)

    return edit(data, b"JHDR", change)


def rejects(data: bytes, exc: type[BaseException], match: str) -> None:
    """``parse``, ``codec.decode`` and ``Image.open(...).load()`` all raise ``exc`` matching ``match``."""
    with pytest.raises(exc, match=match):
        container.parse(data)
    with pytest.raises(exc, match=match):
        codec.decode(data)
    with pytest.raises(exc, match=match):
        with Image.open(io.BytesIO(data)) as im:
            im.load()


def test_the_fixture_is_valid(rgba_jac: bytes) -> None:
    assert codec.decode(rgba_jac).shape == (16, 24, 4)


# ------------------------------------------------------------------------------------------------
# checksums


@pytest.mark.parametrize("ctype", [b"JHDR", b"iccp", b"exif", b"xmp ", b"abcd", b"ALPH", b"ZSTR", b"YSTR"])
def test_flipped_bit_in_chunk_data_is_a_crc_mismatch(rgba_jac: bytes, ctype: bytes) -> None:
    def flip(c: fz.Chunk) -> None:
        c.crc = zlib.crc32(c.data, zlib.crc32(c.ctype))  # keep the old CRC ...
        c.data = bytes([c.data[0] ^ 0x01]) + c.data[1:]  # ... of the unflipped data

    rejects(
        edit(rgba_jac, ctype, flip), JacFormatError, f"CRC mismatch in chunk '{ctype.decode()}': the file is corrupt"
    )


def test_damaged_crc_field_is_a_crc_mismatch(rgba_jac: bytes) -> None:
    data = bytearray(rgba_jac)
    data[-1] ^= 0x80  # the last byte of the file: JEND's CRC
    rejects(bytes(data), JacFormatError, "CRC mismatch in chunk 'JEND'")


def test_checksum_of_the_alpha_zlib_stream(rgba_jac: bytes) -> None:
    """Inside ALPH (chunk CRC re-computed), zlib's own Adler-32 still catches damage."""

    def damage_adler(c: fz.Chunk) -> None:
        c.data = c.data[:-1] + bytes([c.data[-1] ^ 0xFF])

    data = edit(rgba_jac, b"ALPH", damage_adler)
    container.parse(data)  # the container is intact
    with pytest.raises(JacFormatError, match="corrupt alpha plane: .*incorrect data check"):
        codec.decode(data)
    with pytest.raises(JacFormatError, match="corrupt alpha plane"):
        with Image.open(io.BytesIO(data)) as im:
            im.load()


# ------------------------------------------------------------------------------------------------
# streams shorter or longer than the header says


@pytest.mark.parametrize("ctype", [b"ZSTR", b"YSTR"])
@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_stream_chunk_length_differs_from_header(rgba_jac: bytes, ctype: bytes, delta: int) -> None:
    jac = container.parse(rgba_jac)
    want = jac.header.z_stream_length if ctype == b"ZSTR" else jac.header.y_stream_length

    def resize(c: fz.Chunk) -> None:
        c.data = c.data[:delta] if delta < 0 else c.data + bytes(delta)

    name = ctype.decode()
    rejects(
        edit(rgba_jac, ctype, resize),
        JacFormatError,
        f"chunk '{name}' is {want + delta} bytes but must be {want} bytes",
    )


@pytest.mark.parametrize(("field", "ctype"), [("zlen", "ZSTR"), ("ylen", "YSTR")])
def test_header_stream_length_differs_from_chunk(rgba_jac: bytes, field: str, ctype: str) -> None:
    jac = container.parse(rgba_jac)
    actual = jac.header.z_stream_length if ctype == "ZSTR" else jac.header.y_stream_length
    for forged in (actual - 1, actual + 4, 0, (1 << 30)):
        rejects(
            set_jhdr(rgba_jac, **{field: forged}),
            JacFormatError,
            f"chunk '{ctype}' is {actual} bytes but must be {forged}",
        )


def test_stream_length_above_the_limit(rgba_jac: bytes) -> None:
    rejects(set_jhdr(rgba_jac, ylen=(1 << 30) + 1), JacFormatError, "y_stream_length must be from 0 to 1073741824")


def test_file_ending_inside_a_stream(rgba_jac: bytes) -> None:
    offset = rgba_jac.index(b"YSTR") + 4 + 2  # 2 bytes into YSTR's data
    rejects(rgba_jac[:offset], JacFormatError, "truncated JAC file: chunk 'YSTR' data needs")


def test_lying_chunk_length_field(rgba_jac: bytes) -> None:
    def lie(c: fz.Chunk) -> None:
        c.length = len(c.data) + 1000

    rejects(edit(rgba_jac, b"exif", lie), JacFormatError, "truncated JAC file: chunk 'exif' data needs")


def test_stream_not_a_whole_number_of_words(rgba_jac: bytes) -> None:
    """A stream whose length is consistent but not a multiple of 4 bytes is not a range-coder stream."""
    jac = container.parse(rgba_jac)
    jac.y_stream = jac.y_stream[:-1]
    jac.header.y_stream_length -= 1
    data = container.serialize(jac)
    with pytest.raises(ValueError, match=f"stream length {len(jac.y_stream)} is not a multiple of 4"):
        codec.decode(data)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        with Image.open(io.BytesIO(data)) as im:
            im.load()


def test_trailing_bytes_after_jend(rgba_jac: bytes) -> None:
    rejects(rgba_jac + b"\0", JacFormatError, "unexpected data after the JEND chunk")


# ------------------------------------------------------------------------------------------------
# model and weights this installation does not have


def test_unknown_model_id_is_named(rgba_jac: bytes) -> None:
    engine = get_engine()
    data = fz.restamp(rgba_jac, "no-such-model", engine.weights_hash)
    with Image.open(io.BytesIO(data)) as im:  # opening needs no model
        assert im.info["model_id"] == "no-such-model"
        with pytest.raises(
            codec.CodecError, match=f"needs decoder 'no-such-model'.*not installed.*Installed: {engine.model_id}"
        ):
            im.load()
    for decode in (codec.decode, codec.decode_symbols):
        with pytest.raises(codec.ModelNotInstalledError, match="this file needs decoder 'no-such-model'.*JAC_MODELS"):
            decode(data)


def test_unknown_weights_hash_is_named(rgba_jac: bytes) -> None:
    engine = get_engine()
    other = bytes.fromhex("0123456789abcdef")
    data = fz.restamp(rgba_jac, engine.model_id, other)
    installed = rf"'{engine.model_id}' has another hash \({engine.weights_hash.hex()}\)"
    message = rf"weights 0123456789abcdef\), but the installed {installed}"
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(data)
    with pytest.raises(ValueError, match="0123456789abcdef"):
        with Image.open(io.BytesIO(data)) as im:
            im.load()


def test_restamped_file_decodes_again(rgba_jac: bytes) -> None:
    """The model check is the only thing that failed above: putting the fields back restores the image."""
    engine = get_engine()
    broken = fz.restamp(rgba_jac, "no-such-model", bytes(8))
    fixed = fz.restamp(broken, engine.model_id, engine.weights_hash)
    assert fixed == rgba_jac
    np.testing.assert_array_equal(codec.decode(fixed), codec.decode(rgba_jac))


# ------------------------------------------------------------------------------------------------
# header fields that disagree with each other (CRC re-computed, so only the values are wrong)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"yh": 2}, r"y shape \(2, 4\) does not match \(4, 4\) derived from a 24x16 image"),
        ({"zw": 9}, r"z shape \(1, 9\) does not match"),
        ({"width": 65536}, "width must be from 1 to 65535, got 65536"),
        ({"height": 0}, "height must be from 1 to 65535, got 0"),
        ({"layout": 0}, "chunk 'ALPH' is not allowed: layout RGB has no alpha channel"),
        ({"layout": 7}, "unknown layout code 7"),
        ({"quality": 2049}, r"quality must be from 1 to 8 \(q16 256 to 2048\), got q16 2049"),
        ({"major": 2}, "unsupported JAC format version 2.0"),
        ({"flags": 1}, "JHDR flags are 0x01 but must be 0"),
        ({"model_id": bytes(16)}, "model_id .* is not 1 to 16 printable ASCII characters"),
    ],
)
def test_inconsistent_header_fields(rgba_jac: bytes, fields: dict, match: str) -> None:
    rejects(set_jhdr(rgba_jac, **fields), JacFormatError, match)


def test_forged_size_with_matching_shapes_keeps_alpha_check(rgba_jac: bytes) -> None:
    """A plausible forged size passes the container, then the alpha plane's size gives it away."""
    data = set_jhdr(rgba_jac, width=20, **fz.derived_shapes(20, 16))
    container.parse(data)
    with pytest.raises(JacFormatError, match=r"alpha plane decompresses to more than 20x16 = 320 bytes"):
        codec.decode(data)


def test_error_messages_do_not_leak_huge_reprs(rgba_jac: bytes) -> None:
    """Messages stay short even when the offending field is binary junk."""
    data = set_jhdr(rgba_jac, model_id=b"\xff" * 16)
    with pytest.raises(JacFormatError) as info:
        container.parse(data)
    assert len(str(info.value)) < 200


# ------------------------------------------------------------------------------------------------
# open issues (fuzz/README.md, "Open"): range-coder streams with data missing or added inside them


def _with_streams(data: bytes, z: bytes | None = None, y: bytes | None = None) -> bytes:
    jac = container.parse(data)
    jac.z_stream = jac.z_stream if z is None else z
    jac.y_stream = jac.y_stream if y is None else y
    jac.header.z_stream_length, jac.header.y_stream_length = len(jac.z_stream), len(jac.y_stream)
    return container.serialize(jac)


def test_stream_with_trailing_words_is_rejected(rgba_jac: bytes) -> None:
    data = _with_streams(rgba_jac, y=container.parse(rgba_jac).y_stream + bytes(8))
    with pytest.raises(ValueError, match="stream"):
        codec.decode(data)


@pytest.mark.parametrize(("width", "height"), [(135, 1), (64, 64), (1, 1)])
def test_empty_streams_are_rejected(width: int, height: int) -> None:
    """The coder writes at least one word for any symbol: an empty stream is refused from its length
    (64x64 and 1x1 decoded as if zeros followed, 135x1 failed only when a latent went out of range)."""
    engine = get_engine()
    data = container.serialize(
        container.JacFile.create(
            width=width, height=height, layout="RGB", quality=1, model_id=engine.model_id,
            weights_hash=engine.weights_hash, z_stream=b"", y_stream=b"",
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"the z stream has 0 bytes, but \d+ symbols need at least 4"):
        codec.decode(data)


def test_stream_of_a_partial_word_is_refused_before_the_hyperprior(rgba_jac: bytes, monkeypatch) -> None:
    """A y stream whose length is not a whole number of 32-bit words is refused before h_s runs."""
    import dataclasses

    from pillow_jac import latent_coding

    jac = container.parse(rgba_jac)
    y_stream = jac.y_stream + b"\x00\x00"
    jac.y_stream = y_stream
    jac.header = dataclasses.replace(jac.header, y_stream_length=len(y_stream))
    forged = container.serialize(jac)

    def no_hyperprior(*args, **kwargs):
        raise AssertionError("h_s ran before the stream length was checked")

    for name in ("hyper_stripes", "hyper_features"):  # the wavefront decoder's, and the whole-image one
        monkeypatch.setattr(latent_coding.LatentCoder, name, no_hyperprior)
    with pytest.raises(EntropyCodingError, match="is not a multiple of 4"):
        codec.decode(forged)


def test_a_stream_that_runs_out_early_stops_before_the_rest_of_the_hyperprior(monkeypatch) -> None:
    """A forged 2048 x 2048 file whose streams are just long enough for the length check: h_s runs for
    the first stripe of rows only, not for the whole declared image."""
    import math

    from pillow_jac import generations
    from pillow_jac.entropy_coding import STATE_SLACK_BITS

    gen = generations.encoder()
    coder = get_engine(None, gen.path).latents
    side = 2048
    y_symbols = coder.M * (side // 16) ** 2
    y_bytes = 4 * math.ceil((y_symbols * coder.y_symbol_bits - STATE_SLACK_BITS) / 32 + 1)
    forged = container.serialize(
        container.JacFile.create(
            width=side, height=side, layout="RGB", quality=4, model_id=gen.model_id,
            weights_hash=gen.weights_hash, z_stream=bytes(8), y_stream=bytes(y_bytes),
        )
    )  # fmt: skip
    calls = []
    real_h_s = coder.h_s

    def counted(z):
        calls.append(z.shape[2])
        return real_h_s(z)

    monkeypatch.setattr(coder, "h_s", counted)
    with pytest.raises(EntropyCodingError, match="still to decode"):
        codec.decode(forged)
    assert len(calls) == 1  # of 4 stripes of 8 z rows (32 z rows in all)
