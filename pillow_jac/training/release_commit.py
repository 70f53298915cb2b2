"""How a release puts its files in place (SPEC.md section 9.2): staged files, the commit, and its repair.

:func:`commit` renames the staged vectors folder, full weights file and table of released generations into
place, all three or (on an error) none; SIGINT and SIGTERM wait for it. Before its first rename it writes a
commit marker (:data:`MARKER_NAME` in the weights folder: the new generation's ``model_id`` and hashes, the
digests of its vectors, the generation it follows and where that one's decoder is kept), and removes it after
the last. A process killed outright between two renames (SIGKILL, the OOM killer, a power cut) leaves the
marker: :func:`read_marker` finds it, :func:`refuse_other_commit` keeps any other release from going over it,
and the same release run again checks what is in place against it and does the renames left.
A marker whose commit is wholly in place (:func:`wholly_in_place`: killed after the last rename) is removed
by any release. Staged and backup files have hidden names ending in ``.tmp`` (ignored by git and by the
generations' listing); :func:`sweep` removes those a killed release left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from .. import generations
from ..files import _sync, _sync_folder, remove_orphaned_temporaries
from ..weights import WeightsError, load_weights
from ..weights_manifest import verify


def released_table(path: Path) -> dict[str, dict[str, str]]:
    """The table at ``path`` (checked, :func:`pillow_jac.generations.read_released_table`), empty if there is none."""
    return generations.read_released_table(path) if path.exists() else {}


def staged_table(table_path: Path, new_id: str, new_meta: dict[str, str]) -> Path:
    """The table with ``new_id`` added, staged beside ``table_path`` (:func:`staged_text`)."""
    entries = {**generations.released(), **released_table(table_path)}
    entries[new_id] = {"weights_hash": new_meta["weights_hash"], "decoder_hash": new_meta["decoder_hash"]}
    return staged_text(table_path, json.dumps(entries, indent=2) + "\n")


MARKER_NAME = ".release-commit.json.tmp"


def sweep(
    weights_dir: Path, vectors_dir: Path, new_id: str, table_path: Path, backups: bool = True, keep: Path | None = None
) -> None:
    """Remove the staged files and folders that a killed release left.

    They are those of ``new_id``, staged commit markers, staged tables beside ``table_path``, and kept decoder
    files staged in the ``generations/`` folder. ``backups``: the full file's backups too, only where no commit
    is cut short (one is then the old full file's only copy outside git). ``keep``: a staged vectors folder that
    a commit cut short still renames into place.
    """
    found = [*weights_dir.glob(f".{new_id}.*"), *weights_dir.glob(f".{MARKER_NAME}.*")]
    found += [*vectors_dir.glob(f".{new_id}.*"), *table_path.parent.glob(f".{table_path.name}.*.tmp")]
    found += (weights_dir / generations.KEPT_DIR).glob(".*.tmp")
    if backups:
        found += weights_dir.glob(f".{generations.DEFAULT_WEIGHTS_NAME}.*.old*")
    for leftover in found:
        if leftover == keep:
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    for folder in (weights_dir, weights_dir / generations.KEPT_DIR, table_path.parent):
        if folder.is_dir():  # the temporary files of a weights file or table written when the release was killed
            remove_orphaned_temporaries(folder)


def digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by its path there: what a commit marker records of the vectors."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


_HASHES = {"model_id": str, "weights_hash": str, "decoder_hash": str}
_MARKER_FIELDS = {**_HASHES, "release": int, "vectors": dict, "old": dict}  # what commit() writes; "old" may be null
_OLD_FIELDS = {**_HASHES, "kept": str, "stable_model": dict}


def _typed(record: object, fields: dict[str, type]) -> bool:
    """Whether ``record`` is a dict of exactly ``fields``' keys, each of its type (a bool is no int)."""
    return (
        isinstance(record, dict)
        and set(record) == set(fields)
        and all(isinstance(record[k], t) and not isinstance(record[k], bool) for k, t in fields.items())
    )


def _strings(mapping: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())


def read_marker(weights_dir: Path) -> dict | None:
    """The commit marker a release killed during its commit left in ``weights_dir``, or None.

    Raises:
        WeightsError: the marker is unreadable, or lacks a field or has one of another type than :func:`commit`
            writes (``old`` is null for a release into a folder without a full file).
    """
    path = weights_dir / MARKER_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} (a release's commit marker) is unreadable: {exc}") from None
    if not (
        isinstance(record, dict)
        and "old" in record
        and _typed({**record, "old": {}}, _MARKER_FIELDS)  # "old" on its own: a dict of _OLD_FIELDS, or null
        and _strings(record["vectors"])
        and (record["old"] is None or (_typed(record["old"], _OLD_FIELDS) and _strings(record["old"]["stable_model"])))
    ):
        raise WeightsError(
            f"{path} is not a release's commit marker: remove it by hand (docs/training_on_a_gpu.md says how)"
        )
    return record


def refuse_other_commit(record: dict, new_meta: dict[str, str], weights_dir: Path) -> None:
    """Refuse a release while the marker ``record`` names another one (another ``model_id`` or other hashes)."""
    if all(record.get(k) == new_meta[k] for k in ("model_id", "weights_hash", "decoder_hash")):
        return
    raise _cut_short(record, weights_dir)


def refuse_any_commit(weights_dir: Path) -> None:
    """Refuse a change to the full file (an encoder update) while a release's commit marker is in ``weights_dir``."""
    record = read_marker(weights_dir)
    if record is not None:
        raise _cut_short(record, weights_dir)


def _cut_short(record: dict, weights_dir: Path) -> WeightsError:
    return WeightsError(
        f"the commit of {record['model_id']} (weights hash {record['weights_hash']}) was cut short, as "
        f"{weights_dir / MARKER_NAME} records: finish it first by running that release again "
        f"(the same checkpoint, --release {record['release']})"
    )


def is_generation(path: Path, meta: dict[str, str]) -> bool:
    """Whether ``path`` is a weights file of the generation ``meta`` names (``model_id`` and both hashes, checked)."""
    gen = generations.generation_of(path) if path.is_file() else None
    if gen is None or gen.model_id != meta["model_id"]:
        return False
    try:
        manifest = verify(*load_weights(path), path)
    except (WeightsError, OSError, ValueError):
        return False
    return (manifest.weights_hash, manifest.decoder_hash) == (meta["weights_hash"], meta["decoder_hash"])


def is_previous(full: Path, old: dict | None) -> bool:
    """Whether ``full`` is the generation a commit marker's ``old`` names; with ``old`` None, whether it is absent."""
    return not full.exists() if old is None else is_generation(full, old)


def nothing_in_place(record: dict, full: Path, table: dict, vectors_to: Path) -> bool:
    """Whether the commit ``record`` names renamed nothing into place.

    That is: the full file is still the generation it follows, the released ``table`` lacks its ``model_id``,
    and its vectors folder ``vectors_to`` holds no vectors.
    """
    return (
        is_previous(full, record["old"])
        and record["model_id"] not in table
        and not (vectors_to / "vectors.json").is_file()
    )


def wholly_in_place(record: dict, weights_dir: Path, vectors_dir: Path, table_path: Path) -> bool:
    """Whether every rename of the commit ``record`` names is done.

    That is: the full file is its generation, the table at ``table_path`` lists it with its hashes, and its
    vectors folder holds the files it made.
    """
    entry = {"weights_hash": record["weights_hash"], "decoder_hash": record["decoder_hash"]}
    folder = vectors_dir / record["model_id"]
    return (
        released_table(table_path).get(record["model_id"]) == entry
        and folder.is_dir()
        and digests(folder) == record["vectors"]
        and is_generation(weights_dir / generations.DEFAULT_WEIGHTS_NAME, record)
    )


def refuse_unnamed_previous(record: dict, weights_dir: Path, full_done: bool) -> None:
    """Refuse to finish the commit ``record`` names, whose ``old`` is null, where a generation it would follow is.

    That is a kept decoder file, or a full file of another generation (``full_done``: it is the new one): the
    marker then cannot be of this folder, and the keeping of the previous generation is unchecked.
    """
    others = sorted((weights_dir / generations.KEPT_DIR).glob("*.safetensors"))
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    others += [full] if full.exists() and not full_done else []
    if others:
        raise WeightsError(
            f"{weights_dir / MARKER_NAME} says {record['model_id']} follows no generation, yet {others[0]} is "
            "there: the marker is not of this folder; recover by hand (docs/training_on_a_gpu.md says how)"
        )


def staged_vectors(vectors_dir: Path, record: dict) -> Path | None:
    """The staged vectors folder of the commit ``record``, holding the files it made; None where they are in place.

    The folder stays under its staged name where a power cut lost its rename.

    Raises:
        WeightsError: neither is there.
    """
    if (vectors_dir / record["model_id"]).exists():
        return None
    for folder in sorted(vectors_dir.glob(f".{record['model_id']}.*.tmp")):
        if folder.is_dir() and not folder.is_symlink() and digests(folder) == record["vectors"]:
            return folder
    raise WeightsError(
        f"neither {vectors_dir / record['model_id']} nor a staged folder beside it holds the vectors the commit of "
        f"{record['model_id']} made: recover by hand (docs/training_on_a_gpu.md says how)"
    )


def remove_if_done(record: dict | None, weights_dir: Path, vectors_dir: Path, table_path: Path) -> dict | None:
    """Remove the marker ``record`` where its commit is wholly in place, saying so; returns ``record`` then, else None.

    Wholly in place: :func:`wholly_in_place`. The killed commit's leftovers go too (:func:`sweep`).
    """
    if record is None or not wholly_in_place(record, weights_dir, vectors_dir, table_path):
        return None
    for folder in (vectors_dir / record["model_id"], vectors_dir, table_path.parent):  # durable before the marker goes
        _sync_folder(folder)
    remove_marker(weights_dir)
    sweep(weights_dir, vectors_dir, record["model_id"], table_path)
    print(f"the commit of {record['model_id']} is wholly in place: removed its marker, {weights_dir / MARKER_NAME}")
    return record


def remove_marker(weights_dir: Path) -> None:
    """Remove the commit marker in ``weights_dir``, durably."""
    (weights_dir / MARKER_NAME).unlink(missing_ok=True)
    _sync_folder(weights_dir)


def commit(
    vectors: Path | None,
    vectors_to: Path,
    full: Path | None,
    full_to: Path,
    table: Path | None,
    table_to: Path,
    backup: Path | None,
    record: dict,
    finishing: bool = False,
) -> None:
    """Rename the staged vectors, shipped file and table into place: all three, or (on an error) none.

    Only renames remain (the staged vectors are synced here, file by file, before the marker is written; the
    full file and the table are synced as written), SIGINT and SIGTERM wait until the end, and a rename that
    fails undoes the ones before it (the shipped file comes back from ``backup``). Each rename's folder is
    synced before the next rename, so after a power cut the renames done are the first ones, in this order. The
    commit marker ``record`` is in ``full_to``'s folder from before the first rename until after the last; a
    failure whose undoing fails leaves it, and so does any failure while ``finishing`` a commit cut short (the
    renames that commit made stay in place, and a rerun finishes them). None: that one is in place.
    """
    marker = full_to.parent / MARKER_NAME
    if vectors is not None:
        _sync_tree(vectors)
    with signals_deferred():
        os.replace(staged_text(marker, json.dumps(record, indent=2) + "\n"), marker)
        _sync_folder(marker.parent)
        undo = []
        try:
            if vectors is not None:
                vectors.rename(vectors_to)
                undo.append(lambda: vectors_to.rename(vectors))
                _sync_folder(vectors_to.parent)
            if full is not None:
                os.replace(full, full_to)
                undo.append(lambda: os.replace(backup, full_to) if backup is not None else full_to.unlink())
                _sync_folder(full_to.parent)
            if table is not None:
                os.replace(table, table_to)
                _sync_folder(table_to.parent)
        except BaseException:
            for step in reversed(undo):
                step()
            if not finishing:
                marker.unlink()
            raise
        remove_marker(marker.parent)


def _sync_tree(folder: Path) -> None:
    """Sync every file under ``folder``, then the folders (the vectors are written without syncing)."""
    inside = sorted(folder.rglob("*"))
    for path in inside:
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                _sync(fd)
            finally:
                os.close(fd)
    for path in [p for p in inside if p.is_dir()] + [folder]:
        _sync_folder(path)


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block ends (they are then delivered), so a commit is not cut short."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def staged_text(path: Path, text: str) -> Path:
    """``text`` written and synced to a temporary file beside ``path``, with ``path``'s mode: renamed in later."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mode_for(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def mode_for(path: Path, replaced: Path) -> None:
    """Give the staged ``path`` the mode of the file it replaces, else the usual mode of a new one."""
    os.chmod(path, replaced.stat().st_mode & 0o777 if replaced.exists() else default_mode(path.is_dir()))


def default_mode(folder: bool = False) -> int:
    """The mode a new file (or folder) gets here: ``0o666`` (``0o777``) less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask
