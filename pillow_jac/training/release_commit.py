"""How a release puts its files in place (SPEC.md section 9.2): staged files, the commit, and its repair.

:func:`commit` renames the staged vectors folder, full weights file and table of released generations into
place, all three or (on an error) none; SIGINT and SIGTERM wait for it. A process killed outright between
two renames (SIGKILL, the OOM killer, a power cut) leaves part of them done: :func:`in_place` tells which,
:func:`finish` does the last one, and :func:`refuse_unfinished` keeps another release from going over it.
Staged and backup files have hidden names ending in ``.tmp`` (ignored by git and by the generations'
listing); :func:`sweep` removes those a killed release left.
"""

from __future__ import annotations

import contextlib
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


def sweep(weights_dir: Path, vectors_dir: Path, new_id: str) -> None:
    """Remove the staged files and folders of ``new_id``, and the full file's backups, that a killed release left."""
    backups = weights_dir.glob(f".{generations.DEFAULT_WEIGHTS_NAME}.*.old*")
    for leftover in [*weights_dir.glob(f".{new_id}.*"), *backups, *vectors_dir.glob(f".{new_id}.*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def in_place(full: Path, target_vectors: Path, new_meta: dict[str, str]) -> tuple[bool, bool]:
    """Which of this release's renames a killed commit did: (the full file is this generation, its vectors are there).

    The full file counts only when its tensors match its hashes and it is the generation ``new_meta`` describes.
    """
    vectors = (target_vectors / "vectors.json").is_file()
    gen = generations.generation_of(full) if full.is_file() else None
    if gen is None or gen.model_id != new_meta["model_id"]:
        return False, vectors
    try:
        manifest = verify(*load_weights(full), full)
    except (WeightsError, OSError, ValueError):
        return False, vectors
    same = (manifest.weights_hash, manifest.decoder_hash) == (new_meta["weights_hash"], new_meta["decoder_hash"])
    return same, vectors


def refuse_unfinished(full: Path, vectors_dir: Path, listed: dict, new_id: str) -> None:
    """Refuse a release while the full file is another release's whose commit was cut short (not in the table)."""
    gen = generations.generation_of(full) if full.is_file() else None
    if gen is None or gen.model_id == new_id or gen.model_id in listed:
        return
    if (vectors_dir / gen.model_id / "vectors.json").is_file():
        raise WeightsError(
            f"{full} holds {gen.model_id}, which the table of released generations does not list: its release "
            f"was cut short; finish it first by running it again (the same checkpoint, --release {gen.release})"
        )


def finish(table_path: Path, new_id: str, new_meta: dict[str, str]) -> None:
    """Add ``new_id`` to the table by one rename: the last step of a commit that was cut short."""
    staged = staged_table(table_path, new_id, new_meta)
    try:
        with signals_deferred():
            os.replace(staged, table_path)
            _sync_folder(table_path.parent)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def commit(
    vectors: Path | None,
    vectors_to: Path,
    full: Path,
    full_to: Path,
    table: Path,
    table_to: Path,
    backup: Path | None,
) -> None:
    """Rename the staged vectors, shipped file and table into place: all three, or (on an error) none.

    Only renames remain (every file is written and synced before), SIGINT and SIGTERM wait until the end,
    and a rename that fails undoes the ones before it (the shipped file comes back from ``backup``). The
    folders are synced after, so the renames survive a power cut. ``vectors`` None: they are in place.
    """
    with signals_deferred():
        if vectors is not None:
            vectors.rename(vectors_to)
        try:
            os.replace(full, full_to)
            try:
                os.replace(table, table_to)
            except BaseException:
                if backup is not None:
                    os.replace(backup, full_to)
                else:
                    full_to.unlink(missing_ok=True)
                raise
        except BaseException:
            if vectors is not None:
                vectors_to.rename(vectors)
            raise
        for folder in dict.fromkeys((vectors_to.parent, full_to.parent, table_to.parent)):
            _sync_folder(folder)


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
