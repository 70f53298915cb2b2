"""Encoder-side latent refinement: latents chosen for this one image, for the same decoder.

g_a is an amortised encoder: one forward pass predicts the latents of any image. What it predicts
is not the ``(y, z)`` that minimises *this* image's rate-distortion loss (paper eq. 2); the
difference is the amortisation gap (Cremer et al., ICML 2018). Yang, Bamler & Mandt, "Improving
Inference for Neural Image Compression" (NeurIPS 2020), close much of it per image by gradient
descent on the continuous latents, starting from the encoder's output, with *stochastic Gumbel
annealing* (SGA, their section 3.2) standing in for the rounding: each latent is a random soft
mix of its floor and ceiling, the mix sharpening towards a hard choice as a temperature falls.

This module is that search, for :class:`~pillow_jac.model.mbt2018.JointAutoregressiveHierarchicalPrior`.
The decoder is untouched: every integer ``(y_hat, z_hat)`` is a valid ``.jac`` file, so refinement
changes what an encoder writes and never how a file decodes (the format does not change). The
objective is the float model's estimate of ``lambda * 255^2 * MSE + bpp`` with rounded latents;
files are coded with the exact integer prior, whose rates are within about 1% of it (release 6: +0.95%
BD-rate, benchmarks/results/integer_cost.json).

Large images are refined tile by tile (bounded memory): a tile's latents are optimised with the
already-decided latents around it held fixed (a halo), so the result does not depend on how
the image was padded beyond the halo. A tile keeps its refined latents only if their estimated
loss beats g_a's, so a refined file is never worse than an unrefined one by that estimate.

Example:
    >>> import torch
    >>> from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
    >>> model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)).eval()
    >>> x = torch.rand(1, 3, 64, 64)
    >>> q = torch.tensor([4.0], dtype=torch.float64)
    >>> with torch.no_grad():
    ...     y = model.g_a(x) * model.gains(q)
    ...     z = model.h_a(y)
    >>> y_hat, z_hat = refine_latents(model, lambda a, b, c, d: x[:, :, a:b, c:d], y, z, 4.0, (64, 64), iterations=3)
    >>> y_hat.shape == y.shape, bool((y_hat == y_hat.round()).all())
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.adam import adam as functional_adam

from ..constants import DOWNSAMPLING, EFFORT_ITERATIONS, EFFORT_REAL_CHECK_PIXELS, MAX_EFFORT, Y_PER_Z
from ..interpreter_exit import check
from .mbt2018 import JointAutoregressiveHierarchicalPrior
from .objective import quality_lambda
from .precision import bf16_autocast_pays

__all__ = ["EFFORT_ITERATIONS", "MAX_EFFORT", "TEMPERATURES", "sga_round", "refine_latents", "schedule"]

#: latent rows and columns of a tile's core (768 pixels: a Kodak image is one tile)
TILE = 48
#: latent rows and columns of fixed context around a tile (a multiple of 4, so z tiles align)
HALO = 4
#: latent rows at an inner tile edge whose values the zero padding of the convolutions distorts
_EDGE = 2
#: z rows (and columns) before and after a stripe's own that h_s reads for the stripe's psi
#: (:func:`pillow_jac.latent_coding.rows_reach` of the shipped h_s; tests/test_refine.py checks they agree)
Z_REACH = (1, 2)
#: pixels per latent row and column
_FACTOR = DOWNSAMPLING


def sga_round(v: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A soft, random rounding of ``v`` (Yang et al. 2020, eq. 5): ``floor(v) + w``, ``w`` in ``(0, 1)``.

    ``w`` is a two-way Gumbel-softmax between floor and ceiling with logits ``-atanh(distance) / tau``;
    as ``tau`` falls to 0, ``w`` becomes 0 or 1 and the result an integer.

    Example:
        >>> import torch
        >>> v = torch.tensor([0.02, 0.98])
        >>> sga_round(v, 1e-3, torch.Generator().manual_seed(0)).round().tolist()
        [0.0, 1.0]
    """
    low = torch.floor(v)
    r = (v - low).clamp(1e-4, 1 - 1e-4)
    u = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype).clamp(1e-6, 1 - 1e-6)
    logistic = torch.log(u) - torch.log1p(-u)  # the difference of two Gumbel samples
    w = torch.sigmoid((torch.atanh(r) - torch.atanh(1 - r)) / tau + logistic)
    return low + w


