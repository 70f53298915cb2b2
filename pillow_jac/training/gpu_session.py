"""Train a new decoder generation on a lent GPU in one call: ``python -m pillow_jac.training.gpu_session --help``.

One process does everything a device call needs, so that no lent minute goes to set-up
(docs/training_on_a_gpu.md, "The training calls: one script"):

* every training image is decoded once and kept as uint8 pixels in device memory (in pinned host
  memory when it does not fit), and random crops with random flips are cut there by one gather per
  batch, drawn from a generator on the same device: the loop copies no image data from the host;
* the objective is :mod:`pillow_jac.training.train`'s, through its own functions: the mbt2018 model
  (Minnen, Ballé, Toderici, NeurIPS 2018) with per-image stratified qualities
  (:func:`~.train.stratified_qualities`), ``lambda * 255^2 * MSE + bpp``
  (:func:`~pillow_jac.model.objective.rate_distortion_loss`, paper eq. 2), Adam with the same warm-up
  and optional step decay (:func:`~.train.learning_rate`), then a cosine to a tenth over the last
  ``--decay-last`` (0.3) of the call's training time (:func:`time_decay`), gradient clipping and the
  exponential moving average of the weights (:class:`~.train.WeightAverage`);
* on CUDA it runs channels_last with bf16 autocast of the model (the likelihoods stay float32),
  cuDNN autotuning and fused Adam; ``--compile`` wraps the forward pass and the loss in
  ``torch.compile`` (``--compile-mode reduce-overhead`` adds CUDA graphs) and falls back to eager,
  saying so in the log and the report, if compiling fails;
* it stops ``--margin`` seconds before ``--minutes`` (counted from the start of the process) run
  out, or on SIGTERM, writes a resumable checkpoint (model, optimiser, weight average, step, every
  random state) that the next call continues with ``--resume``, and writes the weight average as
  pieces of at most 15 MB (:func:`~.pack.split_file`; files come back from the device at most
  16 MiB each) plus a JSON report into ``--pieces`` (``$OUT`` when set). It does so every
  ``--save-every`` seconds too, so a call killed before its end (a time limit cut short, a compile
  past the deadline) still returns the weights of its last save; after SIGTERM or SIGINT it saves the
  checkpoint but publishes nothing more (:meth:`Session.finish`);
* a loss that is not finite stops the run at the next log line without saving or publishing the
  weights it touched: the last pieces published stay;
* the report (:mod:`~.gpu_report`) gives steps, crops per second, seconds per step, the peak GPU memory
  and the achieved FLOP/s as a share of the chip's bf16 dense peak; ``--profile-steps`` adds where a
  step's time goes (:mod:`~.step_profile`), from steps outside the timing.

``--dry-run`` runs the same code on the CPU with a tiny model (N=8, M=12) for a few steps, which is
what ``tests/test_gpu_session.py`` does, twice, the second time with ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..files import write_atomic
from ..model.objective import quality_lambda
from . import stop_signals
from .data import to_model_input
from .device_crops import load_pixels
from .gpu_options import parse_args
from .gpu_report import forward_macs_per_pixel, log_line, session_report, text_of
from .gpu_setup import make_forward_loss, resolve_device, starting_model
from .pack import split_file
from .step_profile import StepProfile
from .stop_signals import stop_on_signals
from .train import FastWeightAverage, learning_rate, stratified_qualities, to_device

__all__ = ["Session", "main", "parse_args", "time_decay"]

CHECKPOINT = "gpu_checkpoint.pt"
WEIGHTS = "ema.safetensors"
REPORT = "gpu_report.json"
LOG = "gpu_log.csv"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with :func:`torch.save`, atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def time_decay(now: float, start: float, deadline: float, share: float) -> float:
    """The learning rate's factor at ``now``: 1, then a cosine to 0.1 over the last ``share`` of ``start``-``deadline``.

    A call stops on time, not after a number of steps, so its decay is aimed at its deadline; the weight
    average of a decayed run is what gets released (weights/MODEL_CARD.md: at a constant 1e-4 the raw
    weights were 0.5-0.6 dB behind an averaged or decayed model at quality 8).

    Example:
        >>> [round(time_decay(t, 0.0, 100.0, 0.3), 3) for t in (0, 70, 85, 100, 120)]
        [1.0, 1.0, 0.55, 0.1, 0.1]
    """
    if share <= 0 or deadline <= start:
        return 1.0
    begin = deadline - share * (deadline - start)
    t = min(1.0, max(0.0, (now - begin) / (deadline - begin)))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


class Session:
    """One call's training: set-up (:meth:`__init__`), :meth:`train`, :meth:`save` and :meth:`finish`."""

    def __init__(self, args: argparse.Namespace, started: float):
        self.args, self.started = args, started
        self.deadline = started + args.minutes * 60 - args.margin
        self.lr = learning_rate(args, 0)  # the last step's learning rate (reported)
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = device = resolve_device(args.device)
        self.cuda = cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: each convolution is autotuned once
            torch.cuda.reset_peak_memory_stats(device)
        args.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = args.out / CHECKPOINT
        model, ckpt = starting_model(args, self.ckpt_path)
        self.config = model.config
        self.macs = forward_macs_per_pixel(self.config)
        self.model = model = model.to(device).to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, **({"fused": True} if cuda else {}))
        self.crops, self.data_info = load_pixels(args.data, args.crop, device, args.data_on, args.seed)
        self.average = FastWeightAverage(model, args.ema)
        self.step = 0
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.average.load(ckpt["average"], device)
            self.step = ckpt["step"]
            if ckpt["crops"]["device"] == self.crops.device.type and ckpt["crops"]["size"] == args.crop:
                self.crops.set_state(ckpt["crops"]["state"])
            else:  # the pixels moved (device <-> host) or the crop size changed: a new stream of crops
                self.crops.generator.manual_seed(args.seed + self.step)
            torch.set_rng_state(ckpt["torch_rng"])
            if cuda and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
            log_line(f"resumed {self.ckpt_path} at step {self.step}")
        self.step_start = self.step
        self.forward_loss = make_forward_loss(model, device.type, torch.bfloat16 if args.bf16 else None)
        self.compile_info: dict = {
            "asked": args.compile,
            "mode": args.compile_mode if args.compile else None,
            "error": None,
        }
        self.step_fn, self.compiled = self.forward_loss, False
        if args.compile:
            try:
                mode = None if args.compile_mode == "default" else args.compile_mode
                self.step_fn, self.compiled = torch.compile(self.forward_loss, mode=mode), True
            except Exception as exc:  # compiling is an optimisation: any failure means eager
                self._compile_failed(exc)
        self.stop: str | None = None
        self.signum: int | None = None  # the signal that stopped the loop
        self.error: str | None = None
        self.last: dict[str, float] = {}
        self.mark: tuple[float, int] | None = None  # (time, step) where steady-state timing starts
        self.profile = StepProfile(args.profile_steps, cuda) if args.profile_steps else None
        self.loop_start = self.loop_end = time.monotonic()
        self.last_save = self.loop_start
        self.pieces_step: int | None = None  # the step of the weights last published

    def _compile_failed(self, exc: BaseException) -> None:
        self.compile_info["error"] = f"{type(exc).__name__}: {exc}"[:500]
        log_line(f"torch.compile failed, running eager: {self.compile_info['error']}")
        self.step_fn, self.compiled = self.forward_loss, False

    def _backward(self, x: torch.Tensor, quality: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.compiled and self.args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        try:
            losses = self.step_fn(x, quality, lmbda)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            return losses
        except Exception as exc:
            # a compiled function fails, if at all, in its first calls: when it is traced, compiled and
            # (with CUDA graphs) recorded
            if not self.compiled or self.step - self.step_start >= 3:
                raise
            self._compile_failed(exc)
            torch._dynamo.reset()
            return self._backward(x, quality, lmbda)

    def train(self) -> None:
        """Take steps until ``--steps``, the deadline or SIGTERM/SIGINT; checkpoint every ``--save-every`` s."""
        args, device, config = self.args, self.device, self.config
        log_path = args.out / LOG
        new_log = not log_path.exists()
        sums = {k: torch.zeros((), device=device) for k in ("loss", "bpp", "psnr")}
        n = 0

        self.loop_start = time.monotonic()
        self.last_save = self.loop_start
        log_line(
            f"{config} on {device} ({torch.cuda.get_device_name(device) if self.cuda else 'cpu'}), "
            f"data {self.data_info}, set-up {self.loop_start - self.started:.1f} s, "
            f"batch {args.batch} x {args.crop}^2, compile {args.compile}"
        )
        # a signal finishes the current step, then the session saves, reports and exits
        with open(log_path, "a", newline="") as log_file, stop_on_signals() as signalled:
            log = csv.writer(log_file)
            if new_log:
                log.writerow(["step", "wall_s", "lr", "loss", "bpp", "psnr"])
            try:
                while True:
                    if self.stop is None and signalled:
                        self.stop, self.signum = "signal", signalled.signum
                    if self.stop is None and args.steps and self.step - self.step_start >= args.steps:
                        self.stop = "steps"
                    if self.stop is None and time.monotonic() >= self.deadline:
                        self.stop = "time"
                    if self.stop is not None:
                        break
                    lr = learning_rate(args, self.step) * time_decay(
                        time.monotonic(), self.loop_start, self.deadline, args.decay_last
                    )
                    self.lr = lr
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    batch = self.crops.batch_uint8(args.batch)
                    if batch.device != device and self.cuda:
                        batch = batch.pin_memory()  # pixels in host memory: copied without a stream sync
                    x = to_model_input(batch, device).contiguous(memory_format=torch.channels_last)
                    quality = stratified_qualities(args.batch)
                    quality, lmbda = to_device(device, quality, quality_lambda(quality, config.lambdas).float())
                    losses = self._backward(x, quality, lmbda)
                    if args.clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip, foreach=self.cuda or None)
                    self.optimizer.step()
                    self.average.update(self.model)
                    self.step += 1
                    n += 1
                    for k in sums:
                        sums[k] += losses[k].detach()
                    if self.mark is None and self.step - self.step_start >= args.measure_after:
                        if self.profile is not None and self.profile.profiler is None:
                            self.profile.start()  # the profiled steps, then the timing
                        elif self.profile is None or self.profile.step_done():
                            self._sync()
                            self.mark = (time.monotonic(), self.step)
                    if self.step % args.log_every == 0:
                        self.last = {k: v.item() / n for k, v in sums.items()}
                        if not math.isfinite(self.last["loss"]):
                            self.stop = "nonfinite"
                            log_line(f"step {self.step}: the loss is not finite; stopping without saving these weights")
                            break
                        elapsed = time.monotonic() - self.started
                        log_line(
                            f"step {self.step} | {elapsed:.0f} s | lr {lr:.2e} | loss {self.last['loss']:.4f} | "
                            f"bpp {self.last['bpp']:.4f} | psnr {self.last['psnr']:.2f}"
                        )
                        log.writerow([self.step, round(elapsed, 1), lr, *self.last.values()])
                        log_file.flush()
                        sums = {k: torch.zeros((), device=device) for k in sums}
                        n = 0
                    if args.save_every and not signalled and time.monotonic() - self.last_save >= args.save_every:
                        if self.keep() is None:
                            self.stop = "nonfinite"
                            log_line(f"step {self.step}: the weights are not finite; stopping without saving them")
                            break
            finally:
                self.loop_end = time.monotonic()
        if self.profile is not None:
            self.profile.close()
        self._sync()
        self.loop_end = time.monotonic()
        if n:
            self.last = {k: v.item() / n for k, v in sums.items()}

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def save(self) -> None:
        """Write the resumable checkpoint (model, optimiser, weight average, step, random states)."""
        save_checkpoint(
            self.ckpt_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "average": self.average.shadow,
                "step": self.step,
                "crops": {"state": self.crops.state(), "device": self.crops.device.type, "size": self.args.crop},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
                "config": self.config.to_dict(),
                "dry_run": self.args.dry_run,
            },
        )
        self.last_save = time.monotonic()

    def finite(self) -> bool:
        """Whether the weights and their average hold only finite numbers (checked before they are kept)."""
        tensors = [*self.model.state_dict().values(), *self.average.shadow.values()]
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())

    def published(self) -> list[str]:
        """The names of the pieces in ``--pieces`` now."""
        return sorted(p.name for p in self.args.pieces.glob(WEIGHTS + ".[0-9][0-9][0-9]"))

    def keep(self) -> list[str] | None:
        """Publish the pieces and the report that names them, then save the checkpoint; return the pieces' names.

        None (and nothing written) when the weights are not finite, so that the last publish and checkpoint
        stay. The pieces and their report first: they are what comes back, and a kill during the checkpoint's
        write (the longest) leaves them agreeing.
        """
        if not self.finite():
            return None
        pieces = self.publish()
        self.write_report(pieces)
        self.save()
        return pieces

    def publish(self) -> list[str]:
        """Write the weight average as pieces into ``--pieces``; return their names.

        The pieces are made beside the checkpoint, copied into ``--pieces`` under temporary names and
        renamed over the last publish's together, the checksum last, and the stale ones removed after:
        a kill while the 40 MB are written leaves the last publish whole.
        """
        from ..weights import save_float_state

        args = self.args
        args.pieces.mkdir(parents=True, exist_ok=True)
        weights_path = args.out / WEIGHTS
        trainer = "pillow_jac.training.gpu_session"  # not __name__: under python -m that is __main__
        notes = {"step": str(self.step), "ema_decay": str(self.average.decay), "trainer": trainer}
        save_float_state(weights_path, self.average.model(self.model).state_dict(), self.config, notes)
        staging = args.out / "pieces-staging"
        shutil.rmtree(staging, ignore_errors=True)
        pieces = [p.name for p in split_file(weights_path, staging, part_mb=15)]
        names = [*pieces, WEIGHTS + ".sha256"]
        for name in names:
            shutil.copyfile(staging / name, args.pieces / (name + ".new"))
        for name in names:
            os.replace(args.pieces / (name + ".new"), args.pieces / name)
        for stale in set(self.published()) - set(pieces):
            (args.pieces / stale).unlink()
        shutil.rmtree(staging, ignore_errors=True)
        self.pieces_step = self.step
        return pieces

    def write_report(self, pieces: list[str]) -> dict:
        """The report and the log, into ``--out`` and ``--pieces``, each written whole or not at all.

        Renamed into place: a reply that collects ``--pieces`` while this runs (after a kill at the device's
        time limit) gets the last report or this one, never a cut one.
        """
        args = self.args
        args.pieces.mkdir(parents=True, exist_ok=True)  # a stop before the first publish has not made it
        log = (args.out / LOG).read_bytes()
        write_atomic(args.pieces / LOG, lambda f: f.write(log))
        self.loop_end = self.loop_end if self.stop else time.monotonic()
        report = session_report(self, pieces)
        text = (text_of(report) + "\n").encode()
        for path in (args.out / REPORT, args.pieces / REPORT):
            write_atomic(path, lambda f: f.write(text))
        return report

    def finish(self) -> dict:
        """Publish and save (:meth:`keep`), write the report; return it.

        After a loss that was not finite, or with weights that are not, neither pieces nor checkpoint are
        written (the last publish and checkpoint stay). After a signal only the checkpoint is saved: a
        SIGTERM is most often the device's time limit, whose reply is already collecting ``--pieces`` while
        this process goes on (the shell it ran in is gone), and a publish then could leave old and new pieces
        mixed, or more files than a reply brings back; the last publish stays whole (``--resume`` continues
        from the checkpoint, and publishes at its next save).
        """
        args = self.args
        if self.stop == "signal" and not self.finite():
            self.stop = "nonfinite"  # reported as such: neither checkpoint nor pieces of these weights
        if self.stop == "signal":
            self.save()
            pieces = self.published()
        else:
            pieces = None if self.stop == "nonfinite" else self.keep()
        if pieces is None:
            self.stop = self.stop or "nonfinite"
            pieces = self.published()
        report = self.write_report(pieces)
        with open(args.out / "gpu_reports.jsonl", "a") as f:
            f.write(json.dumps(report) + "\n")
        log_line(
            f"stopped ({self.stop}) at step {self.step}: {report['steps']} steps, "
            f"{report['crops_per_s'] or math.nan:.1f} crops/s, {report['share_of_peak'] or math.nan:.2%} of peak; "
            f"{len(pieces)} pieces in {args.pieces}"
        )
        print(text_of(report), flush=True)
        return report


