"""Multiply-adds per input pixel of a model's networks, counted with forward hooks.

Every convolution counts ``C_in * k * k`` per output value (a transposed one ``C_out * k * k`` per
input value) and GDN its ``C x C`` mixing per value, on one 64x64 input; each network's work is
proportional to the pixels, so the figure holds at any size. Element-wise work (likelihoods, gains)
is left out. Used for the GPU session's share of peak (:mod:`pillow_jac.training.gpu_report`) and
the study's cost table (:mod:`pillow_jac.study.evaluate`).
"""

from __future__ import annotations

import torch

from .layers import GDN, MaskedConv2d
from .mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig

__all__ = ["macs_per_pixel_by_network"]


def macs_per_pixel_by_network(config: ModelConfig, causal_taps_only: bool = False) -> dict[str, float]:
    """Multiply-adds per input pixel of each network of ``config``'s model (``g_a``, ``h_s``, ...).

    ``causal_taps_only`` counts the masked context convolution at its causal taps, as the decoder
    runs it; otherwise at its full ``k x k`` window, as training computes it. Random states are left
    untouched.

    Example:
        >>> parts = macs_per_pixel_by_network(ModelConfig(N=8, M=12))
        >>> round(sum(parts.values()), 2), sorted(parts)[:3]
        (680.75, ['context', 'entropy_parameters', 'g_a'])
    """
    per_network: dict[str, float] = {}

    def hook(name: str):
        def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, torch.nn.ConvTranspose2d):
                kernel = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs = inputs[0].numel() * kernel
            elif isinstance(module, MaskedConv2d) and causal_taps_only:
                macs = output.numel() * module.in_channels * module.taps
            elif isinstance(module, torch.nn.Conv2d):
                kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs = output.numel() * kernel
            elif isinstance(module, GDN):
                macs = inputs[0].numel() * inputs[0].shape[1]
            else:
                return
            per_network[name] = per_network.get(name, 0) + macs

        return count

    side = JointAutoregressiveHierarchicalPrior.ALIGN
    state = torch.get_rng_state()
    try:
        model = JointAutoregressiveHierarchicalPrior(config).eval()
        for name, network in model.named_children():
            for module in network.modules():
                module.register_forward_hook(hook(name))
        with torch.no_grad():
            model(torch.rand(1, 3, side, side), torch.tensor([4.0]))
    finally:
        torch.set_rng_state(state)
    return {name: macs / (side * side) for name, macs in per_network.items()}
