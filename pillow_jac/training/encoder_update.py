"""What every encoder update shares: which tensors are the encoder's, scoring with real files, the file.

An encoder update changes only g_a, h_a and the forward gains (SPEC.md section 9.2: the decoder and
its hash stay the same, so every file stays valid). :mod:`pillow_jac.training.encoder_tune` (the
encoder trained against the coder's rate) and :mod:`pillow_jac.training.search_distil` (the encoder
trained towards the effort search's latents) both hold out the same seeded draw of training images,
score candidates on them with real files (:func:`score_real`, :func:`bd_against`) and write a
candidate as a complete weights file whose decoder is the base file's byte for byte
(:func:`tuned_weights`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior
from ..weights import ENCODER_PREFIXES, FLOAT_PREFIX, integer_tensors, strip_prefix
from .gate import SETS

__all__ = [
    "ENCODER_MODULES",
    "VALIDATION_QUALITIES",
    "is_encoder_key",
    "encoder_state",
    "update_average",
    "score_real",
    "bd_against",
    "tuned_weights",
    "holdout_split",
    "refuse_evaluation_data",
    "copy_atomically",
    "weights_identity",
]

#: names of the evaluation sets (shared/data/kodak, shared/data/urban20): never training data
EVALUATION_SETS = ("kodak", "urban20")

#: the modules an encoder update may change (the weights file's encoder tensors); the rest is the decoder
ENCODER_MODULES = tuple(prefix.removeprefix(FLOAT_PREFIX).rstrip(".") for prefix in ENCODER_PREFIXES)
#: validation qualities (integers of the 1..8 scale)
VALIDATION_QUALITIES = (1.0, 3.0, 5.0, 8.0)


def is_encoder_key(name: str) -> bool:
    """Whether a state-dict key (no ``float.`` prefix) belongs to the encoder side.

    Example:
        >>> [is_encoder_key(k) for k in ("g_a.0.weight", "log_gain", "log_inverse_gain", "h_s.0.bias")]
        [True, True, False, False]
    """
    return name.split(".", 1)[0] in ENCODER_MODULES


def encoder_state(model: JointAutoregressiveHierarchicalPrior) -> dict[str, torch.Tensor]:
    """The encoder-side tensors of a model, detached copies in float32."""
    return {k: v.detach().float().clone() for k, v in model.state_dict().items() if is_encoder_key(k)}


def update_average(average: dict[str, torch.Tensor], model: JointAutoregressiveHierarchicalPrior, decay: float) -> None:
    """One step of the moving average of the weights being trained (those that require gradients).

    ``average`` (from :func:`encoder_state`) becomes ``decay * average + (1 - decay) * weights``.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                average[name].lerp_(p.detach().float(), 1.0 - decay)


def score_real(
    weights: Path,
    images: list[np.ndarray],
    qualities: tuple[float, ...] = VALIDATION_QUALITIES,
    estimate: Callable[[np.ndarray, float], float] | None = None,
    checked: int = 6,
) -> list[dict[str, float]]:
    """Real bitstreams of ``images`` with a weights file: one row of means per quality.

    Each row holds ``bpp`` (whole file) and ``psnr`` (decoded, 8-bit RGB), and with ``estimate``
    (``(image, quality) -> bits``, a training-time rate estimate) that of the first ``checked``
    images: ``est_bytes`` against their real ``stream_bytes`` (ZSTR + YSTR) and ``file_bytes``,
    summed over those images.
    """
    from .. import codec, container, engine
    from ..bench.metrics import psnr

    rows = []
    try:
        for q in qualities:
            acc = {"bpp": 0.0, "psnr": 0.0, "est_bytes": 0.0, "stream_bytes": 0.0, "file_bytes": 0.0}
            for i, image in enumerate(images):
                data = codec.encode(image, q, weights=weights)
                decoded = codec.decode(data, weights=weights)
                acc["bpp"] += len(data) * 8 / (image.shape[0] * image.shape[1])
                acc["psnr"] += psnr(image, decoded)
                if estimate is not None and i < checked:
                    jac = container.parse(data)
                    acc["stream_bytes"] += len(jac.z_stream) + len(jac.y_stream)
                    acc["file_bytes"] += len(data)
                    acc["est_bytes"] += estimate(image, q) / 8
            n = len(images)
            rows.append({**acc, "quality": q, "bpp": acc["bpp"] / n, "psnr": acc["psnr"] / n})
    finally:
        engine.forget(weights)  # every candidate file would otherwise stay in memory
    return rows


def bd_against(anchor: list[dict], test: list[dict]) -> float:
    """BD-rate in percent of ``test`` against ``anchor`` (rows of :func:`score_real`); lower is better."""
    from ..bench.metrics import bd_rate

    return bd_rate(
        [r["bpp"] for r in anchor], [r["psnr"] for r in anchor], [r["bpp"] for r in test], [r["psnr"] for r in test]
    )


