"""The joint autoregressive and hierarchical prior model (Minnen, Ballé, Toderici, NeurIPS 2018).

Structure (paper, figure 4 and table 1):

* analysis ``y = g_a(x)``: four 5x5 stride-2 convolutions with GDN between them;
* hyper-analysis ``z = h_a(y)``: 3x3 stride 1, then two 5x5 stride 2, ReLU between;
* hyper-synthesis ``psi = h_s(z_hat)``: two 5x5 stride-2 transposed convs (N -> M -> 3M/2), then 3x3 -> 2M;
* context ``phi = g_cm(y_hat)``: a masked 5x5 convolution M -> 2M (mask "A", 12 causal neighbours);
* entropy parameters ``(sigma, mu) = g_ep(psi, phi)``: 1x1 convolutions 4M -> 10M/3 -> 8M/3 -> 2M;
* synthesis ``x_hat = g_s(y_hat)``: four 5x5 stride-2 transposed convolutions with inverse GDN.

ReLU is used in h_a, h_s and g_ep so that h_s, g_cm and g_ep convert exactly to integer networks
(:mod:`pillow_jac.model.integer`). Quantisation is plain rounding, ``y_hat = round(y)``
(paper, section 2), so the encoder can compute every coding parameter in one pass.

Variable rate (Cui et al. 2021, "Asymmetric gained deep image compression"): a positive gain
vector per quality level multiplies y before quantisation and an inverse gain vector multiplies
y_hat before g_s; fractional qualities interpolate both in the log domain.

Training-time forward (paper eq. 2 and 3): additive uniform noise for the rate terms, and the
straight-through rounded latents as the input of g_s and g_cm (Minnen & Singh 2020).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..constants import ALIGN, LAMBDAS, SCALE_MIN
from .entropy_models import FactorizedDensity, gaussian_likelihood, mixture_likelihood
from .layers import GDN, MaskedConv2d, conv, deconv

__all__ = [
    "ENTROPY_MODELS",
    "CONTEXT_SIZES",
    "ModelConfig",
    "JointAutoregressiveHierarchicalPrior",
    "quality_position",
    "count_parameters",
]


#: entropy model -> g_ep outputs per latent and mixture component: scale; scale and mean; scale, mean and logit
ENTROPY_MODELS = {"zero-mean": 1, "gaussian": 2, "gmm": 3}
#: the masked context windows a model may use
CONTEXT_SIZES = (3, 5, 7)
#: the most components a "gmm" model may have
MAX_MIXTURES = 8
#: the widest N and M a configuration may have (the paper's largest model is N=192, M=320): the widths size the
#: model built before a weights file's tensors are checked against it, so they bound that memory (about 2 GB)
MAX_WIDTH = 1024


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the model; every field is recorded in the weights manifest.

    Attributes:
        N: channels inside g_a, g_s, h_a and h_s.
        M: channels of the latent y.
        context: use the masked autoregressive context model.
        hyperprior: use the hyperprior (z, h_a, h_s).
        entropy: the conditional distribution of each latent (:data:`ENTROPY_MODELS`):
            ``"gaussian"``, a Gaussian with predicted mean and scale (the paper's model, section 2);
            ``"zero-mean"``, a Gaussian with mean 0 and predicted scale (Ballé et al. 2018's scale
            hyperprior); ``"gmm"``, a mixture of ``mixtures`` Gaussians with predicted weights, means
            and scales (Cheng et al. 2020, CODING.md section 4).
        mixtures: components of the ``"gmm"`` mixture (1 for the other entropy models).
        context_size: side of the masked causal window of the context model (3, 5 or 7).
        qualities: number of quality levels (gain vectors).
        lambdas: the rate-distortion weight of each integer quality, increasing: what the gains were
            trained for, and what the encoder's latent refinement (effort 1 and up) optimises.
    """

    N: int = 128
    M: int = 192
    context: bool = True
    hyperprior: bool = True
    entropy: str = "gaussian"
    mixtures: int = 1
    context_size: int = 5
    qualities: int = len(LAMBDAS)
    lambdas: tuple[float, ...] = LAMBDAS

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))  # a list from JSON
        if isinstance(self.qualities, bool) or not isinstance(self.qualities, int) or self.qualities < 2:
            # the gain interpolation needs two rows (CODING.md 1.2: k = min(floor(p), Q - 2))
            raise ValueError(f"qualities must be a whole number of at least 2, got {self.qualities!r}")
        if len(self.lambdas) != self.qualities:
            raise ValueError(f"{self.qualities} quality levels need as many lambdas, got {len(self.lambdas)}")
        if not all(0 < a < b for a, b in zip(self.lambdas[:-1], self.lambdas[1:], strict=True)):
            raise ValueError(f"lambdas must be positive and increasing, got {self.lambdas}")
        if not (self.context or self.hyperprior):
            raise ValueError("the model needs the context model, the hyperprior or both")
        if self.entropy not in ENTROPY_MODELS:
            raise ValueError(f"unsupported entropy model {self.entropy!r}: use one of {', '.join(ENTROPY_MODELS)}")
        if (self.entropy == "gmm") != (self.mixtures > 1) or not 1 <= self.mixtures <= MAX_MIXTURES:
            raise ValueError(f"a 'gmm' model has 2 to {MAX_MIXTURES} mixtures and the others 1, got {self.mixtures}")
        if self.context_size not in CONTEXT_SIZES:
            raise ValueError(f"context_size must be one of {CONTEXT_SIZES}, got {self.context_size}")
        for name in ("N", "M"):
            width = getattr(self, name)
            if type(width) is not int or not 1 <= width <= MAX_WIDTH:
                raise ValueError(f"{name} must be a whole number from 1 to {MAX_WIDTH}, got {width!r}")
        if self.M % 6:
            raise ValueError("M must be a multiple of 6 (the paper's 10M/3, 8M/3 and 3M/2 widths)")

    def to_dict(self) -> dict:
        """The configuration as a JSON-friendly dict.

        ``mixtures`` and ``context_size`` are left out at their defaults (1 and 5): a manifest without
        them means the default (CODING.md section 4), so a default model's manifest, and its decoder
        hash, are what they were before these fields existed.
        """
        out = asdict(self)
        for name, default in (("mixtures", 1), ("context_size", 5)):
            if out[name] == default:
                del out[name]
        return out

    @property
    def parameter_channels(self) -> int:
        """Output channels of g_ep: per latent, the scale (and mean) of each component, and the mixture logits."""
        return ENTROPY_MODELS[self.entropy] * self.mixtures * self.M


