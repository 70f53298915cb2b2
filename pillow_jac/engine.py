"""The loaded model: shipped weights on a device, built once per (weights, device) and cached.

torch is imported by this module, which the codec imports lazily, on the first real encode or decode
(and the command line's device check and the training tools, which need torch anyway). Device choice:
the ``device`` argument, else the ``JAC_DEVICE`` environment variable (``cpu``, ``cuda``, ``cuda:N`` or
``auto``), else ``cpu``. The default never initialises
CUDA, so it is safe in forked worker processes (a CUDA context does not survive ``fork``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from stat import S_ISREG

import torch
from torch import nn

from . import generations
from .constants import DEVICE_CHOICES, MEAN_STEPS, SCALE_LEVELS
from .forksafe import fork_safe_lock, setting_up
from .generations import DEFAULT_WEIGHTS_NAME, default_weights_path
from .model.integer import IntegerNetwork, dequantize_into, float_template
from .model.layers import SubpixelDeconv
from .model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from .weights import (
    ENCODER_PREFIXES,
    FLOAT_PREFIX,
    MIXTURE_EXP,
    SCALE_THRESHOLDS,
    Z_DENSITY_PREFIXES,
    WeightsError,
    WeightsNotFoundError,
    load_weights,
    read_integer_network,
    read_table,
    require_integers,
    strip_prefix,
)
from .weights_manifest import verify

__all__ = [
    "Engine",
    "get_engine",
    "forget",
    "build_model",
    "load_model",
    "resolve_device",
    "default_weights_path",
    "DEFAULT_WEIGHTS_NAME",
]

_CACHE: dict[tuple, Engine] = {}
_LOCK = fork_safe_lock()  # held while an engine is built (about a second): see forksafe


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on (see module docstring).

    ``device`` is a ``str`` (:data:`~pillow_jac.constants.DEVICE_CHOICES`), a ``torch.device``, or None for
    the default: ``JAC_DEVICE``, else ``cpu``. An empty (or blank) ``JAC_DEVICE`` counts as unset, as an
    empty ``JAC_WEIGHTS`` or ``JAC_MODELS`` does; an empty (or blank) ``device`` is refused, since None is
    how an argument asks for the default.

    Raises:
        TypeError: ``device`` is of another type (the message names it).
        ValueError: an empty, unknown or unsupported device, or CUDA where there is none.

    Example:
        >>> str(resolve_device("cpu"))
        'cpu'
    """
    if device is None:
        choice = os.environ.get("JAC_DEVICE", "").strip() or "cpu"
    elif isinstance(device, torch.device):
        choice = str(device)
    elif not isinstance(device, str):
        raise TypeError(f"device must be a str, a torch.device or None, not {type(device).__name__}")
    elif not device.strip():
        raise ValueError(f"device {device!r} is empty: use {DEVICE_CHOICES}, or None for the default")
    else:
        choice = device
    # an error names where an unexpected choice came from: a user who passed no device may not know the variable
    whose = "" if device is not None else f" (JAC_DEVICE={choice})"
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(choice)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown device {choice!r}{whose}: use {DEVICE_CHOICES}") from exc
    if resolved.type not in ("cpu", "cuda"):  # meta, mps, xla...: the codec is built and tested for these two
        raise ValueError(f"device {choice!r}{whose} is not supported: use {DEVICE_CHOICES}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CUDA was requested{whose} but is not available")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"{choice!r}{whose} does not exist: this machine has {count} CUDA device(s)")
    return resolved


#: model parameters a decoder file leaves out: the encoder's and z's float density
_NOT_IN_DECODER_FILES = tuple(p.removeprefix(FLOAT_PREFIX) for p in ENCODER_PREFIXES + Z_DENSITY_PREFIXES)


