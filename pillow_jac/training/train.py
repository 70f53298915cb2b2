"""Train the variable-rate mbt2018 model: ``python -m pillow_jac.training.train --help``.

One model learns every quality: each image of a batch draws its own quality uniformly in
``[1, 8]`` and the matching log-interpolated lambda (:func:`quality_lambda`), so the gain vectors
for integer and fractional qualities are all trained. The loss is lambda * 255^2 * MSE + bpp
(paper eq. 2). Adam with a linear warm-up, gradient clipping, bf16 autocast of the convolutions
on CPU (likelihoods stay float32), channels_last. Runs unchanged under ``torchrun`` (DDP). On CUDA
the next batch is cut in a background thread (:class:`BatchPrefetcher`) and copied as uint8 from
pinned memory, and the loop reads nothing back from the device except to log, so the host queues
work ahead of the GPU instead of waiting on it within each step (docs/training_on_a_gpu.md).

Checkpoints (model, optimiser, step, each rank's RNG and crop-sampler states, weight average, and the
options that shape the run, :data:`~pillow_jac.training.checkpoint.RUN_OPTIONS`; written and read by
:mod:`pillow_jac.training.checkpoint`) resume exactly; a resume with other such options is
refused unless ``--allow-changed-options`` is given (``--steps``, ``--minutes``, logging, saving and
evaluation may change freely). The float weights
are also written as safetensors for :mod:`pillow_jac.training.freeze`: ``float.safetensors`` (the
weights being trained) and ``ema.safetensors``, an exponential moving average of them (Polyak
averaging; ``--ema``, default 0.999). The average smooths out the noise of a constant learning rate,
so a run can ship a snapshot without first decaying its learning rate; with ``--ema 0`` there is no
``ema.safetensors`` in ``--out`` (an older one is removed). SIGTERM or Ctrl-C finishes the current step,
writes a checkpoint and exits; under DDP the ranks agree on the step they stop after.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..constants import LAMBDAS
from ..model.mbt2018 import CONTEXT_SIZES, ENTROPY_MODELS, JointAutoregressiveHierarchicalPrior, ModelConfig
from ..model.objective import quality_lambda, rate_distortion_loss
from ..model.precision import bf16_autocast_pays
from .checkpoint import gather_rank_states, load_checkpoint, restore_checkpoint, run_options, save_checkpoint
from .data import CropSampler, list_images, to_model_input
from .encoder_update import refuse_evaluation_data
from .gpu_options import check_crop
from .stop_signals import exit_status, stop_on_signals

DEFAULT_TRAIN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train"
DEFAULT_KODAK = DEFAULT_TRAIN.parent / "kodak"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_TRAIN, help="folder of training images (never Kodak)")
    p.add_argument("--eval-data", type=Path, default=DEFAULT_KODAK, help="folder for the periodic evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="checkpoint and log folder")
    p.add_argument("--init", type=Path, help="start from weights: the shipped file or a run's float.safetensors")
    p.add_argument("--N", type=int, default=128)
    p.add_argument("--M", type=int, default=192)
    p.add_argument("--no-context", action="store_true")
    p.add_argument("--no-hyperprior", action="store_true")
    p.add_argument("--entropy", default="gaussian", choices=sorted(ENTROPY_MODELS), help="distribution of each latent")
    p.add_argument("--mixtures", type=int, default=0, help="components of a gmm (default: 3 for gmm, else 1)")
    p.add_argument("--context-size", type=int, default=5, choices=CONTEXT_SIZES, help="masked context window")
    p.add_argument(
        "--lambdas",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        help="the lambda of each quality 1..8, comma-separated (default: --init's ladder, else CompressAI's); "
        "a ladder other than --init's starts from its gains, re-interpolated (pillow_jac.training.ladder)",
    )
    # 256 rather than 128: with 128x128 crops y is 8x8 and z 2x2, so most context and hyperprior
    # positions touch the padding (the measured difference: weights/MODEL_CARD.md, release 3)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    # 1e-4: from a trained model, 3e-4 leaves the loss flat (weights/MODEL_CARD.md, training recipe)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--decay-start", type=int, default=0, help="step where the cosine decay starts (if --decay-steps)")
    p.add_argument("--decay-steps", type=int, default=0, help="length of the cosine decay to lr/10")
    p.add_argument("--steps", type=int, default=10**9, help="stop after this global step")
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0: no limit)")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999, help="weight-average decay per step (0: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: where it is faster, pillow_jac/model/precision.py)",
    )
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--prefetch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut the next batch in a background thread (default: on for CUDA, off on the CPU)",
    )
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=4000)
    p.add_argument("--eval-images", type=int, default=24)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--allow-changed-options",
        action="store_true",
        help="resume a checkpoint with options other than those it was trained with (--batch, --lr, --ema, ...)",
    )
    args = p.parse_args(argv)
    if args.lambdas and len(args.lambdas) != len(LAMBDAS):  # the file format's qualities are 1..8
        p.error(f"--lambdas needs {len(LAMBDAS)} values, one per quality, got {len(args.lambdas)}")
    for name in ("batch", "log_every", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.ema < 1:
        p.error(f"--ema must be in [0, 1) (0: no average), got {args.ema}")
    check_crop(p, args.crop)
    refuse_evaluation_data(p, args.data)
    if not args.data.is_dir():
        p.error(f"--data {args.data} is not a folder")
    try:
        list_images(args.data)
    except FileNotFoundError as exc:
        p.error(f"--data: {exc}")
    return args


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warm-up, constant, then an optional cosine decay to a tenth."""
    lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    if args.decay_steps and step >= args.decay_start:
        t = min(1.0, (step - args.decay_start) / args.decay_steps)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return lr