def quality_position(quality: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split qualities in ``[1, levels]`` into a lower level index and an interpolation weight."""
    p = (quality.double() - 1.0).clamp(0.0, levels - 1.0)
    low = p.floor().clamp(max=levels - 2).long()
    return low, (p - low.double())


class JointAutoregressiveHierarchicalPrior(nn.Module):
    """The mbt2018 network with per-quality gains; knows nothing of files or bytes.

    Example:
        >>> import torch
        >>> model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
        >>> out = model(torch.rand(2, 3, 64, 64), torch.tensor([1.0, 8.0]))
        >>> out["x_hat"].shape, out["y_likelihoods"].shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 12, 4, 4]))
    """

    #: input height and width must be multiples of this (four stride-2 stages, then two more in h_a)
    ALIGN = ALIGN

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        N, M = config.N, config.M
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )  # fmt: skip
        params_in = 0
        if config.hyperprior:
            self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.ReLU(), conv(N, N), nn.ReLU(), conv(N, N))
            self.h_s = nn.Sequential(
                deconv(N, M), nn.ReLU(), deconv(M, M * 3 // 2), nn.ReLU(), conv(M * 3 // 2, 2 * M, 3, 1)
            )
            self.z_density = FactorizedDensity(N)
            params_in += 2 * M
        if config.context:
            self.context = MaskedConv2d(M, 2 * M, config.context_size)
            params_in += 2 * M
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(params_in, M * 10 // 3, 1), nn.ReLU(),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.ReLU(),
            nn.Conv2d(M * 8 // 3, config.parameter_channels, 1),
        )  # fmt: skip
        # log gains per quality level; higher quality, finer effective quantisation
        init = 0.5 * torch.log(torch.tensor(config.lambdas) / LAMBDAS[3])
        self.log_gain = nn.Parameter(init.view(-1, 1).repeat(1, M))
        self.log_inverse_gain = nn.Parameter(-init.view(-1, 1).repeat(1, M))

    # -- gains ---------------------------------------------------------------------------------
    def gains(self, quality: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Per-image gain vectors ``(B, M, 1, 1)`` for qualities in ``[1, levels]`` (log-interpolated)."""
        table = self.log_inverse_gain if inverse else self.log_gain
        low, t = quality_position(quality.to(table.device), table.shape[0])
        t = t.to(table.dtype).unsqueeze(1)
        return torch.exp(table[low] * (1 - t) + table[low + 1] * t)[:, :, None, None]

    # -- pieces shared with the codec ----------------------------------------------------------
    def entropy_inputs(self, psi: torch.Tensor | None, phi: torch.Tensor | None) -> torch.Tensor:
        """Concatenate hyperprior and context features in the order g_ep expects."""
        parts = [t for t in (psi, phi) if t is not None]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def y_likelihood(self, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin around each latent under g_ep's parameters (float32).

        ``params`` holds, channel blocks of M each: the scales, then (``gaussian``, ``gmm``) the
        means, then (``gmm``) the mixture logits, each block component-major for a mixture
        (CODING.md section 4).
        """
        config = self.config
        if config.entropy == "zero-mean":
            return gaussian_likelihood(y, torch.zeros_like(y), params, SCALE_MIN)
        if config.entropy == "gaussian":
            scales, means = params.chunk(2, dim=1)
            return gaussian_likelihood(y, means, scales, SCALE_MIN)
        return mixture_likelihood(y, *params.chunk(3, dim=1), SCALE_MIN)

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training/evaluation forward with noise for the rate and rounding for the distortion.

        Args:
            x: images in ``[0, 1]``, shape ``(B, 3, H, W)``, H and W multiples of :attr:`ALIGN`.
            quality: one quality per image in ``[1, levels]``.

        Returns:
            ``x_hat``, ``y_likelihoods`` and (with the hyperprior) ``z_likelihoods``.
        """
        y = self.g_a(x) * self.gains(quality).to(x.dtype)
        y_round = y + (torch.round(y) - y).detach()
        noise = torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else None
        y_rate = y + noise if noise is not None else y_round
        out: dict[str, torch.Tensor] = {}
        psi = phi = None
        if self.config.hyperprior:
            z = self.h_a(y).float()  # under bf16 autocast h_a gives bf16, whose grid would coarsen z + noise
            z_round = z + (torch.round(z) - z).detach()
            z_rate = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else z_round
            out["z_likelihoods"] = self.z_density.likelihood(z_rate)
            psi = self.h_s(z_round)
        if self.config.context:
            phi = self.context(y_round)
        params = self.entropy_parameters(self.entropy_inputs(psi, phi))
        out["y_likelihoods"] = self.y_likelihood(y_rate, params)
        inverse = self.gains(quality, inverse=True).to(y_round.dtype)
        out["x_hat"] = self.g_s(y_round * inverse)
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
