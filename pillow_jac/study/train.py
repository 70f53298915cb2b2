"""Train one run of the study from scratch under the study's budget (resumable).

The recipe is the trainer's (:mod:`pillow_jac.training.train`): Adam with a linear warm-up, gradient
clipping, channels_last with bf16 autocast where the CPU has native bf16 (else float32, which is
faster there: pillow_jac/model/precision.py), a quality per image drawn from strata of ``[1, 8]``,
and a weight average that is what gets frozen. The crops of a run depend only on its
seed, so every variant sees the same crops in the same order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..files import write_atomic
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..model.objective import quality_lambda, rate_distortion_loss
from ..model.precision import bf16_autocast_pays
from ..training.checkpoint import rank_state, save_checkpoint
from ..training.data import CropSampler, to_model_input
from ..training.train import WeightAverage, stratified_qualities
from .variants import Budget, Variant

__all__ = ["train_run", "run_precision", "step_seconds"]

#: where a run records the precision its steps ran in (pillow_jac/model/precision.py)
_PRECISION_FILE = "precision.txt"


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` whole (:func:`pillow_jac.files.write_atomic`): a resume reads these files."""
    data = text.encode()
    write_atomic(path, lambda f: f.write(data))


def _record_precision(out: Path, precision: str) -> None:
    """Record that the run's next steps run in ``precision``: ``mixed`` once two precisions have trained it."""
    path = out / _PRECISION_FILE
    before = path.read_text().strip() if path.exists() else None
    if before is None and (out / "checkpoint.pt").exists():
        before = "bf16"  # a run trained before precisions were recorded: every CPU then ran bf16 autocast
    _write_text(path, ("mixed" if before not in (None, precision) else precision) + "\n")


def run_precision(out: Path) -> str:
    """``bf16``, ``float32`` or ``mixed``: how the run in ``out`` was trained (``bf16`` before it was recorded)."""
    path = out / _PRECISION_FILE
    return path.read_text().strip() if path.exists() else "bf16"


#: a run's training recipe (the budget less its steps and measured qualities), written when it starts
_RECIPE_FILE = "recipe.json"


def _as_json(value: dict) -> dict:
    return json.loads(json.dumps(value))


def _check_recipe(out: Path, state: dict | None, config, budget: Budget) -> None:
    """Refuse a run folder trained with another model config or recipe than ``budget`` asks.

    It would be returned, or resumed, and measured under this plan's name. ``state``: its checkpoint, if any.
    A run from before the recipe was written is checked by its checkpoint's config alone, and gets the file.
    """
    recipe = _as_json({k: v for k, v in budget.to_dict().items() if k not in ("steps", "qualities")})
    if state is not None:
        stored = state.get("config")
        if stored is not None and _as_json(stored) != _as_json(config.to_dict()):
            raise ValueError(f"{out} holds a run of another model config ({stored}): use another --runs folder")
    path = out / _RECIPE_FILE
    if path.exists():
        made = json.loads(path.read_text())
        if made != recipe:
            changed = sorted(k for k in recipe.keys() | made.keys() if made.get(k) != recipe.get(k))
            raise ValueError(f"{out} was trained with another recipe ({', '.join(changed)}): use another --runs folder")
    else:
        _write_text(path, json.dumps(recipe) + "\n")


