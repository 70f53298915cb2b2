"""A short hypothesis-driven fuzz run of the reader, and forged huge dimensions (see fuzz/fuzz_jac.py).

Each example is a seed file (``fuzz/seeds``, valid tiny files of every layout with metadata) put
through a few of the harness's JAC-aware mutators (bit flips, truncations, splices, forged JHDR
fields, lengths, streams and alpha planes with re-computed CRCs, chunk surgery). The oracle allows
only the exceptions Pillow's own fuzzers allow, bounds time and memory per input and checks that the
entry points agree (``parse`` vs a streaming read vs ``Image.open``; ``codec.decode`` vs ``load()``,
``decode_batch``, ``decode_symbols`` and ``load()`` under ``LOAD_TRUNCATED_IMAGES``; ``jac info`` vs ``parse``),
and that each of the last four rules finds the bug it is there for. Then the harness itself: its command
line, the watchdog and the on-disk current input of the engines, the preview coverage, and
``fuzz/run_session.sh``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from fuzz import fuzz_jac as fz
from fuzz import oracle
from pillow_jac import JacImagePlugin, codec, container
from pillow_jac.engine import get_engine

ROOT = Path(__file__).resolve().parent.parent

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
    assert {container.parse(d).mode for d in SEEDS if container.parse(d).preview} >= {"L", "RGBA"}
    assert b"prvw" in fz.CHUNK_TYPES


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
        with pytest.raises(ValueError, match="corrupt|out of range"):
            codec.decode(container.serialize(jac))


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


# ---------------------------------------------------------------------------------------------
# The preview (prvw, SPEC.md section 5.4): mutated, seeded, and read through draft() and thumbnail()


def _preview_seed() -> bytes:
    return next(d for d in SEEDS if container.parse(d).preview)


def test_forge_preview_makes_previews_draft_uses_and_ignores() -> None:
    seed = next(d for d in SEEDS if container.parse(d).mode == "RGB" and not container.parse(d).preview)
    labels = set()
    with small_pixel_limit():
        for i in range(120):
            labels.add(fz.check_container(fz.MUTATORS["forge_preview"](random.Random(i), seed, SEEDS), LIMITS))
    assert {"ok | preview:used", "ok | preview:unused"} <= labels


def test_oracle_asks_draft_and_thumbnail_for_the_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _preview_seed()
    _, pw, ph, _ = container.unpack_preview(container.parse(data).preview)
    asked = []
    draft = JacImagePlugin.JacImageFile.draft

    def spy(self: JacImagePlugin.JacImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        asked.append(size)
        return draft(self, mode, size)

    monkeypatch.setattr(JacImagePlugin.JacImageFile, "draft", spy)
    with small_pixel_limit():
        label = fz.check_decode(data, LIMITS)
    assert label.startswith("ok | preview:used")
    assert (pw, ph) in asked  # draft() itself, in check_container
    assert (2 * (pw // 2), 2 * (ph // 2)) in asked  # thumbnail() of half the preview asks for twice that


def test_oracle_reports_a_draft_that_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise struct.error("unpack requires a buffer of 5 bytes")

    monkeypatch.setattr(JacImagePlugin, "preview_for", broken)
    with small_pixel_limit(), pytest.raises(fz.Finding, match="Image.draft: forbidden exception .*error"):
        fz.check_container(_preview_seed(), LIMITS)


# ---------------------------------------------------------------------------------------------
# The other read paths: decode_batch, decode_symbols, LOAD_TRUNCATED_IMAGES and jac info. Each test runs
# the oracle on an input that reaches a rule, and most run it again with the library broken as a bug would
# break it.


def _seed_named(name: str) -> bytes:
    """The seed ``fuzz/seeds/NAME``, re-stamped with the installed model."""
    return fz.restamp((fz.SEEDS_DIR / name).read_bytes(), *fz.installed_model())


def _rechunked(data: bytes, edit: Callable[[list[fz.Chunk]], object]) -> bytes:
    """``data`` with ``edit(chunks)`` applied to its chunk list (CRCs re-computed unless forged)."""
    chunks, tail = fz.split(data)
    edit(chunks)
    return fz.join(chunks, tail)


def _short_alpha(chunks: list[fz.Chunk]) -> None:
    alph = next(c for c in chunks if c.ctype == b"ALPH")
    alph.data = b"\0" + zlib.compress(b"\xff" * 95)  # 8 x 12 needs 96 bytes


def test_oracle_compares_decode_batch_with_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """``decode_batch`` refuses a file whose alpha plane does not decompress as ``decode`` does: same error class."""
    from pillow_jac import codec_batch, codec_steps

    data = _rechunked(_seed_named("rgba-8x12-q7.jac"), _short_alpha)
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS) == "ok | JacDataError:alpha plane decompresses to # bytes,"

    class LenientSteps:  # decode_batch's steps, with an alpha plane that does not decompress taken as opaque
        def __getattr__(self, name: str) -> object:
            return getattr(codec_steps, name)

        @staticmethod
        def file_and_decoder(data, device, weights, **options) -> object:  # no early look at the alpha plane
            return codec_steps.file_and_decoder(data, device, weights, alpha=False)

        @staticmethod
        def alpha_plane(jac: container.JacFile) -> object:
            try:
                return codec_steps.alpha_plane(jac)
            except container.JacDataError:
                return np.full((jac.header.height, jac.header.width), 255, np.uint8)

    monkeypatch.setattr(codec_batch, "steps", LenientSteps())
    with small_pixel_limit(), pytest.raises(fz.Finding, match="codec.decode -> JacDataError.* but decode_batch -> ok"):
        fz.check_decode(data, LIMITS)


def test_oracle_compares_decode_symbols_with_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """``decode_symbols`` must refuse a file above the pixel limit as ``decode`` does, before decoding."""
    from pillow_jac import codec_steps

    data = _forged(200, 100)  # 20,000 pixels: above twice the fuzzing limit of 96 x 96
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS) == "ok | CodecError:image size #x# # exceeds the"

    def unchecked(data: bytes, *, device: object = None, weights: object = None) -> object:  # no size limit
        jac = codec_steps.parse_input(data)
        return codec_steps.decode_latents(jac, codec_steps.decoder_engine(jac, device, weights))

    monkeypatch.setattr(codec, "decode_symbols", unchecked)
    with small_pixel_limit(), pytest.raises(fz.Finding, match="codec.decode -> CodecError.* but decode_symbols -> "):
        fz.check_decode(data, LIMITS)


def _damaged_exif_and_end(chunks: list[fz.Chunk]) -> None:
    next(c for c in chunks if c.ctype == b"exif").crc = 0
    chunks.pop()  # JEND: the file ends after its last stream


def test_oracle_checks_load_truncated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``LOAD_TRUNCATED_IMAGES`` a damaged EXIF chunk and a missing end are skipped with two warnings."""
    data = _rechunked(_seed_named("la-33x20-q5.5-exif-unknown.jac"), _damaged_exif_and_end)
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS).startswith("JacDataError:CRC mismatch in chunk #: the | ")
    monkeypatch.setattr(JacImagePlugin, "_damaged_warning", lambda name: lambda ctype: None)  # recovers silently
    with small_pixel_limit(), pytest.raises(fz.Finding, match=r"LOAD_TRUNCATED_IMAGES warned \[\] for the damage"):
        fz.check_decode(data, LIMITS)


