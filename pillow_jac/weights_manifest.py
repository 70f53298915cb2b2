"""The manifest of a weights file: its schema, and the check of a file against it (SPEC.md sections 9.2, 9.3).

The manifest is the safetensors metadata of a weights file (its fields: :mod:`pillow_jac.weights`).
:func:`read_manifest` checks its schema and that its ``weights_hash`` is the one it derives;
:func:`verify` checks too that its hashes (:mod:`pillow_jac.weights_hashes`) are its tensors', and that a
file with a released generation's hash has that generation's decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .constants import MODEL_ID_BYTES, WEIGHTS_LAYOUTS, is_model_id
from .generations import release_in, release_problem, released_problem
from .model.integer import LAYER_FIELDS, LAYER_KINDS
from .weights import DECODER_PREFIXES, TABLE_PREFIX, WeightsError
from .weights_hashes import HASH_HEX_DIGITS, decoder_hash, encoder_hash, header_hash

__all__ = ["Manifest", "MANIFEST_NESTING", "read_manifest", "verify"]

#: the integer networks a model has, by the config flag that brings them (None: always)
_INTEGER_NETWORKS = {"entropy_parameters": None, "h_s": "hyperprior", "context": "context"}


@dataclass(frozen=True)
class Manifest:
    """The checked manifest of a weights file (see :func:`read_manifest`)."""

    model_id: str
    config: dict
    integer_networks: dict
    layout: str
    weights_hash: str
    decoder_hash: str
    encoder_hash: str | None
    release: int | None

    @property
    def can_encode(self) -> bool:
        """Whether the file has the encoder networks (a decoder file only decodes)."""
        return self.layout == "full"


#: how deep a manifest's JSON values may nest (ours: 3, integer_networks' name, layer list, layer); the hashes
#: serialise them again, recursively
MANIFEST_NESTING = 8


def _nesting(value: Any) -> int:
    """How many JSON arrays and objects nest in ``value`` at most (0 for a number or a string), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _problem(metadata: dict[str, str]) -> str | None:
    """What is wrong with a manifest's schema, or None."""
    for key in ("model_id", "config", "integer_networks", "weights_hash", "decoder_hash", "layout"):
        if not isinstance(metadata.get(key), str):
            return f"its manifest has no {key!r} (a file frozen before decoder generations: freeze it again)"
    model_id = metadata["model_id"]
    if not (isinstance(model_id, str) and is_model_id(model_id)):
        return f"model_id {model_id!r} is not 1 to {MODEL_ID_BYTES} printable ASCII characters"
    if metadata["layout"] not in WEIGHTS_LAYOUTS:
        return f"unknown layout {metadata['layout']!r}"
    names = ["weights_hash", "decoder_hash"] + (["encoder_hash"] if metadata["layout"] == "full" else [])
    names += ["legacy_weights_hash"] if "legacy_weights_hash" in metadata else []
    for key in names:
        value = metadata.get(key)
        if not (
            isinstance(value, str) and len(value) == HASH_HEX_DIGITS and all(c in "0123456789abcdef" for c in value)
        ):
            return f"{key} must be {HASH_HEX_DIGITS} lower-case hex digits, got {value!r}"
    try:
        config = json.loads(metadata["config"])
        templates = json.loads(metadata["integer_networks"])
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        return f"its manifest is not valid JSON: {type(exc).__name__}: {exc}"
    if not isinstance(config, dict) or not isinstance(templates, dict):
        return "config and integer_networks must be JSON objects"
    if max(_nesting(config), _nesting(templates)) > MANIFEST_NESTING:
        return f"config or integer_networks is nested more than {MANIFEST_NESTING} deep"
    expected = {name for name, flag in _INTEGER_NETWORKS.items() if flag is None or config.get(flag, True)}
    if set(templates) != expected:
        return f"integer_networks names {sorted(templates)}, the config needs {sorted(expected)}"
    for name, layers in templates.items():
        if not (isinstance(layers, list) and layers):
            return f"integer network {name!r} has no layers"
        for layer in layers:
            if not (isinstance(layer, dict) and set(layer) == set(LAYER_FIELDS)):
                return f"a layer of {name!r} must have exactly the fields {sorted(LAYER_FIELDS)}"
            ints = [layer[k] for k in ("stride", "padding", "output_padding")]
            if (
                layer["kind"] not in LAYER_KINDS
                or not isinstance(layer["relu"], bool)
                or not all(type(v) is int for v in ints)
                or layer["stride"] not in (1, 2)
                or not 0 <= layer["padding"] <= 3
                or not 0 <= layer["output_padding"] < layer["stride"]
            ):
                return f"a layer of {name!r} is invalid: {layer}"
    return release_problem(metadata)


