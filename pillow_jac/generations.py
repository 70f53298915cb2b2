"""The installed decoder generations: which weights file decodes a file, and which one encodes.

A *generation* is a frozen decoder named by a ``model_id`` and the 8-byte ``weights_hash`` that its
files carry in their header (SPEC.md section 9). Once released, what it decodes never changes:
improvements ship as *encoder updates* (same decoder, same hash: old and new files interchangeable)
or as a new generation installed beside the old ones.

Weights files are found, in this order:

1. ``JAC_WEIGHTS``, if set: one weights file, also the default encoder;
2. every ``*.safetensors`` in the directories of ``JAC_MODELS`` (``os.pathsep``-separated), so that
   an old generation can be kept when a later package stops shipping it;
3. the package's own ``weights/`` folder: the newest generation as a full file, and the decoder
   files of the kept generations in ``weights/generations/``.

The first full file found for a generation wins, else its first decoder file. Only the manifest is
read here (the safetensors header, parsed as JSON without torch), so listing generations and ``jac
info`` stay cheap; the engine checks every hash when it loads a file (:func:`pillow_jac.weights_manifest.verify`).

The package's table of released generations (:mod:`pillow_jac.release_rules`) pins every released
generation's ``weights_hash`` and ``decoder_hash``. A weights file that claims a released generation's
``weights_hash`` with another decoder is skipped here, with a warning, and refused when loaded. A file with a
released ``model_id`` and a ``weights_hash`` of its own is another generation (one built locally before that
``model_id`` was released): it decodes the files that name its own hash, and only those, and it encodes only
when its file is named (``JAC_WEIGHTS`` or ``weights=``): of the generations of one release the pinned one
encodes (SPEC.md section 9.2).
A file shorter than its header says, or empty, is skipped too, and a copy whose tensors do not match its
hashes gives way to the next copy of its generation when it is loaded, so a damaged copy does not hide a good
one.

Example:
    >>> [g.model_id for g in installed()][:1]
    ['mbt-128-192-r006']
    >>> encoder().can_encode
    True
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from .constants import MODEL_ID_BYTES, WEIGHTS_LAYOUTS, is_model_id
from .forksafe import fork_safe_lock
from .release_rules import (  # public here too: callers import them from this module
    RELEASED_PATH,
    ReleasedTableError,
    is_pinned,
    read_released_table,
    release_in,
    release_problem,
    released,
    released_problem,
)

__all__ = [
    "Generation",
    "ModelNotInstalledError",
    "ReleasedTableError",
    "installed",
    "generation_of",
    "find",
    "copies",
    "models_path_problems",
    "encoder",
    "package_weights_dir",
    "package_weights_bytes",
    "PACKAGE_BUDGET_BYTES",
    "default_weights_path",
    "DEFAULT_WEIGHTS_NAME",
    "KEPT_DIR",
    "RELEASED_PATH",
    "released",
    "read_released_table",
    "released_problem",
    "release_in",
    "release_problem",
    "MAX_WEIGHTS_BYTES",
]

#: the full weights file of the newest generation, in the package's weights folder
DEFAULT_WEIGHTS_NAME = "mbt2018-n128m192.safetensors"
#: the subfolder of the package's weights folder that holds the kept generations' decoder files
KEPT_DIR = "generations"
#: the most bytes of weights the wheel ships: the newest generation's full file (29.4 MB for
#: N=128/M=192) plus the kept generations' decoder files (19.2 MB each), so three kept generations fit.
#: No generation leaves the package (its files would stop decoding after an upgrade): a release that
#: would go over is refused (pillow_jac.training.release); decoders are found only in the package's weights
#: folder, JAC_WEIGHTS and the JAC_MODELS folders
PACKAGE_BUDGET_BYTES = 100_000_000
#: a safetensors header larger than this is not a weights file of ours (ours are ~10 kB): a bigger one costs
#: every listing its parse
_MAX_HEADER = 1 << 20
#: the most bytes a weights file may be, header and tensors (ours: 29.4 MB for N=128/M=192, a training
#: checkpoint about as much; safetensors requires the header's tensors to end where the file ends, so this
#: bounds what the header declares). A larger file is skipped when listed and refused before any tensor is read
#: (:func:`pillow_jac.weights.load_weights`, SPEC.md section 9.2)
MAX_WEIGHTS_BYTES = 1 << 29


#: JAC_WEIGHTS values already warned about as decoder-only files
_WARNED_DECODER_ONLY: set[str] = set()
#: default encoders already warned about as generations this package did not release
_WARNED_UNRELEASED: set[str] = set()


class ModelNotInstalledError(LookupError):
    """No installed generation has the requested ``model_id`` (and hash)."""


@dataclass(frozen=True)
class Generation:
    """One installed weights file and the generation it holds.

    Attributes:
        model_id: the generation's name (the header's ``model_id``).
        weights_hash: the 8 bytes its files carry in the header.
        release: the release number its ``model_id`` ends with (:func:`release_in`), or None.
        can_encode: True for a full file, False for a decoder file.
        path: where the file is.
        size: the file's size in bytes.
        encoder_hash: the manifest's ``encoder_hash`` (a full file), else None.
    """

    model_id: str
    weights_hash: bytes
    release: int | None
    can_encode: bool
    path: Path
    size: int
    encoder_hash: str | None = None

    @property
    def role(self) -> str:
        """What it does here: ``encode+decode``, ``decode only``, or ``decode; encodes only as JAC_WEIGHTS``.

        The last for another generation of a released ``model_id`` (SPEC.md section 9.2).
        """
        if not self.can_encode:
            return "decode only"
        if self.model_id in released() and not is_pinned(self.model_id, self.weights_hash.hex()):
            return "decode; encodes only as JAC_WEIGHTS"
        return "encode+decode"

    def describe(self) -> str:
        """One line: id, hash, what it can do (:attr:`role`), where it is."""
        return f"{self.model_id} ({self.weights_hash.hex()}, {self.role}, {self.size / 1e6:.1f} MB) {self.path}"


def package_weights_dir() -> Path:
    """The package's weights folder: ``pillow_jac/_weights`` in a wheel, else ``weights/`` beside the package."""
    here = Path(__file__).resolve().parent
    inside = here / "_weights"
    return inside if inside.is_dir() else here.parent / "weights"


