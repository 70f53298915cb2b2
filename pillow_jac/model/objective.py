"""The training objective: the lambda ladder of the qualities and the rate-distortion loss.

The network (:mod:`pillow_jac.model.mbt2018`) knows qualities only as gain vectors; what each quality
is trained for, ``lambda * 255^2 * MSE + bpp`` (Minnen et al. 2018, eq. 2, with one lambda per quality:
Cui et al. 2021), lives here, for training, the encoder's refinement and the encoder fine-tune.
"""

from __future__ import annotations

import torch

from ..constants import LAMBDAS
from .mbt2018 import quality_position

__all__ = ["quality_lambda", "rate_distortion_loss"]


def quality_lambda(quality: torch.Tensor, lambdas: tuple[float, ...] = LAMBDAS) -> torch.Tensor:
    """The rate-distortion weight of a (fractional) quality: the lambda ladder, log-interpolated.

    Args:
        quality: qualities in ``[1, len(lambdas)]``.
        lambdas: the ladder, by default CompressAI's (:data:`~pillow_jac.constants.LAMBDAS`); a model's own is
            ``config.lambdas``.

    Example:
        >>> import torch
        >>> [round(v, 4) for v in quality_lambda(torch.tensor([1.0, 4.0, 8.0])).tolist()]
        [0.0018, 0.013, 0.18]
    """
    ladder = torch.tensor(lambdas, dtype=torch.float64).log()
    low, t = quality_position(quality, len(lambdas))
    return torch.exp(ladder[low] * (1 - t) + ladder[low + 1] * t)


def rate_distortion_loss(out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
    """``lambda * 255^2 * MSE + bpp`` per image, averaged over the batch (paper eq. 2).

    Returns the loss and its parts (``bpp``, ``mse``, ``psnr`` averaged over the batch) in float32.
    """
    b, _, h, w = x.shape
    pixels = h * w
    bits = torch.zeros(b, device=x.device)
    for key in ("y_likelihoods", "z_likelihoods"):
        if key in out:
            bits = bits + out[key].float().log2().flatten(1).sum(1).neg()
    bpp = bits / pixels
    mse = (out["x_hat"].float() - x.float()).pow(2).flatten(1).mean(1)
    loss = (lmbda.to(mse) * 255.0**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "psnr": psnr}
