"""Weights files: safetensors (no pickle), their tensors' names and groups, reading and writing them.

A weights file holds up to four groups of tensors (SPEC.md section 9.2):

* the **decoder** (:data:`DECODER_PREFIXES`): ``int.*``, the integer networks of the exact entropy
  path (CODING.md section 3); ``table.*``, the integer coding tables (CODING.md section 2); and the
  float synthesis ``float.g_s.*`` with the inverse gains ``float.log_inverse_gain``;
* the **encoder** (:data:`ENCODER_PREFIXES`): ``float.g_a.*``, ``float.h_a.*``, ``float.log_gain``;
* the float factorized prior of z, ``float.z_density.*`` (:data:`Z_DENSITY_PREFIXES`): the z tables were
  made from it when the generation was frozen, and the encoder's search estimates z's rate with it. The
  float masters of the integer networks are not stored: :func:`pillow_jac.engine.build_model` recovers them.

A *full* file has all of them; a *decoder* file (a kept generation) has only the decoder
(:func:`pillow_jac.weights_manifest.verify` refuses any other tensor in one). A tensor whose name starts
with none of :data:`TENSOR_PREFIXES` is refused when the file is read. The
safetensors metadata carries the manifest, checked by :func:`pillow_jac.weights_manifest.read_manifest`:
``model_id``, the architecture (``config``, JSON), the integer networks' layer layout
(``integer_networks``), the ``layout``, and three hashes (:mod:`pillow_jac.weights_hashes`, SPEC.md
section 9.3). ``decoder_hash`` covers exactly what a decoder runs (the decoder tensors and every manifest
field that changes decoding); ``encoder_hash`` covers what else the encoder reads; ``weights_hash`` is the
8 bytes written into every ``.jac`` header, the generation's name beside ``model_id``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .files import write_atomic
from .generations import MAX_WEIGHTS_BYTES
from .model.integer import IntegerLayer, IntegerNetwork

__all__ = [
    "DECODER_PREFIXES",
    "ENCODER_PREFIXES",
    "Z_DENSITY_PREFIXES",
    "FLOAT_PREFIX",
    "INT_PREFIX",
    "TABLE_PREFIX",
    "TENSOR_PREFIXES",
    "integer_tensors",
    "read_integer_network",
    "strip_prefix",
    "save_float_state",
    "load_weights",
    "save_weights",
    "table_prefix",
    "table_tensors",
    "read_table",
    "require_integers",
    "SCALE_THRESHOLDS",
    "MIXTURE_EXP",
    "WeightsError",
    "WeightsNotFoundError",
]

#: tensor-name prefix of float parameters: ``float.<the model's state-dict key>``
FLOAT_PREFIX = "float."
#: tensor-name prefix of the integer networks: ``int.<network>.<layer>.{weight,bias,shift}`` (:func:`integer_tensors`)
INT_PREFIX = "int."
#: tensor-name prefix of the coding tables: ``table.<part>_<field>`` and the tables of CODING.md section 2
TABLE_PREFIX = "table."
#: the prefixes every tensor name of a weights file starts with (SPEC.md section 9.2): another name is refused
TENSOR_PREFIXES = (FLOAT_PREFIX, INT_PREFIX, TABLE_PREFIX)
#: tensor-name prefixes of the decoder: what a decoder runs (SPEC.md section 9.2)
DECODER_PREFIXES = (INT_PREFIX, TABLE_PREFIX, f"{FLOAT_PREFIX}g_s.", f"{FLOAT_PREFIX}log_inverse_gain")
#: tensor-name prefixes of the encoder: an encoder update may change these and nothing else
ENCODER_PREFIXES = (f"{FLOAT_PREFIX}g_a.", f"{FLOAT_PREFIX}h_a.", f"{FLOAT_PREFIX}log_gain")
#: tensor-name prefixes of z's float density: the z tables were made from it at freeze time, and the encoder's
#: search estimates z's rate with it; an encoder update keeps it (the tables are the decoder's)
Z_DENSITY_PREFIXES = (f"{FLOAT_PREFIX}z_density.",)
#: the stored dtype of each tensor of an integer layer (compact: CODING.md section 3 bounds their values)
_INTEGER_DTYPES = {"weight": torch.int16, "bias": torch.int64, "shift": torch.int8}
#: the three tensors of a coding table set ``table.<part>_<field>`` (CODING.md section 2.1)
TABLE_FIELDS = ("freqs", "offsets", "lows")
#: the fixed-point thresholds between the y scale levels (CODING.md section 2.2)
SCALE_THRESHOLDS = f"{TABLE_PREFIX}y_thresholds"
#: a Gaussian-mixture model's exponential table (CODING.md section 4.2)
MIXTURE_EXP = f"{TABLE_PREFIX}mixture_exp"


def table_prefix(part: str) -> str:
    """The prefix of every tensor of ``part``'s coding tables (``"y"`` or ``"z"``): ``table.y_``, ``table.z_``."""
    return f"{TABLE_PREFIX}{part}_"


