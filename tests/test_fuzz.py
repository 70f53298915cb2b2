"""A short hypothesis-driven fuzz run of the reader, and forged huge dimensions (see fuzz/fuzz_jac.py).

Each example is a seed file (``fuzz/seeds``, valid tiny files of every layout with metadata) put
through a few of the harness's JAC-aware mutators (bit flips, truncations, splices, forged JHDR
fields, lengths, streams and alpha planes with re-computed CRCs, chunk surgery). The oracle allows
only the exceptions Pillow's own fuzzers allow, bounds time and memory per input and checks that the
entry points agree (``parse`` vs a streaming read vs ``Image.open``; ``codec.decode`` vs ``load()``).
"""

from __future__ import annotations

import io
import random
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzz import fuzz_jac as fz
from pillow_jac import codec, container
from pillow_jac.engine import get_engine

SEEDS = fz.load_corpus([fz.SEEDS_DIR])
#: generous bounds: the CI machine may be busy (inputs normally take milliseconds to ~0.2 s)
LIMITS = fz.Limits(seconds=10.0, rss_mb=6144.0, max_pixels=96 * 96)

mutations = st.lists(st.tuples(st.sampled_from(sorted(fz.MUTATORS)), st.integers(0, 2**32 - 1)), min_size=1, max_size=4)


@contextmanager
def small_pixel_limit(pixels: int = LIMITS.max_pixels) -> Iterator[None]:
    """Lower ``Image.MAX_IMAGE_PIXELS`` (and with it ``codec.decode``'s limit) for the block."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def stamped(index: int) -> bytes:
    """Seed ``index`` re-stamped with the installed model (the seeds stay useful after retraining)."""
    return fz.restamp(SEEDS[index], *fz.installed_model())


def mutated(index: int, ops: list[tuple[str, int]]) -> bytes:
    """Seed ``index`` after the mutators ``ops`` (name, rng seed), applied in order."""
    data = SEEDS[index]
    for name, seed in ops:
        data = fz.MUTATORS[name](random.Random(seed), data, SEEDS)
    return data


def test_seed_corpus_is_valid_and_covers_every_layout() -> None:
    assert len(SEEDS) >= 8
    layouts = set()
    for data in SEEDS:
        jac = container.parse(data)
        layouts.add(jac.mode)
        assert jac.size[0] * jac.size[1] <= 64 * 64
    assert layouts == {"RGB", "L", "RGBA", "LA"}
    assert any(container.parse(d).exif and container.parse(d, keep_unknown=True).unknown_chunks for d in SEEDS)


def test_helpers_round_trip() -> None:
    for data in SEEDS:
        chunks, tail = fz.split(data)
        assert fz.join(chunks, tail) == data
        fields = fz.unpack_jhdr(chunks[0].data)
        assert fz.pack_jhdr(fields) == chunks[0].data
    broken = bytearray(SEEDS[0])
    broken[40] ^= 1  # inside JHDR: its CRC no longer matches
    restamped = fz.restamp(bytes(broken), "other-model", bytes(range(8)))
    with pytest.raises(container.JacFormatError, match="CRC mismatch in chunk 'JHDR'"):
        container.parse(restamped)  # restamping keeps a wrong CRC wrong ...
    jac = container.parse(fz.restamp(SEEDS[0], "other-model", bytes(range(8))))  # ... and a right one right
    assert (jac.header.model_id, jac.header.weights_hash) == ("other-model", bytes(range(8)))


@settings(max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(SEEDS) - 1), ops=mutations)
def test_fuzz_container(index: int, ops: list[tuple[str, int]]) -> None:
    with small_pixel_limit():
        fz.check_container(mutated(index, ops), LIMITS)


@settings(max_examples=150, deadline=timedelta(seconds=5))
@given(data=st.binary(max_size=200), magic=st.booleans())
def test_fuzz_container_random_bytes(data: bytes, magic: bool) -> None:
    fz.check_container((fz.MAGIC + data) if magic else data, LIMITS)


@pytest.mark.slow
@settings(max_examples=70, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(SEEDS) - 1), ops=mutations)
def test_fuzz_decode(index: int, ops: list[tuple[str, int]]) -> None:
    with small_pixel_limit():
        fz.check_decode(mutated(index, ops), LIMITS)


def _forged(width: int, height: int, layout: str = "RGB", stream: bytes | None = None, z_stream: bytes = b"") -> bytes:
    """A file of the installed model claiming ``width x height``, with tiny (or given) streams."""
    engine = get_engine()
    jac = container.JacFile.create(
        width=width, height=height, layout=layout, quality=4, model_id=engine.model_id,
        weights_hash=engine.weights_hash, z_stream=z_stream, y_stream=stream or b"",
        alpha=b"x\x9c\x03\x00\x00\x00\x00\x01" if layout in ("RGBA", "LA") else None,
    )  # fmt: skip
    return container.serialize(jac)


@pytest.mark.parametrize(("width", "height"), [(65535, 65535), (65535, 4096), (20000, 20000)])
def test_forged_huge_dimensions_are_refused_cheaply(width: int, height: int) -> None:
    """~100-byte files claiming gigapixels are refused before anything big is allocated."""
    data = _forged(width, height)
    assert len(data) < 200
    fz.reset_peak_rss()
    before = fz.peak_rss_mb()
    start = time.perf_counter()
    with pytest.raises(codec.CodecError, match="exceeds the limit .* decompression bomb"):
        codec.decode(data)
    with pytest.raises(codec.CodecError, match="decompression bomb"):
        codec.decode_symbols(data)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert time.perf_counter() - start < 2.0
    assert fz.peak_rss_mb() - before < 100, "refusing a forged size allocated memory"


def test_forged_size_within_the_limit_fails_fast_on_an_empty_stream() -> None:
    """An empty stream for a 1024 x 1024 image: the decoder notices corrupt latents quickly."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="out of range|corrupt"):
        codec.decode(_forged(1024, 1024))
    assert time.perf_counter() - start < 15.0


