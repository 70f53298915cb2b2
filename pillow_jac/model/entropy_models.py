"""Differentiable density models used for the rate term during training.

* :class:`FactorizedDensity` is the non-parametric, per-channel density of the hyper-latent z
  (Ballé et al., "Variational image compression with a scale hyperprior", ICLR 2018, appendix 6.1).
* :func:`gaussian_likelihood` is the conditional Gaussian convolved with a unit uniform of
  Minnen et al. 2018, eq. 4, evaluated at (noisy or rounded) latents.

Both return probabilities of unit-width bins; the real coder uses integer tables derived from
them at freeze time (:mod:`pillow_jac.entropy_coding`, :mod:`pillow_jac.training.freeze`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import lower_bound

__all__ = ["FactorizedDensity", "gaussian_likelihood", "mixture_likelihood", "standard_normal_cdf"]

LIKELIHOOD_BOUND = 1e-9


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x), computed as ``erfc(-x / sqrt 2) / 2`` for accuracy in the lower tail."""
    return 0.5 * torch.erfc(-x * (2.0**-0.5))


def gaussian_likelihood(y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor, scale_min: float) -> torch.Tensor:
    """Probability of the unit bin centred on ``y`` under N(means, scales^2) (Minnen 2018, eq. 4).

    Computed in float32 whatever the autocast state, using the symmetric form
    ``Phi((0.5 - |v|) / s) - Phi((-0.5 - |v|) / s)`` that stays accurate in the tails.

    Example:
        >>> import torch
        >>> p = gaussian_likelihood(torch.zeros(1), torch.zeros(1), torch.ones(1), 0.11)
        >>> round(float(p), 4)
        0.3829
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        v = (y.float() - means.float()).abs()
        s = lower_bound(scales.float(), scale_min)
        upper = standard_normal_cdf((0.5 - v) / s)
        lower = standard_normal_cdf((-0.5 - v) / s)
        return lower_bound(upper - lower, LIKELIHOOD_BOUND)


def mixture_likelihood(
    y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor, logits: torch.Tensor, scale_min: float
) -> torch.Tensor:
    """Probability of the unit bin around ``y`` under a mixture of K Gaussians (Cheng et al. 2020, eq. 6).

    ``y`` is ``(B, M, H, W)``; ``scales``, ``means`` and ``logits`` are ``(B, K * M, H, W)``, component
    ``k`` of channel ``c`` at channel ``k * M + c``. The weights are the softmax of the logits over
    the K components; each component is convolved with a unit uniform as in :func:`gaussian_likelihood`.

    Example:
        >>> import torch
        >>> y = torch.zeros(1, 1, 1, 1)
        >>> one = gaussian_likelihood(y, y, torch.ones_like(y), 0.11)
        >>> two = mixture_likelihood(y, torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), 0.11)
        >>> bool(torch.allclose(one, two))
        True
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        b, m, h, w = y.shape
        k = scales.shape[1] // m

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.float().reshape(b, k, m, h, w)

        each = gaussian_likelihood(y.float().unsqueeze(1), split(means), split(scales), scale_min)
        weights = torch.softmax(split(logits), dim=1)
        return lower_bound((weights * each).sum(dim=1), LIKELIHOOD_BOUND)


class FactorizedDensity(nn.Module):
    """A learned, per-channel univariate cumulative ``c(x)`` with ``p(bin) = c(x+1/2) - c(x-1/2)``.

    The cumulative is a small monotone network (softplus-positive matrices, tanh gates) applied to
    every channel independently, as in Ballé et al. 2018, appendix 6.1.

    Example:
        >>> import torch
        >>> density = FactorizedDensity(3)
        >>> density.likelihood(torch.zeros(1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of the cumulative at ``x`` of shape ``(channels, 1, n)``; returns the same shape."""
        logits = x
        for i, matrix in enumerate(self.matrices):
            logits = torch.matmul(F.softplus(matrix), logits) + self.biases[i]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin around each value of ``z`` (shape ``B, C, H, W``), in float32."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            b, c, h, w = z.shape
            values = z.float().permute(1, 0, 2, 3).reshape(c, 1, -1)
            lower = self.logits_cumulative(values - 0.5)
            upper = self.logits_cumulative(values + 0.5)
            sign = -torch.sign(lower + upper).detach()
            p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
            p = lower_bound(p, LIKELIHOOD_BOUND)
            return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def pmf_table(self, low: int, high: int) -> torch.Tensor:
        """Float64 probabilities of the integers ``low..high`` for every channel: ``(channels, n)``."""
        grid = torch.arange(low, high + 1, dtype=torch.float64)
        module = self.double()
        try:
            values = grid.view(1, 1, -1).expand(self.channels, 1, -1)
            lower = torch.sigmoid(module.logits_cumulative(values - 0.5))
            upper = torch.sigmoid(module.logits_cumulative(values + 0.5))
        finally:
            self.float()
        return (upper - lower).reshape(self.channels, -1).clamp_min(0.0)

    @torch.no_grad()
    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 cumulative ``c(x)`` at the points ``x`` (1-D) for every channel: ``(channels, n)``."""
        module = self.double()
        try:
            values = x.double().view(1, 1, -1).expand(self.channels, 1, -1)
            return torch.sigmoid(module.logits_cumulative(values)).reshape(self.channels, -1)
        finally:
            self.float()