def tuned_weights(
    base_tensors: dict[str, torch.Tensor],
    base_metadata: dict[str, str],
    model: JointAutoregressiveHierarchicalPrior,
    notes: dict[str, str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A complete shipped-format weights file: the base file with only the encoder's tensors replaced.

    Every ``int.*``, ``table.*`` and decoder ``float.*`` tensor is the base file's own; the model's
    decoder (g_s, z density and inverse gains as floats; h_s, context model and g_ep integerised as
    freezing does) must equal the base file's byte for byte, else this raises ``AssertionError``.
    The manifest keeps the base's keys, adds ``notes`` and has its hashes recomputed
    (:func:`pillow_jac.weights_hashes.seal`), as freezing does; the decoder and header hashes must
    come out as the base file's.
    """
    from ..model.integer import integerize
    from ..weights_hashes import seal

    state = model.state_dict()
    tensors = dict(base_tensors)
    replaced = set()
    for key, value in state.items():
        name = f"{FLOAT_PREFIX}{key}"
        if is_encoder_key(key):
            old = base_tensors[name]
            new = value.detach().to(old.dtype).contiguous().cpu()
            assert new.shape == old.shape, f"{name}: shape {tuple(new.shape)} is not the base file's {tuple(old.shape)}"
            tensors[name] = new
            replaced.add(name)
        elif name in base_tensors:  # a decoder tensor stored as float: the model must not have changed it
            assert torch.equal(value.detach().to(base_tensors[name].dtype).cpu(), base_tensors[name]), (
                f"decoder tensor {name} differs from the base weights file"
            )
    floats = strip_prefix(base_tensors, FLOAT_PREFIX)
    assert replaced == {FLOAT_PREFIX + k for k in floats if is_encoder_key(k)}
    for name in json.loads(base_metadata.get("integer_networks", "{}")):  # decoder networks stored as integers
        for key, value in integer_tensors(integerize(getattr(model, name)), name).items():
            assert torch.equal(value, base_tensors[key]), f"decoder tensor {key} differs from the base weights file"
    for name, value in tensors.items():
        if name not in replaced:
            assert value is base_tensors[name]
    metadata = {**base_metadata, **notes}
    metadata = seal(tensors, metadata)  # the manifest's hashes, computed as freezing computes them
    for key in ("decoder_hash", "weights_hash"):  # the decoder is the base's, so these are too
        if key in base_metadata:
            assert metadata[key] == base_metadata[key], f"{key} differs from the base weights file's"
    return tensors, metadata


def holdout_split(paths: list[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """``(training, held_out)``: ``count`` paths drawn with ``seed``, the same for the same list.

    Example:
        >>> train, held = holdout_split([Path(f"{i}.png") for i in range(10)], 3, seed=0)
        >>> len(train), len(held), set(train).isdisjoint(held)
        (7, 3, True)
    """
    if not 0 <= count < len(paths):
        raise ValueError(f"--holdout {count} must be from 0 to {len(paths) - 1}: there are {len(paths)} images")
    chosen = set(np.random.default_rng(seed).choice(len(paths), size=count, replace=False).tolist())
    return [p for i, p in enumerate(paths) if i not in chosen], [p for i, p in enumerate(paths) if i in chosen]


#: where the evaluation sets lie: the release gate's folders, from the repository root (whatever the current folder)
EVALUATION_FOLDERS = tuple(Path(__file__).resolve().parents[2] / folder for folder in SETS.values())


def refuse_evaluation_data(
    parser: argparse.ArgumentParser, data: Path, evaluation: tuple[Path, ...] = EVALUATION_FOLDERS
) -> None:
    """Exit through ``parser`` when ``data`` holds an image of an evaluation set (Kodak, urban20).

    The folder, or one of its images once links are followed, lies in a folder named like an evaluation set,
    or one of its images has the bytes of an image of the ``evaluation`` folders that exist here (a copy).
    """
    from .data import list_images

    for forbidden in EVALUATION_SETS:
        if forbidden in str(data.resolve()).lower():
            parser.error(f"--data {data} looks like the {forbidden} evaluation set: never train on it")
    try:
        paths = list_images(data)
    except OSError:  # no folder, or no image in it: the command reports that as it reads the data
        return
    for path in paths:
        folder = str(path.resolve().parent).lower()
        for forbidden in EVALUATION_SETS:
            if forbidden in folder:
                parser.error(f"--data {data}: {path.name} is an image of the {forbidden} evaluation set")
    evaluation_files = {}
    for folder in evaluation:
        if folder.is_dir():
            for image in list_images(folder):
                evaluation_files.setdefault(image.stat().st_size, []).append(image)
    for path in paths:  # bytes compared only where the sizes agree
        alike = evaluation_files.get(path.stat().st_size, ())
        content = path.read_bytes() if alike else None
        for image in alike:
            if image.read_bytes() == content:
                parser.error(f"--data {data}: {path.name} is a copy of {image.name} of an evaluation set")


def weights_identity(metadata: dict[str, str]) -> dict[str, str]:
    """The decoder and encoder hashes of a weights file's manifest: what a tuning run or its targets start from.

    Example:
        >>> weights_identity({"decoder_hash": "a", "encoder_hash": "b", "model_id": "m"})
        {'decoder_hash': 'a', 'encoder_hash': 'b'}
    """
    return {k: metadata.get(k, "") for k in ("decoder_hash", "encoder_hash")}


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file and a rename: ``target`` is whole or absent."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
