"""The release gate (pillow_jac/training/gate.py): real bench.rd runs of two weights files, one verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import generations
from pillow_jac.training import gate

from .helpers import natural_image


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for i, name in enumerate(("kodak", "urban20")):
        folder = tmp_path_factory.mktemp(name)
        Image.fromarray(natural_image(48, 64, seed=i)).save(folder / "a.png")
        folders[name] = folder
    return folders


def test_the_same_weights_do_not_clear_the_bar_and_the_verdict_is_recorded(sets, tmp_path: Path, capsys) -> None:
    shipped = generations.encoder(None).path
    args = [str(shipped), "--kodak", str(sets["kodak"]), "--urban", str(sets["urban20"]), "--out", str(tmp_path)]
    assert gate.main([*args, "--qualities", "1,4,8"]) == 1  # no gain: not released
    out = capsys.readouterr().out
    assert "kodak (1 images): BD-rate +0.00%" in out and "do not release" in out
    verdict = json.loads((tmp_path / "gate.json").read_text())
    assert verdict["passes"] is False and set(verdict["sets"]) == {"kodak", "urban20"}
    kodak = verdict["sets"]["kodak"]["curves"]
    assert kodak["stable"] == kodak["candidate"] and len(kodak["stable"]["bpp"]) == 3
    # a bar that a tie clears (at most +1%): the same measurements, read back from the runs' caches
    assert gate.main([*args, "--qualities", "1,4,8", "--bar", "-1"]) == 0
    assert "release it" in capsys.readouterr().out


def test_bd_rate_is_of_the_candidate_against_the_stable_curve() -> None:
    stable = {"codecs": {"jac": {"average": [{"bpp": b, "psnr": p} for b, p in [(1, 30), (2, 33), (4, 36)]]}}}
    cheaper = {"codecs": {"jac": {"average": [{"bpp": b * 0.9, "psnr": p} for b, p in [(1, 30), (2, 33), (4, 36)]]}}}
    from pillow_jac.bench.metrics import bd_rate

    assert np.isclose(bd_rate(*gate.curve(stable), *gate.curve(cheaper)), -10.0)