def test_forged_110_byte_file_of_89_megapixels_fails_in_under_a_second() -> None:
    """9459 x 9459 is under the bomb limit; empty streams cannot hold its 67 M latents, and that is
    known from the stream lengths alone (it took 88 s and 3.8 GB when the whole wavefront ran first)."""
    data = _forged(9459, 9459)
    assert len(data) < 120
    get_engine()  # built outside the timing
    fz.reset_peak_rss()
    before = fz.peak_rss_mb()
    for decode in (codec.decode, codec.decode_symbols):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"the [zy] stream has 0 bytes, but \d+ symbols need at least"):
            decode(data)
        assert time.perf_counter() - start < 1.0
    assert fz.peak_rss_mb() - before < 100


def test_a_stream_that_runs_out_stops_at_the_next_wavefront_step() -> None:
    """A 1280 x 1280 file whose 16-byte y stream passes the length bound: decoding stops a step after
    the data ends (its 1.2 M latents need more than a range decoder's state can still hold), not after
    the last of the image's 316 wavefront steps."""
    engine = get_engine()
    data = _forged(1280, 1280, stream=bytes(16), z_stream=bytes(4))
    steps = []
    original = engine.latents.y_tables.check_not_run_out

    def counted(decoder, symbols_left, min_bits=None):
        steps.append(symbols_left)
        return original(decoder, symbols_left, min_bits)

    engine.latents.y_tables.check_not_run_out = counted
    try:
        with pytest.raises(ValueError, match="the data ends with at least"):
            codec.decode(data)
    finally:
        del engine.latents.y_tables.check_not_run_out
    all_steps, symbols = 3 * 79 + 79 + 1, 80 * 80 * engine.config.M  # of an 80 x 80 latent
    assert len(steps) < all_steps // 4, f"{len(steps)} of {all_steps} steps ran"
    assert steps[-1] > symbols * 0.9


def test_pixel_limit_follows_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _forged(40, 30, "LA")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 // 2 - 1)
    with pytest.raises(codec.CodecError, match=r"40x30 \(1200 pixels\) exceeds the limit of 1198"):
        codec.decode(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's "no limit" lifts ours too
    with pytest.raises(ValueError) as info:
        codec.decode(data)
    assert "exceeds the limit" not in str(info.value)


def test_lying_chunk_length_allocates_nothing() -> None:
    """A chunk length of 2**30 - 1 in a 300-byte file is caught before any allocation."""
    chunks, tail = fz.split(SEEDS[0])
    chunks[-2].length = (1 << 30) - 1  # YSTR
    data = fz.join(chunks, tail)
    fz.reset_peak_rss()
    before = fz.peak_rss_mb()
    for read in (container.parse, lambda d: container.read_file(fz.Unseekable(d, piece=1 << 20))):
        with pytest.raises(container.JacFormatError, match="bytes|truncated"):
            read(data)
    assert fz.peak_rss_mb() - before < 20


def test_streams_of_every_length_are_handled() -> None:
    """YSTR lengths 0..9 (header kept consistent): only ValueErrors, never a panic or other error."""
    jac = container.parse(stamped(0))
    original = jac.y_stream * 4
    with small_pixel_limit():
        for n in range(10):
            jac.y_stream = original[:n]
            jac.header.y_stream_length = n
            data = container.serialize(jac)
            try:
                codec.decode(data)
            except ValueError:
                pass


def test_escape_heavy_stream_is_bounded() -> None:
    """All-0xFF words decode to huge escapes: rejected as out of range, not clipped or crashed."""
    jac = container.parse(stamped(1))
    for stream in (b"\xff" * 64, b"\x00\x00\x00\x80" * 16, struct.pack("<I", 0xFFFFFFFF) + bytes(60)):
        jac.y_stream, jac.header.y_stream_length = stream, len(stream)
        try:
            codec.decode(container.serialize(jac))
        except ValueError as exc:
            assert "corrupt" in str(exc) or "out of range" in str(exc)


class _FailingDecoder:
    """Stands in for a constriction decoder whose ``decode`` raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def decode(self, *args: object) -> None:
        raise self.exc


class _Panic(BaseException):
    """Like pyo3's PanicException: not an Exception."""


def test_memory_error_is_not_reported_as_corruption() -> None:
    import numpy as np

    from pillow_jac.entropy_coding import CodingTables, EntropyCodingError, quantize_tables

    tables = CodingTables(*quantize_tables([np.array([0.1, 0.8, 0.1])], [-1]))
    with pytest.raises(MemoryError):
        tables.decode(_FailingDecoder(MemoryError()), np.zeros(3, np.int64))
    with pytest.raises(EntropyCodingError, match="corrupt entropy-coded stream: boom"):
        tables.decode(_FailingDecoder(_Panic("boom")), np.zeros(3, np.int64))
