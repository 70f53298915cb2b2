"""The travelling tree of a device call, and the kept decoders set aside and put back (pillow_jac.training.travel)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pillow_jac import generations
from pillow_jac.training import travel

from .helpers import tiny_weights

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the travelling tree is what git lists")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True, text=True).stdout


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A git checkout with one kept decoder file committed, an untracked note and an ignored folder."""
    root = tmp_path / "repo"
    kept = root / "weights" / generations.KEPT_DIR
    kept.mkdir(parents=True)
    tiny_weights(kept / "mbt-8-12-r900.safetensors", seed=3)
    (root / "weights" / "README.md").write_text("weights\n")
    (root / ".gitignore").write_text("/ignored/\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "big.bin").write_bytes(bytes(5000))
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "kept decoder")
    (root / "note.txt").write_text("untracked, not ignored: it travels\n")
    return root


def test_set_aside_empties_the_kept_decoders_and_put_back_restores_them_byte_for_byte(checkout: Path) -> None:
    kept = checkout / "weights" / generations.KEPT_DIR / "mbt-8-12-r900.safetensors"
    before = kept.read_bytes()
    tree = travel.travelling_tree_bytes(checkout)
    assert tree == len(before) + len("weights\n") + len("/ignored/\n") + len("untracked, not ignored: it travels\n")
    assert travel.kept_decoder_files(checkout) == [kept]
    assert travel.set_aside(checkout) == [kept]
    with pytest.warns(UserWarning, match="is skipped: it is empty"):
        assert kept.stat().st_size == 0 and generations.generation_of(kept) is None  # no generation while set aside
    assert travel.travelling_tree_bytes(checkout) == tree - len(before)
    assert travel.set_aside(checkout) == []  # already set aside: nothing more to do
    assert travel.put_back(checkout) == [kept]
    assert kept.read_bytes() == before and generations.generation_of(kept) is not None
    assert travel.put_back(checkout) == []
    assert _git(checkout, "status", "--porcelain") == "?? note.txt\n"


def test_a_kept_decoder_moved_away_is_put_back_too(checkout: Path) -> None:
    """Files moved aside (the doc's earlier advice): set-aside passes over a missing one, put-back restores it."""
    kept = checkout / "weights" / generations.KEPT_DIR / "mbt-8-12-r900.safetensors"
    before = kept.read_bytes()
    kept.rename(checkout.parent / "aside.safetensors")
    assert travel.set_aside(checkout) == [] and travel.put_back(checkout) == [kept]
    assert kept.read_bytes() == before


def test_a_kept_decoder_that_differs_from_git_is_not_set_aside(checkout: Path) -> None:
    """Putting back restores the index's bytes: a file changed since would be lost, so nothing is touched."""
    kept = checkout / "weights" / generations.KEPT_DIR / "mbt-8-12-r900.safetensors"
    kept.write_bytes(kept.read_bytes() + b"changed")
    with pytest.raises(ValueError, match="not as git's index has it"):
        travel.set_aside(checkout)
    assert kept.read_bytes().endswith(b"changed")


def test_an_empty_file_staged_by_mistake_is_named_with_the_command_that_restores_it(checkout: Path) -> None:
    kept = checkout / "weights" / generations.KEPT_DIR / "mbt-8-12-r900.safetensors"
    travel.set_aside(checkout)
    _git(checkout, "add", "-A")
    with (
        pytest.warns(UserWarning, match="is skipped: it is empty"),
        pytest.raises(ValueError, match=r"was the empty file staged\?.*git checkout HEAD -- weights/"),
    ):
        travel.put_back(checkout)
    _git(checkout, "checkout", "HEAD", "--", "weights")
    assert generations.generation_of(kept) is not None


def test_the_command_line_reports_the_room_and_refuses_outside_a_checkout(checkout: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(checkout)
    assert travel.main(["set-aside"]) == 0
    out = capsys.readouterr().out
    assert "set aside 1 kept decoder file(s)" in out and "weights/generations/mbt-8-12-r900.safetensors" in out
    room = float(re.search(r"room for data beside it (\S+) MB", out).group(1))
    assert room == pytest.approx(travel.room_mb(checkout), abs=0.05)
    assert travel.main(["put-back"]) == 0
    assert "put back 1 kept decoder file(s)" in capsys.readouterr().out
    monkeypatch.chdir(checkout.parent)
    with pytest.raises(SystemExit) as stop:
        travel.main(["room"])
    assert stop.value.code == 2 and "not a git repository" in capsys.readouterr().err


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs this repository's checkout")
def test_no_tracked_weights_file_of_this_repository_is_empty() -> None:
    """A set-aside left in place (an emptied kept decoder committed) would drop a generation: it never lands."""
    tracked = _git(ROOT, "ls-files", "-z", "--", "weights/*.safetensors").split("\0")
    empty = [name for name in tracked if name and (ROOT / name).stat().st_size == 0]
    assert not empty, f"{empty}: run python -m pillow_jac.training.travel put-back"


def test_pack_auto_says_when_kept_decoders_travel(checkout: Path, monkeypatch, capsys) -> None:
    import numpy as np
    from PIL import Image

    from pillow_jac.training import pack

    data = checkout.parent / "train"
    data.mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(data / "a.png")
    monkeypatch.chdir(checkout)
    pack.main(["--data", str(data), "--out", str(checkout.parent / "gpu1"), "--part-mb", "auto"])
    assert "1 kept decoder file(s)" in capsys.readouterr().out
    travel.set_aside(checkout)
    pack.main(["--data", str(data), "--out", str(checkout.parent / "gpu2"), "--part-mb", "auto"])
    assert "kept decoder" not in capsys.readouterr().out
