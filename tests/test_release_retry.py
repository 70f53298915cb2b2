"""Tests of a release cut short (``pillow_jac.training.release``): killed between its renames, while it makes its
vectors, or before its first rename, a rerun of the same release finishes it, and nothing else passes for one."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from pillow_jac import generations, weights
from pillow_jac.engine import build_model
from pillow_jac.training import release, release_commit
from pillow_jac.training.freeze import freeze

from . import test_release
from .test_release import _quick_vectors, leftovers, passing_verdict

package = test_release.package  # the fixture: a package folder of a tiny released generation


def _killed_release(package, monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Release 8, killed at its ``os.replace`` onto ``target`` (:func:`_killed_at`); then the real calls are back,
    with the quick vectors (:func:`_quick_vectors`) the release was made with."""
    killed = _killed_at(monkeypatch, target)
    with pytest.raises(killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.undo()
    _quick_vectors(monkeypatch)


def _killed_at(monkeypatch: pytest.MonkeyPatch, target: Path) -> type[BaseException]:
    """``os.replace`` onto ``target`` ends the release as SIGKILL would: the exception it raises (with a ``kill``
    that raises it from elsewhere) leaves every file as it is, for no rollback or cleanup runs after it."""
    real_replace = release.os.replace

    class Killed(BaseException):
        @staticmethod
        def kill():
            for module, name in ((Path, "unlink"), (Path, "rename"), (release.shutil, "rmtree")):
                monkeypatch.setattr(module, name, lambda *args, **kwargs: None)
            monkeypatch.setattr(release.os, "replace", lambda *args, **kwargs: None)
            raise Killed

    def replace(src, dst):
        if Path(dst) == target:
            Killed.kill()
        return real_replace(src, dst)

    monkeypatch.setattr(release.os, "replace", replace)
    return Killed


@pytest.mark.parametrize("killed_before", ["full file", "table"])
def test_a_release_killed_between_its_renames_is_finished_by_a_retry(package, monkeypatch, killed_before) -> None:
    """SIGKILL, the OOM killer or a power cut between two renames of the commit leaves part of it done, its
    backup and its commit marker; a release of another number is refused (its backup of the old full file kept),
    and the same release run again finishes the commit."""
    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    _killed_release(package, monkeypatch, package.table if killed_before == "table" else package.full)
    assert json.loads(package.table.read_text()) == {}
    assert (package.vectors / "mbt-8-12-r008" / "vectors.json").is_file()
    _ignored_by_git(package)  # the backup of the full file, the staged table, the commit marker
    hidden = sorted(p.name for p in package.weights_dir.iterdir() if p.name.startswith("."))
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short.*--release 8\)"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    assert sorted(p.name for p in package.weights_dir.iterdir() if p.name.startswith(".")) == hidden
    assert not (package.vectors / "mbt-8-12-r009").exists()
    written = package.full.read_bytes()  # an encoder update would replace the file the commit is putting in place
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short.*--release 8\)"):
        release.encoder_update(package.checkpoint, package.weights_dir, {})
    assert package.full.read_bytes() == written
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    _, meta = weights.load_weights(package.full)
    assert meta["model_id"] == "mbt-8-12-r008"
    assert json.loads(package.table.read_text())["mbt-8-12-r008"]["decoder_hash"] == meta["decoder_hash"]
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}  # no backup, marker or stage
    kept = sorted(p.name for p in (package.weights_dir / generations.KEPT_DIR).iterdir())
    assert kept == ["mbt-8-12-r007.safetensors"]  # the new generation is not kept as a decoder of its own


def test_finishing_a_killed_commit_checks_what_is_in_place(package, monkeypatch) -> None:
    """The retry of a commit cut short takes the files in place only as the very ones the commit put there: the
    gate's verdict on these weights, the previous generation's decoder kept, the vectors unchanged and passing
    their check with the new full file; else it is refused and writes nothing."""
    from pillow_jac.engine import build_model
    from pillow_jac.training.gate import measured_model

    measured = measured_model(*freeze(build_model(*weights.load_weights(package.checkpoint)), 0))
    good = passing_verdict(measured, measured_model(*weights.load_weights(package.full)))
    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    killed = _killed_at(monkeypatch, package.table)
    with pytest.raises(killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, good)
    monkeypatch.undo()
    _quick_vectors(monkeypatch)
    table = package.vectors / "mbt-8-12-r008" / "vectors.json"
    kept = package.weights_dir / generations.KEPT_DIR / "mbt-8-12-r007.safetensors"
    listing = sorted(p.name for p in package.weights_dir.rglob("*"))

    def refused(match: str, verdict: dict | None = good) -> None:
        with pytest.raises(weights.WeightsError, match=match):
            release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, verdict)
        assert json.loads(package.table.read_text()) == {}
        assert sorted(p.name for p in package.weights_dir.rglob("*")) == listing

    refused("the gate did not pass", {**good, "passes": False})
    table.write_text('{"x": {}}')
    refused("holds other files than the commit put there")
    table.write_text("{}")
    kept_bytes = kept.read_bytes()
    kept.unlink()
    listing.remove("mbt-8-12-r007.safetensors")
    refused("is not the decoder file of mbt-8-12-r007")
    kept.write_bytes(kept_bytes)
    listing = sorted(p.name for p in package.weights_dir.rglob("*"))
    monkeypatch.setattr(release, "check_vectors", lambda folder, path: [f"{folder.name}/x: latents differ"])
    refused("the vectors in place do not pass their check: mbt-8-12-r008/x: latents differ")
    monkeypatch.setattr(release, "check_vectors", lambda folder, path: [])
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, good)
    assert "mbt-8-12-r008" in json.loads(package.table.read_text())


