"""CODING.md section 2.5 defines the range decoder completely: its plain-Python form reads constriction's streams."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import constriction
import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "format_spec" / "range_decoder.py"
_SPEC = importlib.util.spec_from_file_location("range_decoder", _PATH)
range_decoder = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(range_decoder)

Categorical = constriction.stream.model.Categorical
Uniform = constriction.stream.model.Uniform


def _random_table(rng: np.random.Generator) -> np.ndarray:
    """Frequencies as CODING.md section 2.1 stores them: n >= 3, each >= 1, summing to 65536."""
    n = int(rng.integers(3, 60))
    weights = rng.gamma(0.3, size=n)
    freqs = np.floor(weights / weights.sum() * (65536 - n)).astype(np.int64) + 1
    freqs[int(np.argmax(freqs))] += 65536 - int(freqs.sum())
    return freqs


def _mixture_row(rng: np.random.Generator) -> np.ndarray:
    """A mixture row as CODING.md section 4.3 makes it: 35 integers (as float64) of a 2**32 mass plus a floor each."""
    mass = rng.gamma(0.3, size=35)
    row = np.floor(mass / mass.sum() * 2**32)
    row[0] += 2**32 - row.sum()
    return row + 2**16


def _stream(seed: int, count: int):
    """Random symbols of tables, escape classes, escape values and mixture rows, coded by constriction 0.5."""
    rng = np.random.default_rng(seed)
    tables = [_random_table(rng) for _ in range(6)]
    escape = np.full(24, 1.0 / 24)
    ops = []
    for _ in range(count):
        kind = rng.integers(4)
        if kind == 0:
            freqs = tables[int(rng.integers(len(tables)))]
            ops.append(("table", freqs, int(rng.choice(len(freqs), p=freqs / 65536))))
        elif kind == 1:
            ops.append(("class", escape, int(rng.integers(24))))
        elif kind == 2:
            c = int(rng.integers(1, 24))
            ops.append(("uniform", 1 << c, int(rng.integers(1 << c))))
        else:
            row = _mixture_row(rng)
            ops.append(("mixture", row, int(rng.choice(len(row), p=row / row.sum()))))
    encoder = constriction.stream.queue.RangeEncoder()
    for kind, model, symbol in ops:
        if kind == "mixture":  # as pillow_jac.mixture_coding codes rows: one parameterised model, rows apart
            encoder.encode(np.array([symbol], np.int32), Categorical(perfect=False), model[None])
        else:
            encoder.encode(np.array([symbol], np.int32), _library_model(kind, model))
    return ops, encoder.get_compressed()


def _library_model(kind: str, model):
    """As pillow_jac.entropy_coding hands each kind to constriction (CODING.md section 2.4)."""
    if kind == "uniform":
        return Uniform(model)
    return Categorical(np.asarray(model) / 65536.0 if kind == "table" else model, perfect=False)


def _decode_plain(ops, words) -> tuple[list[int], bool]:
    decoder = range_decoder.RangeDecoder(words)
    out = []
    for kind, model, _ in ops:
        if kind == "uniform":
            out.append(decoder.decode_uniform(model))
        else:
            left = range_decoder.categorical(np.asarray(model) / 65536.0 if kind == "table" else model)
            out.append(decoder.decode_categorical(left))
    return out, decoder.exhausted()


def _exhausted_by_constriction(ops, words) -> bool:
    decoder = constriction.stream.queue.RangeDecoder(np.asarray(words, np.uint32))
    for kind, model, _ in ops:
        if kind == "mixture":
            decoder.decode(Categorical(perfect=False), model[None])
        else:
            decoder.decode(_library_model(kind, model), 1)
    return bool(decoder.maybe_exhausted())


@pytest.mark.parametrize("seed", range(6))
def test_the_plain_decoder_reads_constrictions_streams(seed: int) -> None:
    ops, words = _stream(seed, 400)
    symbols, exhausted = _decode_plain(ops, words)
    assert symbols == [symbol for _, _, symbol in ops]
    assert exhausted is True and _exhausted_by_constriction(ops, words) is True
    extra = np.append(words, np.uint32(0xDEADBEEF))  # data after the last symbol: both see it, or neither
    assert _decode_plain(ops, extra)[1] == _exhausted_by_constriction(ops, extra)
    # where data is left, both say so: two extra words (CODING.md 2.4 allows one), or the first 200 symbols read
    two = np.append(words, np.array([0xDEADBEEF, 0x12345678], np.uint32))
    assert _decode_plain(ops, two)[1] is False and _exhausted_by_constriction(ops, two) is False
    assert _decode_plain(ops[:200], words)[1] is False and _exhausted_by_constriction(ops[:200], words) is False


def test_a_point_no_interval_reaches_is_invalid_in_both() -> None:
    words = np.array([0xFFFFFFFF, 0xFFFFFFFF], np.uint32)
    left = range_decoder.categorical(np.array([1, 65534, 1]) / 65536.0)
    with pytest.raises(range_decoder.InvalidStream):
        range_decoder.RangeDecoder(words).decode_categorical(left)
    # constriction 0.5 reports it as an AssertionError naming the model; any exception type is taken (a Rust
    # panic would be a BaseException), but it must say why
    with pytest.raises(BaseException, match="invalid for the employed entropy model"):
        constriction.stream.queue.RangeDecoder(words).decode(_library_model("table", np.array([1, 65534, 1])), 1)
