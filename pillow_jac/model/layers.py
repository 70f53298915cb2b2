"""Building blocks of the mbt2018 networks: GDN, masked convolution and a gradient-friendly lower bound.

References:
    Ballé, Laparra, Simoncelli, "Density Modeling of Images using a Generalized Normalization
    Transformation" (ICLR 2016), eq. 1 (GDN) and its approximate inverse (IGDN).
    Minnen, Ballé, Toderici, "Joint Autoregressive and Hierarchical Priors for Learned Image
    Compression" (NeurIPS 2018), section 2 (masked 5x5 context model, van den Oord et al. mask "A").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GDN", "MaskedConv2d", "lower_bound", "conv", "deconv", "causal_mask"]


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still pushes values that sit below the bound upwards."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Clamp ``x`` from below at ``bound`` without killing the gradient of clamped entries.

    Example:
        >>> import torch
        >>> lower_bound(torch.tensor([-1.0, 2.0]), 0.5).tolist()
        [0.5, 2.0]
    """
    return _LowerBound.apply(x, bound)


class GDN(nn.Module):
    """Generalized divisive normalization, ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``.

    With ``inverse=True`` it computes IGDN, ``y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)``.
    beta and gamma are reparametrised as squares with a lower bound so they stay positive.

    Example:
        >>> import torch
        >>> GDN(4)(torch.zeros(1, 4, 3, 3)).shape
        torch.Size([1, 4, 3, 3])
    """

    _PEDESTAL = 2.0**-18

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self._beta_bound = (beta_min + self._PEDESTAL) ** 0.5
        self._gamma_bound = self._PEDESTAL**0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self._PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self._PEDESTAL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        channels = x.shape[1]
        beta = lower_bound(self.beta, self._beta_bound) ** 2 - self._PEDESTAL
        gamma = lower_bound(self.gamma, self._gamma_bound) ** 2 - self._PEDESTAL
        norm = F.conv2d(x * x, gamma.view(channels, channels, 1, 1).to(x.dtype), beta.to(x.dtype))
        if not torch.is_grad_enabled():  # inference: the same arithmetic in place, a third faster
            return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def causal_mask(kernel_size: int = 5) -> torch.Tensor:
    """Mask "A" of a ``k x k`` kernel: 1 where the neighbour precedes the centre in raster order.

    Example:
        >>> int(causal_mask(5).sum())
        12
    """
    mask = torch.zeros(kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:centre, :] = 1
    mask[centre, :centre] = 1
    return mask


class MaskedConv2d(nn.Conv2d):
    """A ``k x k`` convolution that only sees already-decoded latents (mask type A).

    Example:
        >>> import torch
        >>> MaskedConv2d(2, 4)(torch.zeros(1, 2, 6, 6)).shape
        torch.Size([1, 4, 6, 6])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.register_buffer("mask", causal_mask(kernel_size).expand_as(self.weight).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    @property
    def taps(self) -> int:
        """The kernel positions the mask keeps (the causal ones): the only ones the decoder multiplies."""
        return int(causal_mask(self.kernel_size[0]).sum())


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """A "same"-padded convolution (stride 2 halves height and width)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """A transposed convolution that exactly undoes the shape change of :func:`conv`."""
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        output_padding=stride - 1,
    )


class SubpixelDeconv(nn.Module):
    """A stride-2 ``k x k`` transposed convolution computed as a 3x3 convolution and a pixel shuffle.

    Output pixel ``(2i + py, 2j + px)`` of the transposed convolution only sees the kernel taps of
    its phase ``(py, px)``, on input pixels ``i - 1 .. i + 1``; the four phases become four groups
    of output channels of an ordinary convolution (the "sub-pixel" view of Shi et al., 2016). The
    result equals the transposed convolution up to float summation order. For g_s's last layer
    (3 output channels) this is about twice as fast on CPU; for wide layers it is slower.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> deconv = nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1)
        >>> x = torch.randn(1, 4, 6, 7)
        >>> bool((SubpixelDeconv(deconv)(x) - deconv(x)).abs().max() < 1e-5)
        True
    """

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        (k, _), (s, _), (p, _) = deconv.kernel_size, deconv.stride, deconv.padding
        if s != 2 or k != 5 or p != 2 or deconv.output_padding != (1, 1):
            raise ValueError("only 5x5 stride-2 transposed convolutions with padding 2 are supported")
        w = deconv.weight.detach()  # (in, out, k, k)
        cin, cout = w.shape[:2]
        weight = w.new_zeros(cout, s, s, cin, 3, 3)
        for py in range(s):
            for ky in (ky for ky in range(k) if (py + p - ky) % s == 0):
                for px in range(s):
                    for kx in (kx for kx in range(k) if (px + p - kx) % s == 0):
                        dy, dx = (py + p - ky) // s, (px + p - kx) // s
                        weight[:, py, px, :, dy + 1, dx + 1] = w[:, :, ky, kx].t()
        self.register_buffer("weight", weight.reshape(cout * s * s, cin, 3, 3))
        bias = deconv.bias.detach() if deconv.bias is not None else w.new_zeros(cout)
        self.register_buffer("bias", bias.repeat_interleave(s * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), 2)
