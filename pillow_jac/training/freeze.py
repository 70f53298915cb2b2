"""Freeze a trained float model into a weights file of the shipped format.

``python -m pillow_jac.training.freeze CHECKPOINT.safetensors runs/NAME/frozen.safetensors --release N``
converts h_s, the context model and g_ep into integer networks
(:func:`pillow_jac.model.integer.integerize`), builds the integer coding tables (y: the Gaussian
tables of CODING.md section 2.1; z: the factorized prior's per-channel tables), and writes one
safetensors file with the float weights of g_a, h_a, g_s, the z density and the gains, the integer
tensors, the tables and the manifest (model id, architecture, integer-network layout, and the
decoder, encoder and header hashes of :func:`pillow_jac.weights_hashes.seal`). The integer networks are not
stored a second time as floats: :func:`pillow_jac.engine.build_model` recovers float masters from
them (to resume training).

The command writes outside the package: it refuses a target inside the package's weights folder
(:func:`pillow_jac.generations.package_weights_dir`) and a ``model_id`` that a released or installed
generation holds with another decoder (SPEC.md section 9.2: a released decoder never changes). A new
generation enters the package through :mod:`pillow_jac.training.release`, which also keeps the old
decoder and makes the vectors. ``--note KEY=VALUE`` adds a field to the manifest; the fields the
manifest is built from (:data:`RESERVED_NOTES`) cannot be set that way.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..constants import ACTIVATION_BITS, FORMAT_VERSION
from ..engine import build_model
from ..entropy_coding import factorized_tables, gaussian_tables, scale_table
from ..mixture_coding import mixture_exp_table
from ..model.integer import integerize
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..weights import (
    FLOAT_PREFIX,
    MIXTURE_EXP,
    SCALE_THRESHOLDS,
    integer_tensors,
    load_weights,
    save_weights,
    table_tensors,
)
from ..weights_hashes import seal
from .model_ids import MAX_RELEASE, model_id_for

__all__ = [
    "freeze",
    "scale_thresholds",
    "model_id_for",
    "parse_notes",
    "check_notes",
    "refuse_overwrite",
    "RESERVED_NOTES",
    "MAX_RELEASE",
]

#: the manifest fields that freezing and sealing write (:func:`pillow_jac.weights_hashes.seal`): never a note
RESERVED_NOTES = frozenset(
    {
        "model_id",
        "release",
        "config",
        "integer_networks",
        "format_version",
        "layout",
        "weights_hash",
        "decoder_hash",
        "encoder_hash",
        "legacy_weights_hash",
    }
)


def parse_notes(notes: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; ValueError for a string without ``=`` or a reserved key.

    Example:
        >>> parse_notes(["data=div2k", "note=a=b"])
        {'data': 'div2k', 'note': 'a=b'}
        >>> parse_notes(["model_id=x"])
        Traceback (most recent call last):
        ...
        ValueError: --note model_id: a field the manifest is built from, not a note
    """
    out = {}
    for note in notes:
        key, sep, value = note.partition("=")
        if not sep or not key:
            raise ValueError(f"--note {note!r} is not KEY=VALUE")
        out[key] = value
    check_notes(out)
    return out


def check_notes(notes: dict[str, str] | None) -> None:
    """ValueError if ``notes`` would set a field of :data:`RESERVED_NOTES`."""
    reserved = sorted(set(notes or {}) & RESERVED_NOTES)
    if reserved:
        raise ValueError(f"--note {', '.join(reserved)}: a field the manifest is built from, not a note")


def scale_thresholds() -> torch.Tensor:
    """Fixed-point thresholds between neighbouring scale levels (geometric midpoints, rounded up).

    A predicted scale ``s`` (fixed point) selects level ``#{k : thresholds[k] <= s}``.

    Example:
        >>> t = scale_thresholds()
        >>> len(t), bool((t[1:] > t[:-1]).all())
        (63, True)
    """
    sigma = scale_table()
    mids = np.sqrt(sigma[1:] * sigma[:-1])
    return torch.tensor([math.ceil(m * 2**ACTIVATION_BITS) for m in mids], dtype=torch.int64)