def build_model(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], networks: dict[str, IntegerNetwork] | None = None
) -> JointAutoregressiveHierarchicalPrior:
    """The float model of a weights file's tensors: ``float.*``, plus float masters recovered from ``int.*``.

    ``networks`` are the file's integer networks when the caller has built them already (by name), so
    that they are not built and checked a second time.

    A shipped file stores h_s, the context model and g_ep only as integer networks (float parameters of
    them beside raise :class:`WeightsError`); their float parameters are recovered with
    :func:`~pillow_jac.model.integer.dequantize_into`. A training
    file (``float.*`` only) loads as it is. A decoder file (``layout`` ``decoder``) has no encoder
    and no z density: those stay as initialised and must not be used. Any other parameter found
    in neither raises :class:`WeightsError`, and so does a tensor of the wrong shape.
    """
    try:
        config = ModelConfig(**json.loads(metadata["config"]))
        floats = {k: v.float() for k, v in strip_prefix(tensors, FLOAT_PREFIX).items()}  # a decoder file may hold fp16
        templates = json.loads(metadata.get("integer_networks", "{}"))
        # the layers' random initialisation, overwritten below, must not move the caller's torch generator;
        # float32 whatever default dtype the caller set (float64 layers would refuse g_s's float32 input)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # not a default device the caller set
            model = JointAutoregressiveHierarchicalPrior(config).float()
        doubled = sorted({k.split(".")[0] for k in floats} & set(templates))
        if doubled:  # the encoder's search would run the floats, the decoder the integers: no hash binds the two
            raise WeightsError(f"{', '.join(doubled)}: float parameters beside the integer network")
        missing, unexpected = model.load_state_dict(floats, strict=False)
        for name, template in templates.items():
            if template != float_template(getattr(model, name)):
                raise WeightsError(f"integer network {name!r}: its layers are not those of the config's architecture")
            prefix = name + "."
            if any(k.startswith(prefix) for k in missing):
                network = (networks or {}).get(name) or read_integer_network(tensors, name, template)
                dequantize_into(network, getattr(model, name))
                missing = [k for k in missing if not k.startswith(prefix)]
    except (KeyError, TypeError, ValueError, RuntimeError, RecursionError) as exc:
        raise WeightsError(f"weights do not fit their manifest: {exc}") from exc
    if metadata.get("layout") == "decoder":
        missing = [k for k in missing if not k.startswith(_NOT_IN_DECODER_FILES)]
    if missing or unexpected:
        raise WeightsError(f"weights do not fit the model {config}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model


def load_model(path: str | Path) -> JointAutoregressiveHierarchicalPrior:
    """The float model of a shipped weights file or a training ``float.safetensors`` (on the CPU), whole.

    Raises:
        WeightsError: besides :func:`build_model`'s reasons, ``path`` is a decoder file (a kept generation's:
            no encoder, no z density), whose model would start training or tuning from untrained values.

    Example:
        >>> model = load_model(default_weights_path())
        >>> model.config.M
        192
    """
    tensors, metadata = load_weights(path)
    if metadata.get("layout") == "decoder":
        raise WeightsError(f"{path} is a decoder file, with no encoder: give its generation's full weights file")
    return build_model(tensors, metadata)


class Engine:
    """One generation on one device: the float transforms (g_a, h_a, g_s, gains) and its latent coder."""

    def __init__(self, path: Path, device: torch.device):
        # the range coder is imported here, not at the top: the float model (build_model, load_model)
        # must load where constriction is not installed, such as a GPU machine that only trains
        from . import entropy_coding, latent_coding

        tensors, metadata = load_weights(path)
        manifest = verify(tensors, metadata, path)
        self.model_id = manifest.model_id
        self.weights_hash = bytes.fromhex(manifest.weights_hash)
        #: the hash of the encoder's tensors (weights_hashes.encoder_hash): an encoder update changes it and
        #: keeps ``weights_hash``; None for a decoder file
        self.encoder_hash: str | None = manifest.encoder_hash
        #: False for a decoder file (a kept generation): it decodes, but has no encoder
        self.can_encode = manifest.can_encode
        self.device = device
        templates = json.loads(metadata["integer_networks"])
        try:  # built and checked once: the float model's masters are recovered from these too
            networks = {name: read_integer_network(tensors, name, t) for name, t in templates.items()}
        except ValueError as exc:
            raise WeightsError(f"weights file {path} is damaged: {exc}") from None
        try:
            model = build_model(tensors, metadata, networks)
        except WeightsError as exc:  # such as an entropy model this version does not have
            from . import __version__

            raise WeightsError(f"weights file {path} cannot be used by pillow_jac {__version__}: {exc}") from None
        self.config = model.config
        self.model = model.to(device).eval()
        if device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        #: g_s for decoding; its last layer (3 outputs) runs as a sub-pixel convolution, twice as fast
        self.synthesis = nn.Sequential(*self.model.g_s[:-1], SubpixelDeconv(self.model.g_s[-1]).to(device))

        def network(name: str) -> IntegerNetwork | None:
            net = networks.get(name)
            if net is not None:
                for layer in net.layers:
                    layer.weight, layer.bias = layer.weight.to(device), layer.bias.to(device)
            return net

        def tables(prefix: str, count: int) -> entropy_coding.CodingTables | None:
            """``prefix``'s tables (CODING.md 2.1: ``count`` of them, of integers), None where the file has none."""
            found = read_table(tensors, prefix)
            if found is None:
                return None
            made = entropy_coding.CodingTables(*(t.numpy() for t in found))
            if len(made) != count:
                raise ValueError(f"{len(made)} {prefix} coding tables where the model codes with {count}")
            return made

        try:
            y_tables = tables("y", SCALE_LEVELS * MEAN_STEPS)
            z_tables = tables("z", self.config.N)
            thresholds = require_integers(SCALE_THRESHOLDS, tensors[SCALE_THRESHOLDS])
        except KeyError as exc:
            raise WeightsError(f"weights file {path} is damaged: it has no tensor {exc}") from None
        except ValueError as exc:
            raise WeightsError(f"weights file {path} is damaged: {exc}") from None
        if y_tables is None:
            raise WeightsError(f"weights file {path} is damaged: it has no y coding tables")
        if self.config.hyperprior and z_tables is None:  # the other way round: LatentCoder's check
            raise WeightsError(f"weights file {path} is damaged: a model with a hyperprior needs z coding tables")
        #: the latent coder: integer latents <-> streams (:class:`~pillow_jac.latent_coding.LatentCoder`)
        parts = (network("h_s"), network("context"), network("entropy_parameters"), thresholds)
        mixture = self._mixture_coder(tensors, y_tables) if self.config.entropy == "gmm" else None
        try:
            self.latents = latent_coding.LatentCoder(
                *parts, y_tables, z_tables, self.config.M, device, self.config.entropy, mixture
            )
        except ValueError as exc:
            raise WeightsError(f"weights file {path} is damaged: {exc}") from None

    @staticmethod
    def _mixture_coder(tensors: dict[str, torch.Tensor], y_tables):
        """The mixture coder of a ``gmm`` model, from its y tables and shipped exponential table."""
        from .mixture_coding import MixtureCoder

        if MIXTURE_EXP not in tensors:
            raise WeightsError(f"a gmm model needs the tensor {MIXTURE_EXP}")
        try:
            return MixtureCoder(y_tables, require_integers(MIXTURE_EXP, tensors[MIXTURE_EXP]).numpy())
        except ValueError as exc:
            raise WeightsError(str(exc)) from exc

    def gains(self, quality: float, inverse: bool = False) -> torch.Tensor:
        """The ``(1, M, 1, 1)`` gain vector of a stored quality (CODING.md section 1.2); ``inverse`` for decoding."""
        return self.model.gains(torch.tensor([quality], dtype=torch.float64), inverse=inverse)


def get_engine(device: str | torch.device | None = None, weights: str | Path | None = None) -> Engine:
    """The cached :class:`Engine` for a device and weights file (built on first use, thread-safe).

    Without ``weights``, the default encoder's file (:func:`pillow_jac.generations.encoder`).
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:  # "cuda" and "cuda:0" are one engine, not two copies of the model
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cpu":  # an index means nothing on the CPU: "cpu:1" is "cpu", not another copy of the model
        dev = torch.device("cpu")
    if weights is not None and not os.fspath(weights):
        raise ValueError("weights is an empty path: name a weights file, or give None for the installed generation")
    path = Path(weights) if weights is not None else generations.encoder().path
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise WeightsNotFoundError(f"weights file not found: {path} (set JAC_WEIGHTS to its location)") from None
    if path.is_dir():
        raise WeightsError(f"weights file {path} is a folder, not a weights file")
    if not S_ISREG(stat.st_mode):  # a FIFO would block the read for ever, a device give endless bytes
        raise WeightsError(f"weights file {path} is not a regular file")
    # the file's identity includes its modification time, so a re-frozen file is reloaded
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(dev))
    # a fork waits for a build in another thread: a child copied in the middle of one would hang (forksafe)
    with setting_up(), _LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            from .intra_op_threads import single_threaded

            # a few hundred small ops: on 2 cores with another busy process, 0.3 s on one thread, 0.7-2 s on two
            with single_threaded(), torch.device(dev):  # not a default device the caller set
                engine = Engine(path, dev)
            for older in [k for k in _CACHE if (k[0], k[3]) == (key[0], key[3])]:  # the file as it was before
                del _CACHE[older]
            _CACHE[key] = engine
        return engine


def forget(weights: str | Path) -> None:
    """Drop the cached engines of the weights file ``weights`` (on every device), so that their memory can go.

    A program that measures many weights files one after another (an encoder fine-tune's candidates) calls it
    for each file it is done with; a later :func:`get_engine` of the file builds it again.
    """
    resolved = str(Path(weights).resolve())
    with setting_up(), _LOCK:
        for key in [k for k in _CACHE if k[0] == resolved]:
            del _CACHE[key]
