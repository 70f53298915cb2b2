"""Freeze a trained float model into the shipped weights file.

``python -m pillow_jac.training.freeze CHECKPOINT.safetensors weights/mbt2018-n128m192.safetensors
--release N`` converts h_s, the context model and g_ep into integer networks
(:func:`pillow_jac.model.integer.integerize`), builds the integer coding tables (y: the Gaussian
tables of CODING.md section 2.2; z: the factorized prior's per-channel tables), and writes one
safetensors file with the float weights of g_a, h_a, g_s, the z density and the gains, the integer
tensors, the tables and the manifest (model id, architecture, integer-network layout, and the
decoder, encoder and header hashes of :func:`pillow_jac.weights.seal`). The integer networks are not
stored a second time as floats: :func:`pillow_jac.engine.build_model` recovers float masters from
them (to resume training).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..constants import ACTIVATION_BITS, FORMAT_VERSION
from ..engine import build_model
from ..entropy_coding import factorized_tables, gaussian_tables, scale_table
from ..mixture_coding import mixture_exp_table
from ..model.integer import integerize
from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from ..weights import MIXTURE_EXP, SCALE_THRESHOLDS, load_weights, save_weights, seal, table_tensors

__all__ = ["freeze", "scale_thresholds", "model_id_for"]


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


def model_id_for(config: ModelConfig, release: int) -> str:
    """The model id of a release: ``mbt[flags]-N-M-rNNN``, e.g. ``mbt-128-192-r001``.

    Flags name what differs from the shipped design: ``n`` no context model, ``h`` no hyperprior,
    ``cK`` a K x K context window, ``z`` zero-mean Gaussians, ``gK`` a K-component mixture. An id
    longer than the header's 16 bytes drops the ``mbt`` prefix; one still too long is an error.

    Example:
        >>> model_id_for(ModelConfig(), 6), model_id_for(ModelConfig(N=96, M=144, entropy="gmm", mixtures=3), 1)
        ('mbt-128-192-r006', 'g3-96-144-r001')
    """
    flags = "" if config.context else "n"
    flags += "" if config.hyperprior else "h"
    flags += f"c{config.context_size}" if config.context and config.context_size != 5 else ""
    flags += {"gaussian": "", "zero-mean": "z", "gmm": f"g{config.mixtures}"}[config.entropy]
    name = f"mbt{flags}-{config.N}-{config.M}-r{release:03d}"
    if len(name) > 16:
        name = name.removeprefix("mbt")
    if len(name) > 16:
        raise ValueError(f"model id {name!r} is longer than 16 characters")
    return name


def freeze(model: JointAutoregressiveHierarchicalPrior, release: int, notes: dict[str, str] | None = None):
    """The tensors and metadata of the shipped weights file for a trained float model."""
    model = model.cpu().eval()
    config = model.config
    nets = {"entropy_parameters": model.entropy_parameters}
    if config.hyperprior:
        nets["h_s"] = model.h_s
    if config.context:
        nets["context"] = model.context
    # the integer networks are stored only as such: their float masters come back by dequantisation
    tensors = {
        f"float.{k}": v.detach().float().contiguous()
        for k, v in model.state_dict().items()
        if k.split(".", 1)[0] not in nets
    }
    templates = {}
    for name, net in nets.items():
        integer = integerize(net)
        tensors.update(integer.tensors(name))
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
        "model_id": model_id_for(config, release),
        "release": str(release),
        "config": json.dumps(config.to_dict()),
        "integer_networks": json.dumps(templates),
        "format_version": ".".join(map(str, FORMAT_VERSION)),
        **(notes or {}),
    }
    return tensors, seal(tensors, metadata)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Freeze float weights into the shipped weights file")
    p.add_argument("source", type=Path, help="float weights (.safetensors with float.* tensors)")
    p.add_argument("target", type=Path)
    p.add_argument("--release", type=int, required=True, help="release number, part of the model id")
    p.add_argument("--note", action="append", default=[], help="KEY=VALUE added to the manifest")
    args = p.parse_args(argv)
    tensors, metadata = load_weights(args.source)
    model = build_model(tensors, metadata)
    notes = dict(n.split("=", 1) for n in args.note)
    if "step" in metadata:
        notes.setdefault("step", metadata["step"])
    out, meta = freeze(model, args.release, notes)
    save_weights(args.target, out, meta)
    print(f"wrote {args.target}: model_id {meta['model_id']}, hash {meta['weights_hash']}")


if __name__ == "__main__":
    main()
