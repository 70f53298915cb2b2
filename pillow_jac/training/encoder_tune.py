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

The rate term is the coder's (:class:`CoderRate`), not the float model's (Minnen et al. 2018, eq. 4):
the table of every latent is chosen by the exact integer networks from the rounded latents, as the
codec does (CODING.md 2.2: the scale snapped to one of 64 levels, the mean to sixteenths plus an
integer base), and each symbol costs ``-log2(f / 65536)`` of the stored integer frequency ``f``,
plus the escape bits (CODING.md 2.3). Gradients come from a float surrogate whose value is
replaced by the table's: the float h_s, context model and g_ep give means and scales, moved onto
the coder's values with straight-through estimators, and the discretised Gaussian at those values
gives ``d bits / d y`` at ``y`` plus uniform noise (the gradient of the expected rate, see
:func:`coded_forward`); the z rate takes its gradient from the float factorized density the same way.
Training against the float model's own rate (exact means, continuous scales) let the encoder
exploit the difference and lost 12% BD-rate (shared/NOTES.md).

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
import json
import math
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from ..constants import ACTIVATION_BITS, CDF_PRECISION, ESCAPE_CLASSES, MEAN_STEPS, SCALE_MIN
from ..model.entropy_models import gaussian_likelihood
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..model.objective import quality_lambda
from ..weights import SCALE_THRESHOLDS, read_table
from .encoder_update import (
    VALIDATION_QUALITIES,
    bd_against,
    encoder_state,
    holdout_split,
    is_encoder_key,
    score_real,
    tuned_weights,
)

__all__ = ["CoderRate", "coded_forward", "coded_loss", "estimate_image_bits", "main"]


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    """``round(v)`` in the forward pass, identity gradient (straight-through)."""
    return v + (torch.round(v) - v).detach()


