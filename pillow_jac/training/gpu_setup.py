"""The set-up of a GPU training call (:mod:`pillow_jac.training.gpu_session`): its device, model and loss.

* :func:`resolve_device`: the device ``--device`` names;
* :func:`starting_model`: the model a call starts from, with the checkpoint it resumes (``--resume``), or
  ``--init``'s weights with the ladder of ``--lambdas`` (:func:`initial_model`), or for ``--dry-run`` a
  tiny model (:data:`DRY_RUN_CONFIG`);
* :func:`make_forward_loss`: the forward pass and the loss, what ``--compile`` compiles.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from ..model.objective import rate_distortion_loss
from .gpu_report import log_line

__all__ = ["DRY_RUN_CONFIG", "initial_model", "make_forward_loss", "resolve_device", "starting_model"]

#: the model a dry run trains: small enough for a step in milliseconds on one CPU thread
DRY_RUN_CONFIG = ModelConfig(N=8, M=12)


def resolve_device(name: str) -> torch.device:
    """The torch device ``--device`` names, with the current CUDA device's index where it gives none."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def starting_model(
    args: argparse.Namespace, checkpoint: Path
) -> tuple[JointAutoregressiveHierarchicalPrior, dict | None]:
    """The model a call starts from, and the ``checkpoint`` it resumes (None: a fresh call, seeded by ``--seed``).

    Raises:
        SystemExit: a checkpoint that a fresh call would overwrite, ``--resume`` without one, or one of a
            dry run resumed by a real run (or the other way round).
    """
    if checkpoint.exists() and not args.resume:
        raise SystemExit(f"{checkpoint} exists: pass --resume to continue it, or another --out")
    if args.resume and not checkpoint.exists():
        raise SystemExit(f"--resume, but there is no {checkpoint} (a fresh machine?): start with --init")
    if not args.resume:
        torch.manual_seed(args.seed)
        return initial_model(args), None
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if ckpt["dry_run"] != args.dry_run:
        raise SystemExit(f"{checkpoint} is {'' if ckpt['dry_run'] else 'not '}a dry run's: same --dry-run")
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def initial_model(args: argparse.Namespace) -> JointAutoregressiveHierarchicalPrior:
    """The model a fresh call trains: ``--init``'s (:func:`_init_weights`), its ladder remapped to ``--lambdas``."""
    model = _init_weights(args)
    if args.lambdas and args.lambdas != model.config.lambdas:
        from .ladder import remap_ladder

        model = remap_ladder(model, args.lambdas)
    return model


def _init_weights(args: argparse.Namespace) -> JointAutoregressiveHierarchicalPrior:
    """The model of ``--init``, a full weights file; for ``--dry-run``, a new :data:`DRY_RUN_CONFIG` model.

    Raises:
        SystemExit: ``--init`` is not a weights file the engine loads, or is a decoder file (no encoder).
    """
    if args.dry_run:
        if args.init:  # a dry run checks that the file a real run starts from is readable, cheaply
            from safetensors import safe_open

            with safe_open(str(args.init), framework="pt") as f:
                header = f.metadata() or {}
            if header.get("layout") == "decoder":
                raise SystemExit(f"--init {args.init} is a decoder file, with no encoder: give the full weights file")
            init_config = ModelConfig(**json.loads(header["config"]))
            log_line(f"dry run: --init {args.init} is {init_config}; training {DRY_RUN_CONFIG} instead")
        return JointAutoregressiveHierarchicalPrior(DRY_RUN_CONFIG)
    from ..engine import load_model
    from ..weights import WeightsError

    try:
        return load_model(args.init)
    except WeightsError as exc:
        raise SystemExit(f"--init: {exc}") from None


def make_forward_loss(model: torch.nn.Module, device_type: str, autocast: torch.dtype | None):
    """``(x, quality, lmbda) -> losses``: the model under autocast, then the loss in float32, as train.py does.

    This is what ``--compile`` hands to :func:`torch.compile`; backward and the optimiser stay outside.
    """

    def forward_loss(x: torch.Tensor, quality: torch.Tensor, lmbda: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            out = model(x, quality)
        return rate_distortion_loss(out, x, lmbda)  # float32 (paper eq. 2), outside autocast

    return forward_loss
