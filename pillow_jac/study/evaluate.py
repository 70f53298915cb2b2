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
from ..bench.codecs import get_codec
from ..bench.images import list_images, load_rgb
from ..engine import load_model
from ..model.complexity import macs_per_pixel_by_network
from ..model.layers import MaskedConv2d
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig, count_parameters
from ..training.freeze import freeze
from ..weights import save_weights

__all__ = ["freeze_run", "measure_images", "measure_anchors", "model_cost", "time_codec", "DECODER_PARTS"]

#: the networks a decoder runs, and those only the encoder runs
DECODER_PARTS = ("h_s", "context", "entropy_parameters", "g_s")
ENCODER_PARTS = ("g_a", "h_a")


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

    Both count the masked context convolution at its causal taps only, as the decoder runs it: its weights
    at the other taps are stored but always multiplied by 0 (``stored_parameters`` counts them too). The
    multiply-adds are :func:`~pillow_jac.model.complexity.macs_per_pixel_by_network`'s.
    """
    per_network = macs_per_pixel_by_network(config, causal_taps_only=True)
    with torch.device("meta"):  # shapes only: no memory, and the random state is left untouched
        model = JointAutoregressiveHierarchicalPrior(config)
    stored = count_parameters(model)
    masked_out = sum(
        m.weight.numel() - m.out_channels * m.in_channels * m.taps
        for m in model.modules()
        if isinstance(m, MaskedConv2d)
    )
    return {
        "parameters": stored - masked_out,
        "stored_parameters": stored,
        "encoder_macs_per_pixel": sum(v for k, v in per_network.items() if k in ENCODER_PARTS),
        "decoder_macs_per_pixel": sum(v for k, v in per_network.items() if k in DECODER_PARTS),
    }


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
    """The evaluation images by set name (a set given as None, or whose folder is missing, is left out)."""
    sets = (("kodak", kodak), ("urban20", urban))
    return {name: list_images(folder) for name, folder in sets if folder is not None and folder.is_dir()}