def main(argv: list[str] | None = None) -> dict:
    """Train until ``--minutes`` (less ``--margin``) or ``--steps``; save, split and report. Returns the report.

    A step that raises still leaves a checkpoint, the pieces and the report of the steps before it;
    then the error is raised again.
    """
    started = time.monotonic()
    session = Session(parse_args(argv), started)
    try:
        session.train()
    except Exception as exc:
        session.stop, session.error = "error", f"{type(exc).__name__}: {exc}"[:1000]
        log_line(f"step {session.step + 1} failed ({session.error}); saving the {session.step} steps before it")
        with stop_on_signals():  # a second Ctrl-C or SIGTERM waits for the last save, as the first did
            session.finish()
        raise
    with stop_on_signals():
        return session.finish()


def exit_status(report: dict) -> int:
    """The command's exit status for its report.

    128 + the signal's number where a signal ended the call (as ``jac`` and the other trainers; it comes first,
    also where the weights then were not finite), 1 after weights or a loss that were not finite (nothing of
    them saved), 0 otherwise.
    """
    if report.get("signal"):
        return stop_signals.exit_status(report["signal"])
    return 1 if report["stop"] == "nonfinite" else 0


if __name__ == "__main__":
    sys.exit(exit_status(main(sys.argv[1:])))