def freeze(model: JointAutoregressiveHierarchicalPrior, release: int, notes: dict[str, str] | None = None):
    """The tensors and metadata of the shipped weights file for a trained float model.

    Raises:
        ValueError: ``release`` does not fit the model id, or ``notes`` sets a field of :data:`RESERVED_NOTES`.
    """
    check_notes(notes)
    model_id = model_id_for(model.config, release)
    model = model.cpu().eval()
    config = model.config
    nets = {"entropy_parameters": model.entropy_parameters}
    if config.hyperprior:
        nets["h_s"] = model.h_s
    if config.context:
        nets["context"] = model.context
    # the integer networks are stored only as such: their float masters come back by dequantisation
    tensors = {
        f"{FLOAT_PREFIX}{k}": v.detach().float().contiguous()
        for k, v in model.state_dict().items()
        if k.split(".", 1)[0] not in nets
    }
    templates = {}
    for name, net in nets.items():
        integer = integerize(net)
        tensors.update(integer_tensors(integer, name))
        templates[name] = integer.template()
    freqs, offsets, lows = gaussian_tables()
    tensors.update(table_tensors("y", freqs, offsets, lows))
    tensors[SCALE_THRESHOLDS] = scale_thresholds()
    if config.entropy == "gmm":
        tensors[MIXTURE_EXP] = torch.from_numpy(mixture_exp_table())
    if config.hyperprior:
        density = model.z_density

        def cdf_at(points: np.ndarray) -> np.ndarray:
            return density.cdf(torch.from_numpy(points)).numpy()

        freqs, offsets, lows = factorized_tables(cdf_at, config.N)
        tensors.update(table_tensors("z", freqs, offsets, lows))
    metadata = {
        "model_id": model_id,
        "release": str(release),
        "config": json.dumps(config.to_dict()),
        "integer_networks": json.dumps(templates),
        "format_version": ".".join(map(str, FORMAT_VERSION)),
        **(notes or {}),
    }
    return tensors, seal(tensors, metadata)


def refuse_overwrite(target: Path, metadata: dict[str, str]) -> None:
    """ValueError if writing ``metadata``'s generation to ``target`` could change a shipped or released one.

    ``target`` must lie outside the package's weights folder and a checkout's ``format_spec`` folder, must not
    be a weights file of another generation (one found through ``JAC_MODELS``, say), and a ``model_id`` that
    the table of released generations or an installed file holds must come with that decoder (a
    byte-identical re-freeze). Re-freezing a training run over its own earlier file is allowed.
    """
    from .. import generations

    package = generations.package_weights_dir().resolve()
    where = Path(target).resolve()
    if where == package or package in where.parents:
        raise ValueError(
            f"{target} is inside the package's weights folder {package}: freeze into runs/..., and add a "
            "generation with python -m pillow_jac.training.release"
        )
    spec = Path(__file__).resolve().parents[2] / "format_spec"  # a checkout's vectors and their generations
    if spec.is_dir() and spec.resolve() in where.parents:
        raise ValueError(f"{target} is inside {spec}: its generations pin the test vectors; freeze into runs/...")
    model_id, decoder = metadata["model_id"], metadata["decoder_hash"]
    existing = generations.generation_of(where) if where.is_file() else None
    if existing is not None and existing.model_id != model_id:
        raise ValueError(
            f"{target} holds the generation {existing.model_id}: freezing {model_id} over it would lose it "
            "(freeze into a new file)"
        )
    entry = generations.released().get(model_id)
    if entry is not None and entry["decoder_hash"] != decoder:
        raise ValueError(
            f"{model_id} is a released generation (decoder_hash {entry['decoder_hash']}) and this decoder is "
            f"{decoder}: a new decoder needs a new --release number"
        )
    for gen in generations.installed():
        if gen.model_id != model_id:
            continue
        _, installed = load_weights(gen.path)
        if installed.get("decoder_hash") != decoder:
            raise ValueError(
                f"{model_id} is installed ({gen.path}) with another decoder: a new decoder needs a new --release number"
            )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Freeze float weights into the shipped weights file")
    p.add_argument("source", type=Path, help="float weights (.safetensors with float.* tensors)")
    p.add_argument("target", type=Path, help="the file to write, outside the package: runs/NAME/frozen.safetensors")
    p.add_argument("--release", type=int, required=True, help=f"release number (0 to {MAX_RELEASE}), in the model id")
    p.add_argument("--note", action="append", default=[], help="KEY=VALUE added to the manifest")
    args = p.parse_args(argv)
    try:
        notes = parse_notes(args.note)
    except ValueError as exc:
        p.error(str(exc))
    if not 0 <= args.release <= MAX_RELEASE:
        p.error(f"--release must be from 0 to {MAX_RELEASE}")
    tensors, metadata = load_weights(args.source)
    model = build_model(tensors, metadata)
    if "step" in metadata:
        notes.setdefault("step", metadata["step"])
    out, meta = freeze(model, args.release, notes)
    try:
        refuse_overwrite(args.target, meta)
    except ValueError as exc:
        raise SystemExit(f"freeze: {exc}") from None
    save_weights(args.target, out, meta)
    print(f"wrote {args.target}: model_id {meta['model_id']}, hash {meta['weights_hash']}")


if __name__ == "__main__":
    main()