def test_oracle_checks_load_truncated_images_recovers_no_critical_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream chunk with a wrong CRC is refused under ``LOAD_TRUNCATED_IMAGES`` too; a recovering read that
    took it is reported: "the recovering parse accepted a damaged critical chunk"."""
    whole = _seed_named("rgb-8x8-q1.jac")
    data = _rechunked(whole, lambda chunks: setattr(chunks[2], "crc", 0))  # YSTR
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS).startswith("JacDataError:CRC mismatch in chunk #: the | ")
    with pytest.raises(container.JacDataError, match="CRC mismatch in chunk 'YSTR'"):
        container.parse(data, on_damaged=lambda ctype: None)
    # the break: the recovering read takes the damaged YSTR as if whole (and reports it)
    monkeypatch.setattr(oracle, "recover", lambda v: (container.parse(whole), [b"YSTR"]) if v == data else (None, []))
    with small_pixel_limit(), pytest.raises(fz.Finding, match="accepted a damaged critical chunk"):
        fz.check_decode(data, LIMITS)


def test_oracle_checks_load_truncated_images_changes_no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that does not decode fails under ``LOAD_TRUNCATED_IMAGES`` too: no grey image instead."""
    data = _rechunked(_seed_named("rgb-8x8-q1.jac"), lambda chunks: setattr(chunks[2], "data", bytes(24)))  # YSTR
    with small_pixel_limit():
        label = fz.check_decode(data, LIMITS)
    assert label.startswith("ok | EntropyCodingError:"), label
    decode = JacImagePlugin._decode_pixels

    def grey_when_truncated(jac: container.JacFile) -> object:
        try:
            return decode(jac)
        except ValueError:
            if not ImageFile.LOAD_TRUNCATED_IMAGES:
                raise
            return np.full((jac.header.height, jac.header.width, 3), 128, np.uint8)

    monkeypatch.setattr(JacImagePlugin, "_decode_pixels", grey_when_truncated)
    with small_pixel_limit(), pytest.raises(fz.Finding, match="under LOAD_TRUNCATED_IMAGES gave an image"):
        fz.check_decode(data, LIMITS)


