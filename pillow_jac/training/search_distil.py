"""Distil the effort search into the encoder: train g_a towards the latents the search picks.

``python -m pillow_jac.training.search_distil targets --weights W --data ../shared/data/train --out runs/distil
--crops 2048 --effort 2`` refines random training crops with the effort search
(:func:`pillow_jac.model.refine.refine_latents`) and stores, per crop, the pixels, the quality, the
search's integer latents ``(y*, z*)`` and g_a's own rounding. ``... train --weights W --data D --out
runs/distil --steps N`` (``--targets`` reads them from another folder) then fine-tunes g_a, h_a and
the forward gains (the encoder side of :mod:`pillow_jac.training.encoder_tune`, decoder frozen) so
that ``g_a(x) * gain(q)`` rounds to ``y*`` and ``h_a`` to ``z*``, scoring real files on held-out
training images against the untuned encoder.

The search closes part of the amortisation gap of g_a for one image (Cremer et al., ICML 2018; Yang,
Bamler & Mandt, NeurIPS 2020); distillation asks whether a systematic part of what it changes can be
learnt, so that every image gets it at effort 0's cost. The loss on a latent is either the squared
error to the target (``--margin -1``) or a hinge that counts only a latent that would round to
another integer than its target: ``max(0, |v - target| - 0.5 + margin)^2``. A result ships as an
encoder update (``python -m pillow_jac.training.release CKPT --encoder-update``): same decoder, same
hash. Kodak and urban20 are never read; the held-out images are the same seeded draw as
encoder_tune's and never become targets.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..constants import ALIGN, EFFORT_ITERATIONS, QUALITY_DENOMINATOR, QUALITY_MAX, QUALITY_MIN
from ..model.precision import bf16_autocast_pays
from .encoder_update import (
    bd_against,
    copy_atomically,
    encoder_state,
    holdout_split,
    is_encoder_key,
    refuse_evaluation_data,
    score_real,
    tuned_weights,
    update_average,
    weights_identity,
)

__all__ = ["make_targets", "load_targets", "distillation_loss", "agreement", "main"]

#: crops per targets file
SHARD = 64


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("targets-*.pt"))


def _quality(rng: np.random.Generator) -> float:
    """A quality uniform over the ladder, on the container's grid of stored qualities."""
    return round(rng.uniform(QUALITY_MIN, QUALITY_MAX) * QUALITY_DENOMINATOR) / QUALITY_DENOMINATOR


