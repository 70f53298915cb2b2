"""The range decoder of CODING.md section 2.5 in plain Python, without constriction.

It exists to show that the section defines the decoder completely: ``tests/test_range_decoder.py``
encodes random symbols with constriction 0.5 (every kind of model the format uses: tables, the escape
classes, uniform escape values) and checks that this decoder reads back the same symbols and the same
"exhausted" state. It is slow (one Python loop per symbol) and not used by the codec.

Example:
    >>> decoder = RangeDecoder([])
    >>> decoder.exhausted()
    True
"""

from __future__ import annotations

from collections.abc import Sequence

PRECISION = 24
_WRAP = (1 << 64) - 1


def categorical(probabilities: Sequence[float]) -> list[int]:
    """``left[0..n]`` of ``Categorical(p, perfect=False)``: sums in float64 in order, products truncated."""
    n = len(probabilities)
    total = 0.0
    for p in probabilities:
        total += float(p)
    k = float((1 << PRECISION) - n) / total
    left, running = [], 0.0
    for i, p in enumerate(probabilities):
        left.append(int(running * k) + i)  # int() truncates towards zero; running * k >= 0
        running += float(p)
    left.append(1 << PRECISION)
    return left


class InvalidStream(ValueError):
    """The point lies where no symbol's interval reaches (``q >= 2**24``, CODING.md section 2.4)."""


class RangeDecoder:
    """Decoder state over a stream's ``uint32`` words (CODING.md section 2.5, "State")."""

    def __init__(self, words: Sequence[int]):
        self.words = [int(w) for w in words]
        first = self.words[:2]
        self.point = (first[0] << 32 | (first[1] if len(first) > 1 else 0)) if first else 0
        self.read = len(first)
        self.lower = 0
        self.range = _WRAP

    def _next_word(self) -> int:
        if self.read >= len(self.words):
            return 0
        self.read += 1
        return self.words[self.read - 1]

    def _quantile(self) -> tuple[int, int]:
        scale = self.range >> PRECISION
        q = ((self.point - self.lower) & _WRAP) // scale
        if q >= 1 << PRECISION:
            raise InvalidStream("invalid data: no symbol's interval holds the point")
        return scale, q

    def _take(self, scale: int, left: int, width: int) -> None:
        self.lower = (self.lower + scale * left) & _WRAP
        self.range = scale * width
        if self.range < 1 << 32:
            self.lower = (self.lower << 32) & _WRAP
            self.range <<= 32
            self.point = ((self.point << 32) & _WRAP) | self._next_word()

    def decode_categorical(self, left: Sequence[int]) -> int:
        """One symbol of a quantised model ``left`` (:func:`categorical`)."""
        scale, q = self._quantile()
        lo, hi = 0, len(left) - 2  # the last i with left[i] <= q
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if left[mid] <= q:
                lo = mid
            else:
                hi = mid - 1
        self._take(scale, left[lo], left[lo + 1] - left[lo])
        return lo

    def decode_uniform(self, size: int) -> int:
        """One symbol of ``Uniform(size)``, ``size`` a power of two."""
        scale, q = self._quantile()
        width = (1 << PRECISION) // size
        symbol = min(q // width, size - 1)
        left = symbol * width
        self._take(scale, left, width if symbol < size - 1 else (1 << PRECISION) - left)
        return symbol

    def exhausted(self) -> bool:
        """Every word read, and nothing decoded or ``(point - lower) mod 2**64 < 2**33 - 1``."""
        return self.read >= len(self.words) and (
            self.range == _WRAP or ((self.point - self.lower) & _WRAP) < (1 << 33) - 1
        )