def train_run(
    variant: Variant, seed: int, budget: Budget, images: list[np.ndarray], out: Path, log=print
) -> tuple[Path, float]:
    """Train ``variant`` with ``seed`` into ``out``; return its ``ema.safetensors`` and the training seconds.

    A run whose checkpoint has reached ``budget.steps`` returns at once (one past it is refused: its weights
    are another budget's); one that stopped resumes from
    its last checkpoint. A larger budget than a run had before extends it from where it ended, so the
    study can grow by rerunning it with more steps.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = out / "ema.safetensors"
    checkpoint = out / "checkpoint.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint.exists() else None
    config = variant.model_config(budget)
    _check_recipe(out, state, config, budget)
    if state is not None and done.exists():
        step = state["step"]
        if step > budget.steps:  # its weights are not this budget's: they would be measured under its name
            raise ValueError(f"{out.name} is at step {step}, past this budget's {budget.steps}: use --steps {step}")
        if step == budget.steps:
            return done, float((out / "seconds.txt").read_text())
    torch.manual_seed(seed)
    model = JointAutoregressiveHierarchicalPrior(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    sampler = CropSampler(images, budget.crop, seed=seed)
    average = WeightAverage(model, budget.ema)
    step, seconds = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler_state, rng = rank_state(state, 0, 1, seed, state["step"])
        sampler.set_state(sampler_state)
        torch.set_rng_state(rng["torch"])
        average.shadow = {k: v.float() for k, v in state["average"].items()}
        timed = out / "seconds.txt"  # absent if the run stopped between its first checkpoint and this file
        step, seconds = state["step"], float(timed.read_text()) if timed.exists() else 0.0
        log(f"{out.name}: resumed at step {step}")
    model.train()
    bf16 = bf16_autocast_pays("cpu")
    _record_precision(out, "bf16" if bf16 else "float32")
    start = time.time() - seconds
    while step < budget.steps:
        for group in optimizer.param_groups:
            group["lr"] = budget.lr * min(1.0, (step + 1) / budget.warmup)
        losses = _train_step(model, optimizer, sampler, budget, bf16)
        average.update(model)
        step += 1
        if step % 250 == 0 or step == budget.steps:
            log(
                f"{out.name}: step {step} | {(time.time() - start) / 60:.1f} min | loss {losses['loss'].item():.4f} "
                f"| bpp {losses['bpp'].item():.3f} | psnr {losses['psnr'].item():.2f}"
            )
            seconds_now = time.time() - start
            save_checkpoint(checkpoint, model, optimizer, step, sampler, config, average)
            _write_text(out / "seconds.txt", f"{seconds_now:.1f}\n")  # after: a kill between counts too few seconds
    return done, time.time() - start


def _train_step(model, optimizer, sampler: CropSampler, budget: Budget, bf16: bool) -> dict[str, torch.Tensor]:
    """One Adam step of the study's recipe on the sampler's next batch; returns the losses."""
    x = to_model_input(sampler.batch_uint8(budget.batch), torch.device("cpu")).contiguous(
        memory_format=torch.channels_last
    )
    quality = stratified_qualities(budget.batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        result = model(x, quality)
    losses = rate_distortion_loss(result, x, quality_lambda(quality, model.config.lambdas).float())
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), budget.clip)
    optimizer.step()
    return losses


def step_seconds(
    variants: list[Variant], budget: Budget, images: list[np.ndarray], steps: int = 10, rounds: int = 3
) -> dict[str, float]:
    """Seconds per training step of each variant, timed side by side on this machine.

    ``rounds`` rounds of ``steps`` steps, the variants in turn within each round (so that a change of the
    machine's load reaches all of them), after two untimed steps each; the median round of each. The
    precision is what :func:`train_run` would use here. What the report's cost table compares: the wall-clock
    minutes of the runs themselves mix machines, pauses and shared cores.
    """
    bf16 = bf16_autocast_pays("cpu")
    setups = {}
    for variant in variants:
        torch.manual_seed(0)
        model = JointAutoregressiveHierarchicalPrior(variant.model_config(budget)).to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
        sampler = CropSampler(images, budget.crop, seed=0)
        for _ in range(2):
            _train_step(model, optimizer, sampler, budget, bf16)
        setups[variant.name] = (model, optimizer, sampler)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (model, optimizer, sampler) in setups.items():
            start = time.perf_counter()
            for _ in range(steps):
                _train_step(model, optimizer, sampler, budget, bf16)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: round(float(np.median(t)), 4) for name, t in times.items()}