def package_weights_bytes() -> int:
    """Bytes of every weights file the package ships (held to :data:`PACKAGE_BUDGET_BYTES`).

    The files the listing reads (:func:`installed`): the full file and the kept decoder files, not the hidden
    files a release stages.
    """
    folder = package_weights_dir()
    files = [folder / DEFAULT_WEIGHTS_NAME, *_weights_files(folder / KEPT_DIR)]
    return sum(f.stat().st_size for f in files if f.exists())


def default_weights_path() -> Path:
    """``JAC_WEIGHTS`` if set, else the newest generation's full file in the package's weights folder."""
    env = os.environ.get("JAC_WEIGHTS")
    return Path(env) if env else package_weights_dir() / DEFAULT_WEIGHTS_NAME


def _header(path: Path) -> tuple[dict[str, str], int] | None:
    """The safetensors metadata of ``path`` and the file size its header declares, or None if unreadable.

    Only a regular file is opened (a FIFO or a device named ``*.safetensors`` would block or never end);
    a header nested too deeply for the JSON parser is unreadable too.
    """
    try:
        if not S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return None
    try:  # every tensor's data must lie inside the file: the largest end offset declares its size
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return None  # not a safetensors header
    return meta, 8 + size + max(ends, default=0)


#: weights files already warned about (skipped as lookalikes of a released generation, or as truncated)
_WARNED_SKIPPED: set[str] = set()
#: why each weights file listed in this process was skipped, by path (for the error of a file none decodes)
_SKIPPED: dict[str, str] = {}


