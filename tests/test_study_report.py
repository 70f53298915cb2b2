"""The study's bookkeeping: run order, BD-rates against the joint model and the anchors, z shares, costs."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from pillow_jac.model.mbt2018 import ModelConfig
from pillow_jac.study.__main__ import planned_runs
from pillow_jac.study.evaluate import model_cost
from pillow_jac.study.report import MissingRunsError, budget_paths, mean_curve, summarise, write_report
from pillow_jac.study.variants import BUDGET, VARIANTS, Budget, run_name


def _points(rate_factor: float, z_share: float) -> list[dict]:
    rates = [0.1, 0.3, 0.9]
    return [
        {"param": q, "bpp": r * rate_factor, "psnr": 25.0 + 3 * i, "z_bpp": r * rate_factor * z_share, "y_bpp": 0.0}
        for i, (q, r) in enumerate(zip(BUDGET.qualities, rates, strict=True))
    ]


def _run(variant: str, seed: int, rate_factor: float, z_share: float = 0.05) -> dict:
    config = VARIANTS[variant].model_config(BUDGET)
    per_image = {"a": _points(rate_factor, z_share), "b": _points(rate_factor, z_share)}
    return {
        "run": f"{variant}-s{seed}",
        "variant": variant,
        "seed": seed,
        "config": config.to_dict(),
        "budget": BUDGET.to_dict(),
        "train_seconds": 60.0,
        "cost": {"parameters": 1, "encoder_macs_per_pixel": 1.0, "decoder_macs_per_pixel": 1.0},
        "sets": {"kodak": {"per_image": per_image}, "urban20": {"per_image": per_image}},
    }


def test_every_variant_has_two_seeds_and_first_seeds_train_first():
    runs = planned_runs()
    assert [v.name for v, s in runs[: len(VARIANTS)]] == list(VARIANTS)
    assert all(s == 0 for _, s in runs[: len(VARIANTS)])
    assert [v.name for v, s in runs[len(VARIANTS) :]] == list(VARIANTS)
    assert all(s == 1 for _, s in runs[len(VARIANTS) :])
    assert planned_runs(["joint"]) == [(VARIANTS["joint"], 0), (VARIANTS["joint"], 1)]
    # docs/study.md's seed-0-only runs at 32,000 steps
    assert planned_runs(["hyper-scale", "context-only"], [0]) == [
        (VARIANTS["hyper-scale"], 0),
        (VARIANTS["context-only"], 0),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--only", "joint", "jiont"], "--only jiont: no such variant"), (["--seeds", "7"], "--seeds 7: none")],
)
def test_the_command_line_refuses_variants_and_seeds_the_study_does_not_have(argv, message, tmp_path, capsys):
    """Either would otherwise plan no run at all (or fewer) and report on what was there, silently."""
    from pillow_jac.study.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["report", "--results", str(tmp_path), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_mean_curve_averages_parameter_by_parameter():
    curve = mean_curve({"a": [{"param": 1, "bpp": 1.0, "psnr": 30.0}], "b": [{"param": 1, "bpp": 3.0, "psnr": 32.0}]})
    assert curve == [{"param": 1.0, "bpp": 2.0, "psnr": 31.0}]


def test_summary_pairs_seeds_and_reports_noise_and_anchors():
    runs = {
        "joint-s0": _run("joint", 0, 1.0),
        "joint-s1": _run("joint", 1, 1.02),
        "hyper-scale-s0": _run("hyper-scale", 0, 1.2, z_share=0.1),
        "hyper-scale-s1": _run("hyper-scale", 1, 1.02 * 1.1, z_share=0.1),
    }
    anchor = {"label": "JPEG", "per_image": {"a": _points(2.0, 0.0)}}
    anchors = {s: {"jpeg420": anchor} for s in ("kodak", "urban20")}
    summary = summarise(runs, anchors, {"joint": {"encode_s": 0.5, "decode_s": 0.7}})
    assert summary["noise"]["kodak"] == pytest.approx(2.0, abs=1e-6)  # seed 1 is 2% larger at equal PSNR
    assert summary["seed_spread"] == {}  # two variants with two seeds: too few to pool
    # five variants, seed 1 against seed 0: +2%, -6.5% and +4%, +4%, -2%
    more = dict(runs)
    for name, factor in (("context-only", 1.04), ("joint-ctx3", 1.04), ("joint-ctx7", 0.98)):
        more[f"{name}-s0"], more[f"{name}-s1"] = _run(name, 0, 1.0), _run(name, 1, factor)
    pooled = summarise(more, anchors, {})["seed_spread"]["kodak"]
    rms = math.sqrt((2.0**2 + 6.5**2 + 4.0**2 + 4.0**2 + 2.0**2) / 5)
    assert pooled["variants"] == 5 and pooled["rms"] == pytest.approx(rms, abs=1e-6)
    assert pooled["two_seed_se"] == pytest.approx(rms / math.sqrt(2))
    assert pooled["threshold"] == pytest.approx(2.571 * rms / math.sqrt(2))
    entry = summary["variants"]["hyper-scale"]["sets"]["kodak"]
    # each seed against the joint model of the same seed: +20% and +10%
    assert entry["bd_vs_joint"]["values"] == pytest.approx([20.0, 10.0], abs=1e-6)
    assert entry["bd_vs_joint"]["mean"] == pytest.approx(15.0, abs=1e-6)
    assert entry["bd_vs_jpeg420"]["values"][0] == pytest.approx(-40.0, abs=1e-6)
    assert entry["z_share_percent"]["middle"]["mean"] == pytest.approx(10.0)
    assert "bd_vs_joint" not in summary["variants"]["joint"]["sets"]["kodak"]
    assert summary["variants"]["joint"]["timing"]["decode_s"] == 0.7


def test_write_report_reads_measured_runs_and_writes_three_files(tmp_path):
    folder = tmp_path / "study" / "measured"
    folder.mkdir(parents=True)
    for name, factor in (("joint-s0", 1.0), ("joint-gmm3-s0", 0.95)):
        variant = name.rsplit("-s", 1)[0]
        (folder / f"{name}.json").write_text(json.dumps(_run(variant, 0, factor)))
    with pytest.raises(MissingRunsError, match="14 of 16 planned runs are not measured at 4000 steps"):
        write_report(tmp_path, planned_runs())
    assert not (tmp_path / "study.md").exists()
    summary = write_report(tmp_path, planned_runs(), partial=True)
    assert set(summary["variants"]) == {"joint", "joint-gmm3"}
    assert "Partial: not measured at this budget: hyper-scale-s0" in (tmp_path / "study.md").read_text()
    summary = write_report(tmp_path, [(VARIANTS["joint"], 0), (VARIANTS["joint-gmm3"], 0)])
    assert summary["missing_runs"] == []
    gmm = summary["variants"]["joint-gmm3"]["sets"]["kodak"]["bd_vs_joint"]["mean"]
    assert gmm == pytest.approx(-5.0, abs=1e-6)
    text = (tmp_path / "study.md").read_text()
    assert "-5.0%" in text and "joint + K=3 Gaussian mixture" in text
    assert json.loads((tmp_path / "study.json").read_text())["budget"]["steps"] == BUDGET.steps
    assert str(tmp_path) not in text
    pytest.importorskip("matplotlib")
    with Image.open(tmp_path / "study.png") as plot:  # the third file: the curves
        assert plot.size[0] > 300 and plot.size[1] > 200


def test_another_budget_keeps_its_own_measurements_and_report(tmp_path):
    """Runs extended to 8,000 steps are measured and reported beside the 4,000-step ones, never over them."""
    longer = Budget(steps=8000)
    measured, stem = budget_paths(tmp_path, longer)
    assert (measured.name, stem) == ("measured-8000", "study-8000")
    assert budget_paths(tmp_path, BUDGET) == (tmp_path / "study" / "measured", "study")
    base, _ = budget_paths(tmp_path, BUDGET)
    # the mixture's files are 5% smaller than the joint model's at 4,000 steps, 10% at 8,000
    for folder, budget, factor, gain in ((base, BUDGET, 1.0, 0.95), (measured, longer, 0.8, 0.9)):
        folder.mkdir(parents=True)
        for name in ("joint-s0", "joint-gmm3-s0"):
            run = _run(name.rsplit("-s", 1)[0], 0, factor if name == "joint-s0" else factor * gain)
            (folder / f"{name}.json").write_text(json.dumps({**run, "budget": budget.to_dict()}))
    runs = [(VARIANTS["joint"], 0), (VARIANTS["joint-gmm3"], 0)]
    write_report(tmp_path, runs)
    write_report(tmp_path, runs, longer)
    for stem, steps, bd in (("study", BUDGET.steps, -5.0), ("study-8000", 8000, -10.0)):
        report = json.loads((tmp_path / f"{stem}.json").read_text())
        assert report["budget"]["steps"] == steps
        mixture = report["variants"]["joint-gmm3"]["sets"]["kodak"]["bd_vs_joint"]["mean"]
        assert mixture == pytest.approx(bd, abs=1e-6), stem  # each report from its own measurements


def test_a_seed_is_compared_only_with_the_joint_model_of_its_seed():
    """Without joint-s1, hyper-scale-s1 has no pair: it is left out and said so, not set against joint-s0."""
    runs = {
        "joint-s0": _run("joint", 0, 1.0),
        "hyper-scale-s0": _run("hyper-scale", 0, 1.2),
        "hyper-scale-s1": _run("hyper-scale", 1, 1.5),
    }
    entry = summarise(runs, {}, {})["variants"]["hyper-scale"]["sets"]["kodak"]
    assert entry["bd_vs_joint"]["n"] == 1
    assert entry["bd_vs_joint"]["mean"] == pytest.approx(20.0, abs=1e-6)
    from pillow_jac.study.report import _pct

    assert _pct(entry["bd_vs_joint"]) == "+20.0% [1 of 2 seeds]"


def test_model_cost_counts_the_causal_taps_and_the_mixture_outputs():
    base = model_cost(ModelConfig(N=8, M=12))
    wider_window = model_cost(ModelConfig(N=8, M=12, context_size=7))
    mixture = model_cost(ModelConfig(N=8, M=12, entropy="gmm", mixtures=3))
    no_context = model_cost(ModelConfig(N=8, M=12, context=False))
    # the context model: 12 causal taps of M inputs for 2M outputs per latent (16x16 pixels each)
    assert base["decoder_macs_per_pixel"] - no_context["decoder_macs_per_pixel"] > (12 * 12 * 24) / 256
    assert wider_window["decoder_macs_per_pixel"] - base["decoder_macs_per_pixel"] == pytest.approx(
        (24 - 12) * 12 * 24 / 256
    )
    # parameters alike: the masked-out taps are stored, always multiplied by 0, and not counted
    assert wider_window["parameters"] - base["parameters"] == (24 - 12) * 12 * 24
    assert wider_window["stored_parameters"] - base["stored_parameters"] == (49 - 25) * 12 * 24
    assert no_context["parameters"] == no_context["stored_parameters"]
    assert (
        mixture["parameters"] > base["parameters"]
        and mixture["encoder_macs_per_pixel"] == base["encoder_macs_per_pixel"]
    )
    assert run_name(VARIANTS["joint"], 1) == "joint-s1"


def test_a_run_resumes_and_a_larger_budget_extends_it(tmp_path):
    import dataclasses

    import numpy as np
    import torch

    from pillow_jac.study.train import train_run

    images = [np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)]
    tiny = dataclasses.replace(VARIANTS["joint"], config={"N": 8, "M": 12})
    small = dataclasses.replace(BUDGET, steps=2, warmup=1, batch=1, crop=64)
    logs: list[str] = []
    path, _ = train_run(tiny, 0, small, images, tmp_path, log=logs.append)
    first = path.read_bytes()
    assert train_run(tiny, 0, small, images, tmp_path, log=logs.append)[0].read_bytes() == first  # done: nothing runs
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
    train_run(tiny, 0, dataclasses.replace(small, steps=4), images, tmp_path, log=logs.append)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    assert any("resumed at step 2" in line for line in logs) and path.read_bytes() != first
    with pytest.raises(ValueError, match="at step 4, past this budget's 2: use --steps 4"):
        train_run(tiny, 0, small, images, tmp_path, log=logs.append)  # its weights would be measured as step 2's
    # a run folder of another recipe or model was returned, or resumed, and measured under this plan's name
    with pytest.raises(ValueError, match="another recipe \\(lr\\)"):
        train_run(tiny, 0, dataclasses.replace(small, steps=4, lr=1e-3), images, tmp_path)
    with pytest.raises(ValueError, match="another model config"):
        train_run(dataclasses.replace(tiny, config={"N": 8, "M": 18}), 0, dataclasses.replace(small, steps=4),
                  images, tmp_path)  # fmt: skip


def test_report_is_of_the_whole_study_whatever_only_says(tmp_path):
    """``report --only joint`` wrote a study.md of the joint model alone over the whole study's."""
    from pillow_jac.study.__main__ import main

    folder, _ = budget_paths(tmp_path, BUDGET)
    folder.mkdir(parents=True)
    for seed in (0, 1):
        (folder / f"joint-s{seed}.json").write_text(json.dumps(_run("joint", seed, 1.0 + seed / 50)))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--only", "joint", "--results", str(tmp_path)])
    assert exit_info.value.code == 1 and not (tmp_path / "study.md").exists()
    assert main(["report", "--only", "joint", "--partial", "--results", str(tmp_path)]) == 0
    assert "Partial: not measured at this budget: hyper-scale-s0" in (tmp_path / "study.md").read_text()


