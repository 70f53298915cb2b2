"""Distilling the effort search into the encoder (pillow_jac.training.search_distil), on a tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac.constants import EFFORT_ITERATIONS, QUALITY_DENOMINATOR
from pillow_jac.engine import load_model
from pillow_jac.model.refine import refine_latents
from pillow_jac.training import search_distil
from pillow_jac.training.encoder_update import is_encoder_key
from pillow_jac.weights import load_weights
from tests.helpers import synthetic, tiny_weights

KEYS = ("x", "quality", "y", "z", "y0")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", seed=5)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_targets_are_the_searchs_latents_and_resume_the_same_draw(base, tmp_path, monkeypatch):
    monkeypatch.setattr(search_distil, "SHARD", 4)
    model = load_model(base).eval()
    images = [synthetic(80, 96, 20 + i) for i in range(3)]
    crops = search_distil.SHARD + 3
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert search_distil.make_targets(model, images, whole, crops, effort=1, crop=64, seed=0) == crops
    # interrupted after a short last file, then extended: the short file is made again
    assert search_distil.make_targets(model, images, part, search_distil.SHARD + 1, effort=1, crop=64, seed=0) == 5
    assert search_distil.make_targets(model, images, part, crops, effort=1, crop=64, seed=0) == crops
    for name in ("targets-000.pt", "targets-001.pt"):
        a, b = torch.load(whole / name), torch.load(part / name)
        assert all(torch.equal(a[k], b[k]) for k in KEYS)
    with pytest.raises(ValueError, match="made with"):  # another setup never extends these files
        search_distil.make_targets(model, images, part, crops + 1, effort=1, crop=64, seed=2)
    with pytest.raises(ValueError, match="multiple of 64"):
        search_distil.make_targets(model, images, tmp_path / "odd", 1, effort=1, crop=48)
    shard = torch.load(whole / "targets-001.pt")
    assert shard["x"].shape == (3, 64, 64, 3) and shard["x"].dtype == torch.uint8
    assert shard["y"].shape == (3, 12, 4, 4) and shard["z"].shape == (3, 8, 1, 1) and shard["y"].dtype == torch.int16
    q = shard["quality"]
    assert bool(((q >= 1) & (q <= 8) & (q * QUALITY_DENOMINATOR == torch.round(q * QUALITY_DENOMINATOR))).all())
    # a stored target is what the search returns for that crop and quality, not g_a's rounding
    every = {k: torch.cat([torch.load(whole / n)[k] for n in ("targets-000.pt", "targets-001.pt")]) for k in KEYS}
    moved = [i for i in range(crops) if not torch.equal(every["y"][i], every["y0"][i])]
    assert moved, "the search kept g_a's rounding on every crop: this test would not tell them apart"
    i = moved[0]
    x = every["x"][i : i + 1].permute(0, 3, 1, 2).float().div(255).contiguous()
    quality = every["quality"][i : i + 1]
    with torch.no_grad():
        y = model.g_a(x) * model.gains(quality)
        z = model.h_a(y)
    y_star, z_star = refine_latents(
        model, lambda a, b: x[:, :, a:b], y, z, float(quality), (64, 64), EFFORT_ITERATIONS[1]
    )
    assert torch.equal(y_star[0].to(torch.int16), every["y"][i])
    assert torch.equal(z_star[0].to(torch.int16), every["z"][i])
    assert torch.equal(torch.round(y[0]).to(torch.int16), every["y0"][i])


def test_losses_count_what_rounding_gets_wrong():
    target = torch.zeros(4)
    inside = torch.tensor([0.1, -0.2, 0.25, -0.29])  # each rounds to the target
    assert float(search_distil.distillation_loss(inside, target, 0.2)) == 0.0
    assert float(search_distil.distillation_loss(inside, target, -1)) > 0.0
    assert float(search_distil.distillation_loss(torch.tensor([0.4, 0, 0, 0]), target, 0.2)) > 0.0


def test_training_changes_only_the_encoder_and_scores_real_files(base, tmp_path, monkeypatch):
    monkeypatch.setattr(search_distil, "SHARD", 4)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.fromarray(synthetic(80, 96, 30 + i)).save(data / f"im{i}.png")
    targets, out = tmp_path / "targets", tmp_path / "run"
    common = ["--weights", str(base), "--data", str(data), "--crop", "64", "--holdout", "2"]
    common += ["--threads", "1", "--effort", "1"]
    held = search_distil._held_out(search_distil.parse_args(["train", *common]))
    assert len(held) == 2
    for path in held:  # the held-out images are flat grey: no target crop may come from them
        Image.fromarray(np.full((80, 96, 3), 7, np.uint8)).save(path)
    search_distil.main(["targets", *common, "--out", str(targets), "--crops", str(search_distil.SHARD + 4)])
    x = torch.cat([torch.load(p)["x"] for p in sorted(targets.glob("targets-*.pt"))])
    assert len(x) == search_distil.SHARD + 4 and not bool((x == 7).flatten(1).all(1).any())
    train = ["train", *common, "--targets", str(targets), "--out", str(out), "--steps", "4", "--eval-every", "2"]
    train += ["--batch", "2", "--score-images", "2", "--margin", "-1"]
    with pytest.raises(ValueError, match="held-out"):  # scored on images the targets may hold
        search_distil.main([*train, "--holdout-seed", "1"])
    other = tiny_weights(tmp_path / "other.safetensors", seed=6)
    with pytest.raises(ValueError, match="made with other weights"):  # targets of another model's search
        search_distil.main([*train[:2], str(other), *train[3:]])
    search_distil.main(train)
    rows = list(csv.DictReader(open(out / "distil.csv")))
    assert [r["step"] for r in rows] == ["0", "2", "4"]
    # scored with real files at each step (the untrained tiny model's curves need not overlap: NaN allowed)
    assert all(isinstance(float(r["bd_rate"]), float) and 0.0 <= float(r["y_agreement"]) <= 1.0 for r in rows)
    base_tensors, base_meta = load_weights(base)
    last, meta = load_weights(out / "last.safetensors")
    assert meta["decoder_hash"] == base_meta["decoder_hash"]
    changed = {k for k in base_tensors if not torch.equal(base_tensors[k], last[k])}
    assert changed and all(k.startswith("float.") and is_encoder_key(k[6:]) for k in changed)


def test_evaluation_sets_are_refused(base, tmp_path):
    with pytest.raises(SystemExit):
        search_distil.parse_args(["train", "--weights", str(base), "--data", str(tmp_path / "kodak")])
