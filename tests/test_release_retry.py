"""Tests of a release cut short (``pillow_jac.training.release``): killed between its renames, while it makes its
vectors, or before its first rename, a rerun of the same release finishes it, and nothing else passes for one."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from pillow_jac import generations, weights
from pillow_jac.engine import build_model
from pillow_jac.training import release
from pillow_jac.training.freeze import freeze

from . import test_release
from .test_release import _quick_vectors, leftovers, passing_verdict

package = test_release.package  # the fixture: a package folder of a tiny released generation


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
    killed = _killed_at(monkeypatch, package.table if killed_before == "table" else package.full)
    with pytest.raises(killed):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    monkeypatch.undo()
    _quick_vectors(monkeypatch)
    assert json.loads(package.table.read_text()) == {}
    assert (package.vectors / "mbt-8-12-r008" / "vectors.json").is_file()
    _ignored_by_git(package)  # the backup of the full file, the staged table, the commit marker
    hidden = sorted(p.name for p in package.weights_dir.iterdir() if p.name.startswith("."))
    with pytest.raises(weights.WeightsError, match=r"commit of mbt-8-12-r008 .* cut short.*--release 8\)"):
        release.release(package.checkpoint, 9, package.weights_dir, package.vectors, {}, package.table)
    assert sorted(p.name for p in package.weights_dir.iterdir() if p.name.startswith(".")) == hidden
    assert not (package.vectors / "mbt-8-12-r009").exists()
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
