"""The latent coder: integer latents <-> the ``ZSTR``/``YSTR`` streams, exactly (CODING.md sections 1-3).

:class:`LatentCoder` owns everything between the integer latents and the bytes: the integer networks
h_s, the context model and g_ep, the scale thresholds and the coding tables of one decoder generation.
Everything here is integer arithmetic (held in float64 tensors, see :mod:`pillow_jac.model.integer`),
so the encoder and any decoder, on any device and thread count, select the same coding table for
every latent.

* :meth:`LatentCoder.encode` computes every table id in one pass (the context of each latent is known
  up front, since the encoder has all of ``y_hat``), then writes the symbols in wavefront order.
* :meth:`LatentCoder.decode` checks the stream lengths against the latents they must hold, then
  reconstructs the latents wavefront by wavefront: all positions with the same ``t = 3 * row + col``
  depend only on positions with smaller ``t`` through the 5x5 causal mask, so they are decoded together
  in one batched step (141 steps for a 32x48 latent instead of 1536 raster steps), giving exactly the
  symbols of a raster-order decode.
"""

from __future__ import annotations

from collections.abc import Iterator

import constriction
import numpy as np
import torch
import torch.nn.functional as F

from .constants import ACTIVATION_BITS, ACTIVATION_LIMIT_BITS, MEAN_STEPS, SCALE_LEVELS, Y_PER_Z
from .entropy_coding import CodingTables, EntropyCodingError, bytes_to_words, words_to_bytes
from .interpreter_exit import check
from .mixture_coding import MixtureCoder
from .model.integer import IntegerNetwork
from .stripes import stripes

__all__ = ["LatentCoder", "SYMBOL_LIMIT", "wavefront_steps", "causal_taps", "CAUSAL_TAPS"]

#: latent symbols are clamped to +-SYMBOL_LIMIT so their fixed-point value fits the activation bound
SYMBOL_LIMIT = 2 ** (ACTIVATION_LIMIT_BITS - ACTIVATION_BITS) - 1


def causal_taps(size: int) -> list[tuple[int, int]]:
    """(row, column) offsets of the causal neighbours of a ``size x size`` mask "A", in raster order.

    Example:
        >>> len(causal_taps(3)), len(causal_taps(5)), len(causal_taps(7))
        (4, 12, 24)
    """
    h = size // 2
    return [(dr, dc) for dr in range(-h, 0) for dc in range(-h, h + 1)] + [(0, dc) for dc in range(-h, 0)]


#: the 12 causal neighbours of the shipped 5x5 mask
CAUSAL_TAPS = causal_taps(5)
_MEAN_SHIFT = ACTIVATION_BITS - int(np.log2(MEAN_STEPS))
#: latent positions per chunk of the one-pass parameter computations (bounds their temporaries)
CHUNK_POSITIONS = 4096
#: z rows per h_s stripe at least: with the shipped h_s's halo (1 row above, 2 below: :func:`rows_reach`) the
#: halo costs at most (13 + 3) / 13 = 1.23x the stripe's own work. A positions budget alone would give wide
#: images stripes of a few z rows, each paying the whole halo
_H_S_MIN_ROWS = 13
#: z columns per h_s tile: a stripe of a wider image (over 4,096 pixels) runs in tiles of this many columns
#: with the halo of :func:`rows_reach` on each side, so that its float64 temporaries stay bounded however wide
#: the image (the halo costs (64 + 3) / 64 = 1.05x); the integer arithmetic makes the tiles' values the whole's
_H_S_TILE_COLUMNS = 64
#: z positions per h_s stripe of an image wider than 256 z columns (16,384 pixels), whose stripes have fewer rows
#: than :data:`_H_S_MIN_ROWS` (at least 4): the first stripe, computed before the first symbol is decoded, stays a
#: small share of the image (13 rows of a 65,535-pixel-wide image would be 30% of a 2,730-pixel-high one)
_H_S_WIDE_STRIPE = 13 * 256