def _skip(path: Path, why: str) -> None:
    _SKIPPED[str(path)] = why
    if str(path) not in _WARNED_SKIPPED:
        _WARNED_SKIPPED.add(str(path))
        warnings.warn(f"weights file {path} is skipped: {why}", stacklevel=4)


_CACHE: dict[tuple, Generation | None] = {}
_CACHE_LOCK = fork_safe_lock()


def generation_of(path: Path) -> Generation | None:
    """The generation of one weights file (cached by path, size and modification time), or None.

    None when ``path`` is not a readable weights file with a manifest, is empty, is shorter than its header
    declares or larger than :data:`MAX_WEIGHTS_BYTES`, has a ``release`` that its ``model_id`` does not end
    with, or claims a released generation's hash with another decoder (a warning says which, SPEC.md
    section 9.2). ``release`` is the number the ``model_id`` ends with (:func:`release_in`).
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    meta, declared = _header(path) or (None, 0)
    if stat.st_size == 0 and S_ISREG(stat.st_mode):
        _skip(path, _empty_reason(path))
    if meta is not None:
        if declared > stat.st_size:
            problem = f"it is {stat.st_size} bytes, shorter than the {declared} its header declares (damaged)"
        elif meta.get("layout") not in WEIGHTS_LAYOUTS:  # as weights_manifest.read_manifest requires
            problem = f"its manifest's layout is {meta.get('layout')!r}, not one of {', '.join(WEIGHTS_LAYOUTS)}"
        elif not (isinstance(meta.get("model_id"), str) and is_model_id(meta["model_id"])):  # shown in listings
            problem = f"its model_id {meta.get('model_id')!r} is not 1 to {MODEL_ID_BYTES} printable ASCII characters"
        elif stat.st_size > MAX_WEIGHTS_BYTES:
            problem = f"it is {stat.st_size} bytes, more than any weights file ({MAX_WEIGHTS_BYTES})"
        elif release_problem(meta) is not None:
            problem = release_problem(meta)
        else:
            names = ("model_id", "weights_hash", "decoder_hash", "legacy_weights_hash")
            problem = released_problem(*(str(meta.get(name)) for name in names))
        if problem is not None:
            _skip(path, problem)
            meta = None
    gen = None
    if meta is not None:
        try:
            gen = Generation(
                model_id=str(meta["model_id"]),
                weights_hash=bytes.fromhex(meta["weights_hash"]),
                release=release_in(meta["model_id"]),
                can_encode=meta["layout"] == "full",
                path=path,
                size=stat.st_size,
                encoder_hash=str(meta["encoder_hash"]) if meta["layout"] == "full" and "encoder_hash" in meta else None,
            )
        except (KeyError, ValueError, TypeError):
            gen = None
    if gen is not None:
        _SKIPPED.pop(str(path), None)  # a file skipped before and repaired since
    with _CACHE_LOCK:
        _CACHE[key] = gen
    return gen


def _empty_reason(path: Path) -> str:
    """Why the empty file ``path`` is skipped: in the package's kept folder, a decoder file that travel set aside."""
    why = "it is empty (0 bytes)"
    try:
        kept = path.resolve().parent == (package_weights_dir() / KEPT_DIR).resolve()
    except OSError:
        kept = False
    if kept:
        why += (
            ": a kept decoder file set aside by `python -m pillow_jac.training.travel set-aside`; "
            "`python -m pillow_jac.training.travel put-back` restores it"
        )
    return why


def _candidates() -> list[Path]:
    paths = []
    env = os.environ.get("JAC_WEIGHTS")
    if env:
        paths.append(Path(env))
    for folder in filter(None, os.environ.get("JAC_MODELS", "").split(os.pathsep)):
        paths.extend(_weights_files(Path(folder)))
    own = package_weights_dir()
    paths.append(own / DEFAULT_WEIGHTS_NAME)
    paths.extend(_weights_files(own / KEPT_DIR))
    return paths


