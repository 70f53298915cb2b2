"""Test images shared by several test modules."""

from __future__ import annotations

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
