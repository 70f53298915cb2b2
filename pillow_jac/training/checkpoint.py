"""The resumable checkpoint of :mod:`pillow_jac.training.train`: what it holds, writing it, resuming from it.

``checkpoint.pt`` holds the model, the optimiser, the step, each rank's crop-sampler and RNG states, the weight
average, the model's config and the options that shape the run (:data:`RUN_OPTIONS`), so a rerun of the same
command resumes exactly (README "Training"). A resume with other such options is refused unless
``--allow-changed-options`` is given (:func:`load_checkpoint`); under DDP every rank resumes from its own
states (:func:`rank_state`). :func:`save_checkpoint` also writes the float weights beside it as safetensors,
for :mod:`pillow_jac.training.freeze`.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..model.mbt2018 import ModelConfig
from .data import CropSampler

if TYPE_CHECKING:  # annotations only: train.py imports this module
    from .train import BatchPrefetcher, WeightAverage

#: the options that shape a run: a resume with others is refused (unless --allow-changed-options)
RUN_OPTIONS = (
    "data",
    "N",
    "M",
    "no_context",
    "no_hyperprior",
    "entropy",
    "mixtures",
    "context_size",
    "lambdas",
    "crop",
    "batch",
    "lr",
    "warmup",
    "decay_start",
    "decay_steps",
    "clip",
    "ema",
    "bf16",
    "seed",
)


def run_options(args: argparse.Namespace) -> dict[str, str]:
    """The :data:`RUN_OPTIONS` of ``args`` as strings (the data folder resolved), as a checkpoint records them."""
    return {k: str(Path(args.data).resolve() if k == "data" else getattr(args, k)) for k in RUN_OPTIONS}


def load_checkpoint(path: Path, config: ModelConfig, options: dict[str, str], allow_changed_options: bool) -> dict:
    """The checkpoint at ``path``, refused unless it is a run of ``config`` with the same :data:`RUN_OPTIONS`.

    Other options are refused (a :class:`SystemExit` naming them) unless ``allow_changed_options``; then the
    changes are printed.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    run_config = ModelConfig(**ckpt["config"])
    if run_config != config:
        raise SystemExit(f"{path} is a run of {run_config}, not of {config}: same options")
    if "options" not in ckpt:  # a checkpoint from before options were recorded: nothing to compare with
        shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        print(f"warning: {path} records no options; resuming with {shown}, recorded from now on", flush=True)
    changed = {k: (v, options.get(k)) for k, v in ckpt.get("options", {}).items() if options.get(k) != v}
    if changed:
        lines = ", ".join(f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in changed.items())
        if not allow_changed_options:
            raise SystemExit(
                f"{path} was trained with other options ({lines}): resume with the same ones, pass "
                "--allow-changed-options to change them, or choose another --out"
            )
        print(f"resuming with changed options: {lines}", flush=True)
    return ckpt


def restore_checkpoint(
    ckpt: dict,
    model,
    optimizer,
    sampler: CropSampler,
    device: torch.device,
    rank: int,
    world_size: int,
    seed: int,
) -> int:
    """Load ``ckpt`` into the model, the optimiser, ``rank``'s crop sampler and RNGs; return its step."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    step = ckpt["step"]
    sampler_state, rng = rank_state(ckpt, rank, world_size, seed, step)
    if rank and len(ckpt.get("ranks") or ()) != world_size:
        print(f"rank {rank}: the checkpoint has no state of this rank: new crop and RNG states", flush=True)
    sampler.set_state(sampler_state)
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return step


def _rng_state(device: torch.device) -> dict:
    """This process's torch RNG states: the CPU generator's, and the current CUDA device's when training there."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def gather_rank_states(sampler: CropSampler | BatchPrefetcher, device: torch.device, distributed: bool) -> list[dict]:
    """Every rank's ``{"sampler": ..., "rng": ...}``, in rank order (a collective call under DDP)."""
    mine = {"sampler": copy.deepcopy(sampler.state()), "rng": _rng_state(device)}
    if not distributed:
        return [mine]
    states: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states


def rank_state(ckpt: dict, rank: int, world_size: int, seed: int, step: int) -> tuple[dict, dict]:
    """The crop-sampler state and RNG states ``rank`` resumes from: its own from the checkpoint.

    A checkpoint of another number of ranks (or one written before every rank's states were recorded, which
    holds rank 0's as ``sampler``, ``torch_rng`` and ``cuda_rng``) gives rank 0 the recorded state and every
    other rank fresh states drawn from ``(seed, rank, step)``, so the ranks still draw different crops.

    Example:
        >>> import numpy as np, torch
        >>> ckpt = {"sampler": np.random.default_rng(0).bit_generator.state, "torch_rng": torch.get_rng_state()}
        >>> a, b = rank_state(ckpt, 1, 2, 0, 10)[0], rank_state(ckpt, 2, 3, 0, 10)[0]
        >>> a != b != ckpt["sampler"]
        True
    """
    ranks = ckpt.get("ranks")
    if ranks is not None and len(ranks) == world_size:
        return ranks[rank]["sampler"], ranks[rank]["rng"]
    if rank == 0:
        if ranks:
            return ranks[0]["sampler"], ranks[0]["rng"]
        return ckpt["sampler"], {"torch": ckpt["torch_rng"], "cuda": ckpt.get("cuda_rng")}
    import numpy as np

    sampler = np.random.default_rng([seed, rank, step]).bit_generator.state
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, rank, step, 1]).integers(2**62)))
    return sampler, {"torch": generator.get_state(), "cuda": None}


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    step: int,
    sampler: CropSampler | BatchPrefetcher,
    config: ModelConfig,
    average: WeightAverage | None = None,
    options: dict[str, str] | None = None,
    ranks: list[dict] | None = None,
) -> None:
    """Write the resumable checkpoint and the float safetensors beside it, each atomically.

    The float files go first and the checkpoint last, so a stop between them never leaves a checkpoint newer
    than its weight average (a finished run is recognised by its checkpoint's step). ``ranks`` holds every
    rank's sampler and RNG states (:func:`gather_rank_states`; default: this process's only), ``options`` the
    :data:`RUN_OPTIONS` a resume must repeat.
    """
    from ..weights import save_float_state

    save_float_state(path.with_name("float.safetensors"), model.state_dict(), config, {"step": str(step)})
    if average is not None:
        notes = {"step": str(step), "ema_decay": str(average.decay)}
        save_float_state(path.with_name("ema.safetensors"), average.model(model).state_dict(), config, notes)
    if ranks is None:
        ranks = [{"sampler": copy.deepcopy(sampler.state()), "rng": _rng_state(torch.device("cpu"))}]
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "ranks": ranks,
            "config": config.to_dict(),
            **({"options": options} if options is not None else {}),
            **({"average": average.shadow} if average is not None else {}),
        },
        tmp,
    )
    os.replace(tmp, path)