def _weights_files(folder: Path) -> list[Path]:
    """The ``*.safetensors`` files of ``folder``, sorted, but for hidden ones.

    A release's staged files, whose names start with a dot, are not generations until renamed into place.
    """
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))


def models_path_problems() -> list[str]:
    """What is wrong with each ``JAC_MODELS`` entry that names no folder: a file, or nothing at all."""
    problems = []
    for folder in filter(None, os.environ.get("JAC_MODELS", "").split(os.pathsep)):
        if os.path.isfile(folder):
            problems.append(f"JAC_MODELS entry {folder} is a file: name the folder that holds it")
        elif not os.path.isdir(folder):
            problems.append(f"JAC_MODELS entry {folder}: no such folder")
    return problems


def _copies() -> dict[tuple[str, bytes], list[Generation]]:
    """Every file of every installed generation, by generation: full files first, each kind in search order."""
    found: dict[tuple[str, bytes], list[Generation]] = {}
    for path in _candidates():
        gen = generation_of(path)
        if gen is not None:
            found.setdefault((gen.model_id, gen.weights_hash), []).append(gen)
    return {key: sorted(gens, key=lambda g: not g.can_encode) for key, gens in found.items()}


def installed() -> list[Generation]:
    """Every installed generation once, in search order: its first full file, else its first decoder file."""
    return [gens[0] for gens in _copies().values()]


def find(model_id: str, weights_hash: bytes) -> Generation:
    """The installed generation that decodes files stamped ``(model_id, weights_hash)``: its first copy.

    Raises:
        ModelNotInstalledError: none is installed; the message names the model and how to get it.
    """
    return copies(model_id, weights_hash)[0]


def copies(model_id: str, weights_hash: bytes) -> list[Generation]:
    """Every installed file of the generation ``(model_id, weights_hash)``, the one :func:`installed` lists first.

    The listing reads manifests only: a copy whose tensors turn out damaged when loaded gives way to the next
    (:func:`pillow_jac.codec_steps.decoder_engine`), so a damaged copy does not hide a good one.

    Raises:
        ModelNotInstalledError: none is installed; the message names the model and how to get it.
    """
    found = _copies()
    if (model_id, bytes(weights_hash)) in found:
        return found[(model_id, bytes(weights_hash))]
    gens = [gens[0] for gens in found.values()]
    same_id = [g for g in gens if g.model_id == model_id]
    have = ", ".join(f"{g.model_id} ({g.weights_hash.hex()})" for g in gens) or "none"
    why = (
        f"the installed {model_id!r} has another hash ({same_id[0].weights_hash.hex()}): the file is damaged "
        "or was made by an unreleased build"
        if same_id
        else "it is not installed"
    )
    problems = "".join(f" ({problem})" for problem in models_path_problems())
    skipped = [f"{path} ({_SKIPPED[str(path)]})" for path in _candidates() if str(path) in _SKIPPED]
    if skipped:
        why += f"; skipped: {'; '.join(skipped)}"
    raise ModelNotInstalledError(
        f"this file needs decoder {model_id!r} (weights {bytes(weights_hash).hex()}), but {why}. "
        f"Installed: {have}. To decode it, install a pillow_jac release that ships {model_id!r}, or put its "
        f"weights file in a directory named by the JAC_MODELS environment variable{problems}."
    )


def _pinned(gen: Generation) -> bool:
    """Whether ``gen`` is the generation the released table pins for its ``model_id`` (SPEC.md section 9.2)."""
    return is_pinned(gen.model_id, gen.weights_hash.hex())


def _another_of_released(gen: Generation) -> bool:
    """Whether ``gen`` has a released ``model_id`` and a hash of its own: it never encodes by default."""
    return gen.model_id in released() and not _pinned(gen)


def _warn_unreleased(gen: Generation, why: str) -> None:
    """Warn, once per file and process (not once per image), that ``gen`` encodes but was not released."""
    if str(gen.path) not in _WARNED_UNRELEASED:
        _WARNED_UNRELEASED.add(str(gen.path))
        warnings.warn(
            f"encoding for {gen.model_id!r} ({gen.path}), {why}: its files decode only where that weights file "
            "is installed (model=, jac encode --model or JAC_WEIGHTS chooses another)",
            stacklevel=3,
        )


