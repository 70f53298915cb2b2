"""Integer coding tables and range coding with constriction (CODING.md section 2).

Every latent symbol is coded with one of a finite set of *tables*: lists of integer frequencies
that sum to ``2**CDF_PRECISION``. A table covers the values ``low .. low + n - 3`` and has two
escape entries, index 0 for "below the range" and index ``n - 1`` for "above the range"; an
escaped value's distance ``e >= 0`` past the range is then coded as an Elias-gamma pair: the
class ``c = bit_length(e + 1) - 1`` with a flat table of ``ESCAPE_CLASSES`` entries and the ``c``
low bits of ``e + 1`` with a uniform model. So every integer can be coded, and nothing is clipped.

* y tables are indexed by ``scale_index * MEAN_STEPS + mean_fraction`` and hold the Gaussian of
  scale ``sigma_j`` and mean ``fraction / MEAN_STEPS`` convolved with a unit uniform
  (Minnen 2018, eq. 4), evaluated at integer offsets from ``floor(mean)``.
* z tables are one per channel of the factorized prior (Ballé 2018, appendix 6.1).

Tables are built once, in float64, by :func:`gaussian_tables` / :func:`factorized_tables` when the
model is frozen, and shipped as integers with the weights, so encoder and decoder share them
exactly. constriction's ``Categorical(perfect=False)`` turns each into its internal fixed-point
model with deterministic integer and IEEE arithmetic.

Example:
    >>> import numpy as np
    >>> tables = CodingTables(*quantize_tables([np.array([0.1, 0.8, 0.1])], [-1]))
    >>> data = tables.encode_to_bytes(np.array([0, 5, -9]), np.array([0, 0, 0]))
    >>> tables.decode_from_bytes(data, np.array([0, 0, 0])).tolist()
    [0, 5, -9]
"""

from __future__ import annotations

import decimal
import functools
import math

import constriction
import numpy as np

from .constants import CDF_PRECISION, ESCAPE_CLASSES, MEAN_STEPS, SCALE_LEVELS, SCALE_MAX, SCALE_MIN, TAIL_MASS

__all__ = [
    "CodingTables",
    "EntropyCodingError",
    "quantize_tables",
    "scale_table",
    "gaussian_tables",
    "factorized_tables",
    "words_to_bytes",
    "bytes_to_words",
]

_TOTAL = 1 << CDF_PRECISION
#: bits of information a range decoder can still hold once its data is read (its 64-bit state), with margin
STATE_SLACK_BITS = 128
_Categorical = constriction.stream.model.Categorical


class EntropyCodingError(ValueError, OSError):
    """A stream does not decode: it is corrupt, truncated or was written with other tables.

    A :class:`ValueError`, and an :class:`OSError` as Pillow reports a broken data stream.
    """


def scale_table() -> np.ndarray:
    """The ``SCALE_LEVELS`` log-spaced scales from ``SCALE_MIN`` to ``SCALE_MAX`` (float64)."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0))


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to ``2**CDF_PRECISION``, every entry at least 1.

    Example:
        >>> int(quantize_pmf(np.array([0.5, 0.5, 0.0])).sum()) == 2**16
        True
    """
    p = np.asarray(pmf, dtype=np.float64)
    p = p / p.sum()
    freqs = np.floor(p * (_TOTAL - len(p))).astype(np.int64) + 1
    freqs[int(np.argmax(p))] += _TOTAL - int(freqs.sum())
    return freqs


