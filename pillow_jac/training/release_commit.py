"""How a release puts its files in place (SPEC.md section 9.2): staged files, the commit, and its repair.

:func:`commit` renames the staged vectors folder, full weights file and table of released generations into
place, all three or (on an error) none; SIGINT and SIGTERM wait for it. Before its first rename it writes a
commit marker (:data:`MARKER_NAME` in the weights folder: the new generation's ``model_id`` and hashes, the
digests of its vectors, the generation it follows and where that one's decoder is kept), and removes it after
the last. A process killed outright between two renames (SIGKILL, the OOM killer, a power cut) leaves the
marker: :func:`read_marker` finds it, :func:`refuse_other_commit` keeps any other release from going over it,
and the same release run again checks what is in place against it and does the renames left.
Staged and backup files have hidden names ending in ``.tmp`` (ignored by git and by the generations'
listing); :func:`sweep` removes those a killed release left.
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
from ..files import _sync_folder
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


def sweep(weights_dir: Path, vectors_dir: Path, new_id: str, backups: bool = True) -> None:
    """Remove the staged files and folders of ``new_id`` and the staged commit markers that a killed release left.

    ``backups``: the full file's backups too, only where no commit is cut short (one is then the old full file's
    only copy outside git).
    """
    found = [*weights_dir.glob(f".{new_id}.*"), *weights_dir.glob(f".{MARKER_NAME}.*")]
    found += vectors_dir.glob(f".{new_id}.*")
    if backups:
        found += weights_dir.glob(f".{generations.DEFAULT_WEIGHTS_NAME}.*.old*")
    for leftover in found:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by its path there: what a commit marker records of the vectors."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_marker(weights_dir: Path) -> dict | None:
    """The commit marker a release killed during its commit left in ``weights_dir``, or None."""
    path = weights_dir / MARKER_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} (a release's commit marker) is unreadable: {exc}") from None
    if not isinstance(record, dict) or not {"model_id", "release", "weights_hash", "vectors"} <= set(record):
        raise WeightsError(f"{path} is not a release's commit marker")
    return record


def refuse_other_commit(record: dict, new_meta: dict[str, str], weights_dir: Path) -> None:
    """Refuse a release while the marker ``record`` names another one (another ``model_id`` or other hashes)."""
    if all(record.get(k) == new_meta[k] for k in ("model_id", "weights_hash", "decoder_hash")):
        return
    raise WeightsError(
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


def commit(
    vectors: Path | None,
    vectors_to: Path,
    full: Path | None,
    full_to: Path,
    table: Path | None,
    table_to: Path,
    backup: Path | None,
    record: dict,
) -> None:
    """Rename the staged vectors, shipped file and table into place: all three, or (on an error) none.

    Only renames remain (every file is written and synced before), SIGINT and SIGTERM wait until the end,
    and a rename that fails undoes the ones before it (the shipped file comes back from ``backup``). The
    commit marker ``record`` is in ``full_to``'s folder from before the first rename until after the last
    and the folders' syncs, so the renames survive a power cut; a failure whose undoing fails leaves it.
    None: that one is in place.
    """
    marker = full_to.parent / MARKER_NAME
    with signals_deferred():
        os.replace(staged_text(marker, json.dumps(record, indent=2) + "\n"), marker)
        _sync_folder(marker.parent)
        undo = []
        try:
            if vectors is not None:
                vectors.rename(vectors_to)
                undo.append(lambda: vectors_to.rename(vectors))
            if full is not None:
                os.replace(full, full_to)
                undo.append(lambda: os.replace(backup, full_to) if backup is not None else full_to.unlink())
            if table is not None:
                os.replace(table, table_to)
        except BaseException:
            for step in reversed(undo):
                step()
            marker.unlink()
            raise
        for folder in dict.fromkeys((vectors_to.parent, full_to.parent, table_to.parent)):
            _sync_folder(folder)
        marker.unlink()
        _sync_folder(marker.parent)


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