def stratified_qualities(batch: int) -> torch.Tensor:
    """One quality per image, uniform in [1, 8] overall, one from each of ``batch`` equal strata.

    Gradient clipping normalises each batch; a batch of only low qualities (whose lambda-weighted
    gradients are ~40x smaller than at quality 8) would then weigh as much as one with a high
    quality. Stratifying makes every batch span the ladder, so the clip scales batches alike and the
    loss keeps its lambda weighting, also with small batches (independent draws in batches of 2 trade
    the top qualities for the bottom ones: weights/MODEL_CARD.md, release 3).

    Example:
        >>> import torch
        >>> q = stratified_qualities(4)
        >>> sorted(int((v - 1) // 1.75) for v in q.tolist())
        [0, 1, 2, 3]
    """
    strata = (torch.randperm(batch) + torch.rand(batch)) / batch
    return 1.0 + 7.0 * strata


def evaluate_real(model, paths: list[Path], out_dir: Path, step: int) -> dict[str, float]:
    """Freeze the current weights and measure real bitstreams (bpp, PSNR) at qualities 1, 4 and 8."""
    from .. import engine
    from ..weights import save_weights
    from .evaluate import evaluate
    from .freeze import freeze

    tensors, metadata = freeze(copy.deepcopy(_unwrap(model)), release=0, notes={"step": str(step)})
    path = out_dir / "eval.safetensors"
    save_weights(path, tensors, metadata)
    try:
        rows = evaluate(paths, [1.0, 4.0, 8.0], weights=path, with_float=False)
    finally:
        engine.forget(path)  # the next evaluation writes another model to the same path
    return {f"q{r['quality']:g}_{k}": r[k] for r in rows for k in ("bpp", "psnr")}


