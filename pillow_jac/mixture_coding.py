"""Exact coding of latents under a Gaussian mixture (CODING.md section 4).

A ``gmm`` model's g_ep predicts, for every latent, K components, each a scale, a mean and a logit
(Cheng et al. 2020, eq. 6). The decoder must build the very probabilities the encoder used, on every
machine, so the mixture is assembled from integers only:

* each component selects one of the shipped Gaussian tables exactly as a single-Gaussian latent does
  (scale level from the thresholds, mean snapped to 1/MEAN_STEPS; CODING.md section 2.2);
* the weights are integers ``w_k`` summing to ``2**MIXTURE_WEIGHT_BITS``, from the integer logits
  through a shipped table of ``round(2**16 * exp(-d / 2**ACTIVATION_BITS))`` and integer division;
* the mixture's frequencies over a window of values around the heaviest component's integer mean
  are ``sum_k w_k * (C_k(v + 1) - C_k(v))``, from each table's integer cumulative ``C_k``, plus a
  floor; mass outside the window goes to two escape entries (coded as in CODING.md section 2.3).

constriction receives each latent's row of integer frequencies (exact in float64) as a categorical
model; it normalises every row with deterministic integer and IEEE arithmetic, as for the tables.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch

from .constants import ACTIVATION_BITS, CDF_PRECISION, MIXTURE_EXP_ENTRIES, MIXTURE_HALF_WIDTH, MIXTURE_WEIGHT_BITS
from .entropy_coding import CodingTables, EntropyCodingError, log2_ratio

__all__ = ["MixtureCoder", "mixture_exp_table", "WINDOW"]

#: entries of a mixture row: the window's values and the two escapes
WINDOW = 2 * MIXTURE_HALF_WIDTH + 3
#: what every entry of a row gets on top of its mixture mass, in units of ``2**-(CDF_PRECISION + MIXTURE_WEIGHT_BITS)``
_FLOOR = 1 << MIXTURE_WEIGHT_BITS
_MASS = 1 << (CDF_PRECISION + MIXTURE_WEIGHT_BITS)
_Categorical = constriction.stream.model.Categorical


def mixture_exp_table() -> np.ndarray:
    """``round(2**16 * exp(-d / 2**ACTIVATION_BITS))`` for ``d = 0 .. MIXTURE_EXP_ENTRIES - 1`` (int64).

    Computed once when a model is frozen and shipped with it (``table.mixture_exp``), so no decoder
    depends on its platform's ``exp``.

    Example:
        >>> table = mixture_exp_table()
        >>> int(table[0]), int(table[256]), int(table[-1])
        (65536, 24109, 0)
    """
    return np.array(
        [math.floor(65536.0 * math.exp(-d / 2.0**ACTIVATION_BITS) + 0.5) for d in range(MIXTURE_EXP_ENTRIES)]
    )


class MixtureCoder:
    """Codes latents under K-component mixtures of the shipped Gaussian tables.

    Args:
        tables: the y coding tables (the components' tables).
        exp_table: the shipped :func:`mixture_exp_table`.
    """

    def __init__(self, tables: CodingTables, exp_table: np.ndarray):
        self.tables = tables
        self.exp_table = np.asarray(exp_table, np.int64)
        if (
            self.exp_table.shape != (MIXTURE_EXP_ENTRIES,)
            or self.exp_table[0] <= 0
            or (self.exp_table < 0).any()
            or (self.exp_table > 1 << MIXTURE_WEIGHT_BITS).any()  # X[0] = 2**16 is the largest (CODING.md 4.2)
        ):
            raise ValueError("malformed mixture exponential table")
        self.model = _Categorical(perfect=False)
        #: the fewest bits a latent can cost: its row's largest entry over the row's total, at most
        largest = (_MASS + WINDOW * _FLOOR) / (_MASS + _FLOOR)  # the float64 quotient, as CODING.md 4.2 has it
        self.min_symbol_bits = log2_ratio(*largest.as_integer_ratio()) / 2

    # -- parameters -------------------------------------------------------------------------------
    def weights(self, logits: torch.Tensor) -> np.ndarray:
        """Integer weights ``(n, K, M)``, summing to ``2**MIXTURE_WEIGHT_BITS`` over K, of integer logits ``(n, K, M)``.

        ``e_k = exp_table[min(max_j l_j - l_k, last)]``, ``w_k = floor(e_k * 2**MIXTURE_WEIGHT_BITS / sum_j e_j)``,
        and what the floors leave goes to the first component with the largest logit.
        """
        logits = logits.cpu().numpy().astype(np.int64)
        top = logits.max(axis=1, keepdims=True)
        e = self.exp_table[np.minimum(top - logits, MIXTURE_EXP_ENTRIES - 1)]
        w = (e << MIXTURE_WEIGHT_BITS) // e.sum(axis=1, keepdims=True)
        heaviest = np.argmax(logits, axis=1)  # the first of equal maxima
        left = (1 << MIXTURE_WEIGHT_BITS) - w.sum(axis=1)
        np.put_along_axis(w, heaviest[:, None], np.take_along_axis(w, heaviest[:, None], 1) + left[:, None], axis=1)
        return w

    def rows(self, ids: np.ndarray, bases: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each latent's window start and integer frequency row, for components ``(S, K)`` each.

        Returns ``(first, rows)``: the window holds ``first .. first + 2 * MIXTURE_HALF_WIDTH`` and
        ``rows`` is ``(S, WINDOW)`` float64 (exact integers): below, the window's values, above.
        """
        heaviest = np.argmax(weights, axis=1)  # the first of equal weights
        first = np.take_along_axis(bases, heaviest[:, None], 1)[:, 0] - MIXTURE_HALF_WIDTH
        edges = first[:, None] + np.arange(WINDOW - 1)  # lower edge of every window value, and one past
        tables = self.tables
        total = np.zeros((len(first), WINDOW - 1), np.int64)
        for k in range(ids.shape[1]):
            t = ids[:, k]
            # C_k(v): the table's mass below v, escapes included (index 1 .. size - 1 of the cumulative)
            index = np.clip(edges - bases[:, k : k + 1] - tables.lows[t][:, None] + 1, 1, tables.sizes[t][:, None] - 1)
            total += weights[:, k : k + 1] * tables.cumulative[tables.cumulative_offsets[t][:, None] + index]
        rows = np.empty((len(first), WINDOW), np.int64)
        rows[:, 0] = total[:, 0]
        rows[:, 1:-1] = np.diff(total, axis=1)
        rows[:, -1] = _MASS - total[:, -1]
        return first, (rows + _FLOOR).astype(np.float64)

    # -- coding -----------------------------------------------------------------------------------
    def encode(self, encoder, values: np.ndarray, ids: np.ndarray, bases: np.ndarray, weights: np.ndarray) -> None:
        """Append latents ``(S,)`` with components ``(S, K)``: the window entries in order, then the escapes."""
        first, rows = self.rows(ids, bases, weights)
        offset = values - first
        symbols = np.clip(offset + 1, 0, WINDOW - 1)
        encoder.encode(symbols.astype(np.int32), self.model, rows)
        below, above = symbols == 0, symbols == WINDOW - 1
        escaped = np.flatnonzero(below | above)
        if len(escaped):
            excess = np.where(below[escaped], -1 - offset[escaped], offset[escaped] - (WINDOW - 2))
            self.tables.encode_escapes(encoder, excess)

    def decode(self, decoder, ids: np.ndarray, bases: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Read latents written by :meth:`encode` with the same components (int64 ``(S,)``)."""
        first, rows = self.rows(ids, bases, weights)
        try:
            symbols = np.asarray(decoder.decode(self.model, rows), np.int64)
            values = first + symbols - 1
            below, above = symbols == 0, symbols == WINDOW - 1
            escaped = np.flatnonzero(below | above)
            if len(escaped):
                excess = self.tables.decode_escapes(decoder, len(escaped))
                values[escaped] = np.where(
                    below[escaped], first[escaped] - 1 - excess, first[escaped] + WINDOW - 2 + excess
                )
        except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise
        except BaseException as exc:  # constriction reports some invalid states as a Rust panic
            raise EntropyCodingError(f"corrupt entropy-coded stream: {exc}") from exc
        return values
