"""Weights files: safetensors (no pickle), a manifest in the header, and a content hash.

A shipped weights file (``weights/*.safetensors``) holds three groups of tensors:

* ``float.*``: the float parameters of the layers that run in floating point (g_a, h_a, g_s, the
  z density, the gains). The integer networks are not stored twice: their float masters, needed
  to resume training, are recovered from ``int.*`` (:func:`pillow_jac.engine.build_model`);
* ``int.*``: the integer networks of the exact entropy path (format_spec/SPEC.md section 7);
* ``table.*``: the integer coding tables (SPEC.md section 6).

The safetensors metadata carries the manifest: ``model_id``, the architecture (``config``, JSON)
and training notes. The weights hash written into every ``.jac`` header is the first 8 bytes of
the SHA-256 of the ``int.*`` and ``table.*`` tensors and the decoder's float tensors, computed by
:func:`content_hash` (SPEC.md section 3).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "strip_prefix",
    "save_float_state",
    "load_weights",
    "save_weights",
    "content_hash",
    "WeightsError",
]


class WeightsError(OSError):
    """A weights file is missing, malformed or does not match its manifest."""


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose name starts with ``prefix``, with the prefix removed.

    Example:
        >>> import torch
        >>> list(strip_prefix({"float.a": torch.zeros(1), "int.b": torch.zeros(1)}, "float."))
        ['a']
    """
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_float_state(path: str | Path, state: dict[str, torch.Tensor], config: Any, extra: dict[str, str]) -> None:
    """Write a float state dict as ``float.*`` tensors with the architecture in the metadata."""
    tensors = {f"float.{k}": v.detach().float().contiguous().cpu() for k, v in state.items()}
    metadata = {"config": json.dumps(config.to_dict()), **extra}
    tmp = Path(path).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_weights(
    path: str | Path, device: str = "cpu", prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor whose name starts with ``prefix`` (prefix removed), and the metadata."""
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = strip_prefix({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}, prefix)
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return tensors, metadata


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` atomically (the file is replaced only once complete)."""
    tmp = Path(path).with_suffix(".tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def content_hash(tensors: dict[str, torch.Tensor]) -> bytes:
    """8-byte SHA-256 prefix over the sorted tensor names, dtypes, shapes and bytes.

    Example:
        >>> import torch
        >>> a = content_hash({"a": torch.zeros(2, dtype=torch.int32)})
        >>> len(a), a == content_hash({"a": torch.zeros(2, dtype=torch.int32)})
        (8, True)
        >>> a == content_hash({"a": torch.zeros(2, dtype=torch.int64)})
        False
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]
