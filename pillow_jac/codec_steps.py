"""The steps every encode and decode path shares, and the codec's errors.

Used by :mod:`pillow_jac.codec`, :mod:`pillow_jac.codec_batch`, :mod:`pillow_jac.targets` and
:mod:`pillow_jac.target_search`: the engine of a file's generation or of an encode, a parsed file from
what the caller gave, latents to coded streams and back (CODING.md section 2), the alpha plane (SPEC.md
section 5.1) and the array of a file's layout (CODING.md section 1.4).

Torch is imported only inside the functions that run the model, after :func:`guarded_engine`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

import numpy as np

from . import container, generations, interpreter_exit
from .codec_inputs import buffer_bytes, check_model
from .constants import ALPHA_LAYOUTS, GRAY_LAYOUTS
from .forksafe import setting_up
from .size_limit import check_declared_size


class CodecError(ValueError, OSError):
    """A file cannot be decoded here: its generation is not installed, it is too large, or torch is half-imported.

    A :class:`ValueError`, and an :class:`OSError` as Pillow reports an image it cannot decode. A damaged
    file raises the container's :class:`~pillow_jac.container.JacDataError` and a stream that does not decode
    :class:`~pillow_jac.entropy_coding.EntropyCodingError`, both also ValueError and OSError (SPEC.md 8.2).
    """


class ModelNotInstalledError(CodecError, generations.ModelNotInstalledError):
    """The generation a file names (``model_id`` and ``weights_hash``) is not installed (SPEC.md 9.2).

    Also :class:`pillow_jac.generations.ModelNotInstalledError` (a :class:`LookupError`), so that either
    class catches a generation that is missing, whichever part of the package found it.
    """


def transforms():
    """:mod:`pillow_jac.image_transforms` (imported with torch, by :func:`guarded_engine` first)."""
    from . import image_transforms

    return image_transforms


def refuse_half_imported_torch() -> None:
    """Raise :class:`CodecError` if an earlier import of torch in this process failed part-way or was interrupted.

    Ctrl-C during the first encode or decode can land in torch's import (1-3 s). Python then drops
    ``torch`` from ``sys.modules`` but keeps the submodules it had imported, and torch's native
    libraries stay loaded: importing it again raised AttributeError, ImportError or SystemError, or
    crashed the process with a segmentation fault, losing everything else it held. The half-import
    shows as ``torch.*`` modules without ``torch``; refusing then keeps the process alive.
    """
    if "torch" not in sys.modules and any(name.startswith("torch.") for name in list(sys.modules)):
        raise CodecError(
            "an earlier import of torch in this process failed or was interrupted (Ctrl-C?), and importing it "
            "again can crash the process: restart Python to encode or decode .jac files (if the first error was "
            "not an interrupt, torch's installation needs repair)"
        )


#: what torch's CPU allocator says when an allocation fails (it raises a plain RuntimeError; a GPU's
#: allocator raises torch.OutOfMemoryError)
_ALLOCATION_FAILED = ("DefaultCPUAllocator: can't allocate memory",)


@contextlib.contextmanager
def allocation_errors_as_memory_errors(width: int, height: int):
    """Turn torch's failed allocations into :class:`MemoryError`, naming the image size.

    A file may declare up to twice Pillow's pixel limit (about 179 megapixels), which needs several GB to
    decode; where they are not there, torch's CPU allocator raised a bare ``RuntimeError`` out of the
    codec (found by fuzzing: a 115 kB file declaring 13376 x 13376 pixels).
    """
    try:
        yield
    except RuntimeError as exc:
        out_of_memory = getattr(sys.modules.get("torch"), "OutOfMemoryError", ())
        if not (isinstance(exc, out_of_memory) or any(text in str(exc) for text in _ALLOCATION_FAILED)):
            raise
        raise MemoryError(
            f"not enough memory to code a {width}x{height} image ({width * height / 1e6:.1f} megapixels): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


#: the codec's modules that import torch, imported by :func:`guarded_engine` before a first engine (and
#: preloaded by ``jac batch``'s fork server, :data:`pillow_jac.local_batch._WORKER_PRELOAD`)
TORCH_MODULES = (
    "pillow_jac.image_transforms", "pillow_jac.latent_coding", "pillow_jac.stripes", "pillow_jac.engine",
    "pillow_jac.model.refine",
)  # fmt: skip


def guarded_engine(device, weights):
    """:func:`pillow_jac.engine.get_engine`, the codec's torch modules imported first, where a fork waits.

    Every path that runs the model gets its engine here first, so a fork in another thread never copies a
    half-imported torch module's held import lock, nor a half-built engine (pillow_jac/forksafe.py).
    Torch's first import here gets OpenMP's passive wait policy (:mod:`pillow_jac.openmp_wait`).
    A process whose import of torch was interrupted gets :class:`CodecError` (:func:`refuse_half_imported_torch`).
    """
    from .forksafe import note_codec_thread

    with setting_up():
        from .openmp_wait import passive_unless_chosen

    refuse_half_imported_torch()
    note_codec_thread()  # a fork waits for this thread's native clean-up once it has ended
    with setting_up(), passive_unless_chosen():
        for name in TORCH_MODULES:  # imported now, under the guard
            importlib.import_module(name)
        from .engine import get_engine
    interpreter_exit.watch()  # after torch's import, so the exit waits for daemon threads before torch's handlers
    with interpreter_exit.working():
        return get_engine(device, weights)


def decoder_engine(jac: container.JacFile, device, weights):
    """The engine of the generation the file names: the installed one, or the ``weights`` file given."""
    from . import generations

    h = jac.header
    if weights is None:
        try:
            copies = generations.copies(h.model_id, h.weights_hash)
        except generations.ModelNotInstalledError as exc:
            raise ModelNotInstalledError(str(exc)) from None
        return _first_that_loads([gen.path for gen in copies], device, "decoding", (h.model_id, h.weights_hash))
    engine = guarded_engine(device, weights)
    if h.model_id != engine.model_id or h.weights_hash != engine.weights_hash:
        raise ModelNotInstalledError(
            f"this file needs decoder {h.model_id!r} (weights {h.weights_hash.hex()}), but the weights file "
            f"given holds {engine.model_id!r} ({engine.weights_hash.hex()})"
        )
    return engine


def _first_that_loads(paths: list, device, doing: str, identity: tuple[str, bytes] | None = None):
    """The engine of the first of a generation's files that loads; a damaged one is passed over with a warning.

    The listing reads manifests only (:mod:`pillow_jac.generations`): a copy whose tensors do not match its
    hashes, or that does not parse, is found here, and the next copy of the same generation decodes instead.
    ``identity``: the ``(model_id, weights_hash)`` the engine must have; a file replaced by another generation
    since it was listed (a release, an ``rsync`` into ``JAC_MODELS``) is passed over, never decodes.
    """
    first = None
    for i, path in enumerate(paths):
        key = _file_key(path)
        if key in _DAMAGED and i < len(paths) - 1:  # warned of once in this process
            continue
        try:
            engine = guarded_engine(device, path)
            if identity is None or (engine.model_id, engine.weights_hash) == identity:
                return engine
            first = first or ModelNotInstalledError(
                f"weights file {path} was replaced while it was read: it now holds {engine.model_id!r} (weights "
                f"{engine.weights_hash.hex()}), not {identity[0]!r} ({identity[1].hex()}); try again"
            )
        except OSError as exc:
            # a WeightsError comes from a loaded weights module; one not yet imported is not imported here (it
            # imports torch, which may be what failed)
            loaded = sys.modules.get(f"{__package__}.weights")
            if loaded is None or not isinstance(exc, loaded.WeightsError):
                raise
            first = first or exc
            if i < len(paths) - 1 and key not in _DAMAGED:
                warnings.warn(f"{exc}; {doing} with another copy of its generation", stacklevel=4)
            _DAMAGED.add(key)
    raise first


#: the weights files found damaged when loaded, by :func:`_file_key`
_DAMAGED: set[tuple] = set()


def _file_key(path) -> tuple:
    """A file's identity for :data:`_DAMAGED`: its path, size and modification time (a replaced file is new)."""
    try:
        st = os.stat(path)
    except OSError:
        return (os.fspath(path),)
    return (os.fspath(path), st.st_size, st.st_mtime_ns)


