"""The command line of :mod:`pillow_jac.training.gpu_session` (``--help``), checked before anything loads.

docs/training_on_a_gpu.md gives the options each device call uses.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from .encoder_update import refuse_evaluation_data

__all__ = ["H200_BF16_PEAK", "parse_args", "check_crop"]

#: dense bf16 tensor-core peak of an H200 (and H100) SXM, in FLOP/s (NVIDIA's data sheet)
H200_BF16_PEAK = 989e12


def check_crop(parser: argparse.ArgumentParser, crop: int) -> None:
    """Exit through ``parser`` unless ``crop`` is a positive multiple of the model's downsampling."""
    align = JointAutoregressiveHierarchicalPrior.ALIGN
    if crop < align or crop % align:
        parser.error(f"--crop must be a positive multiple of {align} (the model's downsampling), got {crop}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options; ``--dry-run`` fills the ones left out with tiny CPU values."""
    p = argparse.ArgumentParser(
        prog="python -m pillow_jac.training.gpu_session",
        description="Train a new decoder generation on a lent GPU in one call (docs/training_on_a_gpu.md).",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of training images (never Kodak)")
    p.add_argument("--init", type=Path, help="weights to start from (the shipped file); not needed with --resume")
    p.add_argument("--out", type=Path, default=Path("runs/gpu"), help="checkpoint, weights, log and report")
    p.add_argument(
        "--pieces",
        type=Path,
        default=None,
        help="where the weight average goes in pieces, with the report and the log (default: $OUT, else OUT/pieces)",
    )
    p.add_argument("--minutes", type=float, required=True, help="this process's whole time, load and save included")
    p.add_argument("--margin", type=float, default=None, help="seconds kept for saving (default 20; dry run 1)")
    p.add_argument("--resume", action="store_true", help="continue OUT's checkpoint (the previous call's)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps of this call (0: none)")
    p.add_argument("--batch", type=int, default=None, help="crops per step (default 64; dry run 2)")
    p.add_argument("--crop", type=int, default=None, help="crop side in pixels (default 256; dry run 64)")
    p.add_argument(
        "--lambdas",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        help="another ladder (8 values, one per quality) for a fresh start: --init's gains re-interpolated onto it "
        "(pillow_jac.training.ladder); default: --init's own",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps (counted from step 0 of the run)")
    p.add_argument("--decay-start", type=int, default=0, help="step where the cosine decay starts (if --decay-steps)")
    p.add_argument("--decay-steps", type=int, default=0, help="length of the cosine decay to lr/10")
    p.add_argument(
        "--decay-last",
        type=float,
        default=0.3,
        help="share of this call's training time, at its end, over which the learning rate falls to a tenth "
        "(a cosine; 0: none); the run stops on time, so a decay counted in steps cannot be aimed at its end",
    )
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999, help="weight-average decay per step, in [0, 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass and the loss")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead"],
        help="torch.compile mode; reduce-overhead replays the step as CUDA graphs (the autotuning modes can "
        "compile for minutes, past any deadline: not offered)",
    )
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--data-on", choices=["auto", "device", "host"], default="auto", help="where the pixels live")
    p.add_argument("--device", default=None, help="default: cuda (dry run: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default; dry run 1)")
    p.add_argument("--log-every", type=int, default=None, help="default 500 (dry run 1)")
    p.add_argument(
        "--save-every",
        type=float,
        default=120,
        help="checkpoint and publish the pieces every this many seconds (0: at the end only)",
    )
    p.add_argument("--measure-after", type=int, default=None, help="steps before timing starts (default 20; dry 1)")
    p.add_argument(
        "--profile-steps", type=int, default=0, help="profile this many steps before the timing starts (0: none)"
    )
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_PEAK / 1e12, help="the chip's bf16 dense peak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, a few steps: checks everything")
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = {
        "batch": 2 if dry else 64,
        "crop": 64 if dry else 256,
        "steps": 3 if dry else 0,
        "margin": 1.0 if dry else 20.0,
        "device": "cpu" if dry else "cuda",
        "log_every": 1 if dry else 500,
        "measure_after": 1 if dry else 20,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if dry and not args.threads:
        args.threads = 1
    if args.bf16 is None:
        args.bf16 = args.device.startswith("cuda")
    if args.pieces is None:
        args.pieces = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out / "pieces"
    check_crop(p, args.crop)
    for name in ("batch", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.ema < 1:
        p.error(f"--ema must be in [0, 1) (0: the average is the weights), got {args.ema}")
    refuse_evaluation_data(p, args.data)
    if args.profile_steps < 0:
        p.error(f"--profile-steps must be 0 or more, got {args.profile_steps}")
    if not args.resume and not args.init and not dry:
        p.error("give --init (the weights to start from) or --resume")
    if args.lambdas and len(args.lambdas) != ModelConfig.qualities:
        p.error(f"--lambdas needs {ModelConfig.qualities} values, one per quality, got {len(args.lambdas)}")
    if args.lambdas and args.resume:
        p.error("--lambdas moves the ladder of a fresh start; a resumed run keeps its checkpoint's")
    return args