def test_a_run_measured_at_the_budget_is_not_trained_again(tmp_path, monkeypatch):
    """A run measured at 4,000 steps whose checkpoint went on to 8,000 is skipped, not refused as past the budget,
    so a seed added later is trained and measured at 4,000 beside it."""
    from PIL import Image

    import pillow_jac.study.evaluate as evaluate
    import pillow_jac.study.train as train
    from pillow_jac.study.__main__ import main

    trained: list[str] = []

    def fake_train(variant, seed, budget, images, out, log):
        trained.append(out.name)
        return out / "ema.safetensors", 1.0

    monkeypatch.setattr(train, "train_run", fake_train)
    monkeypatch.setattr(evaluate, "evaluation_sets", lambda kodak, urban: {})
    monkeypatch.setattr(evaluate, "freeze_run", lambda ema, path: path)
    data = tmp_path / "train"
    data.mkdir()
    Image.new("RGB", (32, 32)).save(data / "a.png")
    folder, _ = budget_paths(tmp_path, BUDGET)
    folder.mkdir(parents=True)
    (folder / "joint-s0.json").write_text(json.dumps({**_run("joint", 0, 1.0), "budget": BUDGET.to_dict()}))
    (tmp_path / "study" / "anchors.json").write_text("{}")
    common = ["--only", "joint", "--results", str(tmp_path), "--runs", str(tmp_path / "runs"), "--data", str(data)]
    assert main(["measure", *common]) == 0
    assert trained == ["joint-s1"]
    assert json.loads((folder / "joint-s1.json").read_text())["budget"] == BUDGET.to_dict()