def encoder_engine(device, weights, model):
    """The engine that encodes: the ``weights`` file, else the installed generation ``model``, else the newest."""
    from . import generations

    check_model(model)
    if weights is None:
        try:
            chosen = generations.encoder(model)
            paths = [chosen.path]  # JAC_WEIGHTS, when it names the encoder, has no stand-in
            if os.path.normpath(os.environ.get("JAC_WEIGHTS") or ".") != os.path.normpath(chosen.path):
                copies = generations.copies(chosen.model_id, chosen.weights_hash)
                paths = [gen.path for gen in copies if gen.can_encode]
        except generations.ModelNotInstalledError as exc:
            raise ModelNotInstalledError(str(exc)) from None
        engine = _first_that_loads(paths, device, "encoding")
    else:
        engine = guarded_engine(device, weights)
    if model is not None and engine.model_id != model:
        raise ValueError(f"the weights file {weights} holds {engine.model_id!r}, not the model {model!r} asked for")
    if not engine.can_encode:
        raise ModelNotInstalledError(f"{engine.model_id!r} is installed as a decoder only: it cannot encode")
    return engine


def parse_input(data) -> container.JacFile:
    """A parsed file from a :class:`~pillow_jac.container.JacFile`, bytes-like data, or a path.

    A :class:`~pillow_jac.container.JacFile` given is held to the rules the reader holds every ``JHDR`` to
    (:func:`~pillow_jac.container.check_header`, SPEC.md section 3), so that one built or changed in memory
    whose latent shapes are not those of its width and height is refused, as such a file is, before the pixel
    limit (checked on the width and height) and the decode (sized by the latent shapes) rely on them.
    Anything else goes to :func:`~pillow_jac.codec_inputs.buffer_bytes`, which takes any bytes-like object (an
    ``mmap.mmap``, a 1-D uint8 array...) and refuses the rest.
    """
    if isinstance(data, container.JacFile):
        container.check_header(data.header)
        return data
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            return container.read_file(f)
    data = buffer_bytes(data)
    try:
        return container.parse(data)
    except container.NotJacFileError as exc:
        looks_like_path = os.sep.encode() in data or data.lower().endswith(b".jac")
        if len(data) < 4096 and b"\0" not in data and looks_like_path:
            raise container.NotJacFileError(f"{exc}: bytes are the file's data; a path as bytes? give "
                                            "os.fsdecode(path)") from None  # fmt: skip
        raise


