"""Test images and tiny weights files shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test image with some texture (not just noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6)
        planes.append(128 + 90 * np.sin(fx * xx + phase) * np.cos(fy * yy + c))
    image = np.stack(planes, axis=2) + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with some texture and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 90 * np.sin(xx / (7 + 3 * c) + yy / (11 + c) + rng.uniform(0, 6)) + rng.normal(0, 6, (height, width))
        for c in range(3)
    ]
    return np.clip(np.stack(planes, axis=2), 0, 255).astype(np.uint8)


def tiny_weights(path: Path, seed: int) -> Path:
    """A frozen, untrained N=8, M=12 joint model written to ``path`` (release 0): a decoder in milliseconds."""
    import torch

    from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
    from pillow_jac.training.freeze import freeze
    from pillow_jac.weights import save_weights

    torch.manual_seed(seed)
    save_weights(path, *freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=0))
    return path
