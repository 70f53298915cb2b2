"""Measure one trained run of the study with real files (docs/study.md).

The run's weight average is frozen into a decoder generation (integer networks, tables, manifest:
:func:`pillow_jac.training.freeze.freeze`); every image of each evaluation set is encoded at the
budget's qualities and decoded again, and the file's z and y streams are measured separately. The
model's size and work come from the model itself: parameters, and multiply-adds per pixel of the
encoder (g_a, h_a) and of the decoder (h_s, context model, g_ep, g_s).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import codec, container
from ..bench import metrics
from ..bench.codecs import get_codec, list_images, load_rgb
from ..engine import load_model
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig, count_parameters
from ..training.freeze import freeze
from ..weights import save_weights

__all__ = ["freeze_run", "measure_images", "measure_anchors", "model_cost", "time_codec", "DECODER_PARTS"]

#: the networks a decoder runs (the rest, g_a and h_a, only the encoder)
DECODER_PARTS = ("h_s", "context", "entropy_parameters", "g_s")


def freeze_run(trained: Path, out: Path) -> Path:
    """Freeze a run's ``ema.safetensors`` into the weights file ``out`` (a release-1 generation)."""
    save_weights(out, *freeze(load_model(trained), release=1, notes={"study": trained.parent.name}))
    return out


def measure_images(weights: Path, images: list[Path], qualities: tuple[float, ...]) -> dict[str, list[dict]]:
    """Per image, per quality: file bytes, bpp of the whole file and of its z and y streams, and PSNR."""
    out = {}
    for path in images:
        image = load_rgb(path)
        h, w = image.shape[:2]
        points = []
        for quality in qualities:
            data = codec.encode(image, quality=quality, weights=weights)
            parsed = container.parse(data)
            decoded = codec.decode(parsed, weights=weights)
            points.append(
                {
                    "param": quality,
                    "bytes": len(data),
                    "bpp": metrics.bits_per_pixel(len(data), h, w),
                    "z_bpp": metrics.bits_per_pixel(len(parsed.z_stream), h, w),
                    "y_bpp": metrics.bits_per_pixel(len(parsed.y_stream), h, w),
                    "psnr": metrics.psnr(image, decoded),
                }
            )
        out[path.stem] = points
    return out


def measure_anchors(images: list[Path], names: tuple[str, ...] = ("jpeg420", "webp")) -> dict[str, dict]:
    """The JPEG and WebP curves of the same images, measured with Pillow: ``{codec: {image: [points]}}``."""
    out = {}
    for name in names:
        adapter = get_codec(name)
        per_image = {}
        for path in images:
            image = load_rgb(path)
            h, w = image.shape[:2]
            points = []
            for parameter in adapter.ladder:
                data = adapter.encode(image, parameter)
                decoded = adapter.decode(data)
                bpp = metrics.bits_per_pixel(len(data), h, w)
                points.append({"param": float(parameter), "bpp": bpp, "psnr": metrics.psnr(image, decoded)})
            per_image[path.stem] = points
        out[name] = {"label": adapter.label, "per_image": per_image}
    return out


def model_cost(config: ModelConfig) -> dict[str, float]:
    """Parameters, and multiply-adds per input pixel of the encoder's and the decoder's networks.

    Forward hooks count each convolution (``C_in * k * k`` per output value, a transposed one
    ``C_out * k * k`` per input value, the masked context convolution at its causal taps only, as the
    decoder runs it) and GDN's ``C x C`` mixing, on one 64x64 input; element-wise work is left out.
    """
    from ..model.layers import GDN, MaskedConv2d

    per_part: dict[str, float] = {}

    def hook(part: str):
        def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, torch.nn.ConvTranspose2d):
                macs = inputs[0].numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, MaskedConv2d):
                macs = output.numel() * module.in_channels * int(module.mask[0, 0].sum())
            elif isinstance(module, torch.nn.Conv2d):
                macs = output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, GDN):
                macs = inputs[0].numel() * inputs[0].shape[1]
            else:
                return
            per_part[part] = per_part.get(part, 0) + macs

        return count

    side = JointAutoregressiveHierarchicalPrior.ALIGN
    state = torch.get_rng_state()
    try:
        model = JointAutoregressiveHierarchicalPrior(config).eval()
        for part, network in model.named_children():
            for module in network.modules():
                module.register_forward_hook(hook(part))
        with torch.no_grad():
            model(torch.rand(1, 3, side, side), torch.tensor([4.0]))
    finally:
        torch.set_rng_state(state)
    pixels = side * side
    decoder = sum(v for k, v in per_part.items() if k in DECODER_PARTS) / pixels
    encoder = sum(v for k, v in per_part.items() if k in ("g_a", "h_a")) / pixels
    return {"parameters": count_parameters(model), "encoder_macs_per_pixel": encoder, "decoder_macs_per_pixel": decoder}


def time_codec(weights: Path, image: np.ndarray, quality: float = 4.0, repeats: int = 3, threads: int = 2) -> dict:
    """Median encode and decode seconds of ``image`` with ``threads`` torch threads (after one warm-up)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = codec.encode(image, quality=quality, weights=weights)
        codec.decode(data, weights=weights)
        encode_s, decode_s = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = codec.encode(image, quality=quality, weights=weights)
            t1 = time.perf_counter()
            codec.decode(data, weights=weights)
            encode_s.append(t1 - t0)
            decode_s.append(time.perf_counter() - t1)
    finally:
        torch.set_num_threads(saved)
    return {"encode_s": float(np.median(encode_s)), "decode_s": float(np.median(decode_s)), "threads": threads}


def evaluation_sets(kodak: Path | None, urban: Path | None) -> dict[str, list[Path]]:
    """The evaluation images by set name (sets whose folder is missing are left out)."""
    return {name: list_images(folder) for name, folder in (("kodak", kodak), ("urban20", urban)) if folder}