def test_oracle_checks_jac_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """``jac info`` shows a file whose preview is unusable (a bad preview is ignored, SPEC.md section 5.4)."""
    from pillow_jac import cli_info

    data = _rechunked(_seed_named("rgb-8x8-q1.jac"), lambda chunks: chunks.insert(1, fz.Chunk(b"prvw", b"\1\0")))
    assert container.parse(data).preview == b"\1\0" and container.unpack_preview(b"\1\0") is None
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS) == "ok | preview:unused | ok"
    show = cli_info._print

    def unguarded(info: dict[str, object]) -> None:  # as _print would be without its check for an unusable preview
        if "preview" in info["metadata"]:
            size = info["preview_size"]
            print(f"{size[0]}x{size[1]}")  # type: ignore[index]
        show(info)

    monkeypatch.setattr(cli_info, "_print", unguarded)
    with small_pixel_limit(), pytest.raises(fz.Finding, match="parse accepted but jac info -> status 1: .*TypeError"):
        fz.check_decode(data, LIMITS)


def _rotated_to(check: str, data: bytes) -> bytes:
    """``data`` with an unknown ancillary chunk added that makes :func:`fz.rotated_check` choose ``check``."""
    for i in range(256):
        out = _rechunked(data, lambda chunks, i=i: chunks.insert(1, fz.Chunk(b"fuZz", bytes([i]))))
        if fz.rotated_check(out) == check:
            return out
    raise AssertionError(f"no variant of the file runs {check}")


def _one_pixel_off(pixels: np.ndarray) -> np.ndarray:
    pixels = pixels.copy()
    pixels.flat[0] ^= 1
    return pixels