def make_targets(
    model,
    images: list[np.ndarray],
    out: Path,
    crops: int,
    effort: int,
    crop: int = 256,
    seed: int = 0,
    held_out: tuple[str, ...] = (),
    weights: dict[str, str] | None = None,
) -> int:
    """Refine ``crops`` random crops of ``images`` and store them in ``out/targets-NNN.pt``; returns the count.

    Every file records its setup (effort, crop, seed, the names of the held-out images that
    ``images`` excludes, and ``weights``: the decoder and encoder hashes of the model's weights file,
    :func:`~pillow_jac.training.encoder_update.weights_identity`); files already in ``out`` must have
    the same setup. Full files are kept and the draw continues after them (a shorter last file is made
    again), so an interrupted or extended run writes what one uninterrupted run would.
    """
    from ..model.refine import refine_latents
    from .data import CropSampler

    if crop % ALIGN:
        raise ValueError(f"crop must be a multiple of {ALIGN} (the latent grid of the codec), got {crop}")
    setup = {"effort": effort, "crop": crop, "seed": seed, "held_out": sorted(held_out), "weights": weights}
    out.mkdir(parents=True, exist_ok=True)
    counts = {}  # crops per file, by file name
    for path in _shards(out):
        shard = torch.load(path)
        if {"weights": None, **shard["setup"]} != setup:
            raise ValueError(f"{path} was made with {shard['setup']}, not {setup}: choose another folder")
        counts[path.name] = len(shard["quality"])
    done = sum(n == SHARD for n in counts.values())
    sampler, rng = CropSampler(images, crop, seed=seed), np.random.default_rng([seed, 1])
    for _ in range(done * SHARD):  # replay the draws of the full files already written
        sampler.batch_uint8(1)
        _quality(rng)
    for index in range(done, -(-crops // SHARD)):
        rows = {"x": [], "quality": [], "y": [], "z": [], "y0": []}
        for _ in range(min(SHARD, crops - index * SHARD)):
            pixels, quality = sampler.batch_uint8(1), _quality(rng)
            x = pixels.permute(0, 3, 1, 2).float().div(255).contiguous()
            q = torch.tensor([quality], dtype=torch.float64)
            with torch.no_grad():
                y = model.g_a(x) * model.gains(q)
                z = model.h_a(y)
            y_star, z_star = refine_latents(
                model, lambda a, b, c, d, x=x: x[:, :, a:b, c:d], y.clone(), z.clone(), quality, (crop, crop),
                EFFORT_ITERATIONS[effort],
            )  # fmt: skip
            for key, value in (("x", pixels[0]), ("y", y_star[0]), ("z", z_star[0]), ("y0", torch.round(y[0]))):
                rows[key].append(value.to(torch.uint8 if key == "x" else torch.int16))
            rows["quality"].append(quality)
        shard = {k: torch.tensor(v, dtype=torch.float64) if k == "quality" else torch.stack(v) for k, v in rows.items()}
        shard["setup"] = setup
        path = out / f"targets-{index:03d}.pt"
        torch.save(shard, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # a file is whole or absent
        counts[path.name] = len(shard["quality"])
        moved = float((shard["y"] != shard["y0"]).float().mean())
        print(f"targets {index + 1}/{-(-crops // SHARD)}: the search moved {moved:.2%} of y", flush=True)
    return sum(counts.values())


def load_targets(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """``(training, check, setup)``: every targets file of ``folder`` but the first, the first, their setup."""
    shards = [torch.load(p) for p in _shards(folder)]
    if len(shards) < 2:
        raise FileNotFoundError(f"{folder}: run 'targets' first (at least {SHARD + 1} crops: one file is kept apart)")
    keys = ("x", "quality", "y", "z")
    training = {k: torch.cat([s[k] for s in shards[1:]]) for k in keys}
    return training, {k: shards[0][k] for k in keys}, shards[0]["setup"]


def _encode(model, pixels: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = pixels.permute(0, 3, 1, 2).float().div(255)
    y = model.g_a(x) * model.gains(quality).to(x.dtype)
    return y, model.h_a(y)


def distillation_loss(value: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean squared error to ``target`` (``margin < 0``), or the hinge on rounding to another integer.

    Example:
        >>> import torch
        >>> t = torch.tensor([1.0, 1.0])
        >>> hinge = distillation_loss(torch.tensor([1.3, 1.7]), t, 0.0)  # only 1.7 rounds to another integer
        >>> round(float(hinge), 4), round(float(distillation_loss(t + 0.3, t, -1)), 4)
        (0.02, 0.09)
    """
    error = (value.float() - target.float()).abs()
    if margin < 0:
        return error.pow(2).mean()
    return (error - 0.5 + margin).clamp(min=0).pow(2).mean()


@torch.no_grad()
def agreement(model, targets: dict[str, torch.Tensor]) -> float:
    """Share of the latents y that the encoder rounds to the search's choice."""
    y, _ = _encode(model, targets["x"], targets["quality"])
    return float((torch.round(y) == targets["y"].float()).float().mean())


def train(args: argparse.Namespace) -> float | None:
    """Fine-tune towards the targets; returns the best BD-rate (percent) against the untuned encoder.

    None when no scored step beat the untuned encoder (then ``--out`` holds no ``best.safetensors``).
    The encoder runs under bf16 autocast where it pays, as the search itself does; it is scored in float32,
    with real files.
    """
    from ..engine import build_model
    from ..weights import load_weights, save_weights
    from .data import load_rgb

    data, check, setup = load_targets(args.targets or args.out)
    held_paths = _held_out(args)
    if setup["held_out"] != sorted(p.name for p in held_paths):
        raise ValueError("the targets were made with other held-out images than --data/--holdout/--holdout-seed give")
    base_tensors, base_metadata = load_weights(args.weights)
    made_with, given = setup.get("weights"), weights_identity(base_metadata)
    if made_with is not None and made_with != given:
        raise ValueError(
            f"the targets were made with other weights ({made_with}) than --weights {args.weights} ({given})"
        )
    torch.manual_seed(args.seed)
    model = build_model(base_tensors, base_metadata)
    for name, p in model.named_parameters():
        p.requires_grad_(is_encoder_key(name))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "best.safetensors").unlink(missing_ok=True)  # only this run's best is kept
    held = [load_rgb(p, 512) for p in held_paths[: args.score_images]]
    baseline = score_real(args.weights, held)
    average, best = encoder_state(model), None
    generator, start, running = torch.Generator().manual_seed(args.seed), time.time(), 0.0
    with open(args.out / "distil.csv", "w", newline="") as log:  # one row per scoring, written as it comes
        rows = csv.writer(log)
        agreed = agreement(model, check)
        rows.writerows([["step", "wall_s", "loss", "bd_rate", "y_agreement"], [0, 0.0, "", 0.0, agreed]])
        print(f"{len(data['quality'])} training crops; y agreement before {agreed:.4%}", flush=True)
        for step in range(1, args.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, step / 50)
            pick = torch.randint(len(data["quality"]), (args.batch,), generator=generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast_pays("cpu")):
                y, z = _encode(model, data["x"][pick], data["quality"][pick])
            loss = distillation_loss(y, data["y"][pick], args.margin)
            loss = loss + distillation_loss(z, data["z"][pick], args.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            update_average(average, model, args.ema)
            running = float(loss.detach()) if step == 1 else 0.95 * running + 0.05 * float(loss.detach())
            if step % args.eval_every and step != args.steps:
                continue
            live = encoder_state(model)
            model.load_state_dict(average, strict=False)
            notes = {"encoder_update": f"g_a, h_a, log_gain distilled from the effort search, {step} steps"}
            path = args.out / "last.safetensors"
            save_weights(path, *tuned_weights(base_tensors, base_metadata, model, notes))
            scored = score_real(path, held)
            bd = bd_against(baseline, scored)
            agreed = agreement(model, check)
            model.load_state_dict(live, strict=False)
            rows.writerow([step, round(time.time() - start, 1), round(running, 5), round(bd, 4), agreed])
            log.flush()
            if bd < 0 and (best is None or bd < best):
                best = bd
                copy_atomically(path, args.out / "best.safetensors")
            print(f"step {step}: loss {running:.4f} BD-rate {bd:+.3f}% y agreement {agreed:.4%}", flush=True)
    return best


def _held_out(args: argparse.Namespace) -> list[Path]:
    from .data import list_images

    try:
        return holdout_split(list_images(args.data), args.holdout, args.holdout_seed)[1]
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"--data {args.data}: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("targets", "train"))
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="training images (never Kodak or urban20)")
    p.add_argument("--out", type=Path, default=Path("runs/distil"))
    p.add_argument("--targets", type=Path, help="train: the folder 'targets' wrote (default: --out)")
    p.add_argument("--crops", type=int, default=2048, help="targets: crops to refine")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--effort", type=int, default=2, help="targets: the search that picks the latents")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--margin", type=float, default=0.2, help="hinge margin; negative: squared error")
    p.add_argument("--ema", type=float, default=0.98, help="decay of the scored average of the encoder weights")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--holdout", type=int, default=24, help="as encoder_tune: training images never used here")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--score-images", type=int, default=12, help="held-out images scored with real files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    refuse_evaluation_data(p, args.data)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run ``targets`` or ``train``."""
    from ..engine import build_model
    from ..weights import load_weights
    from .data import list_images, load_rgb

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "targets":
        held = _held_out(args)
        training = [p for p in list_images(args.data) if p not in held]
        tensors, metadata = load_weights(args.weights)
        model = build_model(tensors, metadata).eval()
        images = [load_rgb(p, 512) for p in training]
        held_out = tuple(p.name for p in held)
        count = make_targets(
            model, images, args.out, args.crops, args.effort, args.crop, args.seed, held_out, weights_identity(metadata)
        )
        print(f"{count} crops in {args.out}", flush=True)
    else:
        best = train(args)
        print("no scored step beat the untuned encoder" if best is None else f"best BD-rate {best:+.3f}%", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
