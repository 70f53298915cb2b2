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


def test_bd_rate_is_of_the_candidate_against_the_stable_curve(tmp_path: Path, monkeypatch) -> None:
    """The gate's verdict on curves given for each weights file: 10% smaller files at equal PSNR pass the 5% bar,
    10% larger ones fail (the BD-rate is the candidate's against the stable curve, not the other way round)."""
    from pillow_jac.bench import rd

    points = [(1, 30), (2, 33), (4, 36)]
    scale = {"stable.safetensors": 1.0, "cheaper.safetensors": 0.9, "dearer.safetensors": 1.1, "apart.safetensors": 1.0,
             "sliver.safetensors": 0.5}  # fmt: skip
    shifts = {"apart.safetensors": 20, "sliver.safetensors": 5}  # far above the stable curve's range; at its top

    def fake_run(data, out, *, jac_weights, **kwargs):
        factor = scale[Path(jac_weights).name]
        shift = shifts.get(Path(jac_weights).name, 0)
        average = [{"bpp": b * factor, "psnr": p + shift} for b, p in points]
        return {"codecs": {"jac": {"average": average}}, "meta": {"images": 1}}

    monkeypatch.setattr(rd, "run", fake_run)
    monkeypatch.setattr("pillow_jac.weights.load_weights", lambda path: (str(path), {}))
    monkeypatch.setattr(gate, "measured_model", lambda tensors, metadata: {"decoder": tensors})
    sets = {"kodak": tmp_path / "k", "urban20": tmp_path / "u"}
    for name, bd, passes in (("cheaper", -10.0, True), ("dearer", 10.0, False)):
        verdict = gate.gate(
            Path(f"{name}.safetensors"), Path("stable.safetensors"), sets, tmp_path / name, log=lambda _: None
        )
        assert verdict["passes"] is passes and verdict["model"] == {"decoder": f"{name}.safetensors"}
        assert verdict["stable_model"] == {"decoder": "stable.safetensors"}  # what release checks it followed
        for result in verdict["sets"].values():
            assert np.isclose(result["bd_rate_percent"], bd, atol=0.05) and result["passes"] is passes
    # half the bits where the curves meet, but they meet in 35-36 dB only, a sixth of the stable curve's 30-36 dB
    verdict = gate.gate(Path("sliver.safetensors"), Path("stable.safetensors"), sets, tmp_path / "sliver", log=print)
    kodak = verdict["sets"]["kodak"]
    assert kodak["bd_rate_percent"] < -40 and np.isclose(kodak["overlap"], 1 / 6) and verdict["passes"] is False
    # curves whose PSNR ranges do not overlap: no BD-rate, no pass, and
    # gate.json stays JSON that every reader takes (null, not NaN)
    verdict = gate.gate(Path("apart.safetensors"), Path("stable.safetensors"), sets, tmp_path / "apart", log=print)
    assert verdict["passes"] is False
    written = (tmp_path / "apart" / "gate.json").read_text()
    assert "NaN" not in written
    assert json.loads(written)["sets"]["kodak"]["bd_rate_percent"] is None


def test_a_gate_of_no_set_is_refused(tmp_path: Path) -> None:
    """all() of no set is True: a verdict on nothing would pass."""
    shipped = generations.encoder(None).path
    with pytest.raises(ValueError, match="at least one set"):
        gate.gate(shipped, shipped, {}, tmp_path, log=lambda _: None)
    assert not (tmp_path / "gate.json").exists()
