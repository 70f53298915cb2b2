"""The rate the range coder really charges, with gradients for the encoder (CODING.md sections 2-3).

The rate term is the coder's (:class:`CoderRate`), not the float model's (Minnen et al. 2018, eq. 4):
the table of every latent is chosen by the exact integer networks from the rounded latents, as the
codec does (CODING.md 2.2: the scale snapped to one of 64 levels, the mean to sixteenths plus an
integer base), and each symbol costs ``-log2(f / 65536)`` of the stored integer frequency ``f``,
plus the escape bits (CODING.md 2.3). Gradients come from a float surrogate whose value is
replaced by the table's: the float h_s, context model and g_ep give means and scales, moved onto
the coder's values with straight-through estimators, and the discretised Gaussian at those values
gives ``d bits / d y`` at ``y`` plus uniform noise (the gradient of the expected rate, see
:func:`coded_forward`); the z rate takes its gradient from the float factorized density the same way.
The float model's own rate (exact means, continuous scales) is not what the coder charges: an encoder
trained against it learns to exploit the difference (weights/MODEL_CARD.md, "Encoder fine-tune").

:func:`coded_forward` runs a model's encoder on a batch with hard rounding and returns the coded
bits and the decoder's reconstruction; :func:`estimate_image_bits` gives one whole image's estimate
(within about 0.5% of the real streams on held-out training photographs, weights/MODEL_CARD.md).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from ..constants import ACTIVATION_BITS, CDF_PRECISION, DOWNSAMPLING, ESCAPE_CLASSES, MEAN_STEPS, SCALE_MIN
from ..model.entropy_models import gaussian_likelihood
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..weights import SCALE_THRESHOLDS, read_integer_network, read_table

__all__ = ["CoderRate", "coded_forward", "coded_loss", "estimate_image_bits"]


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    """``round(v)`` in the forward pass, identity gradient (straight-through)."""
    return v + (torch.round(v) - v).detach()


def _straight_through(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate``."""
    return surrogate + (value.to(surrogate.dtype) - surrogate).detach()


