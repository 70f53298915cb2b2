"""Kodak figures for the model card: real bitstreams against the float model's estimate.

``python -m pillow_jac.training.evaluate --qualities 1,4,8`` encodes every image of ``--data``
(default: ``../shared/data/kodak``) with the shipped weights and reports, per quality, the mean
bpp (from the real file size) and PSNR (8-bit RGB), next to the float model's rate estimate
(``-log2`` of the float likelihoods of the same rounded latents) and the float model's PSNR. The
difference between the two rates is the cost of integerisation, table quantisation and coding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .. import codec
from ..bench.metrics import json_text, machine_description, model_record, portable_path, psnr
from ..constants import ALIGN
from ..engine import get_engine
from .data import list_images, load_rgb
from .train import DEFAULT_KODAK


@torch.no_grad()
def float_estimate(model, image: np.ndarray, quality: float) -> tuple[float, float]:
    """(bpp, PSNR) of the float model on one image, rate from likelihoods of rounded latents."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    xp = torch.nn.functional.pad(x, (0, (-w) % ALIGN, 0, (-h) % ALIGN), mode="replicate")
    out = model.eval()(xp, torch.tensor([quality]))
    bits = sum(float(-out[k].log2().sum()) for k in ("y_likelihoods", "z_likelihoods") if k in out)
    x_hat = (out["x_hat"][0, :, :h, :w].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return bits / (h * w), psnr(image, x_hat)


def evaluate(paths: list[Path], qualities: list[float], weights=None, with_float: bool = True) -> list[dict]:
    """One row per quality with the mean figures over ``paths``."""
    engine = get_engine("cpu", weights)
    rows = []
    images = [load_rgb(p) for p in paths]
    for q in qualities:
        acc = {"bpp": 0.0, "psnr": 0.0, "float_bpp": 0.0, "float_psnr": 0.0, "encode_s": 0.0, "decode_s": 0.0}
        for image in images:
            t0 = time.perf_counter()
            data = codec.encode(image, q, weights=weights)
            t1 = time.perf_counter()
            decoded = codec.decode(data, weights=weights)
            t2 = time.perf_counter()
            acc["bpp"] += len(data) * 8 / (image.shape[0] * image.shape[1])
            acc["psnr"] += psnr(image, decoded)
            acc["encode_s"] += t1 - t0
            acc["decode_s"] += t2 - t1
            if with_float:
                fb, fp = float_estimate(engine.model.float(), image, q)
                acc["float_bpp"] += fb
                acc["float_psnr"] += fp
        rows.append({"quality": q, **{k: v / len(images) for k, v in acc.items()}})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--qualities", default="1,4,8")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = list_images(args.data)
    if args.limit:
        paths = paths[: args.limit]
    rows = evaluate(paths, [float(q) for q in args.qualities.split(",")], args.weights)
    print(f"{len(paths)} images from {portable_path(args.data)}")
    print(
        "| quality | bpp (file) | PSNR dB | float-model bpp | float-model PSNR | rate overhead | encode s | decode s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        overhead = 100 * (r["bpp"] / r["float_bpp"] - 1) if r["float_bpp"] else float("nan")
        print(
            f"| {r['quality']:g} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['float_bpp']:.4f} | {r['float_psnr']:.2f} "
            f"| {overhead:+.2f}% | {r['encode_s']:.2f} | {r['decode_s']:.2f} |"
        )
    if args.json:
        meta = provenance(args.data, paths, args.weights, args.threads)
        args.json.write_text(json_text({"meta": meta, "rows": rows}) + "\n")


def provenance(data: Path, paths: list[Path], weights: Path | None, threads: int) -> dict:
    """What the rows of :func:`evaluate` were measured on: the images, the model (its hashes) and the machine."""
    engine = get_engine("cpu", weights)
    return {
        "data": portable_path(data),
        "images": [p.name for p in paths],
        "model": model_record(engine),
        "threads": threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_description(),
    }


if __name__ == "__main__":
    main()