class WeightsError(OSError):
    """A weights file is missing, malformed or does not match its manifest."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights file where one was named: also a :class:`FileNotFoundError`."""


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose name starts with ``prefix``, with the prefix removed.

    Example:
        >>> import torch
        >>> list(strip_prefix({"float.a": torch.zeros(1), "int.b": torch.zeros(1)}, "float."))
        ['a']
    """
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def integer_tensors(network: IntegerNetwork, name: str) -> dict[str, torch.Tensor]:
    """An integer network's tensors as a weights file stores them: ``int.<name>.<i>.{weight,bias,shift}``."""
    return {
        f"{INT_PREFIX}{name}.{i}.{part}": getattr(layer, part).to(dtype)
        for i, layer in enumerate(network.layers)
        for part, dtype in _INTEGER_DTYPES.items()
    }


def require_integers(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if its dtype is an integer one (CODING.md section 3: values are what counts, in any integer dtype).

    Raises:
        ValueError: a float, complex or boolean tensor, whose values a cast would round or truncate.
    """
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, not {tensor.dtype}")
    return tensor


def read_integer_network(tensors: dict[str, torch.Tensor], name: str, template: list[dict]) -> IntegerNetwork:
    """The integer network ``name`` of a weights file: its ``int.<name>.<i>.*`` tensors laid out by ``template``.

    Raises:
        ValueError: a tensor is missing, or holds values CODING.md section 3 does not allow (weights
            outside ``+-(2**15 - 1)``, shifts outside 1-24, non-integers, one shift or bias per output
            channel not given).
    """
    layers = []
    for i, spec in enumerate(template):
        p = f"{INT_PREFIX}{name}.{i}"
        missing = [f"{p}.{part}" for part in _INTEGER_DTYPES if f"{p}.{part}" not in tensors]
        if missing:
            raise ValueError(f"the integer network {name!r} lacks the tensor(s) {', '.join(missing)}")
        stored = {part: require_integers(f"{p}.{part}", tensors[f"{p}.{part}"]) for part in _INTEGER_DTYPES}
        layer = IntegerLayer(
            weight=stored["weight"].double(), bias=stored["bias"].double(), shift=stored["shift"].long(), **spec
        )
        problem = layer.problem()
        if problem is not None:
            raise ValueError(f"{p}: {problem}")
        layers.append(layer)
    return IntegerNetwork(layers)


def save_float_state(path: str | Path, state: dict[str, torch.Tensor], config: Any, extra: dict[str, str]) -> None:
    """Write a float state dict as ``float.*`` tensors with the architecture in the metadata."""
    tensors = {f"{FLOAT_PREFIX}{k}": v.detach().float().contiguous().cpu() for k, v in state.items()}
    save_weights(path, tensors, {"config": json.dumps(config.to_dict()), **extra})


def load_weights(
    path: str | Path, device: str = "cpu", prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor whose name starts with ``prefix`` (prefix removed), and the metadata.

    The tensors are copies, not views of the file mapped into memory: a file rewritten in place (``cp`` over
    it) after its hash was checked would otherwise change the weights already loaded.

    Raises:
        WeightsError: the file is not a safetensors file, is larger than
            :data:`~pillow_jac.generations.MAX_WEIGHTS_BYTES` (checked before any tensor is read: a sparse
            file declares gigabytes it does not hold), or has a tensor whose name starts with none of
            :data:`TENSOR_PREFIXES` (SPEC.md section 9.2).
        FileNotFoundError: there is no file at ``path``.
    """
    size = os.stat(path).st_size  # safetensors requires the header's tensors to end where the file ends
    if size > MAX_WEIGHTS_BYTES:
        raise WeightsError(
            f"weights file {path} is refused: it is {size} bytes, more than any weights file ({MAX_WEIGHTS_BYTES})"
        )
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            unknown = sorted(k for k in f.keys() if not k.startswith(TENSOR_PREFIXES))
            if unknown:
                raise WeightsError(
                    f"weights file {path} is refused: the tensor {unknown[0][:80]!r} is none of a weights file's "
                    f"(their names start with {', '.join(TENSOR_PREFIXES)})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            if torch.device(device).type == "cpu":
                tensors = {k: t.clone() for k, t in tensors.items()}
            tensors = strip_prefix(tensors, prefix)
    except (FileNotFoundError, WeightsError):
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return tensors, metadata


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` atomically, a replaced file keeping its mode (:func:`files.write_atomic`)."""
    data = safetensors_bytes({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_atomic(path, lambda f: f.write(data))


def table_tensors(part: str, freqs, offsets, lows) -> dict[str, torch.Tensor]:
    """The weights-file tensors of the coding tables of ``part`` (``"y"`` or ``"z"``)."""
    arrays = dict(zip(TABLE_FIELDS, (freqs, offsets, lows), strict=True))
    return {table_prefix(part) + field: torch.as_tensor(arrays[field]) for field in TABLE_FIELDS}


def read_table(tensors: dict[str, torch.Tensor], part: str) -> tuple[torch.Tensor, ...] | None:
    """``(freqs, offsets, lows)`` of ``part``'s coding tables, or None if the file has none (no hyperprior).

    Raises:
        ValueError: a table tensor that does not hold integers (:func:`require_integers`).

    Example:
        >>> import torch
        >>> t = table_tensors("z", torch.ones(3, dtype=torch.int32), torch.tensor([0, 3]), torch.tensor([0]))
        >>> [v.tolist() for v in read_table(t, "z")], read_table(t, "y")
        ([[1, 1, 1], [0, 3], [0]], None)
    """
    prefix = table_prefix(part)
    if prefix + TABLE_FIELDS[0] not in tensors:
        return None
    return tuple(require_integers(prefix + f, tensors[prefix + f]) for f in TABLE_FIELDS)