def read_manifest(metadata: dict[str, str], path: str | Path = "weights") -> Manifest:
    """The checked manifest of a weights file's metadata; :class:`WeightsError` naming ``path`` if malformed."""
    problem = _problem(metadata)
    if problem is None and header_hash(metadata) != metadata["weights_hash"]:
        problem = f"weights_hash {metadata['weights_hash']} is not the one its manifest derives"
    if problem:
        raise WeightsError(f"weights file {path} is damaged: {problem}")
    return Manifest(
        model_id=metadata["model_id"],
        config=json.loads(metadata["config"]),
        integer_networks=json.loads(metadata["integer_networks"]),
        layout=metadata["layout"],
        weights_hash=metadata["weights_hash"],
        decoder_hash=metadata["decoder_hash"],
        encoder_hash=metadata.get("encoder_hash"),
        release=release_in(metadata["model_id"]),
    )


def _tensor_problem(tensors: dict[str, torch.Tensor], manifest: Manifest) -> str | None:
    """What is wrong with the tensors' shapes for the manifest's layout, or None (SPEC.md section 9.2).

    Every coding table (``table.*``: frequencies, offsets, lows, thresholds, the mixture's exponentials) is
    one-dimensional, and a decoder file holds the decoder's tensors only.
    """
    for name, tensor in sorted(tensors.items()):
        if name.startswith(TABLE_PREFIX) and tensor.dim() != 1:
            return f"{name} must have one dimension, not {tensor.dim()} (shape {tuple(tensor.shape)})"
        if not manifest.can_encode and not name.startswith(DECODER_PREFIXES):
            return f"a decoder file holds only decoder tensors, and {name} is none"
    return None


def verify(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path = "weights") -> Manifest:
    """Check a weights file's manifest, its tensors' shapes and hashes, and a released generation's decoder.

    Raises:
        WeightsError: the manifest is incomplete, a coding table is not one-dimensional, a decoder file holds
            another tensor than the decoder's, a hash does not match the tensors, or the file claims a
            released generation's hash (:func:`pillow_jac.generations.released`) with another decoder.
    """
    manifest = read_manifest(metadata, path)
    problem = _tensor_problem(tensors, manifest)
    if problem is not None:
        raise WeightsError(f"weights file {path} is damaged: {problem}")
    try:
        checks = [("decoder", decoder_hash(tensors, metadata), manifest.decoder_hash)]
        if manifest.can_encode:
            actual = encoder_hash(tensors, metadata)
            if (
                actual != manifest.encoder_hash
                and encoder_hash(tensors, metadata, density=False) == manifest.encoder_hash
            ):
                actual = manifest.encoder_hash  # sealed with the older hash, without the density (SPEC.md section 9.3)
            checks.append(("encoder", actual, manifest.encoder_hash))
    except WeightsError as exc:  # a tensor the hashes cannot take
        raise WeightsError(f"weights file {path} is refused: {exc}") from None
    for part, actual, expected in checks:
        if actual != expected:
            raise WeightsError(
                f"weights file {path} is damaged: {part} hash {actual} does not match its manifest {expected}"
            )
    legacy = metadata.get("legacy_weights_hash")
    problem = released_problem(manifest.model_id, manifest.weights_hash, manifest.decoder_hash, legacy)
    if problem is not None:  # a re-sealed lookalike of a released generation (SPEC.md sections 9.2, 9.3)
        raise WeightsError(f"weights file {path} is refused: {problem}")
    return manifest
