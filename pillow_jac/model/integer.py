"""Integer networks for the entropy path: h_s, the context model and g_ep (CODING.md section 3).

Ballé, Johnston, Minnen, "Integer Networks for Data Compression with Latent-Variable Models"
(ICLR 2019) show that a decoder only reproduces the encoder's probability tables if the networks
that compute them give bit-identical results on every machine. Here every activation is an
integer ``a`` standing for ``a / 2**F`` (``F = ACTIVATION_BITS``), every weight of output channel
``c`` an integer ``w`` standing for ``w / 2**s_c``, and a layer computes

    acc_c = sum(w * a) + b_c                      (exact: all terms are integers)
    out_c = floor((acc_c + 2**(s_c - 1)) / 2**s_c) (rounding to the activation grid)
    out_c = clamp(relu?(out_c), -(2**A - 1), 2**A - 1)

The sums are evaluated in float64. With ``|w| < 2**15``, ``|a| < 2**A`` (``A = 20``) and at most
``K <= 2**13`` products, every partial sum stays below ``2**48 < 2**53``, so float64 holds it
exactly (shifts are capped at 24, so biases stay small too), whatever the summation order,
thread count or device. Convolutions are therefore computed with torch's float64 convolutions:
on CPU these are im2col + GEMM; cuDNN offers only GEMM-type algorithms for float64 (its FFT and
Winograd algorithms are float/half only), so no transform can introduce rounding. The global
cuDNN switch is deliberately not toggled here: that would not be thread-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import ACTIVATION_BITS, ACTIVATION_LIMIT_BITS
from .layers import MaskedConv2d

__all__ = [
    "IntegerLayer", "IntegerNetwork", "integerize", "dequantize_into", "to_fixed", "WEIGHT_BITS", "LAYER_FIELDS",
    "LAYER_KINDS",
]  # fmt: skip

#: weights are integers with |w| <= 2**WEIGHT_BITS - 1
WEIGHT_BITS = 15
_LIMIT = float(2**ACTIVATION_LIMIT_BITS - 1)
_MAX_SHIFT = 24
#: at most this many products per output: 2**13 * 2**15 * 2**20 = 2**48 < 2**53
_MAX_FAN_IN = 2**13
#: the fields of an :class:`IntegerLayer` besides its tensors (weight, bias, shift), and the kinds it can be
LAYER_FIELDS = ("kind", "stride", "padding", "output_padding", "relu")
LAYER_KINDS = ("conv", "deconv")


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """Integers (as float64) standing for ``x`` on the activation grid, rounded half up."""
    return torch.floor(x.double() * 2.0**ACTIVATION_BITS + 0.5).clamp(-_LIMIT, _LIMIT)


@dataclass
class IntegerLayer:
    """One exact layer: a (transposed) convolution with integer weights, a shift and a ReLU flag.

    Attributes:
        kind: ``"conv"`` or ``"deconv"``.
        weight: integer weights (float64 tensor holding integers), torch layout of the kind.
        bias: integer bias on the accumulator grid of each output channel, float64.
        shift: per-output-channel shift ``s_c`` (int64).
        stride, padding, output_padding: as in the float layer.
        relu: apply ReLU after rescaling.
    """

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    shift: torch.Tensor
    stride: int
    padding: int
    output_padding: int
    relu: bool

    @property
    def out_channels(self) -> int:
        """Number of output channels."""
        return self.weight.shape[1] if self.kind == "deconv" else self.weight.shape[0]

    def problem(self) -> str | None:
        """What breaks CODING.md section 3's rules for a stored layer, or None."""
        if self.weight.dim() != 4:
            return f"the weight must have 4 dimensions, not {self.weight.dim()}"
        out = self.out_channels
        if tuple(self.bias.shape) != (out,) or tuple(self.shift.shape) != (out,):
            return f"bias and shift must hold one value per output channel ({out})"
        for label, values in (("weight", self.weight), ("bias", self.bias)):
            if not bool(torch.isfinite(values).all()) or not bool((values == torch.floor(values)).all()):
                return f"the {label} holds values that are not integers"
        if bool((self.weight.abs() > 2**WEIGHT_BITS - 1).any()):
            return f"a weight lies outside +-{2**WEIGHT_BITS - 1}"
        if bool(((self.shift < 1) | (self.shift > _MAX_SHIFT)).any()):
            return f"a shift lies outside 1..{_MAX_SHIFT}"
        fan_in = (self.weight.shape[0] if self.kind == "deconv" else self.weight.shape[1]) * self.weight[0, 0].numel()
        largest = fan_in * (2**WEIGHT_BITS - 1) * _LIMIT + (float(self.bias.abs().max()) if self.bias.numel() else 0.0)
        if largest + 2.0 ** (_MAX_SHIFT - 1) >= 2.0**53:  # the rounding adds up to 2**23 to the sum
            return "its sums could reach 2**53, where float64 arithmetic stops being exact"
        return None

    def _rounding(self, acc: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``2**(s_c - 1)`` and ``2**-s_c`` shaped to broadcast over ``acc`` (cached per layout)."""
        key = (acc.dim(), channel_dim, acc.device)
        cache = self.__dict__.setdefault("_rounding_cache", {})
        if key not in cache:
            view = [1] * acc.dim()
            view[channel_dim] = -1
            # exact powers of two, made on the host: a device's exp2 need not be exact
            shifts = [int(s) for s in self.shift.flatten().tolist()]
            half = torch.tensor([math.ldexp(1.0, s - 1) for s in shifts], dtype=torch.float64).view(view)
            inverse = torch.tensor([math.ldexp(1.0, -s) for s in shifts], dtype=torch.float64).view(view)
            cache[key] = (half.to(acc.device), inverse.to(acc.device))
        return cache[key]

    def rescale(self, acc: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Round the accumulator to the activation grid, apply ReLU and the activation bound."""
        half, inverse = self._rounding(acc, channel_dim)
        out = (acc + half).mul_(inverse).floor_()  # exact: multiplying by a power of two
        return out.clamp_(0.0 if self.relu else -_LIMIT, _LIMIT)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """Apply the layer to integer activations ``(B, C, H, W)`` held in float64."""
        w = self.weight.to(a.device)
        b = self.bias.to(a.device)
        if self.kind == "deconv":
            acc = F.conv_transpose2d(a, w, b, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(a, w, b, self.stride, self.padding)
        return self.rescale(acc, 1)

    def matrix(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A 1x1 layer as ``(weight (in, out), bias (out,))`` on ``device`` (cached per device)."""
        cache = self.__dict__.setdefault("_matrix_cache", {})
        if device not in cache:
            cache[device] = (self.weight.to(device).flatten(1).t(), self.bias.to(device))
        return cache[device]

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        """Apply a 1x1 convolution layer to activations laid out as ``(positions, channels)``."""
        w, b = self.matrix(a.device)
        return self.rescale(torch.addmm(b, a, w), 1)


class IntegerNetwork:
    """A sequence of :class:`IntegerLayer` (h_s, the context model or g_ep)."""

    def __init__(self, layers: list[IntegerLayer]):
        self.layers = layers

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """Apply every layer to integer activations ``(B, C, H, W)`` in float64."""
        for layer in self.layers:
            a = layer(a)
        return a

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        """Apply a network of 1x1 convolutions to ``(positions, channels)`` activations."""
        for layer in self.layers:
            a = layer.matmul(a)
        return a

    def template(self) -> list[dict]:
        """The non-tensor description of each layer (:data:`LAYER_FIELDS`; stored in the weights manifest)."""
        return [{k: getattr(layer, k) for k in LAYER_FIELDS} for layer in self.layers]


def _integer_layer(module: nn.Module, relu: bool) -> IntegerLayer:
    """Quantise one float (transposed) convolution: per-output-channel power-of-two weight scales."""
    weight = module.weight.detach().double()
    if isinstance(module, MaskedConv2d):
        weight = weight * module.mask.double()
    deconv = isinstance(module, nn.ConvTranspose2d)
    # products per output that can be nonzero: a masked kernel's zero taps add nothing to the sums
    taps = int(module.mask[0, 0].sum()) if isinstance(module, MaskedConv2d) else weight.shape[2] * weight.shape[3]
    fan_in = (weight.shape[0] if deconv else weight.shape[1]) * taps
    if fan_in > _MAX_FAN_IN:
        raise ValueError(f"a layer with {fan_in} inputs per output could overflow the exact float64 sums")
    per_out = weight.transpose(0, 1) if deconv else weight
    peak = per_out.abs().flatten(1).amax(1).clamp_min(1e-30)
    shift = torch.floor(torch.log2((2**WEIGHT_BITS - 1) / peak)).clamp(1, _MAX_SHIFT).long()
    scale = torch.exp2(shift.double())
    view = (1, -1, 1, 1) if deconv else (-1, 1, 1, 1)
    w_int = torch.round(weight * scale.view(view)).clamp(-(2**WEIGHT_BITS - 1), 2**WEIGHT_BITS - 1)
    bias = module.bias.detach().double() if module.bias is not None else torch.zeros(len(shift), dtype=torch.float64)
    b_int = torch.round(bias * scale * 2.0**ACTIVATION_BITS)
    return IntegerLayer(weight=w_int, bias=b_int, shift=shift, **_layout(module, relu))


def integerize(network: nn.Module) -> IntegerNetwork:
    """Convert a float ``nn.Sequential`` of convolutions and ReLUs (or one conv) to an integer network.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
        >>> x = torch.rand(1, 2, 4, 4)
        >>> exact = integerize(net)(to_fixed(x)) / 2**8
        >>> bool((exact - net(x).double()).abs().max() < 0.02)
        True
    """
    return IntegerNetwork([_integer_layer(module, relu) for module, relu in _convolutions(network)])


def float_template(network: nn.Module) -> list[dict]:
    """The template (:meth:`IntegerNetwork.template`) that :func:`integerize` would give ``network``.

    What a weights file's ``integer_networks`` must say of each network for the model its config builds: a
    layout that differs (another stride, padding or ReLU) would run other layers than the architecture's.
    """
    return [_layout(module, relu) for module, relu in _convolutions(network)]


def _convolutions(network: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``(layer, followed by a ReLU)`` for each (transposed) convolution of a float ``nn.Sequential`` (or one conv)."""
    modules = list(network) if isinstance(network, nn.Sequential) else [network]
    out = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.ReLU):
            continue
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"cannot integerise {type(module).__name__}")
        out.append((module, i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)))
    return out