class _Tables:
    """One set of integer coding tables as torch gathers: bits of every (table, value) pair."""

    def __init__(self, freqs: torch.Tensor, offsets: torch.Tensor, lows: torch.Tensor):
        self.bits = -torch.log2(freqs.double() / 2.0**CDF_PRECISION)  # flat, float64
        self.offsets = offsets.long()
        self.lows = lows.long()
        self.sizes = self.offsets[1:] - self.offsets[:-1]

    def cost(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Bits the range coder charges for integer ``values`` coded with tables ``ids`` (same shape).

        In-range values cost ``-log2(f / 2**16)`` of their entry; escaped ones the escape entry plus
        the class (``log2 ESCAPE_CLASSES``) and its ``c`` mantissa bits (CODING.md 2.3).
        """
        values, ids = values.long(), ids.long()
        low, size = self.lows[ids], self.sizes[ids]
        index = values - low + 1
        below, above = index < 1, index > size - 2
        index = torch.where(below, torch.zeros_like(index), torch.where(above, size - 1, index))
        bits = self.bits[self.offsets[ids] + index]
        excess = torch.where(below, low - 1 - values, values - (low + size - 3) - 1)
        escape = math.log2(ESCAPE_CLASSES) + torch.floor(torch.log2(excess.clamp_min(0).double() + 1.0))
        return bits + torch.where(below | above, escape, torch.zeros_like(escape))


class CoderRate:
    """The rate of rounded latents as the real coder charges it, differentiable through a float surrogate.

    Args:
        tensors: the tensors of a shipped weights file (``int.*`` and ``table.*`` are read).
        metadata: its manifest (``integer_networks``, ``config``).

    Example:
        >>> import torch
        >>> from pillow_jac.model.mbt2018 import ModelConfig
        >>> from pillow_jac.training.freeze import freeze
        >>> model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)).eval()
        >>> rate = CoderRate(*freeze(model, release=0))
        >>> out = coded_forward(model, rate, torch.rand(2, 3, 64, 64), torch.tensor([1.0, 8.0]))
        >>> out["bits"].shape, bool((out["bits"] > 0).all())
        (torch.Size([2]), True)
    """

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        from ..entropy_coding import scale_table
        from ..latent_coding import LatentCoder
        from ..model.integer import IntegerNetwork

        config = json.loads(metadata["config"])
        if config.get("entropy", "gaussian") != "gaussian":
            raise ValueError(f"the encoder fine-tune models the single-Gaussian coder, not {config['entropy']!r}")
        templates = json.loads(metadata["integer_networks"])

        def network(name: str) -> IntegerNetwork | None:
            return read_integer_network(tensors, name, templates[name]) if name in templates else None

        # the codec's own table selection (LatentCoder.table_ids); the range coder tables are not needed
        self.prior = LatentCoder(
            network("h_s"),
            network("context"),
            network("entropy_parameters"),
            tensors[SCALE_THRESHOLDS],
            None,
            None,
            config["M"],
            torch.device("cpu"),
        )
        self.sigma = torch.from_numpy(scale_table()).float()  # scale level j -> sigma_j of table 16 j + f
        self.y_tables = _Tables(*read_table(tensors, "y"))
        self.z_tables = None
        if read_table(tensors, "z") is not None:
            self.z_tables = _Tables(*read_table(tensors, "z"))

    @torch.no_grad()
    def coder_parameters(
        self, y_hat: torch.Tensor, z_hat: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table ids, integer mean bases and quantised means of integer latents, each ``(B, M, H, W)``.

        Computed with the integer h_s, context model and g_ep, exactly as the codec selects tables
        (CODING.md 2.2); ``mean = base + fraction / MEAN_STEPS``.
        """
        b, m, h, w = y_hat.shape
        parts = []
        if self.prior.h_s is not None:
            parts.append(self.prior.h_s(z_hat.detach().double() * 2.0**ACTIVATION_BITS)[:, :, :h, :w])
        if self.prior.context is not None:
            parts.append(self.prior.context(y_hat.detach().double() * 2.0**ACTIVATION_BITS))
        features = torch.cat(parts, dim=1).permute(0, 2, 3, 1).reshape(b * h * w, -1)
        ids, base = self.prior.table_ids(features)

        def grid(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).view(b, h, w, m).permute(0, 3, 1, 2)

        ids, base = grid(ids), grid(base)
        mean = base.double() + (ids % MEAN_STEPS).double() / MEAN_STEPS
        return ids, base, mean

    def bits(
        self,
        model: JointAutoregressiveHierarchicalPrior,
        y_hat: torch.Tensor,
        z_hat: torch.Tensor | None,
        y_soft: torch.Tensor | None = None,
        z_soft: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Coded bits per image of rounded latents: ``y`` and ``z`` parts ``(B,)``, with gradients.

        ``y_hat`` and ``z_hat`` hold integers (straight-through rounded: gradients flow back into
        the encoder through the context model and h_s). The forward value is the coder's charge;
        the gradient that of the float surrogate (Gaussian at the coder's mean and scale level,
        float factorized density for z) evaluated at ``y_soft`` and ``z_soft`` (default: the
        rounded latents themselves).
        """
        y_soft = y_hat if y_soft is None else y_soft
        z_soft = z_hat if z_soft is None else z_soft
        b, _, h, w = y_hat.shape
        ids, base, mean_q = self.coder_parameters(y_hat, z_hat)
        out = {}
        psi = phi = None
        if z_hat is not None:
            z_int = z_hat.detach().long()
            channel = torch.arange(z_int.shape[1]).view(1, -1, 1, 1).expand_as(z_int)
            z_value = self.z_tables.cost(z_int, channel)
            z_surrogate = -torch.log2(model.z_density.likelihood(z_soft.float()))
            out["z"] = _straight_through(z_surrogate, z_value).flatten(1).sum(1)
            psi = model.h_s(z_hat.float())[:, :, :h, :w]
        if model.config.context:
            phi = model.context(y_hat.float())
        scales, means = model.entropy_parameters(model.entropy_inputs(psi, phi)).float().chunk(2, dim=1)
        means = _straight_through(means, mean_q)
        scales = _straight_through(scales, self.sigma[ids // MEAN_STEPS])
        y_surrogate = -torch.log2(gaussian_likelihood(y_soft.float(), means, scales, SCALE_MIN))
        y_value = self.y_tables.cost(y_hat.detach().long() - base, ids)
        out["y"] = _straight_through(y_surrogate, y_value).flatten(1).sum(1)
        return out


def coded_forward(
    model: JointAutoregressiveHierarchicalPrior,
    rate: CoderRate,
    x: torch.Tensor,
    quality: torch.Tensor,
    rate_gradient: str = "noise",
) -> dict[str, torch.Tensor]:
    """The codec's encoder with hard rounding, its coded bits and the decoder's output, in float32.

    Args:
        model: the float model (only g_a, h_a and ``log_gain`` should be trainable).
        rate: the coder's rate of the model's weights file.
        x: images in ``[0, 1]``, ``(B, 3, H, W)``, H and W multiples of 16.
        quality: one quality per image in ``[1, levels]``.
        rate_gradient: where the rate's surrogate takes its gradient: ``"noise"``, at ``y + u`` and
            ``z + u`` with ``u`` uniform in ``[-0.5, 0.5)`` (the gradient of the expected rate, as the
            model was trained, Minnen & Singh 2020 "mixed" quantisation), or ``"ste"``, at the rounded
            latents (straight-through). The straight-through rate gradient is near zero for a latent that
            rounds into its mean's bin, while the distortion's still pushes it outwards: tuning with it
            (lr 2e-5, 330 steps) raised the held-out rate by 1% for 0.03 dB, +0.24% BD-rate.

    Returns:
        ``x_hat`` (clamped to ``[0, 1]`` as the decoder does), ``bits`` ``(B,)`` (y plus z) and ``y_hat``.
    """
    from ..latent_coding import SYMBOL_LIMIT

    y = model.g_a(x.float()) * model.gains(quality).float()
    y_hat = _ste_round(y).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)
    z_hat = None
    if model.config.hyperprior:
        z = model.h_a(y)
        z_hat = _ste_round(z).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)
    if rate_gradient not in ("noise", "ste"):
        raise ValueError(f"rate_gradient must be 'noise' or 'ste', got {rate_gradient!r}")
    y_soft = z_soft = None
    if rate_gradient == "noise" and torch.is_grad_enabled():  # without gradients, only the value counts
        y_soft = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        z_soft = None if z_hat is None else z + torch.empty_like(z).uniform_(-0.5, 0.5)
    parts = rate.bits(model, y_hat, z_hat, y_soft, z_soft)
    bits = parts["y"] + parts.get("z", 0.0)
    x_hat = model.g_s(y_hat * model.gains(quality, inverse=True).float()).clamp(0.0, 1.0)
    return {"x_hat": x_hat, "bits": bits, "y_hat": y_hat, **{f"{k}_bits": v for k, v in parts.items()}}


def coded_loss(out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
    """``lambda * 255^2 * MSE + bpp`` per image, averaged (paper eq. 2), with the batch's bpp and PSNR."""
    pixels = x.shape[2] * x.shape[3]
    bpp = out["bits"].float() / pixels
    mse = (out["x_hat"] - x.float()).pow(2).flatten(1).mean(1)
    loss = (lmbda.float() * 255.0**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean(), "psnr": psnr}


def _padded(image: np.ndarray) -> torch.Tensor:
    """The image with its edge pixels repeated to the codec's latent grid (16 x ``latent_shapes``): ``(1, 3, H, W)``."""
    from ..container import latent_shapes

    h, w = image.shape[:2]
    (yh, yw), _ = latent_shapes(w, h)
    rows = np.minimum(np.arange(DOWNSAMPLING * yh), h - 1)
    cols = np.minimum(np.arange(DOWNSAMPLING * yw), w - 1)
    block = image[rows[:, None], cols[None, :]]
    return torch.from_numpy(np.ascontiguousarray(block)).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def estimate_image_bits(
    model: JointAutoregressiveHierarchicalPrior, rate: CoderRate, image: np.ndarray, quality: float
) -> dict[str, float]:
    """The training-time rate estimate of a whole image: ``{"y": bits, "z": bits}`` (quality as stored)."""
    from .. import container

    q = torch.tensor([container.quantize_quality(quality)], dtype=torch.float64)
    out = coded_forward(model, rate, _padded(image), q)
    return {k[:-5]: float(v.sum()) for k, v in out.items() if k.endswith("_bits")}