def checked_file(data, *, alpha: bool = True) -> tuple[container.JacFile, np.ndarray | None]:
    """``(file, alpha plane or None)`` of what a decode was given, checked as far as it can be without a model.

    :func:`parse_input`, then a refusal above twice Pillow's pixel limit before anything is allocated
    (:mod:`pillow_jac.size_limit`, as :class:`CodecError`), and above the limit Pillow's
    ``DecompressionBombWarning`` for bytes and paths (a parsed :class:`~pillow_jac.container.JacFile` is what
    the Pillow plugin and ``jac decode`` hand over, having warned at their open already), then (with ``alpha``)
    the alpha plane, which must decompress to the image's size (SPEC.md section 5.1; None without ``alpha`` or
    for a file without one), then a y stream of whole 32-bit words (CODING.md section 2.4: the z stream's length
    matters only to a model with a hyperprior, which reads it). A damaged file is so refused before torch and
    the weights load.
    """
    with setting_up():  # a first import (constriction): a fork meanwhile waits (pillow_jac/forksafe.py)
        from .entropy_coding import check_whole_words

    jac = parse_input(data)
    warn = not isinstance(data, container.JacFile)
    check_declared_size(jac.header.width, jac.header.height, error=CodecError, warn=warn)
    plane = alpha_plane(jac) if alpha else None  # first: every decode path checks the alpha plane before the streams
    check_whole_words(jac.y_stream)
    return jac, plane