def _layout(module: nn.Module, relu: bool) -> dict:
    """The non-tensor fields of a layer (:data:`LAYER_FIELDS`) as :func:`integerize` stores them."""
    deconv = isinstance(module, nn.ConvTranspose2d)
    return {
        "kind": "deconv" if deconv else "conv",
        "stride": module.stride[0],
        "padding": module.padding[0],
        "output_padding": module.output_padding[0] if deconv else 0,
        "relu": relu,
    }


def _float_layers(network: nn.Module) -> list[nn.Module]:
    """The (transposed) convolutions of a float network, in the order :func:`integerize` converts them."""
    return [module for module, _ in _convolutions(network)]


@torch.no_grad()
def dequantize_into(integer: IntegerNetwork, network: nn.Module) -> None:
    """Set a float network's parameters to the values its integer network stands for.

    The inverse of :func:`integerize`: weight ``w / 2**s_c`` and bias ``b / 2**(s_c + F)``. The
    shipped weights file stores h_s, the context model and g_ep only as integer networks
    (they are what the decoder runs); this recovers float masters from them to resume training or
    to run the float model. Each weight is within ``2**-15`` of its channel's largest weight of the
    trained value; integerising the result gives back the same integer weights and shifts (the
    biases to float32 precision).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
        >>> copy = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
        >>> dequantize_into(integerize(net), copy)
        >>> bool((copy[0].weight - net[0].weight).abs().max() < 1e-4)
        True
        >>> all(torch.equal(a.weight, b.weight) for a, b in zip(integerize(copy).layers, integerize(net).layers))
        True
    """
    modules = _float_layers(network)
    if len(modules) != len(integer.layers):
        raise ValueError(f"{len(integer.layers)} integer layers for a network of {len(modules)} convolutions")
    for module, layer in zip(modules, integer.layers, strict=True):
        deconv = isinstance(module, nn.ConvTranspose2d)
        if (layer.kind == "deconv") != deconv or layer.weight.shape != module.weight.shape:
            raise ValueError(f"integer layer {layer.kind} {tuple(layer.weight.shape)} does not fit {module}")
        scale = torch.exp2(-layer.shift.double())
        view = (1, -1, 1, 1) if deconv else (-1, 1, 1, 1)
        module.weight.copy_(layer.weight.double() * scale.view(view))
        if module.bias is not None:
            module.bias.copy_(layer.bias.double() * scale * 2.0**-ACTIVATION_BITS)