def quantize_tables(pmfs: list[np.ndarray], lows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack in-range pmfs (escape masses added as given tails) into flat integer arrays.

    Each ``pmfs[k]`` must already include the two escape entries at its ends.
    Returns ``(freqs int32 flat, offsets int64 of length K+1, lows int32)``.
    """
    quantized = [quantize_pmf(p) for p in pmfs]
    offsets = np.zeros(len(quantized) + 1, np.int64)
    offsets[1:] = np.cumsum([len(q) for q in quantized])
    return np.concatenate(quantized).astype(np.int32), offsets, np.asarray(lows, np.int32)


def _tail_extent(scale: float) -> int:
    """Half-width of a Gaussian table: the TAIL_MASS quantile in units of bins, at least 1."""
    z = -float(np.interp(math.log10(TAIL_MASS), *_LOG_TAIL))
    return max(1, math.ceil(scale * z))


# log10 of the upper tail of N(0,1) at a few points, to invert it without scipy
_Z = np.linspace(0.0, 9.0, 901)
_LOG_TAIL = (np.log10(np.maximum(0.5 * np.vectorize(math.erfc)(_Z / math.sqrt(2.0)), 1e-300))[::-1], -_Z[::-1])


def gaussian_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The y tables: ``SCALE_LEVELS * MEAN_STEPS`` discretised Gaussians with escapes (arrays the caller owns)."""
    return tuple(table.copy() for table in _gaussian_tables())


@functools.cache
def _gaussian_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gaussian_tables`, computed once: they depend on constants only."""
    pmfs, lows = [], []
    for sigma in scale_table():
        extent = _tail_extent(sigma)
        low, high = -extent, extent + 1
        for step in range(MEAN_STEPS):
            mean = step / MEAN_STEPS
            edges = (np.arange(low, high + 2, dtype=np.float64) - 0.5 - mean) / sigma
            cdf = _normal_cdf(edges)
            pmf = np.concatenate([[cdf[0]], np.diff(cdf), [1.0 - cdf[-1]]])
            pmfs.append(pmf)
            lows.append(low)
    return quantize_tables(pmfs, lows)


def factorized_tables(cdf_at: callable, channels: int, search: int = 4095) -> tuple[np.ndarray, ...]:
    """The z tables from a cumulative ``cdf_at(points) -> (channels, n)`` (float64 numpy).

    The range of channel c keeps the integers whose bins lie inside the TAIL_MASS quantiles.
    """
    grid = np.arange(-search, search + 2, dtype=np.float64) - 0.5
    cdf = cdf_at(grid)
    pmfs, lows = [], []
    for c in range(channels):
        row = np.clip(cdf[c], 0.0, 1.0)
        low_i = int(np.searchsorted(row, TAIL_MASS, side="right")) - 1
        high_i = int(np.searchsorted(row, 1.0 - TAIL_MASS, side="left"))
        low_i = min(max(low_i, 0), search)
        high_i = max(min(high_i, len(row) - 1), low_i + 1)
        inner = row[low_i : high_i + 1]
        pmf = np.concatenate([[row[low_i]], np.diff(inner), [1.0 - row[high_i]]])
        pmfs.append(np.maximum(pmf, 0.0))
        lows.append(low_i - search)
    return quantize_tables(pmfs, lows)


def words_to_bytes(words: np.ndarray) -> bytes:
    """The range coder's uint32 words as little-endian bytes (CODING.md section 2.4)."""
    return np.asarray(words, dtype="<u4").tobytes()


def check_whole_words(data: bytes) -> None:
    """Refuse a stream whose length is not a whole number of 32-bit words (CODING.md section 2.4)."""
    if len(data) % 4:
        raise EntropyCodingError(f"stream length {len(data)} is not a multiple of 4")


def bytes_to_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`words_to_bytes`; the length must be a multiple of 4."""
    check_whole_words(data)
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def log2_ratio(numerator: int, denominator: int) -> float:
    """``log2(numerator / denominator)`` of positive integers, correctly rounded to float64 (CODING.md 2.4).

    (A float64 ``x`` is ``log2_ratio(*x.as_integer_ratio())``.)

    The bounds of a stream's length rest on it; libm's and numpy's ``log2`` need not round correctly (they
    differ on some of the 65,536 ratios ``f / 2**16``, by how each was built), so it is computed in decimal
    to 60 digits and rounded once.

    Example:
        >>> log2_ratio(1, 8), log2_ratio(65531, 65536) == math.log2(65531 / 65536)
        (-3.0, True)
    """
    with decimal.localcontext() as context:
        context.prec = 60
        value = (decimal.Decimal(numerator).ln() - decimal.Decimal(denominator).ln()) / decimal.Decimal(2).ln()
        return float(value)


class CodingTables:
    """A set of integer tables with ready-made constriction models.

    Args:
        freqs: flat int32 frequencies of all tables.
        offsets: start of each table in ``freqs`` (length K + 1).
        lows: the smallest in-range value of each table.
    """

    def __init__(self, freqs: np.ndarray, offsets: np.ndarray, lows: np.ndarray):
        freqs = np.asarray(freqs, np.int64)
        self.offsets = np.asarray(offsets, np.int64)
        self.lows = np.asarray(lows, np.int64)
        self.sizes = np.diff(self.offsets)
        if len(self.lows) != len(self.sizes) or (self.sizes < 3).any():
            raise ValueError("malformed coding tables")
        if len(self.offsets) < 2 or self.offsets[0] != 0 or self.offsets[-1] != len(freqs):
            raise ValueError("the coding tables' offsets must start at 0 and end at the number of frequencies")
        self.models = []
        for k in range(len(self.sizes)):
            row = freqs[self.offsets[k] : self.offsets[k + 1]]
            if (row < 1).any():
                raise ValueError(f"coding table {k} has a frequency below 1")
            if row.sum() != _TOTAL:
                raise ValueError(f"coding table {k} does not sum to 2**{CDF_PRECISION}")
            self.models.append(_Categorical(row / _TOTAL, perfect=False))
        #: per table, the cumulative frequencies ``0, f0, f0 + f1, ..., 2**CDF_PRECISION`` (one more
        #: entry than the table), starting at ``cumulative_offsets[k]``
        self.cumulative_offsets = self.offsets + np.arange(len(self.offsets))
        self.cumulative = np.zeros(len(freqs) + len(self.sizes), np.int64)
        for k in range(len(self.sizes)):
            start = self.cumulative_offsets[k]
            self.cumulative[start + 1 : start + 1 + self.sizes[k]] = np.cumsum(
                freqs[self.offsets[k] : self.offsets[k + 1]]
            )
        #: the fewest bits any symbol can cost: -log2 of the largest probability in any table
        self.min_symbol_bits = -log2_ratio(int(np.maximum.reduceat(freqs, self.offsets[:-1]).max()), _TOTAL)
        self.escape_model = _Categorical(np.full(ESCAPE_CLASSES, 1.0 / ESCAPE_CLASSES), perfect=False)
        self._uniform = {c: constriction.stream.model.Uniform(1 << c) for c in range(1, ESCAPE_CLASSES)}

    def __len__(self) -> int:
        return len(self.sizes)

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, encoder, values: np.ndarray, table_ids: np.ndarray) -> None:
        """Append ``values`` (int) coded with the tables ``table_ids`` to a constriction RangeEncoder.

        Symbols are written grouped by table id (ascending), each group in the given order, then
        the escape classes and mantissas of the escaped values (CODING.md section 2.3).
        """
        values = np.asarray(values, np.int64).ravel()
        table_ids = np.asarray(table_ids, np.int64).ravel()
        low = self.lows[table_ids]
        high = low + self.sizes[table_ids] - 3
        index = values - low + 1
        below, above = values < low, values > high
        index[below] = 0
        index[above] = self.sizes[table_ids][above] - 1
        order, groups = self._groups(table_ids)
        symbols = index[order].astype(np.int32)
        models = self.models
        for tid, start, end in groups:
            encoder.encode(symbols[start:end], models[tid])
        escaped = np.flatnonzero(below | above)
        if len(escaped):
            excess = np.where(below[escaped], low[escaped] - 1 - values[escaped], values[escaped] - high[escaped] - 1)
            self.encode_escapes(encoder, excess)

    def encode_escapes(self, encoder, excess: np.ndarray) -> None:
        """Code how far each escaped value lies past its range, ``excess >= 0`` (CODING.md section 2.3)."""
        plus_one = excess + 1
        classes = np.floor(np.log2(plus_one.astype(np.float64))).astype(np.int64)
        # guard against float rounding of log2 for exact powers of two
        classes += (plus_one >= (1 << (classes + 1))).astype(np.int64)
        classes -= (plus_one < (1 << classes)).astype(np.int64)
        if (classes >= ESCAPE_CLASSES).any():
            raise ValueError("value too far outside its coding table")
        encoder.encode(classes.astype(np.int32), self.escape_model)
        for c in range(1, ESCAPE_CLASSES):
            members = classes == c
            if members.any():
                encoder.encode((plus_one[members] - (1 << c)).astype(np.int32), self._uniform[c])

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, decoder, table_ids: np.ndarray) -> np.ndarray:
        """Read values coded by :meth:`encode` with the same ``table_ids``; returns int64."""
        table_ids = np.asarray(table_ids, np.int64).ravel()
        index = np.empty(len(table_ids), np.int64)
        try:
            order, groups = self._groups(table_ids)
            models, decode = self.models, decoder.decode
            parts = [decode(models[tid], end - start) for tid, start, end in groups]
            if parts:
                index[order] = np.concatenate(parts)
            low = self.lows[table_ids]
            sizes = self.sizes[table_ids]
            values = low + index - 1
            below, above = index == 0, index == sizes - 1
            escaped = np.flatnonzero(below | above)
            if len(escaped):
                excess = self.decode_escapes(decoder, len(escaped))
                hi = low[escaped] + sizes[escaped] - 3
                values[escaped] = np.where(below[escaped], low[escaped] - 1 - excess, hi + 1 + excess)
        except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise  # a MemoryError is not a corrupt stream: report it as what it is
        except BaseException as exc:  # constriction reports some invalid states as a Rust panic
            raise EntropyCodingError(f"corrupt entropy-coded stream: {exc}") from exc
        return values

    def decode_escapes(self, decoder, count: int) -> np.ndarray:
        """Read ``count`` excesses written by :meth:`encode_escapes` (int64)."""
        classes = np.asarray(decoder.decode(self.escape_model, count), np.int64)
        plus_one = np.left_shift(1, classes)
        for c in range(1, ESCAPE_CLASSES):
            members = classes == c
            if members.any():
                plus_one[members] += np.asarray(decoder.decode(self._uniform[c], int(members.sum())))
        return plus_one - 1

    @staticmethod
    def _groups(table_ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Symbols grouped by ascending table id, members in given order (CODING.md section 2.3).

        Returns the stable sort ``order`` of the positions and ``(table_id, start, end)`` slices of it.
        """
        order = np.argsort(table_ids, kind="stable")
        sorted_ids = table_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if len(order) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(order)]
        return order, list(zip(sorted_ids[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))

    def check_length(self, data: bytes, symbols: int, what: str, min_bits: float | None = None) -> None:
        """Reject a stream too short to hold ``symbols`` symbols, before anything is decoded.

        Every symbol costs at least :attr:`min_symbol_bits`, a range coder's output is at least the
        information it carries less its 64-bit state, and the coder writes at least one word for any
        symbol (CODING.md section 2.4), so a shorter stream is forged or cut: it is refused at once
        instead of after a decode sized by the header. ``min_bits`` replaces :attr:`min_symbol_bits`
        for symbols coded with other models (a mixture's rows, CODING.md section 4). A length that is not
        a whole number of 32-bit words is refused here too, not after the hyperprior's work.
        """
        check_whole_words(data)
        bits = self.min_symbol_bits if min_bits is None else min_bits
        need = max(4 if symbols else 0, math.ceil((symbols * bits - STATE_SLACK_BITS) / 8))
        if len(data) < need:
            raise EntropyCodingError(
                f"corrupt entropy-coded stream: the {what} stream has {len(data)} bytes, but {symbols} symbols "
                f"need at least {need}"
            )

    def check_not_run_out(self, decoder, symbols_left: int, min_bits: float | None = None) -> None:
        """Stop a decoder that has read all its data while the symbols left need more than its state holds."""
        bits = self.min_symbol_bits if min_bits is None else min_bits
        if decoder.maybe_exhausted() and symbols_left * bits > STATE_SLACK_BITS:
            raise EntropyCodingError(
                f"corrupt entropy-coded stream: the data ends with at least {symbols_left} symbols still to decode"
            )

    @staticmethod
    def finish(decoder) -> None:
        """Reject a stream with words left after its last symbol (CODING.md section 2.4).

        The encoder never writes such words, so they mean a forged or damaged stream whose length
        and checksum were made to agree.
        """
        if not decoder.maybe_exhausted():
            raise EntropyCodingError("corrupt entropy-coded stream: data left after the last symbol")

    # -- convenience ------------------------------------------------------------------------------
    def encode_to_bytes(self, values: np.ndarray, table_ids: np.ndarray) -> bytes:
        """Code one array of values into a standalone stream."""
        encoder = constriction.stream.queue.RangeEncoder()
        self.encode(encoder, values, table_ids)
        return words_to_bytes(encoder.get_compressed())

    def decode_from_bytes(self, data: bytes, table_ids: np.ndarray) -> np.ndarray:
        """Decode a stream written by :meth:`encode_to_bytes`."""
        decoder = constriction.stream.queue.RangeDecoder(bytes_to_words(data))
        values = self.decode(decoder, table_ids)
        self.finish(decoder)
        return values
