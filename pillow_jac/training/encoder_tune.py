"""Fine-tune the encoder against the frozen decoder, with the rate the coder really charges.

``python -m pillow_jac.training.encoder_tune --weights weights/mbt2018-n128m192.safetensors
--data ../shared/data/train --out runs/encoder_tune --steps N --batch B --crop 256 --lr LR --threads 2``

Only the encoder side changes: g_a, h_a and the forward gains ``log_gain`` (Cui et al. 2021).
g_s, the inverse gains, h_s, the context model, g_ep, the z density and the coding tables are the
decoder (CODING.md sections 1-3) and stay bit-identical, so every file the tuned encoder writes
decodes with the shipped decoder. The encoder runs with *hard* rounding ``y_hat = round(y)``,
``z_hat = round(z)`` and straight-through gradients, in float32, so training sees exactly the
latents the codec writes: the train-test mismatch of additive-noise training that Guo et al.,
"Soft then Hard: Rethinking the Quantization in Neural Image Compression" (ICML 2021), close with
a hard-quantisation stage; here it is the encoder that is tuned, against a fixed decoder.

The rate term is the coder's own (:mod:`pillow_jac.training.coded_rate`), not the float model's, which
an encoder trained against it learns to exploit (weights/MODEL_CARD.md, "Encoder fine-tune").

The loss is ``lambda * 255^2 * MSE + bpp`` per crop (paper eq. 2) over stratified qualities 1..8 on the
model's own lambda ladder. A fixed, seeded list of training images is held out: every
``--eval-every`` steps (or ``--eval-minutes``) the current encoder is written as a complete weights
file and scored with real bitstreams on them (``codec.encode`` bytes, decoded PSNR) at qualities
1, 3, 5 and 8; the best by BD-rate against the untuned encoder is kept as ``best.safetensors``.
Kodak and urban20 are never read. SIGTERM or Ctrl-C finishes the step, checkpoints and exits;
``--resume`` continues a run exactly.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..model.objective import quality_lambda
from .coded_rate import CoderRate, coded_forward, coded_loss, estimate_image_bits
from .encoder_update import (
    VALIDATION_QUALITIES,
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
from .stop_signals import exit_status, stop_on_signals

__all__ = ["main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="the shipped weights file whose decoder is kept")
    p.add_argument("--data", type=Path, required=True, help="training images (never Kodak or urban20)")
    p.add_argument("--out", type=Path, default=Path("runs/encoder_tune"))
    p.add_argument("--steps", type=int, default=10**6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay-steps", type=int, default=0, help="cosine decay to lr/10 over this many steps (0: none)")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument(
        "--ema",
        type=float,
        default=0.99,
        help="decay of the moving average of the encoder weights that validation scores and saves (0: none)",
    )
    p.add_argument(
        "--rate-gradient", choices=("noise", "ste"), default="noise", help="see coded_forward's rate_gradient"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--holdout", type=int, default=24, help="training images held out for validation")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500, help="validate every this many steps")
    p.add_argument("--eval-minutes", type=float, default=12.0, help="... or when this many minutes have passed")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = p.parse_args(argv)
    refuse_evaluation_data(p, args.data)
    return args


def _learning_rate(args: argparse.Namespace, step: int) -> float:
    lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    if args.decay_steps:
        t = min(1.0, step / args.decay_steps)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def images_digest(paths: list[Path]) -> str:
    """A digest of the images ``paths`` name, by file name and size: the same images in a moved folder match."""
    listing = "".join(f"{p.name}\t{p.stat().st_size}\n" for p in paths)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _shown(run: dict, keys: list[str]) -> list[str]:
    """``key=value`` of the checkpoint's options, the held-out images as their count and first names."""
    shown = []
    for k in keys:
        v = run[k]
        shown.append(f"{k}={len(v)} images from {', '.join(v[:3])}" if k == "held_out" else f"{k}={v}")
    return shown