class WeightAverage:
    """An exponential moving average of a model's floating-point state (parameters and buffers).

    After each optimiser step, ``average += (1 - decay) * (weights - average)``: with decay 0.999 the
    average spans about the last thousand steps.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> avg = WeightAverage(model, decay=0.75)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> avg.update(model)
        >>> float(avg.shadow["weight"])
        0.25
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current state."""
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def model(self, like: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``like`` holding the averaged state."""
        averaged = copy.deepcopy(_unwrap(like))
        averaged.load_state_dict({k: v.to(averaged.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return averaged


class FastWeightAverage(WeightAverage):
    """:class:`WeightAverage` updated by one ``foreach`` lerp over all tensors instead of one per tensor.

    The arithmetic is the same (``average += (1 - decay) * (weights - average)``); on a GPU the
    per-tensor loop costs a kernel launch per tensor, and the host time per step adds up.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> avg = FastWeightAverage(model, decay=0.75)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> avg.update(model)
        >>> float(avg.shadow["weight"])
        0.25
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, decay)
        self._bound: tuple | None = None

    def load(self, shadow: dict[str, torch.Tensor], device: torch.device) -> None:
        """Take a saved average (from a checkpoint) as the current one."""
        self.shadow = {k: v.float().to(device) for k, v in shadow.items()}
        self._bound = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current state."""
        if self._bound is None or self._bound[0] is not model:
            state = model.state_dict()  # detached views of the parameters, updated in place by the optimiser
            floats = [k for k, v in state.items() if v.is_floating_point() and v.dtype == torch.float32]
            others = [k for k in state if k not in floats]
            self._bound = (
                model,
                [self.shadow[k] for k in floats],
                [state[k] for k in floats],
                [(self.shadow[k], state[k]) for k in others],
            )
        _, shadow, current, others = self._bound
        if shadow:
            torch._foreach_lerp_(shadow, current, 1.0 - self.decay)
        for average, value in others:
            if value.is_floating_point():
                average.lerp_(value.float(), 1.0 - self.decay)
            else:
                average.copy_(value)


class BatchPrefetcher:
    """Cuts the next batch in a background thread while the device trains on the current one.

    The crops are the same, in the same order, as calling ``sampler.batch_uint8`` in the loop:
    draws happen one at a time, each begun only after the previous batch was taken.
    :meth:`state` is the sampler's state before the batch not yet taken, so a checkpoint resumes
    exactly where the run stopped. The thread runs numpy slicing, which releases the GIL, so on a
    GPU machine the cutting overlaps with the queued kernels (on the 2-core CPU it would only
    compete with them).

    Example:
        >>> import numpy as np, torch
        >>> a = CropSampler([np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)], crop=16, seed=1)
        >>> b = CropSampler([np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)], crop=16, seed=1)
        >>> fetch = BatchPrefetcher(b, size=2)
        >>> all(torch.equal(a.batch_uint8(2), fetch.next()) for _ in range(3))
        True
        >>> fetch.close()
    """

    def __init__(self, sampler: CropSampler, size: int, pin_memory: bool = False):
        self.sampler, self.size, self.pin_memory = sampler, size, pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crops")
        self._state = copy.deepcopy(sampler.state())
        self._pending = self._pool.submit(sampler.batch_uint8, size, pin_memory)

    def next(self) -> torch.Tensor:
        """The next batch (uint8, channels last); starts cutting the one after it."""
        batch = self._pending.result()
        self._state = copy.deepcopy(self.sampler.state())  # no draw is running now
        self._pending = self._pool.submit(self.sampler.batch_uint8, self.size, self.pin_memory)
        return batch

    def state(self) -> dict:
        """The sampler state a resumed run must start from (before the batch being cut)."""
        return self._state

    def close(self) -> None:
        """Stop the thread (the batch being cut is dropped)."""
        self._pending.cancel()
        self._pool.shutdown(wait=True)


def to_device(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copy small host tensors to ``device``; on CUDA through pinned memory, without a stream sync."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    return [t.pin_memory().to(device, non_blocking=True) for t in tensors]


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def main(argv: list[str] | None = None) -> int:
    """Train until ``--steps`` or ``--minutes`` is reached, checkpointing as it goes.

    Returns the exit status: 0, or where SIGTERM or Ctrl-C ended the run before ``--steps`` (a checkpoint
    saved) 128 + the signal's number, on every rank of a data-parallel run alike.
    """
    args = parse_args(argv)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world_size = 0, 1
    if distributed:
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed + rank)
    args.out.mkdir(parents=True, exist_ok=True)

    config = ModelConfig(
        N=args.N,
        M=args.M,
        context=not args.no_context,
        hyperprior=not args.no_hyperprior,
        entropy=args.entropy,
        mixtures=args.mixtures or (3 if args.entropy == "gmm" else 1),
        context_size=args.context_size,
        lambdas=args.lambdas or LAMBDAS,
    )
    from .model_ids import model_id_for

    try:  # a model whose id does not fit a file header could be trained, but never frozen
        model_id_for(config, 999)
    except ValueError as exc:
        raise SystemExit(f"{exc}: choose other widths or flags") from None
    if args.init:
        from ..engine import load_model
        from ..weights import WeightsError

        try:
            model = load_model(args.init)
        except WeightsError as exc:
            raise SystemExit(f"--init: {exc}") from None
        if dataclasses.replace(model.config, lambdas=config.lambdas) != config:
            raise SystemExit(f"--init {args.init} is {model.config}, not the {config} asked for")
        if args.lambdas and args.lambdas != model.config.lambdas:
            from .ladder import remap_ladder

            model = remap_ladder(model, args.lambdas)
    else:
        model = JointAutoregressiveHierarchicalPrior(config)
    config = model.config
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = CropSampler.from_folder(args.data, args.crop, seed=args.seed + rank)
    prefetch = device.type == "cuda" if args.prefetch is None else args.prefetch
    step, ckpt = 0, None
    ckpt_path = args.out / "checkpoint.pt"
    if args.bf16 is None:  # resolved before the options are recorded: a checkpoint names the precision it had
        args.bf16 = bf16_autocast_pays(device)
    options = run_options(args)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, config, options, args.allow_changed_options)
        step = restore_checkpoint(ckpt, model, optimizer, sampler, device, rank, world_size, args.seed)
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    average = WeightAverage(model, args.ema) if args.ema else None  # starts at the current weights
    if average is not None and ckpt is not None and "average" in ckpt:
        average.shadow = {k: v.float().to(device) for k, v in ckpt["average"].items()}
    if average is None and rank == 0:  # the file a release would ship must be this run's, or none
        (args.out / "ema.safetensors").unlink(missing_ok=True)
    train_model = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    forward = torch.compile(train_model) if args.compile else train_model
    eval_paths = []
    if rank == 0 and args.eval_every and args.eval_data.exists():
        eval_paths = list_images(args.eval_data)[: args.eval_images]

    log_path = args.out / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "wall_s", "lr", "loss", "bpp", "psnr"])
    start = time.time()
    autocast_dtype = torch.bfloat16 if args.bf16 else None
    # running sums stay on the device: reading them (.item()) waits for the device, so that
    # happens only when a line is logged, and the host can queue the next steps meanwhile
    sums = {k: torch.zeros((), device=device) for k in ("loss", "bpp", "psnr")}
    source = BatchPrefetcher(sampler, args.batch, pin_memory=device.type == "cuda") if prefetch else sampler
    n = 0
    stopped_by = None  # the signal that ended the run before --steps, on every rank alike
    with stop_on_signals() as stop:
        while step < args.steps:
            lr = learning_rate(args, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            crops = source.next() if prefetch else sampler.batch_uint8(args.batch)
            x = to_model_input(crops, device).contiguous(memory_format=torch.channels_last)
            quality = stratified_qualities(args.batch)
            quality, lmbda = to_device(device, quality, quality_lambda(quality, config.lambdas).float())
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = forward(x, quality)
            losses = rate_distortion_loss(out, x, lmbda)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            if average is not None:
                average.update(model)
            step += 1
            n += 1
            for k in sums:
                sums[k] += losses[k].detach()
            if rank == 0 and step % args.log_every == 0:
                avg = {k: v.item() / n for k, v in sums.items()}
                elapsed = time.time() - start
                print(
                    f"step {step} | {elapsed / 60:.1f} min | lr {lr:.2e} | loss {avg['loss']:.4f} | "
                    f"bpp {avg['bpp']:.4f} | psnr {avg['psnr']:.2f}",
                    flush=True,
                )
                log.writerow([step, round(elapsed, 1), lr, avg["loss"], avg["bpp"], avg["psnr"]])
                log_file.flush()
                sums = {k: torch.zeros((), device=device) for k in sums}
                n = 0
            stopping = bool(stop or (args.minutes and time.time() - start > args.minutes * 60))
            done = step >= args.steps  # the same step on every rank
            signum = stop.signum if stopping else None
            if distributed and step % args.log_every == 0:  # a signal or the time limit of one rank: all stop at
                flag = torch.tensor([float(stopping), float(signum or 0)], device=device)  # the same step, agreed
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # where the log reads back
                stopping, signum = bool(flag[0].item()), int(flag[1].item()) or None  # every rank's status alike
            elif distributed:
                stopping = False
            if stopping and not done:  # ended early: by a signal, or by the time limit (no signal)
                stopped_by = signum
            done = done or stopping
            if step % args.save_every == 0 or done:
                ranks = gather_rank_states(source, device, distributed)  # every rank takes part
                if rank == 0:
                    save_checkpoint(ckpt_path, model, optimizer, step, source, config, average, options, ranks)
            if rank == 0 and eval_paths and step % args.eval_every == 0:
                # with --ema the average is what a release would ship, so that is what is measured
                result = evaluate_real(average.model(model) if average else model, eval_paths, args.out, step)
                print("eval " + " ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
                with open(args.out / "eval.csv", "a") as f:
                    f.write(f"{step}," + ",".join(f"{k}={v:.4f}" for k, v in result.items()) + "\n")
            if done:
                break
    if prefetch:
        source.close()
    log_file.close()
    return exit_status(stopped_by)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