def encoder(model_id: str | None = None) -> Generation:
    """The generation that encodes: ``model_id`` if given, else the default (newest) encoder.

    The default is the ``JAC_WEIGHTS`` file if set, else the full file with the highest release (the number
    its ``model_id`` ends with, which the decoder hash covers: :func:`release_in`). Of generations with equal
    release numbers, and of those named ``model_id``, the one the released table pins encodes; a generation
    with a released ``model_id`` and a hash of its own encodes only when ``JAC_WEIGHTS`` names it, with a
    warning (SPEC.md section 9.2).

    Raises:
        ModelNotInstalledError: ``model_id`` cannot encode here, or ``JAC_WEIGHTS`` names no weights file
            (a mistyped path is not silently replaced by another model; a decoder-only file there is a
            generation that decodes, and the newest full file encodes, with a warning), or the only full
            files there are hold generations of a released ``model_id`` with hashes of their own (the
            message names them and ``JAC_WEIGHTS``).
    """
    gens = [g for g in installed() if g.can_encode]
    others = [g for g in gens if _another_of_released(g)]
    if model_id is None:
        env = os.environ.get("JAC_WEIGHTS")
        if env:
            chosen = [g for g in gens if g.path == Path(env)]
            gen = chosen[0] if chosen else generation_of(Path(env))
            if gen is not None and gen.can_encode:  # chosen, or the same file reached by another path
                if _another_of_released(gen):
                    _warn_unreleased(
                        gen, "named by JAC_WEIGHTS, a generation of a released model_id that is not the released one"
                    )
                return gen
            if gen is None:
                why = "no such file" if not Path(env).exists() else "not a weights file"
                why = _SKIPPED.get(str(Path(env)), why)  # a truncated file or a lookalike says so
                raise ModelNotInstalledError(f"JAC_WEIGHTS={env}: {why}")
            if env not in _WARNED_DECODER_ONLY:  # once per process, not once per file of a batch
                _WARNED_DECODER_ONLY.add(env)
                warnings.warn(  # a decoder generation (SPEC.md 9.2): it decodes; the newest full file encodes
                    f"JAC_WEIGHTS={env} is a decoder-only file: encoding with the newest full weights file instead",
                    stacklevel=2,
                )
        candidates = [g for g in gens if g not in others]
        if candidates:
            chosen = max(candidates, key=lambda g: (-1 if g.release is None else g.release, _pinned(g)))
            if not _pinned(chosen):
                _warn_unreleased(chosen, "the newest generation installed but not one this package released")
            return chosen
        where = package_weights_dir() / DEFAULT_WEIGHTS_NAME
        raise ModelNotInstalledError(
            f"no weights file that can encode was found (looked at {where}){_others_note(others)}"
        )
    named = sorted((g for g in gens if g.model_id == model_id), key=lambda g: not _pinned(g))
    if named and named[0] not in others:
        return named[0]
    decoders = [g.model_id for g in installed() if not g.can_encode]
    hint = " (installed as a decoder only: it decodes old files but cannot encode)" if model_id in decoders else ""
    have = ", ".join(g.model_id for g in gens if g not in others) or "none"
    raise ModelNotInstalledError(
        f"model {model_id!r} cannot encode here{hint}; models that encode: {have}{_others_note(named)}"
    )


def _others_note(others: list[Generation]) -> str:
    """What the error of :func:`encoder` says of full files that hold another generation of a released model_id."""
    if not others:
        return ""
    named = "; ".join(
        f"{g.path} holds {g.model_id!r} with weights {g.weights_hash.hex()}, not the released "
        f"{released()[g.model_id]['weights_hash']}"
        for g in others
    )
    return f" ({named}: such a file decodes its own files, and encodes only when JAC_WEIGHTS names it)"