def main(argv: list[str] | None = None) -> int:
    """Tune until ``--steps``, validating, keeping the best and checkpointing as it goes.

    Returns the exit status: 0, or where SIGTERM or Ctrl-C ended the run before ``--steps`` (a checkpoint
    saved) 128 + the signal's number.
    """
    # the whole codec is imported now, so a run of many hours uses one version of it throughout
    from .. import codec, container, engine, entropy_coding, latent_coding, stripes  # noqa: F401
    from ..bench import metrics  # noqa: F401
    from ..engine import load_model
    from ..weights import load_weights, save_weights
    from .data import CropSampler, list_images, load_rgb, to_model_input
    from .train import stratified_qualities

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ckpt_path = args.out / "checkpoint.pt"
    if ckpt_path.exists() and not args.resume:
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    if args.resume and not ckpt_path.exists():  # a mistyped --out would start hours of tuning again from step 0
        raise SystemExit(f"--resume: {ckpt_path} does not exist (start without --resume, or name the run's --out)")
    args.out.mkdir(parents=True, exist_ok=True)

    # ... with what it imports on first use: one small image through the encoder and decoder
    codec.decode(codec.encode(np.zeros((16, 16, 3), np.uint8), 4.0, weights=args.weights), weights=args.weights)
    base_tensors, base_metadata = load_weights(args.weights)
    model = load_model(args.weights).to(memory_format=torch.channels_last)
    rate = CoderRate(base_tensors, base_metadata)
    base_weights = weights_identity(base_metadata)  # what a resume must use

    def estimate(tuned: JointAutoregressiveHierarchicalPrior):  # the training-time bits of one image
        return lambda image, quality: sum(estimate_image_bits(tuned, rate, image, quality).values())

    for name, p in model.named_parameters():
        p.requires_grad_(is_encoder_key(name))
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not is_encoder_key(k)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)

    try:
        train_paths, held_paths = holdout_split(list_images(args.data), args.holdout, args.holdout_seed)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"--data {args.data}: {exc}") from None
    # what a resumed run must share with the run it continues: the images and the options that shape the steps
    # (the training images by name and size, wherever their folder lies now)
    shaping = {
        "training_images": images_digest(train_paths), "held_out": [p.name for p in held_paths],
        **{k: getattr(args, k) for k in ("batch", "crop", "lr", "warmup", "decay_steps", "clip", "ema",
                                         "rate_gradient", "seed")},
    }  # fmt: skip
    ckpt = None
    if args.resume:  # checked before the images are loaded
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("weights", base_weights) != base_weights:
            raise SystemExit(
                f"{ckpt_path} tunes the encoder of other weights ({ckpt['weights']}) than --weights {args.weights} "
                f"({base_weights}): resume with those weights, or choose another --out"
            )
        # a checkpoint from before the images were named by digest names its folder instead
        compared = {**shaping, "data": str(args.data.resolve())}
        changed = sorted(k for k, v in ckpt.get("run", shaping).items() if compared.get(k) != v)
        if changed:
            raise SystemExit(
                f"{ckpt_path} was trained with other {', '.join(changed)} ({', '.join(_shown(ckpt['run'], changed))}): "
                "resume with the same options and data, or choose another --out"
            )
    held = [load_rgb(p, 512) for p in held_paths]
    t0 = time.time()
    sampler = CropSampler([load_rgb(p, 512) for p in train_paths], args.crop, seed=args.seed)
    print(f"{len(sampler.images)} training images loaded in {time.time() - t0:.0f} s, {len(held)} held out", flush=True)

    step, best_bd, best_step, baseline = 0, 0.0, 0, None
    # Polyak averaging of the encoder weights: small batches make each step noisy, and the average
    # of the last ~1 / (1 - decay) steps is what is scored and saved
    average = encoder_state(model) if args.ema else None
    if ckpt is not None:
        model.load_state_dict(ckpt["encoder"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.set_state(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, best_bd, best_step, baseline = ckpt["step"], ckpt["best_bd"], ckpt["best_step"], ckpt["baseline"]
        average = ckpt.get("average") or average
        print(f"resumed from {ckpt_path} at step {step} (best {best_bd:+.3f}% at step {best_step})", flush=True)
    (args.out / "holdout.txt").write_text("".join(f"{p.name}\n" for p in held_paths))

    def candidate(path: Path) -> Path:
        for k, v in decoder_before.items():  # the decoder is frozen: nothing may have moved it
            assert torch.equal(model.state_dict()[k], v), f"decoder tensor {k} changed during training"
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        notes = {
            "encoder_update": f"g_a, h_a, log_gain fine-tuned {step} steps (batch {args.batch}, {args.crop}px crops, "
            f"lr {args.lr:g}, average {args.ema:g}) against the frozen decoder with the coder's exact rate, "
            "pillow_jac.training.encoder_tune, " + date,
            "encoder_update_steps": str(step),
            "encoder_update_base_hash": base_metadata.get("weights_hash", ""),
        }
        tensors, metadata = tuned_weights(base_tensors, base_metadata, model, notes)
        save_weights(path, tensors, metadata)
        return path

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "encoder": encoder_state(model),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "sampler": sampler.state(),
                "torch_rng": torch.get_rng_state(),
                "best_bd": best_bd,
                "best_step": best_step,
                "baseline": baseline,
                "average": average,
                "args": {k: str(v) for k, v in vars(args).items()},
                "run": shaping,
                "weights": base_weights,
            },
            tmp,
        )
        tmp.replace(ckpt_path)

    def rate_check_line(rows: list[dict]) -> str:
        return " ".join(
            f"q{r['quality']:g} est/stream {r['est_bytes'] / r['stream_bytes'] - 1:+.2%} "
            f"est/file {r['est_bytes'] / r['file_bytes'] - 1:+.2%}"
            for r in rows
        )

    val_path = args.out / "val.csv"
    val_fields = ["step", "wall_s", "bd_rate", "best"] + [
        f"q{q:g}_{k}" for q in VALIDATION_QUALITIES for k in ("bpp", "psnr", "est_vs_stream", "est_vs_file")
    ]
    if baseline is None:
        t0 = time.time()
        with torch.no_grad():
            baseline = score_real(args.weights, held, estimate=estimate(model.eval()))
        print(
            f"baseline (untuned encoder) in {time.time() - t0:.0f} s: "
            + " ".join(f"q{r['quality']:g} {r['bpp']:.4f} bpp {r['psnr']:.2f} dB" for r in baseline),
            flush=True,
        )
        print("rate check, untuned encoder: " + rate_check_line(baseline), flush=True)
        new = not val_path.exists()
        with open(val_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(val_fields)
            writer.writerow(_val_row(0, 0.0, 0.0, True, baseline))
        checkpoint()

    def validate() -> None:
        nonlocal best_bd, best_step
        t0 = time.time()
        live = encoder_state(model)
        if average is not None:
            model.load_state_dict(average, strict=False)
        try:
            path = candidate(args.out / "candidate.safetensors")
            with torch.no_grad():
                rows = score_real(path, held, estimate=estimate(model))
        finally:
            model.load_state_dict(live, strict=False)
        bd = bd_against(baseline, rows)
        improved = math.isfinite(bd) and bd < best_bd
        path.replace(args.out / "last.safetensors")
        if improved:
            best_bd, best_step = bd, step
            copy_atomically(args.out / "last.safetensors", args.out / "best.safetensors")
        with open(val_path, "a", newline="") as f:
            csv.writer(f).writerow(_val_row(step, round(time.time() - start, 1), bd, improved, rows))
        print(
            f"val step {step}: BD-rate {bd:+.3f}% vs untuned (best {best_bd:+.3f}% at {best_step}) in "
            f"{time.time() - t0:.0f} s | "
            + " ".join(f"q{r['quality']:g} {r['bpp']:.4f} {r['psnr']:.2f}" for r in rows),
            flush=True,
        )
        print("rate check: " + rate_check_line(rows), flush=True)

    log_path = args.out / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "wall_s", "lr", "loss", "bpp", "psnr", "step_s"])
    with stop_on_signals() as stop:
        start = last_eval = time.time()
        sums, n, t_steps = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}, 0, 0.0
        model.train()
        while step < args.steps and not stop:
            t_step = time.perf_counter()
            lr = _learning_rate(args, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = to_model_input(sampler.batch_uint8(args.batch), torch.device("cpu"))  # channels_last
            quality = stratified_qualities(args.batch)
            lmbda = quality_lambda(quality, model.config.lambdas).float()
            losses = coded_loss(coded_forward(model, rate, x, quality, args.rate_gradient), x, lmbda)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(params, args.clip)
            optimizer.step()
            if average is not None:
                update_average(average, model, args.ema)
            step += 1
            n += 1
            t_steps += time.perf_counter() - t_step
            for k in sums:
                sums[k] += float(losses[k].detach())
            if step % args.log_every == 0:
                avg = {k: v / n for k, v in sums.items()}
                elapsed = time.time() - start
                print(
                    f"step {step} | {elapsed / 60:.1f} min | {t_steps / n:.2f} s/step | lr {lr:.2e} | "
                    f"loss {avg['loss']:.4f} | bpp {avg['bpp']:.4f} | psnr {avg['psnr']:.2f}",
                    flush=True,
                )
                log.writerow([step, round(elapsed, 1), lr, avg["loss"], avg["bpp"], avg["psnr"], round(t_steps / n, 3)])
                log_file.flush()
                sums, n, t_steps = dict.fromkeys(sums, 0.0), 0, 0.0
            if step % args.eval_every == 0 or time.time() - last_eval > args.eval_minutes * 60:
                checkpoint()
                model.eval()
                try:
                    validate()
                except Exception:  # a failed validation loses one score, not the run
                    traceback.print_exc()
                model.train()
                checkpoint()
                last_eval = time.time()
        stopped_by = stop.signum if step < args.steps else None  # a signal that ended it early; not one after
        checkpoint()
    log_file.close()
    print(f"stopped at step {step}; best BD-rate {best_bd:+.3f}% at step {best_step}", flush=True)
    return exit_status(stopped_by)


def _val_row(step: int, wall: float, bd: float, best: bool, rows: list[dict]) -> list:
    cells = [step, wall, round(bd, 4), int(best)]
    for r in rows:
        cells += [round(r["bpp"], 5), round(r["psnr"], 4)]
        cells += [round(r["est_bytes"] / r[k] - 1, 5) for k in ("stream_bytes", "file_bytes")]
    return cells


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