def test_files_in_place_without_a_commit_marker_are_no_release_to_finish(package, monkeypatch) -> None:
    """The candidate tried as the shipped file, with vectors made for it, is no commit cut short: the release is
    refused (by the gate, else as an existing generation), and the generation it follows stays the shipped one's."""
    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    weights.save_weights(package.full, *freeze(build_model(*weights.load_weights(package.checkpoint)), 8))
    (package.vectors / "mbt-8-12-r008").mkdir(parents=True)
    (package.vectors / "mbt-8-12-r008" / "vectors.json").write_text("{}")
    bad = {"passes": False, "model": {"model_id": "something else"}}
    with pytest.raises(weights.WeightsError, match="the gate did not pass"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, bad)
    with pytest.raises(weights.WeightsError, match="mbt-8-12-r008 is an existing generation"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.table.read_text() == "{}\n"
    assert not (package.weights_dir / generations.KEPT_DIR).exists()


def test_vectors_of_no_generation_are_refused_before_anything_is_written(package, monkeypatch) -> None:
    """Vectors no listed or installed generation decodes (a commit cut short by a tool without commit markers,
    a stray copy) would stay behind a release, failing tests/test_vectors.py: the release is refused."""
    _quick_vectors(monkeypatch)
    (package.vectors / "mbt-8-12-r008").mkdir(parents=True)
    (package.vectors / "mbt-8-12-r008" / "vectors.json").write_text("{}")
    before = package.full.read_bytes()
    with pytest.raises(weights.WeightsError, match="vectors of mbt-8-12-r008, which no released or installed"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == before and not package.table.exists()
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}
    assert not (package.weights_dir / generations.KEPT_DIR).exists()


def test_a_release_killed_before_its_first_rename_is_made_again(package, monkeypatch) -> None:
    """Killed after writing its commit marker, before any rename: another release is refused, and the same one,
    run again, finds nothing in place and makes the release afresh."""
    _quick_vectors(monkeypatch)
    killed = _killed_at(monkeypatch, package.table)
    monkeypatch.setattr(Path, "rename", lambda *args, **kwargs: killed.kill())  # the vectors folder's rename
    with pytest.raises(killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.undo()
    _quick_vectors(monkeypatch)
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}


def _ignored_by_git(package) -> None:
    """Every hidden name the release left in the weights and vectors folders is one git ignores there."""
    import shutil
    import subprocess

    folders = {"weights": package.weights_dir, "format_spec/vectors": package.vectors}
    names = {(f, p.name) for f, path in folders.items() for p in path.iterdir() if p.name.startswith(".")}
    assert names
    repo = Path(release.__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    for folder, name in names:
        done = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{folder}/{name}"], check=False)
        assert done.returncode == 0, f"{folder}/{name} is not ignored by git"


def test_a_release_killed_while_making_vectors_leaves_only_what_git_ignores(package, monkeypatch) -> None:
    """The staged full file and vectors folder of a killed release are ignored by git; the retry removes them."""
    killed = _killed_at(monkeypatch, package.table)

    def make(out, *args, **kwargs):
        killed.kill()

    monkeypatch.setattr(release, "_load_script", lambda name: types.SimpleNamespace(make=make))
    with pytest.raises(killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.undo()
    assert len([p for p in package.weights_dir.iterdir() if p.name.startswith(".")]) == 1  # the staged full file
    _ignored_by_git(package)
    _quick_vectors(monkeypatch)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}


def test_each_rename_of_a_commit_is_durable_before_the_next(package, monkeypatch) -> None:
    """The commit syncs each rename's folder before the next rename, so a power cut keeps the renames in their
    order (a later one never without an earlier one): the vectors, then the full file, then the table."""
    _quick_vectors(monkeypatch)
    targets = {package.vectors / "mbt-8-12-r008": "vectors", package.full: "full", package.table: "table"}
    folders = {package.vectors: "vectors", package.weights_dir: "full", package.table.parent: "table"}
    events = []
    real_replace, real_rename, real_sync = release_commit.os.replace, Path.rename, release_commit._sync_folder

    def logged(real):
        def call(src, dst):
            events.append(("rename", targets.get(Path(dst))))
            return real(src, dst)

        return call

    def sync(folder):
        events.append(("sync", folders.get(Path(folder))))
        real_sync(folder)

    monkeypatch.setattr(release_commit.os, "replace", logged(real_replace))
    monkeypatch.setattr(Path, "rename", logged(real_rename))
    monkeypatch.setattr(release_commit, "_sync_folder", sync)
    release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    renames = [i for i, (kind, what) in enumerate(events) if kind == "rename" and what is not None]
    assert [events[i][1] for i in renames] == ["vectors", "full", "table"]
    for i in renames:
        assert events[i + 1] == ("sync", events[i][1]), events


def _marker(package) -> dict:
    return json.loads((package.weights_dir / release_commit.MARKER_NAME).read_text())


@pytest.mark.parametrize("persisted", ["full file", "table"])
def test_a_power_cut_that_lost_the_vectors_rename_is_finished_by_a_rerun(package, monkeypatch, persisted) -> None:
    """A power cut that kept a later rename but not the vectors' (a file system that does not keep their order):
    the rerun of the same release takes the new generation in place as a commit to finish and renames the staged
    vectors folder holding the files the commit made into place; another release is refused until then."""
    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    _killed_release(package, monkeypatch, package.table)
    (package.vectors / "mbt-8-12-r008").rename(package.vectors / ".mbt-8-12-r008.lost.tmp")
    if persisted == "table":  # the full file's rename lost too, the table's kept
        os.replace(next(package.weights_dir.glob(f".{generations.DEFAULT_WEIGHTS_NAME}.*.old.tmp")), package.full)
        record = _marker(package)
        entry = {k: record[k] for k in ("weights_hash", "decoder_hash")}
        package.table.write_text(json.dumps({"mbt-8-12-r008": entry}))
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short.*--release 8\)"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    record = _marker(package)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert generations.generation_of(package.full).model_id == "mbt-8-12-r008"
    assert "mbt-8-12-r008" in json.loads(package.table.read_text())
    assert release_commit.digests(package.vectors / "mbt-8-12-r008") == record["vectors"]
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}  # no marker, stage or backup