@pytest.mark.parametrize("check", fz.ROTATED_CHECKS)
def test_a_file_that_decodes_runs_one_rotated_check(check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that decodes runs one of the checks that cost another whole decode, and a wrong result there is found."""
    from pillow_jac import codec_batch

    data = _rotated_to(check, _seed_named("la-1x1-q1.jac"))
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS) == "ok | ok"
    if check == "decode_batch":
        batch = codec_batch.decode_batch
        monkeypatch.setattr(codec_batch, "decode_batch", lambda files: [_one_pixel_off(p) for p in batch(files)])
        found = "decode_batch of one file and codec.decode give different pixels"
    elif check == "decode_symbols":
        symbols = codec.decode_symbols

        def cropped(data: bytes) -> tuple[object, np.ndarray]:
            z_hat, y_hat = symbols(data)
            return z_hat, y_hat[:, :-1]

        monkeypatch.setattr(codec, "decode_symbols", cropped)
        found = "decode_symbols gave latents of shapes"
    else:
        decode = JacImagePlugin._decode_pixels

        def off_when_truncated(jac: container.JacFile) -> np.ndarray:
            pixels = decode(jac)
            return _one_pixel_off(pixels) if ImageFile.LOAD_TRUNCATED_IMAGES else pixels

        monkeypatch.setattr(JacImagePlugin, "_decode_pixels", off_when_truncated)
        found = "under LOAD_TRUNCATED_IMAGES gives other pixels"
    with small_pixel_limit(), pytest.raises(fz.Finding, match=found):
        fz.check_decode(data, LIMITS)


def test_oracle_checks_the_error_of_jac_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """``jac info`` of a damaged file says the container's error, not a stray exception's."""
    from pillow_jac import cli_info

    data = SEEDS[0][:-3]  # cut inside the CRC of JEND
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS).startswith("JacTruncatedError:truncated JAC file: CRC of chunk")
    read = cli_info.read_jac

    def raw(path: Path, **kwargs: object) -> object:  # a reader that reports the error without naming the file
        try:
            return read(path, **kwargs)
        except cli_info.ConversionError as exc:
            raise exc.__cause__ from None  # type: ignore[misc]

    monkeypatch.setattr(cli_info, "read_jac", raw)
    with small_pixel_limit(), pytest.raises(fz.Finding, match="JacTruncatedError.* but jac info -> status 1"):
        fz.check_decode(data, LIMITS)


# ---------------------------------------------------------------------------------------------
# The engines: command line, watchdog, the input on disk while it runs


def _hang(data: bytes, limits: fz.Limits) -> str:
    time.sleep(20)
    return "ok"


def test_watchdog_stops_a_block_that_swallows_the_alarm() -> None:
    start = time.perf_counter()
    with pytest.raises(fz.Timeout, match="still running after 0.2 s"), fz.watchdog(0.2):
        try:
            time.sleep(20)
        except BaseException:  # as constriction's catch-all does: the watchdog still reports the timeout
            pass
    assert time.perf_counter() - start < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_random_engine_saves_a_hang_as_a_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(oracle, "check_container", _hang)  # where run_one looks it up
    messages: list[str] = []
    stats = fz.run_random("container", SEEDS, 0.1, fz.Limits(timeout=0.3), tmp_path, seed=1, log=messages.append)
    assert stats.findings == stats.executions == 1
    (saved,) = tmp_path.iterdir()  # the current input is gone: the loop ended
    assert saved.name.startswith("timeout-") and "timeout" in messages[0]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_random_engine_leaves_the_input_that_killed_it_on_disk(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from fuzz import fuzz_jac as fz
        from fuzz import oracle
        crashes, seen = Path(sys.argv[1]), Path(sys.argv[2])
        calls = []
        def dies(data, limits):
            calls.append(data)
            if len(calls) == 3:  # as a native crash or the OOM killer would
                seen.write_bytes(data)
                os.kill(os.getpid(), signal.SIGKILL)
            return "ok"
        oracle.check_container = dies  # where run_one looks it up
        fz.run_random("container", fz.load_corpus([fz.SEEDS_DIR]), 60, fz.Limits(), crashes, seed=1)
        """
    )
    crashes, seen = tmp_path / "crashes", tmp_path / "seen.jac"
    done = subprocess.run([sys.executable, "-c", script, crashes, seen], cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert (crashes / fz.CURRENT_INPUT).read_bytes() == seen.read_bytes()


def test_replay_reports_a_hang_as_a_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # main() lowers it
    monkeypatch.setattr(oracle, "check_container", _hang)  # where run_one looks it up
    (tmp_path / "timeout-1").write_bytes(SEEDS[0])
    assert fz.main(["replay", "--target", "container", "--timeout", "0.3", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'timeout-1'}\t") and "\tFINDING timeout: still running after 0.3 s" in out


def test_command_line_takes_paths_after_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "one.jac").write_bytes(b"not a jac file")
    got: dict[str, object] = {}
    monkeypatch.setattr(fz, "setup", lambda *args, **kwargs: None)
    monkeypatch.setattr(fz, "installed_model", lambda: ("model", bytes(8)))
    monkeypatch.setattr(fz, "distill", lambda inputs, out, **kwargs: got.update(inputs=list(inputs), out=out) or {})
    monkeypatch.setattr(fz, "run_atheris", lambda target, argv, limits, corpus: got.update(target=target, argv=argv))
    monkeypatch.setattr(fz, "atheris_installed", lambda: True)
    assert fz.main(["distill", "--out", str(tmp_path / "out"), str(corpus)]) == 0
    assert got["inputs"] == [b"not a jac file"] and got["out"] == tmp_path / "out"
    capsys.readouterr()
    assert fz.main(["replay", "--target", "container", str(corpus)]) == 0
    assert capsys.readouterr().out.startswith(f"{corpus / 'one.jac'}\t")
    work = tmp_path / "work"
    fz.main(["atheris", "--target", "container", str(work), str(corpus), "-runs=1", "--", "-max_total_time=5"])
    assert got["target"] == "container" and work.is_dir()
    assert got["argv"] == ["-runs=1", "-max_total_time=5", str(work), str(corpus)]


@pytest.mark.parametrize(
    "argv",
    [["replay"], ["replay", "MISSING"], ["replay", "EMPTY"], ["distill", "--out", "OUT"],
     ["distill", "--out", "OUT", "MISSING"], ["random", "MISSING"], ["random", "-max_total_time=5"]],
)  # fmt: skip
def test_command_line_refuses_no_input(argv: list[str], tmp_path: Path) -> None:
    (tmp_path / "EMPTY").mkdir()
    with pytest.raises(SystemExit) as info:
        fz.main([str(tmp_path / a) if a.isupper() else a for a in argv])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------
# fuzz/run_session.sh, with a stand-in for Python that records its arguments


def _session(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run fuzz/run_session.sh from ``tmp_path`` with PYTHON a shell script ending in ``body``."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" >>"$CALLS"\n'
        'for a in "$@"; do case $a in -artifact_prefix=*) artifacts=${a#-artifact_prefix=};; esac; done\n' + body
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls")}
    script = ROOT / "fuzz" / "run_session.sh"
    done = subprocess.run(
        ["bash", str(script), "container", "1", "work"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=20,
    )  # fmt: skip
    return done, (tmp_path / "calls").read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="needs bash")
def test_run_session_stops_when_a_run_fails_at_once(tmp_path: Path) -> None:
    done, calls = _session(tmp_path, 'echo "No module named atheris"; exit 3\n')
    assert done.returncode == 3 and len(calls) == 1
    assert "No module named atheris" in done.stderr
    script, *args = calls[0].split()
    assert Path(script).is_file() and args[:3] == ["atheris", "--target", "container"]
    assert Path(args[4]).samefile(ROOT / "fuzz" / "seeds")


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="needs bash")
def test_run_session_restarts_after_a_finding(tmp_path: Path) -> None:
    body = 'if [ ! -e "$CALLS.found" ]; then touch "$CALLS.found" "${artifacts}crash-1"; exit 1; fi; exit 0\n'
    done, calls = _session(tmp_path, body)
    assert len(calls) == 2  # the finding, then a run that ended at once without one
    assert done.returncode == 1 and (tmp_path / "work" / "artifacts" / "crash-1").exists()


# --------------------------------------------------------------------------- each rule of the read paths breaks


def _whole_and_damaged() -> tuple[bytes, bytes]:
    """A seed that decodes, and the same file with a damaged EXIF chunk and no end (recovered with two warnings)."""
    whole = _seed_named("la-33x20-q5.5-exif-unknown.jac")
    return whole, _rechunked(whole, _damaged_exif_and_end)


def test_every_rule_of_the_truncated_read_reports_its_break() -> None:
    """Each branch of ``read_paths.check_truncated`` that real files do not reach in the tests above is driven
    here with the outcomes a broken reader would give; each is reported, and the true outcomes are not."""
    from fuzz import read_paths

    whole, damaged = _whole_and_damaged()
    jac, pixels = container.parse(whole), codec.decode(whole)
    ok_parse, ok_pixels = ("ok", jac), ("ok", pixels)
    clean = ("ok", (pixels, []))
    read_paths.check_truncated(whole, ok_parse, ("ok", (jac, [])), ok_pixels, clean, None)  # all agree
    broken = container.JacDataError("CRC mismatch in chunk 'exif'")
    cases = [
        # a whole file that the recovering parse reads otherwise
        ((whole, ok_parse, ("ok", (jac, [b"exif"])), ok_pixels, clean, None), "parse accepted but the recovering"),
        # a file both parses refuse, and an image under the flag all the same
        ((damaged, ("error", broken), ("error", broken), ("error", broken), clean, None), "gave an image"),
        # a refused file that the recovering parse takes without naming any damage
        ((damaged, ("error", broken), ("ok", (jac, [])), ("error", broken), clean, ok_pixels), "without reporting"),
        # a whole file that decodes, refused under the flag
        ((whole, ok_parse, ("ok", (jac, [])), ok_pixels, ("error", OSError("broken")), None), "chunks decode but"),
        # a file whose decode fails with one error, and with another under the flag
        ((whole, ok_parse, ("ok", (jac, [])), ("error", ValueError("bad")), ("error", OSError("other")), None),
         r"load\(\) -> ValueError:bad but under LOAD_TRUNCATED_IMAGES -> OSError:other"),
    ]  # fmt: skip
    for arguments, message in cases:
        with pytest.raises(fz.Finding, match=message):
            read_paths.check_truncated(*arguments)


def test_every_rule_of_decode_batch_and_decode_symbols_reports_its_break() -> None:
    """Each branch of ``read_paths.check_batch_and_symbols`` the tests above do not reach, with the outcomes a
    broken ``decode_batch`` or ``decode_symbols`` would give."""
    from fuzz import read_paths

    whole = _seed_named("la-33x20-q5.5-exif-unknown.jac")
    pixels, symbols = codec.decode(whole), codec.decode_symbols(whole)
    read_paths.check_batch_and_symbols(whole, ("ok", pixels), ("ok", [pixels]), ("ok", symbols))  # all agree
    refused = codec.CodecError("refused")
    with pytest.raises(fz.Finding, match="codec.decode accepted but decode_batch -> CodecError:refused"):
        read_paths.check_batch_and_symbols(whole, ("ok", pixels), ("error", refused), None)
    with pytest.raises(fz.Finding, match="codec.decode accepted but decode_symbols -> CodecError:refused"):
        read_paths.check_batch_and_symbols(whole, ("ok", pixels), None, ("error", refused))
    unnamed = codec.CodecError("refused")
    unnamed.batch_index = 3  # the error names another item than the only one
    with pytest.raises(fz.Finding, match="with batch_index 3"):
        read_paths.check_batch_and_symbols(whole, ("error", refused), ("error", unnamed), None)


def test_jac_info_that_cannot_run_is_reported_and_its_ctrl_c_is_raised_again() -> None:
    """``read_paths.check_info``: a ``jac info`` that could not be run (writing its input failed) is a finding of
    its own, and its status 130 (a Ctrl-C it caught) is the fuzzer's Ctrl-C."""
    from fuzz import read_paths

    whole = _seed_named("rgb-8x8-q1.jac")
    parsed = ("ok", container.parse(whole))
    with pytest.raises(fz.Finding, match="jac info could not be run: OSError:No space left"):
        read_paths.check_info(parsed, ("error", OSError("No space left on device")))
    with pytest.raises(KeyboardInterrupt):
        read_paths.check_info(parsed, ("ok", (130, "", "jac: interrupted\n")))


def test_every_rule_of_draft_parser_verify_and_thumbnail_reports_its_break() -> None:
    """The oracle's rules for ``draft()`` (SPEC.md section 5.4), the Parser against ``load()``, ``verify()``
    against the decode, and ``thumbnail()``, each driven with the outcomes a broken reader would give."""
    data = _preview_seed()
    jac, pixels = container.parse(data), codec.decode(data)
    (width, height), (pw, ph) = jac.size, container.unpack_preview(jac.preview)[1:3]
    request, used = oracle.preview_request(jac), (jac.mode, (0, 0, pw, ph))
    assert oracle._check_draft(jac, request, ("ok", (used, (pw, ph), jac.mode))) == "preview:used"
    plain = container.parse(_seed_named("rgb-8x8-q1.jac"))
    draft_cases = [
        (jac, ("error", OSError("broken")), "Image.open accepted but draft"),
        (plain, ("ok", (("RGB", (0, 0, 4, 4)), (4, 4), "RGB")), "for a file without a usable preview"),
        (jac, ("ok", (used, (pw + 1, ph), jac.mode)), "loaded"),
        (jac, ("ok", ((jac.mode, (0, 0, width, height)), (width, height), jac.mode)), "loaded"),
    ]
    for file, drafted, message in draft_cases:
        with pytest.raises(fz.Finding, match=message):
            oracle._check_draft(file, oracle.preview_request(file), drafted)
    with pytest.raises(fz.Finding, match="smaller than asked for"):
        oracle._check_draft(jac, (width, height), ("ok", (used, (pw, ph), jac.mode)))
    as_large = dataclasses.replace(jac, header=dataclasses.replace(jac.header, width=pw, height=ph))
    with pytest.raises(fz.Finding, match="not smaller"):
        oracle._check_draft(as_large, (pw, ph), ("ok", (used, (pw, ph), jac.mode)))

    ok, refused = ("ok", pixels), ("error", container.JacDataError("CRC mismatch in chunk 'YSTR'"))
    oracle._check_parser_and_verify(ok, ok, ok, ok)  # all agree
    with pytest.raises(fz.Finding, match=r"load\(\) accepted but ImageFile.Parser"):
        oracle._check_parser_and_verify(ok, ("ok", _one_pixel_off(pixels)), ok, ok)
    with pytest.raises(fz.Finding, match="but ImageFile.Parser accepted"):
        oracle._check_parser_and_verify(refused, ok, refused, refused)
    with pytest.raises(fz.Finding, match="verify.. passed but codec.decode found the container damaged"):
        oracle._check_parser_and_verify(refused, refused, ("ok", None), refused)

    box = (max(1, width // 2), max(1, height // 2))
    oracle._check_thumbnail(data, box, ok, ("ok", (True, (pw, ph), jac.mode)))
    with pytest.raises(fz.Finding, match=r"load\(\) accepted but thumbnail"):
        oracle._check_thumbnail(data, box, ok, ("error", OSError("broken")))
    with pytest.raises(fz.Finding, match=r"but thumbnail\(\) decoded the image"):
        oracle._check_thumbnail(data, box, refused, ("ok", (False, box, jac.mode)))
    with pytest.raises(fz.Finding, match=r"thumbnail\(.*\) of a .* file gave"):
        oracle._check_thumbnail(data, box, ok, ("ok", (True, (width, height), jac.mode)))


def test_every_rule_of_the_container_entry_points_reports_its_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """``oracle.check_container``: ``read_file`` on a stream, ``read_header`` and ``Image.open`` agree with
    ``container.parse``; each disagreement a broken entry point would give is reported."""
    data, other = _seed_named("rgb-8x8-q1.jac"), _seed_named("la-33x20-q5.5-exif-unknown.jac")
    refused = data[:-3]  # cut inside the CRC of JEND
    real_open = oracle._pillow_open

    def fails(exc: BaseException) -> Callable[..., object]:
        def raising(*args: object, **kwargs: object) -> object:
            raise exc

        return raising

    cases = [
        ("read_file", lambda f: container.parse(other), data, "but read_file on a stream -> ok"),
        ("read_file", fails(OSError("other")), refused, "but read_file on a stream -> OSError:other"),
        ("read_header", fails(container.NotJacFileError("no")), data, "parse -> ok but read_header -> NotJacFileError"),
        ("read_header", lambda f: container.parse(other).header, data, "parse accepted but read_header -> ok"),
        ("_pillow_open", lambda d, load: ((1, 1), "L", {}), data, r"Image.open reports \(1, 1\) L"),
        ("_pillow_open", fails(OSError("other")), data, "parse accepted but Image.open -> OSError:other"),
        ("_pillow_open", lambda d, load: real_open(data, load), refused, "but Image.open accepted"),
    ]
    for name, broken, file, message in cases:
        with monkeypatch.context() as patch:
            patch.setattr(oracle if name == "_pillow_open" else container, name, broken)
            with pytest.raises(fz.Finding, match=message):
                fz.check_container(file, LIMITS)
    assert fz.check_container(data, LIMITS) == "ok"  # the entry points as they are agree


def test_every_rule_of_decode_against_load_reports_its_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """``oracle.check_decode``: ``codec.decode`` gives the header's shape in uint8, and ``Image.open().load()``
    accepts and refuses what it does, with its pixels; each break a reader could make is reported (the other
    readers broken alike where the oracle compares them first)."""
    data = _rotated_to("decode_symbols", _seed_named("la-1x1-q1.jac"))  # its one extra check compares shapes
    decode = codec.decode

    def refused(*args: object, **kwargs: object) -> object:
        error = OSError("other")
        error.batch_index = 0  # as decode_batch names its item
        raise error

    oracle_open, parser = oracle._pillow_open, oracle._pillow_parser
    cases = [
        ({(codec, "decode"): lambda *a, **k: decode(*a, **k).astype(np.uint16)}, "codec.decode returned uint16"),
        ({(oracle, "_pillow_open"): lambda d, load: (_one_pixel_off if load else lambda r: r)(oracle_open(d, load)),
          (oracle, "_pillow_parser"): lambda d: _one_pixel_off(parser(d))},
         r"load\(\) and codec.decode give different pixels"),
        ({(oracle, "_pillow_open"): lambda d, load: refused() if load else oracle_open(d, load),
          (oracle, "_pillow_parser"): refused}, r"codec.decode accepted but Image.open\(\).load\(\) -> OSError"),
        # the file's bytes refused, the plugin's parsed file (and so load()) decoded
        ({(codec, "decode"): lambda d, **k: refused() if isinstance(d, bytes) else decode(d, **k),
          (codec, "decode_batch"): refused, (codec, "decode_symbols"): refused},
         r"codec.decode -> OSError:other but Image.open\(\).load\(\) accepted"),
    ]  # fmt: skip
    for patches, message in cases:
        with monkeypatch.context() as patch:
            for (module, name), broken in patches.items():
                patch.setattr(module, name, broken)
            with small_pixel_limit(), pytest.raises(fz.Finding, match=message):
                fz.check_decode(data, LIMITS)
    with small_pixel_limit():
        assert fz.check_decode(data, LIMITS) == "ok | ok"  # the readers as they are agree


def test_the_harness_copies_of_the_formats_facts_agree_with_the_package():
    """fuzz/chunks.py and fuzz/mutators.py repeat the signature, JHDR's and prvw's layouts, the latent shapes a size
    implies and the chunk types (importing pillow_jac there would precede atheris's instrumentation): a change
    to the format must reach them, or the harness would forge files of another format."""
    from fuzz import chunks, mutators
    from pillow_jac import constants as C
    from pillow_jac.container import structure

    assert chunks.MAGIC == C.MAGIC and mutators.MAGIC == C.MAGIC
    assert chunks.JHDR.format == structure.JHDR.format and chunks.PRVW_HEAD.format == structure.PRVW_HEAD.format
    assert len(chunks.JHDR_FIELDS) == len(structure.JHDR.unpack(bytes(structure.JHDR.size)))
    assert chunks._JHDR_CRC_AT == len(C.MAGIC) + 8 + C.JHDR_LENGTH
    for width, height in [(1, 1), (63, 64), (65, 129), (1000, 7), (65535, 1)]:
        (yh, yw), (zh, zw) = structure.latent_shapes(width, height)
        assert chunks.derived_shapes(width, height) == {"yh": yh, "yw": yw, "zh": zh, "zw": zw}
    known = {getattr(C, name) for name in dir(C) if name.startswith("CHUNK_")}
    assert known <= set(mutators.CHUNK_TYPES)
    assert set(mutators.PREVIEW_FORMATS) == {C.PREVIEW_JPEG, C.PREVIEW_WEBP}