def _straight_through(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate``."""
    return surrogate + (value.to(surrogate.dtype) - surrogate).detach()


class _Tables:
    """One set of integer coding tables as torch gathers: bits of every (table, value) pair."""

    def __init__(self, freqs: torch.Tensor, offsets: torch.Tensor, lows: torch.Tensor):
        self.bits = -torch.log2(freqs.double() / 2.0**CDF_PRECISION)  # flat, float64
        self.offsets = offsets.long()
        self.lows = lows.long()
        self.sizes = self.offsets[1:] - self.offsets[:-1]

    def cost(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Bits the range coder charges for integer ``values`` coded with tables ``ids`` (same shape).

        In-range values cost ``-log2(f / 2**16)`` of their entry; escaped ones the escape entry plus
        the class (``log2 ESCAPE_CLASSES``) and its ``c`` mantissa bits (CODING.md 2.3).
        """
        values, ids = values.long(), ids.long()
        low, size = self.lows[ids], self.sizes[ids]
        index = values - low + 1
        below, above = index < 1, index > size - 2
        index = torch.where(below, torch.zeros_like(index), torch.where(above, size - 1, index))
        bits = self.bits[self.offsets[ids] + index]
        excess = torch.where(below, low - 1 - values, values - (low + size - 3) - 1)
        escape = math.log2(ESCAPE_CLASSES) + torch.floor(torch.log2(excess.clamp_min(0).double() + 1.0))
        return bits + torch.where(below | above, escape, torch.zeros_like(escape))


class CoderRate:
    """The rate of rounded latents as the real coder charges it, differentiable through a float surrogate.

    Args:
        tensors: the tensors of a shipped weights file (``int.*`` and ``table.*`` are read).
        metadata: its manifest (``integer_networks``, ``config``).

    Example:
        >>> import torch
        >>> from pillow_jac.model.mbt2018 import ModelConfig
        >>> from pillow_jac.training.freeze import freeze
        >>> model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)).eval()
        >>> rate = CoderRate(*freeze(model, release=0))
        >>> out = coded_forward(model, rate, torch.rand(2, 3, 64, 64), torch.tensor([1.0, 8.0]))
        >>> out["bits"].shape, bool((out["bits"] > 0).all())
        (torch.Size([2]), True)
    """

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        from ..entropy_coding import scale_table
        from ..latent_coding import LatentCoder
        from ..model.integer import IntegerNetwork

        config = json.loads(metadata["config"])
        if config.get("entropy", "gaussian") != "gaussian":
            raise ValueError(f"the encoder fine-tune models the single-Gaussian coder, not {config['entropy']!r}")
        templates = json.loads(metadata["integer_networks"])

        def network(name: str) -> IntegerNetwork | None:
            return IntegerNetwork.from_tensors(tensors, name, templates[name]) if name in templates else None

        # the codec's own table selection (LatentCoder.table_ids); the range coder tables are not needed
        self.prior = LatentCoder(
            network("h_s"),
            network("context"),
            network("entropy_parameters"),
            tensors[SCALE_THRESHOLDS],
            None,
            None,
            config["M"],
            torch.device("cpu"),
        )
        self.sigma = torch.from_numpy(scale_table()).float()  # scale level j -> sigma_j of table 16 j + f
        self.y_tables = _Tables(*read_table(tensors, "y"))
        self.z_tables = None
        if read_table(tensors, "z") is not None:
            self.z_tables = _Tables(*read_table(tensors, "z"))

    @torch.no_grad()
    def coder_parameters(
        self, y_hat: torch.Tensor, z_hat: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table ids, integer mean bases and quantised means of integer latents, each ``(B, M, H, W)``.

        Computed with the integer h_s, context model and g_ep, exactly as the codec selects tables
        (CODING.md 2.2); ``mean = base + fraction / MEAN_STEPS``.
        """
        b, m, h, w = y_hat.shape
        parts = []
        if self.prior.h_s is not None:
            parts.append(self.prior.h_s(z_hat.detach().double() * 2.0**ACTIVATION_BITS)[:, :, :h, :w])
        if self.prior.context is not None:
            parts.append(self.prior.context(y_hat.detach().double() * 2.0**ACTIVATION_BITS))
        features = torch.cat(parts, dim=1).permute(0, 2, 3, 1).reshape(b * h * w, -1)
        ids, base = self.prior.table_ids(features)

        def grid(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).view(b, h, w, m).permute(0, 3, 1, 2)

        ids, base = grid(ids), grid(base)
        mean = base.double() + (ids % MEAN_STEPS).double() / MEAN_STEPS
        return ids, base, mean

    def bits(
        self,
        model: JointAutoregressiveHierarchicalPrior,
        y_hat: torch.Tensor,
        z_hat: torch.Tensor | None,
        y_soft: torch.Tensor | None = None,
        z_soft: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Coded bits per image of rounded latents: ``y`` and ``z`` parts ``(B,)``, with gradients.

        ``y_hat`` and ``z_hat`` hold integers (straight-through rounded: gradients flow back into
        the encoder through the context model and h_s). The forward value is the coder's charge;
        the gradient that of the float surrogate (Gaussian at the coder's mean and scale level,
        float factorized density for z) evaluated at ``y_soft`` and ``z_soft`` (default: the
        rounded latents themselves).
        """
        y_soft = y_hat if y_soft is None else y_soft
        z_soft = z_hat if z_soft is None else z_soft
        b, _, h, w = y_hat.shape
        ids, base, mean_q = self.coder_parameters(y_hat, z_hat)
        out = {}
        psi = phi = None
        if z_hat is not None:
            z_int = z_hat.detach().long()
            channel = torch.arange(z_int.shape[1]).view(1, -1, 1, 1).expand_as(z_int)
            z_value = self.z_tables.cost(z_int, channel)
            z_surrogate = -torch.log2(model.z_density.likelihood(z_soft.float()))
            out["z"] = _straight_through(z_surrogate, z_value).flatten(1).sum(1)
            psi = model.h_s(z_hat.float())[:, :, :h, :w]
        if model.config.context:
            phi = model.context(y_hat.float())
        scales, means = model.entropy_parameters(model.entropy_inputs(psi, phi)).float().chunk(2, dim=1)
        means = _straight_through(means, mean_q)
        scales = _straight_through(scales, self.sigma[ids // MEAN_STEPS])
        y_surrogate = -torch.log2(gaussian_likelihood(y_soft.float(), means, scales, SCALE_MIN))
        y_value = self.y_tables.cost(y_hat.detach().long() - base, ids)
        out["y"] = _straight_through(y_surrogate, y_value).flatten(1).sum(1)
        return out


def coded_forward(
    model: JointAutoregressiveHierarchicalPrior,
    rate: CoderRate,
    x: torch.Tensor,
    quality: torch.Tensor,
    rate_gradient: str = "noise",
) -> dict[str, torch.Tensor]:
    """The codec's encoder with hard rounding, its coded bits and the decoder's output, in float32.

    Args:
        model: the float model (only g_a, h_a and ``log_gain`` should be trainable).
        rate: the coder's rate of the model's weights file.
        x: images in ``[0, 1]``, ``(B, 3, H, W)``, H and W multiples of 16.
        quality: one quality per image in ``[1, levels]``.
        rate_gradient: where the rate's surrogate takes its gradient: ``"noise"``, at ``y + u`` and
            ``z + u`` with ``u`` uniform in ``[-0.5, 0.5)`` (the gradient of the expected rate, as the
            model was trained, Minnen & Singh 2020 "mixed" quantisation), or ``"ste"``, at the rounded
            latents (straight-through). The straight-through rate gradient is near zero for a latent that
            rounds into its mean's bin, while the distortion's still pushes it outwards: tuning with it
            (lr 2e-5, 330 steps) raised the held-out rate by 1% for 0.03 dB, +0.24% BD-rate.

    Returns:
        ``x_hat`` (clamped to ``[0, 1]`` as the decoder does), ``bits`` ``(B,)`` (y plus z) and ``y_hat``.
    """
    from ..latent_coding import SYMBOL_LIMIT

    y = model.g_a(x.float()) * model.gains(quality).float()
    y_hat = _ste_round(y).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)
    z_hat = None
    if model.config.hyperprior:
        z = model.h_a(y)
        z_hat = _ste_round(z).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)
    if rate_gradient not in ("noise", "ste"):
        raise ValueError(f"rate_gradient must be 'noise' or 'ste', got {rate_gradient!r}")
    y_soft = z_soft = None
    if rate_gradient == "noise" and torch.is_grad_enabled():  # without gradients, only the value counts
        y_soft = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        z_soft = None if z_hat is None else z + torch.empty_like(z).uniform_(-0.5, 0.5)
    parts = rate.bits(model, y_hat, z_hat, y_soft, z_soft)
    bits = parts["y"] + parts.get("z", 0.0)
    x_hat = model.g_s(y_hat * model.gains(quality, inverse=True).float()).clamp(0.0, 1.0)
    return {"x_hat": x_hat, "bits": bits, "y_hat": y_hat, **{f"{k}_bits": v for k, v in parts.items()}}


def coded_loss(out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
    """``lambda * 255^2 * MSE + bpp`` per image, averaged (paper eq. 2), with the batch's bpp and PSNR."""
    pixels = x.shape[2] * x.shape[3]
    bpp = out["bits"].float() / pixels
    mse = (out["x_hat"] - x.float()).pow(2).flatten(1).mean(1)
    loss = (lmbda.float() * 255.0**2 * mse + bpp).mean()
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean(), "psnr": psnr}


def _padded(image: np.ndarray) -> torch.Tensor:
    """The image with its edge pixels repeated to the codec's latent grid (16 x ``latent_shapes``): ``(1, 3, H, W)``."""
    from ..container import latent_shapes

    h, w = image.shape[:2]
    (yh, yw), _ = latent_shapes(w, h)
    rows = np.minimum(np.arange(16 * yh), h - 1)
    cols = np.minimum(np.arange(16 * yw), w - 1)
    block = image[rows[:, None], cols[None, :]]
    return torch.from_numpy(np.ascontiguousarray(block)).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def estimate_image_bits(
    model: JointAutoregressiveHierarchicalPrior, rate: CoderRate, image: np.ndarray, quality: float
) -> dict[str, float]:
    """The training-time rate estimate of a whole image: ``{"y": bits, "z": bits}`` (quality as stored)."""
    from .. import container

    q = torch.tensor([container.quantize_quality(quality)], dtype=torch.float64)
    out = coded_forward(model, rate, _padded(image), q)
    return {k[:-5]: float(v.sum()) for k, v in out.items() if k.endswith("_bits")}


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
    for forbidden in ("kodak", "urban20"):
        if forbidden in str(args.data.resolve()).lower():
            p.error(f"--data {args.data} looks like the {forbidden} evaluation set: never train on it")
    return args


def _learning_rate(args: argparse.Namespace, step: int) -> float:
    lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    if args.decay_steps:
        t = min(1.0, step / args.decay_steps)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def main(argv: list[str] | None = None) -> None:
    """Tune until ``--steps``, validating, keeping the best and checkpointing as it goes."""
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
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"
    if ckpt_path.exists() and not args.resume:
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")

    # ... with what it imports on first use: one small image through the encoder and decoder
    codec.decode(codec.encode(np.zeros((16, 16, 3), np.uint8), 4.0, weights=args.weights), weights=args.weights)
    base_tensors, base_metadata = load_weights(args.weights)
    model = load_model(args.weights).to(memory_format=torch.channels_last)
    rate = CoderRate(base_tensors, base_metadata)

    def estimate(tuned: JointAutoregressiveHierarchicalPrior):  # the training-time bits of one image
        return lambda image, quality: sum(estimate_image_bits(tuned, rate, image, quality).values())

    for name, p in model.named_parameters():
        p.requires_grad_(is_encoder_key(name))
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not is_encoder_key(k)}
    encoder_params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in encoder_params]
    optimizer = torch.optim.Adam(params, lr=args.lr)

    train_paths, held_paths = holdout_split(list_images(args.data), args.holdout, args.holdout_seed)
    (args.out / "holdout.txt").write_text("".join(f"{p.name}\n" for p in held_paths))
    held = [load_rgb(p, 512) for p in held_paths]
    t0 = time.time()
    sampler = CropSampler([load_rgb(p, 512) for p in train_paths], args.crop, seed=args.seed)
    print(f"{len(sampler.images)} training images loaded in {time.time() - t0:.0f} s, {len(held)} held out", flush=True)

    step, best_bd, best_step, baseline = 0, 0.0, 0, None
    # Polyak averaging of the encoder weights: small batches make each step noisy, and the average
    # of the last ~1 / (1 - decay) steps is what is scored and saved
    average = encoder_state(model) if args.ema else None
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["encoder"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.set_state(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, best_bd, best_step, baseline = ckpt["step"], ckpt["best_bd"], ckpt["best_step"], ckpt["baseline"]
        average = ckpt.get("average") or average
        print(f"resumed from {ckpt_path} at step {step} (best {best_bd:+.3f}% at step {best_step})", flush=True)

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
            (args.out / "best.safetensors").write_bytes((args.out / "last.safetensors").read_bytes())
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
    stop = {"requested": False}

    def request_stop(signum, frame):  # finish the current step, checkpoint, exit
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start = last_eval = time.time()
    sums, n, t_steps = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}, 0, 0.0
    model.train()
    while step < args.steps and not stop["requested"]:
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
            with torch.no_grad():
                for name, p in encoder_params:
                    average[name].lerp_(p, 1.0 - args.ema)
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
    checkpoint()
    log_file.close()
    print(f"stopped at step {step}; best BD-rate {best_bd:+.3f}% at step {best_step}", flush=True)


def _val_row(step: int, wall: float, bd: float, best: bool, rows: list[dict]) -> list:
    cells = [step, wall, round(bd, 4), int(best)]
    for r in rows:
        cells += [round(r["bpp"], 5), round(r["psnr"], 4)]
        cells += [round(r["est_bytes"] / r[k] - 1, 5) for k in ("stream_bytes", "file_bytes")]
    return cells


if __name__ == "__main__":
    main(sys.argv[1:])