def test_a_first_release_killed_after_its_vectors_rename_is_finished_by_a_rerun(package, monkeypatch) -> None:
    """A release into a weights folder without a full file (its marker follows no generation), killed after the
    vectors' rename: the rerun puts the full file and the table in place."""
    package.full.unlink()
    _quick_vectors(monkeypatch)
    _killed_release(package, monkeypatch, package.full)
    assert _marker(package)["old"] is None and not package.full.exists()
    assert (package.vectors / "mbt-8-12-r008" / "vectors.json").is_file()
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert generations.generation_of(package.full).model_id == "mbt-8-12-r008"
    assert "mbt-8-12-r008" in json.loads(package.table.read_text())
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, "mbt-8-12-r008"}


@pytest.mark.parametrize("then", ["another release", "the same release"])
def test_a_marker_of_a_commit_wholly_in_place_is_removed_by_any_release(package, monkeypatch, capsys, then) -> None:
    """Killed after its last rename, before its marker's removal: the next release removes the marker, and says so,
    without the checkpoint or a gate verdict of the release it names; a rerun of that one just returns."""
    _quick_vectors(monkeypatch)
    real_unlink = Path.unlink

    class Killed(BaseException):
        pass

    def unlink(self, *args, **kwargs):
        if self.name == release_commit.MARKER_NAME and package.table.exists():  # after the table's rename
            raise Killed
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.undo()
    _quick_vectors(monkeypatch)
    assert (package.weights_dir / release_commit.MARKER_NAME).exists()
    table = package.table.read_text()
    if then == "the same release":  # with a verdict that would not pass (it is against the old generation)
        verdict = {"passes": False}
        assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, verdict)
        assert package.table.read_text() == table
    else:
        model = test_release.tiny_model(5)
        weights.save_float_state(package.checkpoint, model.state_dict(), model.config, {})
        assert release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
        assert generations.generation_of(package.full).model_id == "mbt-8-12-r009"
    assert "mbt-8-12-r008 is wholly in place: removed its marker" in capsys.readouterr().out
    assert not (package.weights_dir / release_commit.MARKER_NAME).exists()


