"""A model's lambda ladder: kept in its manifest, used by training and refinement, and movable."""

from __future__ import annotations

import json

import pytest
import torch

from pillow_jac.constants import LAMBDAS
from pillow_jac.engine import load_model
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.model.objective import quality_lambda
from pillow_jac.model.refine import refine_latents
from pillow_jac.training import train
from pillow_jac.training.freeze import freeze
from pillow_jac.training.ladder import ladder_positions, remap_ladder
from pillow_jac.weights import load_weights, save_weights

from .test_training import TINY, image_folder  # noqa: F401  (a fixture)

LOWER = (0.0009,) + LAMBDAS[1:]  # quality 1 moved down, the other levels unchanged
SPREAD = tuple(0.0009 * (0.18 / 0.0009) ** (i / 7) for i in range(8))  # 0.0009 .. 0.18, log-spaced


def tiny_model(lambdas=LAMBDAS, seed=0):
    torch.manual_seed(seed)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12, lambdas=lambdas))
    with torch.no_grad():  # gains that differ per channel and level, as trained ones do
        model.log_gain.add_(0.3 * torch.randn_like(model.log_gain))
        model.log_inverse_gain.add_(0.3 * torch.randn_like(model.log_inverse_gain))
    return model


def test_config_checks_and_json_round_trip():
    config = ModelConfig(N=8, M=12, lambdas=SPREAD)
    again = ModelConfig(**json.loads(json.dumps(config.to_dict())))  # JSON gives a list back
    assert again == config and isinstance(again.lambdas, tuple)
    assert ModelConfig(**{k: v for k, v in config.to_dict().items() if k != "lambdas"}).lambdas == LAMBDAS
    with pytest.raises(ValueError, match="as many lambdas"):
        ModelConfig(lambdas=LAMBDAS[:7])
    with pytest.raises(ValueError, match="increasing"):
        ModelConfig(lambdas=(0.01,) + LAMBDAS[1:])
    with pytest.raises(ValueError, match="increasing"):
        ModelConfig(lambdas=(-0.001,) + LAMBDAS[1:])


def test_quality_lambda_follows_the_ladder():
    q = torch.tensor([1.0, 1.5, 8.0])
    got = quality_lambda(q, SPREAD)
    torch.testing.assert_close(
        got, torch.tensor([SPREAD[0], (SPREAD[0] * SPREAD[1]) ** 0.5, SPREAD[7]], dtype=torch.float64)
    )
    assert float(quality_lambda(torch.tensor([1.0]))) == pytest.approx(LAMBDAS[0], rel=1e-12)


def test_positions_on_the_old_ladder():
    positions = ladder_positions(LAMBDAS, LOWER)
    assert positions[1:].tolist() == [float(i) for i in range(1, 8)]
    # 0.0009 is one doubling below 0.0018; the first step of the ladder is a factor 0.0035 / 0.0018
    want = -torch.log(torch.tensor(2.0, dtype=torch.float64)) / torch.log(
        torch.tensor(0.0035 / 0.0018, dtype=torch.float64)
    )
    torch.testing.assert_close(positions[0], want)
    above = ladder_positions(LAMBDAS, (0.36,))  # beyond the top: along the last segment
    assert float(above[0]) > 7.0


def test_remap_keeps_the_network_and_moves_only_the_gains():
    model = tiny_model()
    same = remap_ladder(model, LAMBDAS)
    for key, value in model.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    moved = remap_ladder(model, LOWER)
    assert moved.config.lambdas == LOWER and moved.config.N == model.config.N
    for key, value in model.state_dict().items():
        if "gain" not in key:
            assert torch.equal(moved.state_dict()[key], value), key
    for table in ("log_gain", "log_inverse_gain"):
        old, new = getattr(model, table), getattr(moved, table)
        assert torch.equal(new[1:], old[1:])
        # the new first level lies on the line through the old first two, below the first
        t = float(ladder_positions(LAMBDAS, LOWER)[0])
        torch.testing.assert_close(new[0], old[0] + t * (old[1] - old[0]))
    # a level between two old ones is the model's own log interpolation of their gains
    spread = remap_ladder(model, SPREAD)
    q = 1.0 + ladder_positions(LAMBDAS, SPREAD)[3:4]
    torch.testing.assert_close(spread.gains(torch.tensor([4.0])), model.gains(q.float()))


def test_freeze_keeps_the_ladder(tmp_path):
    model = remap_ladder(tiny_model(), SPREAD)
    tensors, metadata = freeze(model, release=9)
    save_weights(tmp_path / "w.safetensors", tensors, metadata)
    assert load_model(tmp_path / "w.safetensors").config.lambdas == SPREAD


def test_refinement_optimises_the_models_own_lambda():
    # two models that differ only in their ladder (the same gains, lambdas 100 times larger): other latents
    base = tiny_model(seed=5).eval()
    other = remap_ladder(base, tuple(100 * v for v in LAMBDAS)).eval()
    gain, inverse_gain = base.log_gain.detach().clone(), base.log_inverse_gain.detach().clone()
    with torch.no_grad():
        for m in (base, other):  # latents of a few units, so that there is something to refine
            m.log_gain.copy_(gain + 2.0)
            m.log_inverse_gain.copy_(inverse_gain - 2.0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for m in (base, other):
        with torch.no_grad():
            y = m.g_a(x) * m.gains(torch.tensor([4.0]))
            z = m.h_a(y)
        assert torch.round(y).abs().sum() > 20
        results.append(
            refine_latents(m, lambda a, b, c, d: x[:, :, a:b, c:d], y, z, 4.0, (64, 64), iterations=8, seed=0)
        )
    assert not torch.equal(results[0][0], results[1][0])


def test_training_moves_an_init_to_another_ladder(image_folder, tmp_path):  # noqa: F811
    start = tmp_path / "start.safetensors"
    tensors, metadata = freeze(tiny_model(), release=9)
    save_weights(start, tensors, metadata)
    args = [
        "--data",
        str(image_folder),
        *TINY,
        "--init",
        str(start),
        "--lr",
        "1e-9",
        "--lambdas",
        ",".join(map(str, LOWER)),
    ]
    train.main([*args, "--out", str(tmp_path / "run"), "--steps", "1"])
    _, run_meta = load_weights(tmp_path / "run" / "float.safetensors")
    assert tuple(json.loads(run_meta["config"])["lambdas"]) == LOWER
    trained = load_model(tmp_path / "run" / "float.safetensors")
    expected = remap_ladder(load_model(start), LOWER)
    torch.testing.assert_close(trained.log_gain, expected.log_gain, atol=1e-6, rtol=0)
    # without --lambdas a run keeps its --init's ladder; resuming a run with another ladder is refused
    train.main(
        ["--data", str(image_folder), *TINY, "--init", str(start), "--out", str(tmp_path / "keep"), "--steps", "1"]
    )
    _, keep_meta = load_weights(tmp_path / "keep" / "float.safetensors")
    assert tuple(json.loads(keep_meta["config"])["lambdas"]) == LAMBDAS
    with pytest.raises(SystemExit, match="same options"):
        train.main([*args[:-2], "--out", str(tmp_path / "run"), "--steps", "2"])


def test_a_ladder_needs_one_lambda_per_quality(capsys, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    data = ["--data", str(tmp_path)]  # the default (../shared/data/train) is not there on every machine
    with pytest.raises(SystemExit):
        train.parse_args([*data, "--lambdas", "0.001,0.01,0.1"])
    assert "needs 8 values" in capsys.readouterr().err
    assert train.parse_args([*data, "--lambdas", ",".join(map(str, SPREAD))]).lambdas == SPREAD
