"""The hashes that seal a weights file, and the decoder file made from a full one (SPEC.md sections 9.2, 9.3).

A weights file's manifest (:mod:`pillow_jac.weights_manifest`) records three hashes, computed here over
the tensor groups of :mod:`pillow_jac.weights` by :func:`seal`:

* ``decoder_hash`` (:func:`decoder_hash`): the decoder tensors and every manifest field that changes decoding;
* ``encoder_hash`` (:func:`encoder_hash`, full files only): what else the encoder reads;
* ``weights_hash`` (:func:`header_hash`): the 8 bytes written into every ``.jac`` header, the generation's
  name beside ``model_id``.

:func:`decoder_only` makes a generation's compact decoder file, whose decoder and header hashes are the
full file's.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

from .constants import WEIGHTS_HASH_BYTES
from .weights import DECODER_PREFIXES, ENCODER_PREFIXES, Z_DENSITY_PREFIXES, WeightsError

__all__ = [
    "ENCODER_CONFIG_FIELDS",
    "HASH_HEX_DIGITS",
    "decoder_hash",
    "encoder_hash",
    "header_hash",
    "seal",
    "decoder_only",
]

#: the first bytes of the encoder hash (SPEC.md section 9.3): over the encoder tensors and z's density
_ENCODER_DOMAIN = b"JAC encoder 2\n"
#: the first bytes of the older encoder hash, over the encoder tensors only, which a reader still accepts
_ENCODER_DOMAIN_WITHOUT_DENSITY = b"JAC encoder 1\n"
#: fields of the architecture (``config``) that only the encoder uses
ENCODER_CONFIG_FIELDS = ("lambdas",)
#: the hex digits of each hash a manifest records (SPEC.md section 9.3)
HASH_HEX_DIGITS = 2 * WEIGHTS_HASH_BYTES


def _is_decoder(name: str) -> bool:
    return name.startswith(DECODER_PREFIXES)


def _is_encoder(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def _canonical(t: torch.Tensor, name: str = "a tensor") -> torch.Tensor:
    """A tensor's values in the dtype the hashes use: int64 for integers, float32 for floats.

    The decoder and encoder hashes are over values, not storage: a decoder file may keep a tensor in
    any dtype that holds its values exactly (:func:`decoder_only`) and still carries the same hash. A
    tensor whose values that dtype does not hold exactly (float64 values between float32's, as the decoder
    reads ``int.*`` and ``table.*``) raises :class:`WeightsError`: two such files would share a hash.
    """
    if t.dtype not in _HASHED_DTYPES:
        raise WeightsError(f"{name} is stored as {t.dtype}, which no weights file uses (SPEC.md section 9.3)")
    t = t.detach().contiguous().cpu()
    canonical = t.to(torch.float32 if t.is_floating_point() else torch.int64)
    if t.dtype not in _EXACTLY_WIDENED and not torch.equal(canonical.to(t.dtype), t):
        raise WeightsError(
            f"{name} holds {t.dtype} values that {canonical.dtype} does not hold exactly, "
            "which the hashes cannot tell apart (SPEC.md section 9.3)"
        )
    return canonical


#: dtypes whose every value the canonical dtype (float32 or int64) holds: their cast needs no check
_EXACTLY_WIDENED = frozenset(
    (torch.float16, torch.bfloat16, torch.float32)  # to float32
    + (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # to int64; not bool: no tensor is one
)
#: the dtypes a weights file's tensors may have: those, and float64 where its values are float32's
_HASHED_DTYPES = _EXACTLY_WIDENED | {torch.float64}


def _little_endian_bytes(t: torch.Tensor):
    """A contiguous CPU tensor's values as a bytes-like array, each value little-endian on any host."""
    if not t.numel():
        return b""
    raw = t.reshape(-1).view(torch.uint8)
    if sys.byteorder == "big" and t.element_size() > 1:
        raw = raw.view(-1, t.element_size()).flip(1).reshape(-1)
    return raw.numpy()  # hashed in place, not copied


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _sealed_hash(domain: bytes, fields: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(domain)
    h.update(_canonical_json(fields))
    for name in sorted(tensors):
        t = _canonical(tensors[name], name)
        h.update(f"\n{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        h.update(_little_endian_bytes(t))
    return h.hexdigest()[:HASH_HEX_DIGITS]


def decoder_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The hex hash of what a decoder runs (SPEC.md section 9.3).

    SHA-256 over ``JAC decoder 1``, the canonical JSON of the decoding fields of the manifest
    (``model_id``, ``config`` less :data:`ENCODER_CONFIG_FIELDS`, ``integer_networks``,
    ``legacy_weights_hash``) and, sorted by name, every decoder tensor's name, shape and values (int64
    or float32); the first 8 bytes, as 16 hex digits. Encoder tensors and z's density are not in it.
    """
    config = {k: v for k, v in json.loads(metadata["config"]).items() if k not in ENCODER_CONFIG_FIELDS}
    fields = {
        "model_id": metadata["model_id"],
        "config": config,
        "integer_networks": json.loads(metadata["integer_networks"]),
        "legacy_weights_hash": metadata.get("legacy_weights_hash"),
    }
    return _sealed_hash(b"JAC decoder 1\n", fields, {k: v for k, v in tensors.items() if _is_decoder(k)})


def encoder_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, density: bool = True) -> str:
    """The hex hash of what the encoder reads beside the decoder (SPEC.md section 9.3).

    Its tensors, z's float density (the search's estimate of z's rate) and the lambda ladder it optimises.
    ``density=False``: the older form over the encoder tensors and the ladder only, which
    :func:`pillow_jac.weights_manifest.verify` still accepts in a manifest.
    """
    config = json.loads(metadata["config"])
    fields = {k: config.get(k) for k in ENCODER_CONFIG_FIELDS}
    hashed = {k: v for k, v in tensors.items() if _is_encoder(k) or (density and k.startswith(Z_DENSITY_PREFIXES))}
    return _sealed_hash(_ENCODER_DOMAIN if density else _ENCODER_DOMAIN_WITHOUT_DENSITY, fields, hashed)


def header_hash(metadata: dict[str, str]) -> str:
    """The ``weights_hash`` a generation writes into ``.jac`` headers (SPEC.md section 9.3).

    A generation released before decoder hashes existed keeps the hash its files already carry,
    recorded as ``legacy_weights_hash``; every later generation uses its :func:`decoder_hash`.
    """
    return metadata.get("legacy_weights_hash") or metadata["decoder_hash"]


def seal(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """``metadata`` with its layout and hashes (re)computed for ``tensors``.

    For an encoder update of a released generation, the decoder tensors and decoding fields are
    unchanged, so ``decoder_hash`` and ``weights_hash`` come out the same: check that they do.

    Example:
        >>> import json, torch
        >>> meta = {"model_id": "m", "config": json.dumps({"M": 6, "lambdas": [0.1]}), "integer_networks": "{}"}
        >>> a = seal({"int.x": torch.ones(2, dtype=torch.int16), "float.g_a.w": torch.zeros(2)}, meta)
        >>> b = seal({"int.x": torch.ones(2, dtype=torch.int16), "float.g_a.w": torch.ones(2)}, meta)
        >>> a["weights_hash"] == b["weights_hash"], a["encoder_hash"] == b["encoder_hash"]
        (True, False)
    """
    out = dict(metadata)
    out["layout"] = "full" if any(_is_encoder(k) for k in tensors) else "decoder"
    out["decoder_hash"] = decoder_hash(tensors, out)
    if out["layout"] == "full":
        out["encoder_hash"] = encoder_hash(tensors, out)
    else:
        out.pop("encoder_hash", None)
    out["weights_hash"] = header_hash(out)
    return out


def decoder_only(tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """The tensors and manifest of a generation's decoder file: no encoder, compact storage.

    Each tensor is stored in the smallest dtype that holds its values exactly (float16 where every
    value is a float16, integers in the narrowest signed type), so decoding, and both hashes, stay
    the same (SPEC.md section 9.2).
    """
    out = {}
    for name, t in tensors.items():
        if not _is_decoder(name):
            continue
        t = t.detach().contiguous().cpu()
        if t.is_floating_point():
            half = t.to(torch.float16)
            t = half if torch.equal(half.to(t.dtype), t) else t
        else:
            for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
                info = torch.iinfo(dtype)
                if t.numel() == 0 or (int(t.min()) >= info.min and int(t.max()) <= info.max):
                    t = t.to(dtype)
                    break
        out[name] = t
    meta = {k: v for k, v in metadata.items() if k != "encoder_hash"}
    meta["layout"] = "decoder"
    meta = seal(out, meta)
    if meta["decoder_hash"] != metadata.get("decoder_hash", meta["decoder_hash"]):
        raise WeightsError("the decoder file would not decode as the full file does")
    return out, meta