def file_and_decoder(data, device, weights, *, alpha: bool = True):
    """``(file, engine)`` of what a decode was given: :func:`checked_file`, then :func:`decoder_engine`.

    For a caller that decodes the alpha plane later (a batch holds none of them while it checks every file),
    so that a file with one decompresses it twice (milliseconds a megapixel).
    """
    jac, _ = checked_file(data, alpha=alpha)
    return jac, decoder_engine(jac, device, weights)


def analyze_image(
    color: np.ndarray, quality: float, engine, effort: int = 0
) -> tuple[tuple[np.ndarray | None, np.ndarray], tuple[bytes, bytes] | None]:
    """g_a and h_a on the padded image, then rounding (or refinement): the latents ``(z_hat, y_hat)``.

    Returned with their coded streams where the effort's real check coded them, else None
    (:func:`pillow_jac.image_transforms.symbols`); :func:`streams_of` takes both.
    """
    steps = transforms()
    y = steps.analyze(engine, [color])
    y, z = steps.hyper_analyze(engine, y, quality, color.shape[0] * color.shape[1])
    return steps.symbols(engine, y, z, quality, effort, color)


def encode_latents(engine, z_hat: np.ndarray | None, y_hat: np.ndarray) -> tuple[bytes, bytes]:
    """The coded streams ``(z, y)`` of integer latents (CODING.md section 2), counted as torch work."""
    return transforms().coded(engine, z_hat, y_hat)


def streams_of(
    engine, latents: tuple[np.ndarray | None, np.ndarray], streams: tuple[bytes, bytes] | None
) -> tuple[bytes, bytes]:
    """The coded streams ``(z, y)`` of latents: ``streams`` where choosing the latents coded them, else theirs.

    The arguments are what :func:`analyze_image` and :func:`pillow_jac.image_transforms.symbols` return; an
    encode so codes its latents once (:func:`encode_latents` only where nothing coded them yet).
    """
    return streams if streams is not None else encode_latents(engine, *latents)


def decode_latents(jac: container.JacFile, engine) -> tuple[np.ndarray | None, np.ndarray]:
    """The exact integer latents ``(z_hat, y_hat)`` of a parsed file's streams (CODING.md section 2)."""
    import torch

    h = jac.header
    with torch.inference_mode(), transforms().torch_work(h.height * h.width, engine, coding=True):
        return engine.latents.decode(jac.z_stream, jac.y_stream, h.z_shape, h.y_shape)


def alpha_plane(jac: container.JacFile) -> np.ndarray | None:
    """The lossless alpha plane of a file, ``(H, W)`` uint8, or None (SPEC.md section 5.1)."""
    h = jac.header
    if h.layout not in ALPHA_LAYOUTS:
        return None
    raw = container.decompress_alpha(jac.alpha_method, jac.alpha, h.width, h.height)
    return np.frombuffer(raw, np.uint8).reshape(h.height, h.width)


def to_layout(rgb: np.ndarray, layout: str, alpha: np.ndarray | None) -> np.ndarray:
    """Decoded colour planes (and alpha) as the array of the file's layout.

    Grey is ``(299 R + 587 G + 114 B + 500) // 1000`` (CODING.md section 1.4).
    """
    if layout in GRAY_LAYOUTS:  # in place in uint32 (at most 255500): two planes of temporaries, no more
        gray = rgb[:, :, 0].astype(np.uint32)
        gray *= 299
        term = rgb[:, :, 1].astype(np.uint32)
        term *= 587
        gray += term
        term[...] = rgb[:, :, 2]
        term *= 114
        gray += term
        gray += 500
        gray //= 1000
        color = gray.astype(np.uint8)
    else:
        color = rgb
    if alpha is None:
        return np.ascontiguousarray(color)
    out = np.empty((*color.shape[:2], (1 if color.ndim == 2 else color.shape[2]) + 1), np.uint8)
    out[:, :, :-1] = color.reshape(*color.shape[:2], -1)
    out[:, :, -1] = alpha
    return out