def test_a_measurement_of_another_configuration_does_not_stand_for_the_variant(tmp_path, monkeypatch) -> None:
    """A variant whose model changed under the same name (a 3x3 context window for joint-ctx7) was reported with the
    old measurement and the new label; it is not measured at all now, and its old file is not reused."""
    import dataclasses

    folder, _ = budget_paths(tmp_path, BUDGET)
    folder.mkdir(parents=True)
    for name in ("joint-s0", "joint-ctx7-s0"):
        (folder / f"{name}.json").write_text(json.dumps(_run(name.rsplit("-s", 1)[0], 0, 1.0)))
    runs = [(VARIANTS["joint"], 0), (VARIANTS["joint-ctx7"], 0)]
    assert write_report(tmp_path, runs)["missing_runs"] == []
    changed = dataclasses.replace(VARIANTS["joint-ctx7"], config={**VARIANTS["joint-ctx7"].config, "context_size": 3})
    monkeypatch.setitem(VARIANTS, "joint-ctx7", changed)
    summary = write_report(tmp_path, [(VARIANTS["joint"], 0), (changed, 0)], partial=True)
    assert summary["missing_runs"] == ["joint-ctx7-s0"]


def test_evaluation_sets_leave_out_a_set_whose_folder_is_missing(tmp_path) -> None:
    from PIL import Image

    from pillow_jac.study.evaluate import evaluation_sets

    (tmp_path / "kodak").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "kodak" / "a.png")
    assert list(evaluation_sets(tmp_path / "kodak", tmp_path / "no-urban20")) == ["kodak"]
    assert list(evaluation_sets(None, tmp_path / "kodak")) == ["urban20"]


def test_the_study_does_not_train_on_an_evaluation_set(tmp_path):
    """Every trainer refused --data holding Kodak or urban20 images, except the study's."""
    from PIL import Image

    from pillow_jac.study.__main__ import main

    evaluation, photos = tmp_path / "evaluation", tmp_path / "photos"
    evaluation.mkdir()
    photos.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(evaluation / "one.png")
    (photos / "mine.png").write_bytes((evaluation / "one.png").read_bytes())
    for data in (photos, tmp_path / "kodak"):
        data.mkdir(exist_ok=True)
        with pytest.raises(SystemExit):
            main(["train", "--data", str(data), "--kodak", str(evaluation), "--urban", str(evaluation),
                  "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])  # fmt: skip
    assert not (tmp_path / "runs").exists()