#: SGA temperature at a search's first and last step, falling exponentially in between
TEMPERATURES = (0.5, 0.05)


def _learning_rate(iterations: int) -> float:
    """Adam step size for a run of ``iterations``: shorter runs take larger steps, at most 0.02."""
    return min(0.02, 0.06 / math.sqrt(iterations))


class _Adam:
    """Adam (Kingma & Ba, ICLR 2015) with ``torch.optim.Adam``'s defaults and its steps, without the optimiser.

    Torch's functional Adam (``torch.optim.adam.adam``) with this class's own state takes the steps
    ``torch.optim.Adam`` takes, bit for bit: it chooses the same implementation for the device (one tensor at
    a time on the CPU, torch's ``foreach`` kernels on CUDA). The optimiser class is left out because its first
    step in a process imports ``torch._dynamo`` (about 800 modules, 1.9 s on a 2-core CPU, which each
    process's first effort-1 encode would pay).

    Example:
        >>> import torch
        >>> v = torch.tensor([1.0, -2.0])
        >>> adam = _Adam([v], lr=0.1)
        >>> adam.step([torch.tensor([0.5, -0.5])])
        >>> [round(x, 6) for x in v.tolist()]  # a first step moves each by lr, against its gradient's sign
        [0.9, -1.9]
    """

    def __init__(self, variables: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.variables, self.lr, self.betas, self.eps = variables, lr, betas, eps
        self.averages = [torch.zeros_like(v, memory_format=torch.preserve_format) for v in variables]
        self.squares = [torch.zeros_like(v, memory_format=torch.preserve_format) for v in variables]
        self.steps = [torch.tensor(0.0, device="cpu") for _ in variables]  # on the CPU, as torch.optim.Adam keeps them

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        """Move each variable by one Adam step along its gradient in ``grads``."""
        beta1, beta2 = self.betas
        functional_adam(
            self.variables, list(grads), self.averages, self.squares, [], self.steps,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=self.lr, weight_decay=0.0, eps=self.eps, maximize=False,
        )  # fmt: skip


def _temperature(step: int, iterations: int) -> float:
    """SGA temperature of ``step`` (0-based): ``TEMPERATURES[0]`` falling to ``TEMPERATURES[1]`` at the last step.

    Example:
        >>> [round(_temperature(s, 3), 3) for s in range(3)]
        [0.5, 0.158, 0.05]
    """
    first, last = TEMPERATURES
    return first * (last / first) ** (step / max(1, iterations - 1))


def schedule(effort: int) -> dict[str, object] | None:
    """What determines the search of ``effort`` besides the model; None at effort 0, which only rounds.

    Benchmarks key cached results on it and test vectors at effort 1-3 record it: a new schedule is an
    encoder update (SPEC.md sections 9.2 and 9.4), like new encoder weights.

    Example:
        >>> schedule(1)["iterations"], schedule(1)["temperatures"], schedule(0)
        (8, [0.5, 0.05], None)
    """
    if not effort:
        return None
    iterations = EFFORT_ITERATIONS[effort]
    return {
        "iterations": iterations,
        "learning_rate": _learning_rate(iterations),
        "temperatures": list(TEMPERATURES),
        "tile": TILE,
        "halo": HALO,
        "distortion": "MSE of the pixels clamped to [0, 1], its gradient straight through the clamp",
        "real_check_pixels": EFFORT_REAL_CHECK_PIXELS,
    }


class _Tile:
    """One tile: its latent windows, the part of them it may change and the part its loss counts."""

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, int]):
        (a, b), (c, d) = rows, cols
        self.ext_rows = (max(0, a - HALO), min(shape[0], b + HALO))
        self.ext_cols = (max(0, c - HALO), min(shape[1], d + HALO))
        (ea, eb), (ec, ed) = self.ext_rows, self.ext_cols
        self.core = (slice(a - ea, b - ea), slice(c - ec, d - ec))  # in tile coordinates
        q, (before, after) = Y_PER_Z, Z_REACH
        z_shape = (-(-shape[0] // q), -(-shape[1] // q))
        # z of the window and of h_s's reach around it, so that psi of every latent of the window is h_s's
        # psi of the whole z (a window of z alone gave zero-padded psi on the core's last rows)
        self.z_rows = (max(0, ea // q - before), min(z_shape[0], -(-eb // q) + after))
        self.z_cols = (max(0, ec // q - before), min(z_shape[1], -(-ed // q) + after))
        (za, _), (zc, _) = self.z_rows, self.z_cols
        self.z_core = (slice(a // q - za, b // q - za), slice(c // q - zc, d // q - zc))  # in the z window
        self.psi_offset = (ea - q * za, ec - q * zc)  # the window's first latent row and column in h_s's output
        # the loss counts the core and the halo rows it influences, not the rows padding distorts
        self.count = (
            slice(_EDGE if ea > 0 else 0, (eb - ea) - (_EDGE if eb < shape[0] else 0)),
            slice(_EDGE if ec > 0 else 0, (ed - ec) - (_EDGE if ed < shape[1] else 0)),
        )


def _tiles(shape: tuple[int, int]) -> list[_Tile]:
    rows, cols = shape
    return [
        _Tile((a, min(rows, a + TILE)), (c, min(cols, c + TILE)), shape)
        for a in range(0, rows, TILE)
        for c in range(0, cols, TILE)
    ]


@dataclass
class _Search:
    """What every tile of one image's search shares: the networks, the image and the objective."""

    model: JointAutoregressiveHierarchicalPrior
    pixels: Callable[[int, int, int, int], torch.Tensor]
    size: tuple[int, int]
    lmbda: float
    inverse_gain: torch.Tensor
    iterations: int
    generator: torch.Generator
    bf16: bool  # autocast where it is faster (pillow_jac/model/precision.py)

    def loss(self, y_hat, z_hat, x: torch.Tensor, weight: torch.Tensor, tile: _Tile) -> torch.Tensor:
        """Estimated ``lambda * 255^2 * MSE + bpp`` of a tile's counted region (paper eq. 2 and 4)."""
        model = self.model
        rows, cols = tile.count
        px_rows = slice(rows.start * _FACTOR, rows.stop * _FACTOR)
        px_cols = slice(cols.start * _FACTOR, cols.stop * _FACTOR)
        weight = weight[:, :, px_rows, px_cols]
        pixels = weight.sum().clamp_min(1.0)
        with torch.autocast(device_type=y_hat.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            psi = phi = None
            bits = y_hat.new_zeros(())
            if z_hat is not None:
                z_like = model.z_density.likelihood(z_hat)
                bits = bits - z_like[(..., *tile.z_core)].log2().sum()
                top, left = tile.psi_offset
                psi = model.h_s(z_hat)[:, :, top : top + y_hat.shape[2], left : left + y_hat.shape[3]]
            if model.config.context:
                phi = model.context(y_hat)
            y_like = model.y_likelihood(y_hat, model.entropy_parameters(model.entropy_inputs(psi, phi)))
            bits = bits - y_like[:, :, rows, cols].float().log2().sum()
            x_hat = model.g_s(y_hat * self.inverse_gain)
        # the decoder clamps to [0, 1] before rounding (CODING.md 1.4): the error is the clamped output's, so
        # that no bits go to pulling back an output that the clamp puts right anyway; its gradient passes the
        # clamp straight through, so that an output beyond the range that the clamp leaves wrong (0.9 wanted,
        # 1.3 made) is still pulled towards the pixel
        x_hat = x_hat[:, :, px_rows, px_cols].float()
        x_hat = x_hat + (x_hat.clamp(0.0, 1.0) - x_hat).detach()
        error = (x_hat - x[:, :, px_rows, px_cols]).pow(2).sum(1, keepdim=True)
        mse = (error * weight).sum() / (3 * pixels)
        return self.lmbda * 255.0**2 * mse + bits / pixels

    def refine_tile(self, tile: _Tile, y, z, y_hat: torch.Tensor, z_hat: torch.Tensor | None) -> None:
        """Refine one tile's core in ``y_hat`` / ``z_hat`` in place, the rest of its window held fixed."""
        (ea, eb), (ec, ed) = tile.ext_rows, tile.ext_cols
        (za, zb), (zc, zd) = tile.z_rows, tile.z_cols
        x = self.pixels(ea * _FACTOR, eb * _FACTOR, ec * _FACTOR, ed * _FACTOR).float()
        rows = torch.arange(ea * _FACTOR, eb * _FACTOR, device=x.device)[:, None] < self.size[0]
        cols = torch.arange(ec * _FACTOR, ed * _FACTOR, device=x.device)[None, :] < self.size[1]
        weight = (rows & cols).to(x.dtype)[None, None]
        fixed_y = y_hat[:, :, ea:eb, ec:ed].clone()
        free_y = torch.zeros_like(fixed_y, dtype=torch.bool)
        free_y[(..., *tile.core)] = True
        variables = [y[:, :, ea:eb, ec:ed].detach().float().clone().requires_grad_(True)]
        fixed_z = free_z = None
        if z_hat is not None:
            fixed_z = z_hat[:, :, za:zb, zc:zd].clone()
            free_z = torch.zeros_like(fixed_z, dtype=torch.bool)
            free_z[(..., *tile.z_core)] = True
            variables.append(z[:, :, za:zb, zc:zd].detach().float().clone().requires_grad_(True))

        def latents(round_fn):
            yv = torch.where(free_y, round_fn(variables[0]), fixed_y)
            zv = None if z_hat is None else torch.where(free_z, round_fn(variables[1]), fixed_z)
            return yv, zv

        with torch.no_grad():
            start = float(self.loss(*latents(torch.round), x, weight, tile))
        optimizer = _Adam(variables, lr=_learning_rate(self.iterations))
        with torch.enable_grad():
            for step in range(self.iterations):
                check()  # a daemon thread stops here when the interpreter exits
                tau = _temperature(step, self.iterations)
                soft = latents(lambda v, tau=tau: sga_round(v, tau, self.generator))
                optimizer.step(torch.autograd.grad(self.loss(*soft, x, weight, tile), variables))
        with torch.no_grad():
            final_y, final_z = latents(torch.round)
            if float(self.loss(final_y, final_z, x, weight, tile)) < start:  # never worse than g_a's estimate
                y_hat[:, :, ea:eb, ec:ed] = final_y
                if z_hat is not None:
                    z_hat[:, :, za:zb, zc:zd] = final_z


def refine_latents(
    model: JointAutoregressiveHierarchicalPrior,
    pixels: Callable[[int, int, int, int], torch.Tensor],
    y: torch.Tensor,
    z: torch.Tensor | None,
    quality: float,
    size: tuple[int, int],
    iterations: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Search rounded latents with a lower rate-distortion loss than ``round(y), round(z)``.

    Args:
        model: the float model (its parameters are read, never changed).
        pixels: ``(first, end, first_column, end_column) -> (1, 3, end - first, end_column - first_column)``,
            that window of the padded image in ``[0, 1]`` (a tile's window only: memory follows the tile).
        y: g_a's latents with the quality's gain applied, ``(1, M, Hy, Wy)``.
        z: h_a's hyper-latents ``(1, N, Hy / 4, Wy / 4)`` (None without the hyperprior).
        quality: the quality (sets lambda and the inverse gain).
        size: ``(height, width)`` of the real image; padding beyond it is not counted as distortion.
        iterations: gradient steps per tile (0 only rounds).
        seed: seed of the Gumbel noise; the same inputs and seed give the same latents on a machine with the
            same torch thread count (the gradients' sums are ordered by it).

    Returns:
        ``(y_hat, z_hat)``, rounded, on ``y``'s device and in its dtype.
    """
    if iterations <= 0:
        return torch.round(y.detach()).float(), None if z is None else torch.round(z.detach()).float()
    with torch.inference_mode(False):  # a caller's inference mode would leave the search without gradients
        y_hat, z_hat = torch.round(y.detach()).float(), None if z is None else torch.round(z.detach()).float()
        q = torch.tensor([quality], dtype=torch.float64)
        with torch.no_grad():
            inverse_gain = model.gains(q, inverse=True).to(device=y.device, dtype=torch.float32)
        search = _Search(
            model, pixels, size,
            float(quality_lambda(q, model.config.lambdas)), inverse_gain, iterations,
            torch.Generator(device=y.device), bf16_autocast_pays(y.device),
        )  # fmt: skip
        for tile in _tiles(tuple(y.shape[2:])):
            search.generator.manual_seed(seed)
            search.refine_tile(tile, y, z, y_hat, z_hat)
    return y_hat.to(y.dtype), None if z_hat is None else z_hat.to(z.dtype)
