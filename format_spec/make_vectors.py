"""Regenerate the test vectors: ``python format_spec/make_vectors.py``.

Each vector is a tiny ``.jac`` file made from a committed source PNG, plus the SHA-256 of its
decoded latents (exact on every machine, CODING.md section 7) and of its decoded pixels, and the
decoded pixels as a PNG (g_s is float: other machines may differ by one level, SPEC.md section 1).
Run it whenever the weights or the format change (SPEC.md section 9).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pillow_jac import codec, container

HERE = Path(__file__).resolve().parent / "vectors"
#: name -> (height, width, mode, quality)
VECTORS = {
    "rgb-24x40-q1": (24, 40, "RGB", 1.0),
    "rgb-70x33-q4.5": (70, 33, "RGB", 4.5),
    "rgba-16x16-q8": (16, 16, "RGBA", 8.0),
    "gray-1x1-q3": (1, 1, "L", 3.0),
}


def source_image(height: int, width: int, mode: str, seed: int) -> Image.Image:
    """A deterministic smooth, textured image (the vector's input)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 100 * np.sin(rng.uniform(0.05, 0.3) * xx + c) * np.cos(rng.uniform(0.05, 0.3) * yy) for c in range(3)
    ]
    rgb = np.clip(np.stack(planes, 2) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(Image.fromarray((xx * 255 / max(1, width - 1)).astype(np.uint8)))
    return image.convert(mode)


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes."""
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()


def symbols_digest(data: bytes) -> str:
    """SHA-256 over the decoded integer latents (z then y, int64)."""
    z_hat, y_hat = codec.decode_symbols(data)
    return hashlib.sha256(((digest(z_hat) if z_hat is not None else "") + digest(y_hat)).encode()).hexdigest()


def main() -> None:
    """Write every vector and ``vectors.json``."""
    HERE.mkdir(exist_ok=True)
    table = {}
    for i, (name, (height, width, mode, quality)) in enumerate(VECTORS.items()):
        source = HERE / f"{name}.source.png"
        if not source.exists():
            source_image(height, width, mode, seed=i).save(source)
        with Image.open(source) as im:
            data = codec.encode(np.asarray(im), quality)
        (HERE / f"{name}.jac").write_bytes(data)
        pixels = codec.decode(data)
        Image.fromarray(pixels).save(HERE / f"{name}.decoded.png")
        header = container.parse(data).header
        table[name] = {
            "file": f"{name}.jac",
            "source": source.name,
            "decoded": f"{name}.decoded.png",
            "mode": mode,
            "size": [width, height],
            "quality": quality,
            "model_id": header.model_id,
            "weights_hash": header.weights_hash.hex(),
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "symbols_sha256": symbols_digest(data),
            "pixels_sha256": digest(pixels),
        }
    (HERE / "vectors.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote {len(table)} vectors to {HERE}")


if __name__ == "__main__":
    main()
