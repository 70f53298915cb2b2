"""Weights files: safetensors (no pickle), a manifest in the header, and the hashes that seal them.

A weights file holds up to four groups of tensors (SPEC.md section 9.2):

* the **decoder** (:data:`DECODER_PREFIXES`): ``int.*``, the integer networks of the exact entropy
  path (CODING.md section 3); ``table.*``, the integer coding tables (CODING.md section 2); and the
  float synthesis ``float.g_s.*`` with the inverse gains ``float.log_inverse_gain``;
* the **encoder** (:data:`ENCODER_PREFIXES`): ``float.g_a.*``, ``float.h_a.*``, ``float.log_gain``;
* the float factorized prior of z, ``float.z_density.*`` (:data:`Z_DENSITY_PREFIXES`): the z tables were
  made from it when the generation was frozen, and the encoder's search estimates z's rate with it. The
  float masters of the integer networks are not stored: :func:`pillow_jac.engine.build_model` recovers them.

A *full* file has all of them; a *decoder* file (a kept generation) has only the decoder. The
safetensors metadata carries the manifest, checked by :func:`read_manifest`: ``model_id``, the
architecture (``config``, JSON), the integer networks' layer layout (``integer_networks``), the
``layout``, and three hashes. ``decoder_hash`` covers exactly what a decoder runs (the decoder
tensors and every manifest field that changes decoding, :func:`decoder_hash`); ``encoder_hash``
covers what else the encoder reads (:func:`encoder_hash`); ``weights_hash`` is the 8 bytes written into every
``.jac`` header, the generation's name beside ``model_id`` (:func:`header_hash`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .constants import MODEL_ID_BYTES, WEIGHTS_HASH_BYTES, WEIGHTS_LAYOUTS, is_model_id, is_release_number
from .files import write_atomic
from .model.integer import LAYER_FIELDS, LAYER_KINDS, IntegerLayer, IntegerNetwork

__all__ = [
    "DECODER_PREFIXES",
    "ENCODER_PREFIXES",
    "Z_DENSITY_PREFIXES",
    "FLOAT_PREFIX",
    "INT_PREFIX",
    "integer_tensors",
    "read_integer_network",
    "Manifest",
    "strip_prefix",
    "save_float_state",
    "load_weights",
    "save_weights",
    "content_hash",
    "decoder_hash",
    "encoder_hash",
    "header_hash",
    "seal",
    "read_manifest",
    "verify",
    "decoder_only",
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
#: tensor-name prefixes of the decoder: what a decoder runs (SPEC.md section 9.2)
DECODER_PREFIXES = (INT_PREFIX, TABLE_PREFIX, f"{FLOAT_PREFIX}g_s.", f"{FLOAT_PREFIX}log_inverse_gain")
#: tensor-name prefixes of the encoder: an encoder update may change these and nothing else
ENCODER_PREFIXES = (f"{FLOAT_PREFIX}g_a.", f"{FLOAT_PREFIX}h_a.", f"{FLOAT_PREFIX}log_gain")
#: tensor-name prefixes of z's float density: the z tables were made from it at freeze time, and the encoder's
#: search estimates z's rate with it; an encoder update keeps it (the tables are the decoder's)
Z_DENSITY_PREFIXES = (f"{FLOAT_PREFIX}z_density.",)
#: the first bytes of the encoder hash (SPEC.md section 9.3): over the encoder tensors and z's density
_ENCODER_DOMAIN = b"JAC encoder 2\n"
#: the first bytes of the older encoder hash, over the encoder tensors only, which a reader still accepts
_ENCODER_DOMAIN_WITHOUT_DENSITY = b"JAC encoder 1\n"
#: the stored dtype of each tensor of an integer layer (compact: CODING.md section 3 bounds their values)
_INTEGER_DTYPES = {"weight": torch.int16, "bias": torch.int64, "shift": torch.int8}
#: fields of the architecture (``config``) that only the encoder uses
ENCODER_CONFIG_FIELDS = ("lambdas",)
#: the integer networks a model has, by the config flag that brings them (None: always)
_INTEGER_NETWORKS = {"entropy_parameters": None, "h_s": "hyperprior", "context": "context"}
_HASH_HEX = 2 * WEIGHTS_HASH_BYTES
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
    """
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            if torch.device(device).type == "cpu":
                tensors = {k: t.clone() for k, t in tensors.items()}
            tensors = strip_prefix(tensors, prefix)
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return tensors, metadata


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` atomically, a replaced file keeping its mode (:func:`files.write_atomic`)."""
    data = safetensors_bytes({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_atomic(path, lambda f: f.write(data))


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
        h.update(_little_endian_bytes(t))
    return h.digest()[:WEIGHTS_HASH_BYTES]


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
    + (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # to int64
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
    return h.hexdigest()[:_HASH_HEX]


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
    ``density=False``: the older form over the encoder tensors and the ladder only, which :func:`verify`
    still accepts in a manifest.
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
        if not (isinstance(value, str) and len(value) == _HASH_HEX and all(c in "0123456789abcdef" for c in value)):
            return f"{key} must be {_HASH_HEX} lower-case hex digits, got {value!r}"
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
    release = metadata.get("release")
    if release is not None and not is_release_number(release):
        return f"release must be a number, got {release!r}"
    return None


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
        release=int(metadata["release"]) if metadata.get("release") else None,
    )


def verify(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path = "weights") -> Manifest:
    """Check a weights file's manifest, its hashes against its tensors, and a released generation's decoder.

    Raises:
        WeightsError: the manifest is incomplete, a hash does not match the tensors, or the file claims a
            released generation (:func:`pillow_jac.generations.released`) with another decoder.
    """
    manifest = read_manifest(metadata, path)
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
    from .generations import released_problem

    legacy = metadata.get("legacy_weights_hash")
    problem = released_problem(manifest.model_id, manifest.weights_hash, manifest.decoder_hash, legacy)
    if problem is not None:  # a re-sealed lookalike of a released generation (SPEC.md sections 9.2, 9.3)
        raise WeightsError(f"weights file {path} is refused: {problem}")
    return manifest


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
