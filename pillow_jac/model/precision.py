"""Whether bf16 autocast speeds up the float networks on a device, or slows them down.

The effort search (:mod:`pillow_jac.model.refine`), the study's training and the CPU trainer run the
float networks under bf16 autocast where that is faster: on a CPU with native bf16 instructions
(AVX512-BF16 or AMX, e.g. Intel Sapphire Rapids, AMD Zen 4): a training step of N = 128/M = 192 took
0.24-0.33 s against 0.55 s in float32 on such a CPU, and the two forward passes agree to 0.001 bpp
and 0.01 dB (weights/MODEL_CARD.md). On a CPU
without them (AVX2 only: most desktop CPUs, AMD Zen 2/3), oneDNN has no bf16 convolution and torch
falls back to slow kernels: a 5x5 convolution took 1.37 s under bf16 autocast against 0.20 s in
float32, and an effort-1 encode of 768x512 took 343 s against 1.06 s at effort 0. There the networks
run in float32.

On CUDA, bf16 is used where the device supports it (``torch.cuda.is_bf16_supported``).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["bf16_autocast_pays"]


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles, as torch's own CPU capability checks report them."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except (RuntimeError, AttributeError):
            continue
    return False


def bf16_autocast_pays(device: torch.device | str) -> bool:
    """True where bf16 autocast makes the float networks faster on ``device``; False where float32 is faster.

    Example:
        >>> bf16_autocast_pays("meta")
        False
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False
