"""Encoder fine-tuning against the frozen decoder (pillow_jac.training.encoder_tune), on a tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from pillow_jac import codec, container
from pillow_jac.engine import load_model
from pillow_jac.model.objective import quality_lambda
from pillow_jac.training import encoder_tune
from pillow_jac.training.coded_rate import CoderRate, coded_forward, coded_loss, estimate_image_bits
from pillow_jac.training.encoder_update import is_encoder_key, tuned_weights
from pillow_jac.weights import encoder_hash, load_weights, save_weights
from tests.helpers import synthetic, tiny_weights


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", seed=3)


def train_steps(model, rate, steps: int) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(is_encoder_key(name))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    image = torch.from_numpy(synthetic(64, 128, 1)).permute(2, 0, 1).float().div(255)
    for _ in range(steps):
        x = torch.stack([image[:, :, :64], image[:, :, 64:]])
        quality = torch.tensor([1.5, 7.0])
        losses = coded_loss(coded_forward(model, rate, x, quality), x, quality_lambda(quality, model.config.lambdas))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()


def test_tuning_changes_the_encoder_only(base, tmp_path):
    tensors, metadata = load_weights(base)
    model = load_model(base)
    train_steps(model, CoderRate(tensors, metadata), steps=3)
    out, meta = tuned_weights(tensors, metadata, model, {"encoder_update": "3 test steps"})
    path = tmp_path / "tuned.safetensors"
    save_weights(path, out, meta)
    again, again_meta = load_weights(path)
    assert set(again) == set(tensors)
    changed = {k for k in tensors if not torch.equal(again[k], tensors[k])}
    assert any(k.startswith("float.g_a.") for k in changed)
    assert changed <= {k for k in tensors if k.startswith(("float.g_a.", "float.h_a.", "float.log_gain"))}
    for k in tensors:  # the decoder, byte for byte
        if k not in changed:
            assert again[k].dtype == tensors[k].dtype
            assert again[k].numpy().tobytes() == tensors[k].numpy().tobytes()
    assert again_meta["encoder_update"] == "3 test steps"
    assert again_meta["weights_hash"] == metadata["weights_hash"]  # files decode with the base decoder
    assert again_meta["decoder_hash"] == metadata["decoder_hash"]
    assert again_meta["encoder_hash"] != metadata["encoder_hash"]
    assert again_meta["encoder_hash"] == encoder_hash(again, again_meta)
    hashes = ("encoder_update", "encoder_hash")
    assert {k: v for k, v in again_meta.items() if k not in hashes} == {
        k: v for k, v in metadata.items() if k not in hashes
    }
    image = synthetic(70, 90, 2)  # the tuned file encodes, and the base file decodes what it writes
    data = codec.encode(image, 4, weights=path)
    assert codec.decode(data, weights=base).tobytes() == codec.decode(data, weights=path).tobytes()
    assert data != codec.encode(image, 4, weights=base)


@pytest.mark.parametrize("module", ["g_s", "log_inverse_gain", "z_density", "h_s", "context", "entropy_parameters"])
def test_a_changed_decoder_is_refused(base, module):
    tensors, metadata = load_weights(base)
    model = load_model(base)
    tuned_weights(tensors, metadata, model, {})  # unchanged: accepted
    with torch.no_grad():
        parameter = next(p for name, p in model.named_parameters() if name.startswith(module))
        parameter.add_(0.05 * parameter.abs().max())
    with pytest.raises(AssertionError, match="differs from the base"):
        tuned_weights(tensors, metadata, model, {})


@pytest.mark.parametrize("quality", [1.0, 4.0, 8.0])
def test_rate_estimate_is_the_coded_size(base, quality):
    tensors, metadata = load_weights(base)
    model = load_model(base).eval()
    rate = CoderRate(tensors, metadata)
    image = synthetic(150, 200, 4)
    estimate = estimate_image_bits(model, rate, image, quality)
    jac = container.parse(codec.encode(image, quality, weights=base))
    for part, stream in (("y", jac.y_stream), ("z", jac.z_stream)):
        real = len(stream)
        assert abs(estimate[part] / 8 - real) <= 0.01 * real + 8, (part, estimate[part] / 8, real)


def test_rate_gradient_reaches_the_encoder(base):
    tensors, metadata = load_weights(base)
    model = load_model(base)
    x = torch.from_numpy(synthetic(64, 64, 5)).permute(2, 0, 1)[None].float().div(255)
    out = coded_forward(model, CoderRate(tensors, metadata), x, torch.tensor([3.0]))
    out["bits"].sum().backward()
    assert model.g_a[0].weight.grad.abs().sum() > 0
    assert model.h_a[0].weight.grad.abs().sum() > 0


def test_noise_and_straight_through_rate_gradients_share_the_coded_value(base):
    tensors, metadata = load_weights(base)
    model = load_model(base)
    rate = CoderRate(tensors, metadata)
    x = torch.from_numpy(synthetic(64, 64, 6)).permute(2, 0, 1)[None].float().div(255)
    grads, values = [], []
    for mode in ("noise", "ste"):
        model.zero_grad()
        out = coded_forward(model, rate, x, torch.tensor([2.0]), rate_gradient=mode)
        out["bits"].sum().backward()
        values.append(float(out["bits"].sum().detach()))
        grads.append(model.h_a[0].weight.grad.clone())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.equal(grads[0], grads[1])
    with pytest.raises(ValueError, match="rate_gradient"):
        coded_forward(model, rate, x, torch.tensor([2.0]), rate_gradient="soft")


def test_command_line_runs_validates_and_resumes(base, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        Image.fromarray(synthetic(80, 96, 10 + i)).save(data / f"im{i}.png")
    out = tmp_path / "run"
    common = ["--weights", str(base), "--data", str(data), "--out", str(out), "--batch", "2", "--crop", "64"]
    common += ["--holdout", "2", "--eval-every", "2", "--log-every", "1", "--threads", "1"]
    encoder_tune.main([*common, "--steps", "2"])
    assert (out / "last.safetensors").exists() and (out / "checkpoint.pt").exists()
    with pytest.raises(SystemExit):  # an existing run is continued only when asked
        encoder_tune.main([*common, "--steps", "3"])
    encoder_tune.main([*common, "--steps", "3", "--resume"])
    assert "resumed from" in capsys.readouterr().out
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and set(ckpt["average"]) == set(ckpt["encoder"])
    rows = list(csv.DictReader(open(out / "val.csv")))
    assert [r["step"] for r in rows] == ["0", "2"]
    # the tiny model codes a few dozen bytes here, so the 4-byte words of the streams dominate
    assert all(abs(float(r[f"q{q}_est_vs_stream"])) < 0.3 for r in rows for q in (1, 3, 5, 8))
    assert (out / "holdout.txt").read_text().count("\n") == 2
    tensors, _ = load_weights(base)
    last, meta = load_weights(out / "last.safetensors")
    assert meta["encoder_update_steps"] == "2"
    for k, v in tensors.items():
        if not k.startswith(("float.g_a.", "float.h_a.", "float.log_gain")):
            assert torch.equal(last[k], v), k
    # a resume tunes the weights the run started from: other ones (here another encoder) are refused
    other = tmp_path / "other.safetensors"
    other.write_bytes((out / "last.safetensors").read_bytes())
    changed = [*common, "--steps", "4", "--resume"]
    changed[changed.index(str(base))] = str(other)
    with pytest.raises(SystemExit, match="other weights"):
        encoder_tune.main(changed)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    with pytest.raises(SystemExit, match="--holdout 5 must be from 0 to 4"):
        encoder_tune.main([*common, "--out", str(tmp_path / "run2"), "--holdout", "5"])
