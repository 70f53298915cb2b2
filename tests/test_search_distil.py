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
from pillow_jac.training.encoder_update import bd_against, is_encoder_key
from pillow_jac.weights import load_weights
from tests.helpers import synthetic, tiny_weights

KEYS = ("x", "quality", "y", "z", "y0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """An untrained tiny model whose outputs lie mostly in [0, 1]: untrained, they were about -0.13 to 0.13, two
    thirds of them below the range the decoder clamps to, where the search (which sees the clamp) finds nothing;
    its targets come from effort 2, where effort 1's 8 steps moved no latent of this model."""
    from pillow_jac.training.freeze import freeze
    from pillow_jac.weights import save_weights

    path = tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", seed=5)
    model = load_model(path)
    with torch.no_grad():
        model.g_s[-1].bias += 0.5
    save_weights(path, *freeze(model, release=0))
    return path


def test_targets_are_the_searchs_latents_and_resume_the_same_draw(base, tmp_path, monkeypatch):
    monkeypatch.setattr(search_distil, "SHARD", 4)
    model = load_model(base).eval()
    images = [synthetic(80, 96, 20 + i) for i in range(3)]
    crops = search_distil.SHARD + 3
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert search_distil.make_targets(model, images, whole, crops, effort=2, crop=64, seed=0) == crops
    # interrupted after a short last file, then extended: the short file is made again
    assert search_distil.make_targets(model, images, part, search_distil.SHARD + 1, effort=2, crop=64, seed=0) == 5
    assert search_distil.make_targets(model, images, part, crops, effort=2, crop=64, seed=0) == crops
    for name in ("targets-000.pt", "targets-001.pt"):
        a, b = torch.load(whole / name), torch.load(part / name)
        assert all(torch.equal(a[k], b[k]) for k in KEYS)
    with pytest.raises(ValueError, match="made with"):  # another setup never extends these files
        search_distil.make_targets(model, images, part, crops + 1, effort=2, crop=64, seed=2)
    other_weights = {"decoder_hash": "d", "encoder_hash": "e"}  # nor a search with other weights
    with pytest.raises(ValueError, match="made with"):
        search_distil.make_targets(model, images, part, crops + 1, effort=2, crop=64, seed=0, weights=other_weights)
    with pytest.raises(ValueError, match="multiple of 64"):
        search_distil.make_targets(model, images, tmp_path / "odd", 1, effort=2, crop=48)
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
        model, lambda a, b, c, d: x[:, :, a:b, c:d], y, z, float(quality), (64, 64), EFFORT_ITERATIONS[2]
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


def test_bd_rate_is_the_tested_encoders_against_the_untuned():
    anchor = [{"bpp": b, "psnr": p} for b, p in ((0.2, 28.0), (0.4, 31.0), (0.8, 34.0), (1.6, 37.0))]
    smaller = [{**r, "bpp": 0.9 * r["bpp"]} for r in anchor]  # the same quality in 10% fewer bits
    assert bd_against(anchor, smaller) == pytest.approx(-10.0)


def test_training_changes_only_the_encoder_and_scores_real_files(base, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search_distil, "SHARD", 4)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.fromarray(synthetic(80, 96, 30 + i)).save(data / f"im{i}.png")
    targets, out = tmp_path / "targets", tmp_path / "run"
    common = ["--weights", str(base), "--data", str(data), "--crop", "64", "--holdout", "2"]
    common += ["--threads", "1", "--effort", "2"]
    held = search_distil._held_out(search_distil.parse_args(["train", *common]))
    assert len(held) == 2
    for path in held:  # the held-out images are flat grey: no target crop may come from them
        Image.fromarray(np.full((80, 96, 3), 7, np.uint8)).save(path)
    search_distil.main(["targets", *common, "--out", str(targets), "--crops", str(search_distil.SHARD + 4)])
    shards = [torch.load(p) for p in sorted(targets.glob("targets-*.pt"))]
    x = torch.cat([shard["x"] for shard in shards])
    assert len(x) == search_distil.SHARD + 4 and not bool((x == 7).flatten(1).all(1).any())
    training, check, _ = search_distil.load_targets(targets)  # the first file is kept apart, never trained on
    assert torch.equal(training["x"], shards[1]["x"]) and torch.equal(check["x"], shards[0]["x"])
    train = ["train", *common, "--targets", str(targets), "--out", str(out), "--steps", "4", "--eval-every", "2"]
    train += ["--batch", "2", "--score-images", "2", "--margin", "-1"]
    train += ["--lr", "1e-3"]  # 4 steps move the average of g_a and h_a by more than rounding
    with pytest.raises(ValueError, match="held-out"):  # scored on images the targets may hold
        search_distil.main([*train, "--holdout-seed", "1"])
    other = tiny_weights(tmp_path / "other.safetensors", seed=6)
    with pytest.raises(ValueError, match="made with other weights"):  # targets of another model's search
        search_distil.main([*train[:2], str(other), *train[3:]])

    # the untrained tiny model's curves need not overlap (NaN): the BD-rates of the real scores are scripted
    scores, compared, averages = [], [], []
    real_score, real_update = search_distil.score_real, search_distil.update_average

    def score(*args, **kwargs):
        scores.append(real_score(*args, **kwargs))
        return scores[-1]

    def scripted_bd(anchor, test):
        compared.append((anchor, test))
        return script.pop(0)

    def update(average, model, decay):
        averages[:] = [average]
        real_update(average, model, decay)

    monkeypatch.setattr(search_distil, "score_real", score)
    monkeypatch.setattr(search_distil, "bd_against", scripted_bd)
    monkeypatch.setattr(search_distil, "update_average", update)
    script = [1.0, 2.0]  # neither beats the untuned encoder
    search_distil.main(train)
    assert "no scored step beat the untuned encoder" in capsys.readouterr().out
    assert not (out / "best.safetensors").exists() and not script
    assert len(scores) == 3  # the untuned encoder's score, then each scored step's, compared in that order
    assert all(a is scores[0] and t is scored for (a, t), scored in zip(compared, scores[1:], strict=True))
    rows = list(csv.DictReader(open(out / "distil.csv")))
    assert [(r["step"], float(r["bd_rate"])) for r in rows] == [("0", 0.0), ("2", 1.0), ("4", 2.0)]
    untuned = float((shards[0]["y0"] == shards[0]["y"]).float().mean())  # g_a's rounding against the search's
    assert float(rows[0]["y_agreement"]) == pytest.approx(untuned, abs=1e-6) and untuned < 1.0
    base_tensors, base_meta = load_weights(base)
    last, meta = load_weights(out / "last.safetensors")
    assert meta["decoder_hash"] == base_meta["decoder_hash"]
    changed = {k for k in base_tensors if not torch.equal(base_tensors[k], last[k])}
    assert changed and all(k.startswith("float.") and is_encoder_key(k[6:]) for k in changed)
    assert any(k.startswith("float.g_a.") for k in changed) and any(k.startswith("float.h_a.") for k in changed)
    for k, v in averages[0].items():  # what is scored and saved is the moving average
        assert torch.equal(last[f"float.{k}"], v), k
    tuned = load_model(out / "last.safetensors")
    with torch.no_grad():
        y, _ = search_distil._encode(tuned, check["x"], check["quality"])
    assert float(rows[2]["y_agreement"]) == pytest.approx(float((torch.round(y) == check["y"]).float().mean()))

    # scored at other steps, the run trains the same weights; the best scored step is kept
    script = [-2.0, -1.0]
    again = tmp_path / "again"
    search_distil.main([*(str(again) if a == str(out) else a for a in train), "--eval-every", "3"])
    assert "best BD-rate -2.000%" in capsys.readouterr().out
    assert all(torch.equal(load_weights(again / "last.safetensors")[0][k], v) for k, v in last.items())
    best, best_meta = load_weights(again / "best.safetensors")
    assert "3 steps" in best_meta["encoder_update"] and not all(torch.equal(best[k], v) for k, v in last.items())


def test_evaluation_sets_are_refused(base, tmp_path, capsys):
    with pytest.raises(SystemExit):
        search_distil.parse_args(["train", "--weights", str(base), "--data", str(tmp_path / "kodak")])
    assert "looks like the kodak evaluation set: never train on it" in capsys.readouterr().err


def test_evaluation_images_linked_or_copied_into_training_data_are_refused(tmp_path, capsys):
    """The folder's name alone let a folder of links to (or copies of) Kodak images through."""
    import argparse

    from pillow_jac.training.encoder_update import EVALUATION_FOLDERS, refuse_evaluation_data

    assert all(folder.is_absolute() for folder in EVALUATION_FOLDERS)  # found from any current folder
    kodak, train = tmp_path / "sets" / "kodak", tmp_path / "train"
    kodak.mkdir(parents=True)
    train.mkdir()
    Image.fromarray(synthetic(32, 48, 1)).save(kodak / "kodim01.png")
    Image.fromarray(synthetic(32, 48, 2)).save(train / "mine.png")
    parser = argparse.ArgumentParser(prog="tune")
    refuse_evaluation_data(parser, train, (kodak,))  # training images only: accepted
    (train / "linked.png").symlink_to(kodak / "kodim01.png")
    with pytest.raises(SystemExit):
        refuse_evaluation_data(parser, train, (kodak,))
    assert "linked.png is an image of the kodak evaluation set" in capsys.readouterr().err
    (train / "linked.png").unlink()
    (train / "copied.png").write_bytes((kodak / "kodim01.png").read_bytes())
    with pytest.raises(SystemExit):
        refuse_evaluation_data(parser, train, (kodak,))
    assert "copied.png is a copy of kodim01.png of an evaluation set" in capsys.readouterr().err
