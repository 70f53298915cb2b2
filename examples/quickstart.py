"""Quickstart: compress the bundled sample photo to JAC and measure the result.

Run from the repository root:  python examples/quickstart.py
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_jac  # noqa: F401  (importing registers the .jac format with Pillow)

SAMPLE = Path(__file__).with_name("sample.png")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


original = Image.open(SAMPLE).convert("RGB")
width, height = original.size

buffer = io.BytesIO()
original.save(buffer, format="JAC", quality=4)  # quality: 1 (smallest) .. 8 (best)
data = buffer.getvalue()

decoded = Image.open(io.BytesIO(data))
print(f"sample:  {SAMPLE.name}, {width}x{height} {original.mode}, PNG {SAMPLE.stat().st_size} bytes")
print(f"JAC:     {len(data)} bytes at quality {decoded.info['jac_quality']:g} (model {decoded.info['model_id']})")
print(f"bpp:     {8 * len(data) / (width * height):.3f}")
print(f"PSNR:    {psnr(np.asarray(original), np.asarray(decoded)):.2f} dB")