def test_the_staged_table_and_a_staged_kept_decoder_are_swept(package, monkeypatch) -> None:
    """The table staged beside released.json by a commit cut short, and a kept decoder file staged in generations/
    by a release killed while writing it, are removed by the rerun."""
    _quick_vectors(monkeypatch)
    kept = package.weights_dir / generations.KEPT_DIR / "mbt-8-12-r007.safetensors"
    _killed_release(package, monkeypatch, kept)
    assert [p.name for p in kept.parent.iterdir() if p.name.startswith(".")]  # the staged decoder file
    _killed_release(package, monkeypatch, package.table)
    assert [p.name for p in package.table.parent.iterdir() if p.name.startswith(".released.json.")]
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert not [p.name for p in package.table.parent.iterdir() if p.name.startswith(".released.json.")]
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]


@pytest.mark.parametrize(
    "change",
    [
        {"old": "drop"},
        {"release": "8"},
        {"release": True},
        {"vectors": ["vectors.json"]},
        {"weights_hash": None},
        {"extra": 1},
        {"old": {"model_id": "mbt-8-12-r007"}},
    ],
)
def test_a_malformed_commit_marker_is_refused(package, monkeypatch, change) -> None:
    """A marker lacking a field, with one of another type, or with another field than a commit writes, is refused
    with a WeightsError, and nothing is written."""
    _quick_vectors(monkeypatch)
    _killed_release(package, monkeypatch, package.table)
    marker = package.weights_dir / release_commit.MARKER_NAME
    record = {**_marker(package), **change}
    if record["old"] == "drop":
        del record["old"]
    marker.write_text(json.dumps(record))
    listing = sorted(p.name for p in package.weights_dir.rglob("*"))
    for number in (8, 9):
        with pytest.raises(weights.WeightsError, match="is not a release's commit marker"):
            release.release(package.checkpoint, number, package.weights_dir, package.vectors, {}, package.table)
    assert sorted(p.name for p in package.weights_dir.rglob("*")) == listing


def test_a_marker_that_follows_no_generation_is_refused_where_one_is(package, monkeypatch) -> None:
    """A marker whose "old" is null finishes no commit over a folder that holds a generation it would follow: the
    kept decoder of the previous generation is there, so its keeping is not checked; nothing is written."""
    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    _killed_release(package, monkeypatch, package.table)
    marker = package.weights_dir / release_commit.MARKER_NAME
    marker.write_text(json.dumps({**_marker(package), "old": None}))
    with pytest.raises(weights.WeightsError, match=r"follows no generation, yet .*mbt-8-12-r007.safetensors is there"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert json.loads(package.table.read_text()) == {}


def test_a_commit_whose_vectors_are_gone_is_left_for_recovery_by_hand(package, monkeypatch) -> None:
    """Killed before the table's rename, with the vectors folder then removed (by hand, or lost): the rerun does not
    make the release afresh over a full file that is already the new generation, and says how to recover."""
    import shutil

    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    _killed_release(package, monkeypatch, package.table)
    shutil.rmtree(package.vectors / "mbt-8-12-r008")
    written = package.full.read_bytes()
    with pytest.raises(weights.WeightsError, match="nor a staged folder beside it holds the vectors"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == written and json.loads(package.table.read_text()) == {}


def test_a_rerun_whose_own_commit_fails_keeps_the_marker_of_the_commit_it_finishes(package, monkeypatch) -> None:
    """Finishing a commit cut short, a rename that failed (a full disk) undid the rerun's own renames and removed
    the marker: the renames the killed run made stayed in place with nothing naming them, and no release could
    finish them (another release number then went through). The marker stays; the next rerun finishes."""
    import errno

    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    _killed_release(package, monkeypatch, package.table)
    real_replace = release.os.replace

    def disk_full(src, dst):
        if Path(dst) == package.table:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(release.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.setattr(release.os, "replace", real_replace)
    assert (package.weights_dir / release_commit.MARKER_NAME).exists()
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert "mbt-8-12-r008" in json.loads(package.table.read_text())
    assert not (package.weights_dir / release_commit.MARKER_NAME).exists()


@pytest.mark.skipif(os.name != "posix", reason="process ids of the writers")
def test_a_weights_file_half_written_by_a_killed_release_is_swept(package, monkeypatch) -> None:
    """The staged full file is written through a temporary file named by its writer's process: a release killed
    while writing it left that file in the weights folder for good, though the docstring says a retry removes
    every staged file."""
    import subprocess
    import sys

    from pillow_jac import files

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = package.weights_dir / f".jac-{files._host_tag()}-{int(gone.stdout)}-0123abcd.tmp"
    orphan.write_bytes(b"half a weights file")
    _quick_vectors(monkeypatch)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert not orphan.exists()