def rows_reach(network: IntegerNetwork, upsampling: int) -> tuple[int, int]:
    """The rows above and below a stripe of input rows that ``network`` reads to make the stripe's outputs.

    Square kernels, strides and paddings reach as far to the left and right: the same halo serves columns.

    An output stripe ``[upsampling * a, upsampling * b)`` is traced back through each layer's rows (a
    convolution's output row ``o`` reads rows ``o * s - p .. o * s - p + k - 1``; a transposed one's reads
    ``ceil((o + p - k + 1) / s) .. floor((o + p) / s)``). For the shipped h_s (two 5x5 stride-2 transposed
    convolutions, padding 2, then a 3x3 convolution) latent rows ``[4a, 4b)`` read z rows ``[a - 1, b + 1]``:
    ``(1, 2)``.
    """
    a, b = 64, 65  # an inner stripe; every stripe starts at a multiple of the strides, so all reach alike
    first, last = upsampling * a, upsampling * b - 1
    for layer in reversed(network.layers):
        k, s, p = layer.weight.shape[2], layer.stride, layer.padding
        if layer.kind == "deconv":
            first, last = -(-(first + p - k + 1) // s), (last + p) // s
        else:
            first, last = first * s - p, last * s - p + k - 1
    return max(0, a - first), max(0, last - (b - 1))


def _padded_rows(n: int) -> int:
    """Rows to compute for a wavefront of ``n`` positions.

    BLAS kernels run much faster on row counts that are multiples of 4 (measured: 11 rows cost 40%
    more than 12), so the extra rows, which read other positions' data and are discarded, cost
    nothing or less than nothing.

    Example:
        >>> [_padded_rows(n) for n in (1, 2, 3, 5, 8)]
        [1, 2, 4, 8, 8]
    """
    return n if n < 3 else -(-n // 4) * 4


def wavefront_steps(height: int, width: int, slope: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows and columns of each wavefront ``t = slope * row + col``, rows ascending within a step.

    A ``k x k`` causal mask reaches ``k // 2`` columns to the right on the rows above, so the
    positions of one wavefront are independent when ``slope = k // 2 + 1`` (3 for 5x5).

    Example:
        >>> [(r.tolist(), c.tolist()) for r, c in wavefront_steps(2, 4)][:4]
        [([0], [0]), ([0], [1]), ([0], [2]), ([0, 1], [3, 0])]
    """
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    t = (slope * rows + cols).ravel()
    order = np.lexsort((rows.ravel(), t))
    t_sorted = t[order]
    bounds = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1], True])
    r, c = rows.ravel()[order], cols.ravel()[order]
    return [(r[a:b], c[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class LatentCoder:
    """The integer networks and coding tables of one model (CODING.md sections 1-3).

    Args:
        h_s: integer hyper-synthesis (None without hyperprior).
        context: integer masked 5x5 context model (None without context model).
        entropy_parameters: integer g_ep (1x1 layers).
        thresholds: int64 scale thresholds (fixed point) separating the scale levels.
        y_tables: tables indexed by ``scale_index * MEAN_STEPS + mean_fraction``.
        z_tables: one table per z channel (None without hyperprior).
        M: latent channels.
        device: torch device of the integer computation.
        entropy: the model's entropy model (``gaussian``, ``zero-mean`` or ``gmm``, CODING.md sections 2.2 and 4).
        mixture: the mixture coder of a ``gmm`` model.
    """

    def __init__(
        self,
        h_s: IntegerNetwork | None,
        context: IntegerNetwork | None,
        entropy_parameters: IntegerNetwork,
        thresholds: torch.Tensor,
        y_tables: CodingTables,
        z_tables: CodingTables | None,
        M: int,
        device: torch.device,
        entropy: str = "gaussian",
        mixture: MixtureCoder | None = None,
    ):
        if (entropy == "gmm") != (mixture is not None):
            raise ValueError("a gmm model, and only a gmm model, needs a mixture coder")
        if (
            thresholds.dim() != 1
            or len(thresholds) != SCALE_LEVELS - 1
            or bool((thresholds[1:] < thresholds[:-1]).any())
        ):
            raise ValueError(f"table.y_thresholds must be {SCALE_LEVELS - 1} values in ascending order (CODING.md 2.2)")
        if z_tables is not None and h_s is None:  # z would be decoded for nothing (a rate-only coder has no tables)
            raise ValueError("z coding tables without a hyperprior (CODING.md 4.1)")
        self.h_s, self.context, self.entropy_parameters = h_s, context, entropy_parameters
        #: z rows (above, below) each h_s stripe reads beyond its own
        self.h_s_halo = rows_reach(h_s, Y_PER_Z) if h_s is not None else (0, 0)
        self.entropy, self.mixture = entropy, mixture
        outputs = entropy_parameters.layers[-1].out_channels
        #: mixture components per latent (1 without a mixture)
        self.components = outputs // (3 * M) if entropy == "gmm" else 1
        self.thresholds = thresholds.double().to(device)
        self.y_tables, self.z_tables = y_tables, z_tables
        self.M = M
        self.device = device
        #: the context window's half-width; the wavefront slope is one more (CODING.md section 1.3)
        self.reach = 0
        if context is not None:
            layer = context.layers[0]
            self.reach = h = layer.weight.shape[-1] // 2
            #: the (row, column) offsets of the causal window, in the order of the context matrix's rows
            self._taps = causal_taps(2 * h + 1)
            causal = torch.zeros(layer.weight.shape[-2:], dtype=torch.bool)
            for dr, dc in self._taps:
                causal[h + dr, h + dc] = True
            if layer.weight.shape[-2] != 2 * h + 1 or bool((layer.weight[:, :, ~causal] != 0).any()):
                raise ValueError("the context model's kernel is not a masked square window (CODING.md section 3)")
            taps = torch.stack([layer.weight[:, :, h + dr, h + dc] for dr, dc in self._taps], dim=0)
            # rows ordered tap-major, then input channel: matches a (n, taps, M) gather flattened; the
            # decoder's wavefronts and the encoder's one pass (_context_features) multiply by it
            self._context_matrix = taps.permute(0, 2, 1).reshape(-1, taps.shape[1]).contiguous().to(device)
            self._context_bias = layer.bias.to(device)
        self.slope = self.reach + 1 if context is not None else 3

    @property
    def y_symbol_bits(self) -> float:
        """The fewest bits any latent of y can cost (CODING.md sections 2.4 and 4.4)."""
        return self.mixture.min_symbol_bits if self.mixture is not None else self.y_tables.min_symbol_bits

    # -- the two operations the codec uses ---------------------------------------------------------
    def encode(self, z_hat: np.ndarray | None, y_hat: np.ndarray) -> tuple[bytes, bytes]:
        """The ``(ZSTR, YSTR)`` data of ``z_hat`` ``(N, hz, wz)`` (None: no hyperprior) and ``y_hat`` (M, Hy, Wy)."""
        z_stream = self.encode_z(z_hat) if z_hat is not None else b""
        # the stripes are not kept here: encode_y lets go of each once its chunks have read it
        with_h_s = z_hat is not None and self.h_s is not None
        return z_stream, self.encode_y(
            y_hat, self.hyper_stripes(torch.from_numpy(z_hat), y_hat.shape[1:]) if with_h_s else None
        )

    def decode(
        self, z_stream: bytes, y_stream: bytes, z_shape: tuple[int, int], y_shape: tuple[int, int]
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Inverse of :meth:`encode`: ``(z_hat, y_hat)`` for the latent shapes a header declares.

        Streams too short for those shapes are refused before any network runs (CODING.md section 2.4),
        and h_s runs a stripe at a time just ahead of the wavefront, so a stream that runs out early
        (forged, or cut) stops the decode before the hyperprior of the rest of the image is computed.
        """
        self.check_lengths(z_stream, y_stream, z_shape, y_shape)
        z_hat = psi_stripes = None
        if self.z_tables is not None:
            z_hat = self.decode_z(z_stream, len(self.z_tables), z_shape)
            if self.h_s is not None:
                psi_stripes = self.hyper_stripes(torch.from_numpy(z_hat), y_shape)
        return z_hat, self.decode_y(y_stream, psi_stripes, y_shape)

    # -- parameters -------------------------------------------------------------------------------
    def hyper_features(self, z_hat: torch.Tensor | None, y_shape: tuple[int, int]) -> torch.Tensor | None:
        """h_s(z_hat) in fixed point, cropped to the latent shape: ``(2M, Hy, Wy)`` or None.

        The stripes of :meth:`hyper_stripes` put together: the arithmetic is exact, so the result is
        the same as in one piece.
        """
        if self.h_s is None:
            return None
        parts = [part for _, _, part in self.hyper_stripes(z_hat, y_shape)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def hyper_stripes(self, z_hat: torch.Tensor, y_shape: tuple[int, int]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """h_s(z_hat) in fixed point, in stripes of latent rows: ``(first row, end row, (2M, rows, Wy))``.

        Computed from stripes of ``z`` rows in tiles of :data:`_H_S_TILE_COLUMNS` z columns (one for most
        images), with the halo :attr:`h_s_halo`, so the float64 temporaries stay bounded for large
        images, and lazily, so that the decoder computes each stripe only when its wavefront gets there.
        """
        z = z_hat.double().to(self.device).unsqueeze(0) * 2.0**ACTIVATION_BITS
        rows, columns = z.shape[2], z.shape[3]
        least = _H_S_MIN_ROWS if columns * _H_S_MIN_ROWS <= _H_S_WIDE_STRIPE else max(4, _H_S_WIDE_STRIPE // columns)
        step = max(least, CHUNK_POSITIONS // (Y_PER_Z**2 * columns))  # latent positions per z one
        for a, b, lo, hi in stripes(rows, step, *self.h_s_halo):
            first, end = Y_PER_Z * a, min(Y_PER_Z * b, y_shape[0])
            if first >= end:
                return
            top = Y_PER_Z * (a - lo)
            part = None  # one tile for an image of up to _H_S_TILE_COLUMNS z columns
            for c, d, left, right in stripes(columns, _H_S_TILE_COLUMNS, *self.h_s_halo):
                x0, x1 = Y_PER_Z * c, min(Y_PER_Z * d, y_shape[1])
                if x0 >= x1:
                    break
                tile = self.h_s(z[:, :, lo:hi, left:right])[0]
                if part is None:
                    part = tile.new_empty((tile.shape[0], end - first, y_shape[1]))
                at = Y_PER_Z * (c - left)
                part[:, :, x0:x1] = tile[:, top : top + end - first, at : at + x1 - x0]
            tile = None  # not held while the caller has the stripe
            yield first, end, part

    def table_ids(self, features: torch.Tensor) -> tuple[np.ndarray, ...]:
        """From g_ep inputs ``(n, C)`` to the coding parameters of each latent (see :meth:`coding_parameters`)."""
        return self.coding_parameters(self.entropy_parameters.matmul(features))

    def _context_features(self, y_hat: np.ndarray, first: int, end: int) -> torch.Tensor:
        """The context model at latent rows ``[first, end)`` of ``y_hat`` ``(M, Hy, Wy)``: ``(positions, 2M)``.

        Each position's causal taps (CODING.md section 4.1: ``reach`` rows above, ``reach`` columns to the
        left on its own row; zeros beyond the grid) are gathered into one row of a product with the
        context matrix the decoder uses: the masked convolution's exact integer sums (CODING.md section 3)
        without the kernel's zero taps, for these rows only (the rows above are read, not computed).
        """
        h, width = self.reach, y_hat.shape[2]
        top = max(0, first - h)
        fixed = torch.from_numpy(y_hat[:, top:end]).double().to(self.device) * 2.0**ACTIVATION_BITS
        # (row, column, channel), with zeros for the rows above the grid and the columns beside it
        grid = F.pad(fixed, (h, h, h - (first - top), 0)).permute(1, 2, 0)
        rows = end - first
        taps = torch.stack([grid[h + dr : h + dr + rows, h + dc : h + dc + width] for dr, dc in self._taps], dim=2)
        acc = torch.addmm(self._context_bias, taps.view(rows * width, -1), self._context_matrix)
        return self.context.layers[0].rescale(acc, 1)

    def coding_parameters(self, params: torch.Tensor) -> tuple[np.ndarray, ...]:
        """g_ep's integer outputs ``(n, C)`` as what the coder needs, per latent in (position, channel) order.

        Single Gaussian: table ids and integer mean bases, both ``(n, M)`` int64 (CODING.md 2.2; a
        ``zero-mean`` model's means are 0). Mixture: table ids, bases and integer weights, each
        ``(n * M, K)`` (CODING.md section 4).
        """
        M, K = self.M, self.components
        scales = params[:, : K * M]
        means = params[:, K * M : 2 * K * M] if self.entropy != "zero-mean" else None
        ids, base = self._select_tables(scales, means)
        if self.mixture is None:
            return ids, base
        weights = self.mixture.weights(params[:, 2 * K * M :].reshape(-1, K, M))

        def per_latent(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.reshape(-1, K, M).transpose(0, 2, 1).reshape(-1, K))

        return per_latent(ids), per_latent(base), per_latent(weights)

    def _select_tables(self, scales: torch.Tensor, means: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Table ids (scale level and mean fraction) and integer mean bases of integer scales and means."""
        index = torch.searchsorted(self.thresholds, scales.contiguous(), right=True)
        if means is None:
            ids = index * MEAN_STEPS
            return ids.cpu().numpy(), np.zeros(ids.shape, np.int64)
        mean_steps = torch.floor((means + 2.0 ** (_MEAN_SHIFT - 1)) * 2.0**-_MEAN_SHIFT)
        base = torch.floor(mean_steps / MEAN_STEPS)
        fraction = mean_steps - base * MEAN_STEPS
        ids = index.double() * MEAN_STEPS + fraction
        return ids.long().cpu().numpy(), base.long().cpu().numpy()

    def check_lengths(self, z_stream: bytes, y_stream: bytes, z_shape, y_shape) -> None:
        """Refuse streams too short for the latents a header declares, before any network runs."""
        if self.z_tables is not None:
            self.z_tables.check_length(z_stream, len(self.z_tables) * z_shape[0] * z_shape[1], "z")
        self.y_tables.check_length(y_stream, self.M * y_shape[0] * y_shape[1], "y", self.y_symbol_bits)

    # -- z ----------------------------------------------------------------------------------------
    def encode_z(self, z_hat: np.ndarray) -> bytes:
        """Code ``z_hat`` ``(N, hz, wz)`` channel by channel in raster order (CODING.md 2.1)."""
        ids = np.broadcast_to(np.arange(z_hat.shape[0])[:, None, None], z_hat.shape)
        return self.z_tables.encode_to_bytes(z_hat.ravel(), ids.ravel())

    def decode_z(self, data: bytes, channels: int, shape: tuple[int, int]) -> np.ndarray:
        """Inverse of :meth:`encode_z` (the stream's length is checked first by :meth:`decode`)."""
        ids = np.broadcast_to(np.arange(channels)[:, None, None], (channels, *shape))
        z = self.z_tables.decode_from_bytes(data, ids.ravel()).reshape(channels, *shape)
        if np.abs(z).max(initial=0) > SYMBOL_LIMIT:
            raise EntropyCodingError("decoded hyper-latent out of range")
        return z

    # -- y ----------------------------------------------------------------------------------------
    def encode_y(self, y_hat: np.ndarray, psi_stripes: Iterator[tuple[int, int, torch.Tensor]] | None) -> bytes:
        """Code ``y_hat`` ``(M, Hy, Wy)`` (clamped integers) in wavefront order (CODING.md sections 1.3 and 2.2-2.4).

        ``psi_stripes``: :meth:`hyper_stripes` (None without hyperprior), taken a stripe at a time as the
        chunks of latent rows reach it, so that h_s's output is never held for the whole image.
        """
        M, H, W = y_hat.shape
        parameters = []  # per chunk of latent rows, raster positions
        step = max(1, CHUNK_POSITIONS // W)
        held: list[tuple[int, int, torch.Tensor]] = []  # the stripes the chunk at hand reads, in order
        for a in range(0, H, step):  # a few latent rows at a time, to bound the float64 temporaries
            b = min(H, a + step)
            parts = []
            if psi_stripes is not None:
                held = [stripe for stripe in held if stripe[1] > a]
                while not held or held[-1][1] < b:
                    held.append(next(psi_stripes))
                pieces = [part[:, max(a, first) - first : min(b, end) - first] for first, end, part in held]
                psi = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
                parts.append(psi.reshape(2 * M, -1).t())
            if self.context is not None:
                parts.append(self._context_features(y_hat, a, b))
            parameters.append(self.table_ids(torch.cat(parts, dim=1)))
        psi_stripes = held = pieces = psi = parts = None  # h_s's last stripes are not held while the symbols are coded
        symbols = y_hat.reshape(M, -1).T  # (positions, M)
        encoder = constriction.stream.queue.RangeEncoder()
        if self.mixture is None:
            ids, base = (np.concatenate(p) for p in zip(*parameters, strict=True))
            values = symbols - base
            for rows, cols in wavefront_steps(H, W, self.slope):
                flat = rows * W + cols
                self.y_tables.encode(encoder, values[flat], ids[flat])
        else:  # per latent: position-major, channel-minor
            ids, base, weights = (np.concatenate(p).reshape(H * W, M, -1) for p in zip(*parameters, strict=True))
            K = ids.shape[-1]
            for rows, cols in wavefront_steps(H, W, self.slope):
                flat = rows * W + cols
                self.mixture.encode(
                    encoder,
                    symbols[flat].reshape(-1),
                    ids[flat].reshape(-1, K),
                    base[flat].reshape(-1, K),
                    weights[flat].reshape(-1, K),
                )
        return words_to_bytes(encoder.get_compressed())

    def decode_y(
        self, data: bytes, psi_stripes: Iterator[tuple[int, int, torch.Tensor]] | None, shape: tuple[int, int]
    ) -> np.ndarray:
        """Inverse of :meth:`encode_y`: ``(M, Hy, Wy)`` int64 symbols.

        ``psi_stripes``: :meth:`hyper_stripes` (None without hyperprior), taken as the wavefront
        reaches each stripe.

        Runs with the caller's torch thread count: the codec uses one thread for small images, where
        a wavefront has few positions, and the default otherwise (on an idle 2-core machine two
        threads take the 768x512 loop from 0.48 s to 0.31 s; with the other core busy, 0.46 s vs 0.52 s).
        """
        M = self.M
        H, W = shape
        # without a context model nothing reads the grid, but it keeps the 5x5 model's border so that
        # every stride below stays positive for any width
        h, slope = (self.reach, self.slope) if self.context is not None else (2, 3)
        S = W + 2 * h  # row length of the padded grid
        decoder = constriction.stream.queue.RangeDecoder(bytes_to_words(data))
        positions_left = H * W
        # fixed-point y_hat, position-major, with a border of `reach` latents on top, left and right
        # (zeros), plus slack: a step may read a few rows past its last position, see _padded_rows
        size = (H + h + 4) * S * M
        if self.device.type == "cpu":  # numpy's zeros come from calloc: pages are committed as the wavefront gets there
            padded = torch.from_numpy(np.zeros(size, np.float64))
        else:
            padded = torch.zeros(size, dtype=torch.float64, device=self.device)
        first, rest = self.entropy_parameters.layers[0], self.entropy_parameters.layers[1:]
        # g_ep's first layer is linear in its inputs: its sum over the hyperprior's channels and over
        # the context's is taken in two products; the integer sums are exact whatever the order, so
        # splitting them changes nothing (CODING.md section 3)
        w_first, bias = first.matrix(self.device)  # (in, out), (out,)
        psi_flat = None
        if psi_stripes is not None:  # filled in place a stripe at a time, followed by 4 latent rows of zeros as slack
            # h_s's outputs, position-major: integers with |a| <= 2**ACTIVATION_LIMIT_BITS - 1 (CODING.md
            # section 3), which float32 holds exactly (2M * 4 bytes a position). The first layer's sums over
            # them reach far past 2**24, so they are taken in float64 at each wavefront, not stored
            psi_rows = torch.empty(H * W + 4 * W, 2 * M, dtype=torch.float32, device=self.device)
            psi_rows[H * W :] = 0
            psi_flat = psi_rows.view(-1)
            psi_stripes, filled = iter(psi_stripes), 0
        w_context_half = w_first[2 * M :] if psi_flat is not None else w_first
        context = self.context.layers[0] if self.context is not None else None
        if context is not None:
            matrix = self._context_matrix
            k = 2 * h + 1  # the tap rows -h .. -1 have k taps each, row 0 has h
            blocks = [(matrix[r * k * M : (r + 1) * k * M], (r - h) * S - h, k) for r in range(h)]
            blocks.append((matrix[h * k * M :], -h, h))
            context_bias = context.bias.to(self.device)
        out = np.empty((M, H, W), np.int64)  # written in the layout returned: no transposed copy of the whole
        for rows, cols in wavefront_steps(H, W, slope):
            check()  # a daemon thread stops here when the interpreter exits
            n = len(rows)
            rows_in = _padded_rows(n)
            # positions of one wavefront are consecutive rows with the column falling by `slope` per
            # row, so in the flat padded grid they are equally spaced: every tap block is a strided view
            origin = ((int(rows[0]) + h) * S + int(cols[0]) + h) * M
            step = (S - slope) * M
            if psi_flat is None:
                acc = bias.expand(rows_in, -1)
            else:  # the same spacing in the unpadded grid: W - slope positions (W > slope whenever n > 1)
                while filled < min(H, int(rows[0]) + rows_in):  # every row this step reads
                    first_row, filled, psi = next(psi_stripes)
                    psi_rows[first_row * W : filled * W] = psi.reshape(2 * M, -1).t()
                spacing = max(0, W - slope) * 2 * M
                psi = psi_flat.as_strided((rows_in, 2 * M), (spacing, 1), (int(rows[0]) * W + int(cols[0])) * 2 * M)
                acc = torch.addmm(bias, psi.double(), w_first[: 2 * M])
            if context is not None:
                ctx = context_bias.expand(rows_in, -1)
                for block, offset, width in blocks:
                    view = padded.as_strided((rows_in, width * M), (step, 1), origin + offset * M)
                    ctx = torch.addmm(ctx, view, block)
                acc = torch.addmm(acc, context.rescale(ctx, 1), w_context_half)
            params = first.rescale(acc, 1)
            for layer in rest:
                params = layer.matmul(params)
            coding = self.coding_parameters(params[:n])
            if self.mixture is None:
                ids, base = coding
                values = self.y_tables.decode(decoder, ids.ravel()).reshape(ids.shape) + base
            else:
                values = self.mixture.decode(decoder, *coding).reshape(n, M)
            if np.abs(values).max(initial=0) > SYMBOL_LIMIT:
                raise EntropyCodingError("decoded latent out of range")
            positions_left -= n
            self.y_tables.check_not_run_out(decoder, positions_left * M, self.y_symbol_bits)
            out[:, rows, cols] = values.T
            target = padded.as_strided((n, M), (step, 1), origin)
            target.copy_(torch.from_numpy(values).to(self.device, torch.float64) * 2.0**ACTIVATION_BITS)
        self.y_tables.finish(decoder)
        return out
