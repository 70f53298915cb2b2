"""Encoder fine-tuning against the frozen decoder (pillow_jac.training.encoder_tune), on a tiny model."""

from __future__ import annotations

import argparse
import csv
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac import codec, container
from pillow_jac.engine import get_engine, load_model
from pillow_jac.model.objective import quality_lambda
from pillow_jac.training import data as training_data
from pillow_jac.training import encoder_tune
from pillow_jac.training.coded_rate import CoderRate, coded_forward, coded_loss, estimate_image_bits
from pillow_jac.training.encoder_update import is_encoder_key, tuned_weights, update_average
from pillow_jac.weights import load_weights, save_weights
from pillow_jac.weights_hashes import encoder_hash
from tests.helpers import signal_in_the_second_step, stop_handlers, synthetic, tiny_weights


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


def test_escaped_latents_are_charged_as_coded(base):
    """Latents far outside every table cost their escape bits too (CODING.md 2.3), as the coder writes them."""
    tensors, metadata = load_weights(base)
    model = load_model(base)
    rng = np.random.default_rng(0)
    y = rng.integers(-4, 5, (12, 8, 12))
    y[:, ::3, ::4] *= 40  # far outside the tables: escapes
    z = rng.integers(-3, 4, (8, 2, 3))
    _, y_stream = get_engine("cpu", base).latents.encode(z, y)
    with torch.no_grad():
        bits = CoderRate(tensors, metadata).bits(model, torch.from_numpy(y)[None], torch.from_numpy(z)[None])
    real = len(y_stream)
    assert abs(float(bits["y"]) / 8 - real) <= 0.01 * real + 8, (float(bits["y"]) / 8, real)


def test_rate_gradient_reaches_the_encoder(base):
    """The rate is y's bits plus z's, and the reconstruction is g_s of the latents the codec writes."""
    tensors, metadata = load_weights(base)
    model = load_model(base)
    image = synthetic(64, 64, 5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
    quality = torch.tensor([3.0])
    out = coded_forward(model, CoderRate(tensors, metadata), x, quality)
    assert torch.equal(out["bits"], out["y_bits"] + out["z_bits"]) and bool((out["z_bits"] > 0).all())
    _, y_hat = codec.encode_symbols(image, 3.0, effort=0, weights=base)
    np.testing.assert_array_equal(out["y_hat"][0].detach().numpy(), y_hat)
    with torch.no_grad():
        x_hat = model.g_s(out["y_hat"] * model.gains(quality, inverse=True).float()).clamp(0.0, 1.0)
    assert torch.equal(out["x_hat"].detach(), x_hat)
    out["bits"].sum().backward()
    assert model.g_a[0].weight.grad.abs().sum() > 0
    assert model.h_a[0].weight.grad.abs().sum() > 0


def test_noise_and_straight_through_rate_gradients_share_the_coded_value(base):
    tensors, metadata = load_weights(base)
    model = load_model(base)
    rate = CoderRate(tensors, metadata)
    x = torch.from_numpy(synthetic(64, 64, 6)).permute(2, 0, 1)[None].float().div(255)
    grads, z_grads, values = [], [], []
    for mode in ("noise", "ste"):
        model.zero_grad()
        out = coded_forward(model, rate, x, torch.tensor([2.0]), rate_gradient=mode)
        # z's rate alone: its surrogate takes the noise too
        z_grads += torch.autograd.grad(out["z_bits"].sum(), model.h_a[-1].weight, retain_graph=True)
        out["bits"].sum().backward()
        values.append(float(out["bits"].sum().detach()))
        grads.append(model.h_a[0].weight.grad.clone())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.equal(grads[0], grads[1])
    assert not torch.equal(z_grads[0], z_grads[1])
    with pytest.raises(ValueError, match="rate_gradient"):
        coded_forward(model, rate, x, torch.tensor([2.0]), rate_gradient="soft")


def test_learning_rate_warms_up_then_decays():
    args = argparse.Namespace(lr=1.0, warmup=4, decay_steps=0)
    assert [encoder_tune._learning_rate(args, step) for step in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    args = argparse.Namespace(lr=1.0, warmup=1, decay_steps=10)  # cosine from lr to lr / 10
    assert [encoder_tune._learning_rate(args, step) for step in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_moving_average_moves_towards_the_trained_weights():
    layer = torch.nn.Linear(2, 2)
    torch.nn.init.ones_(layer.weight)
    layer.bias.requires_grad_(False)  # not trained: its average stays
    average = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}
    update_average(average, layer, 0.9)
    assert torch.allclose(average["weight"], torch.full((2, 2), 0.1)) and torch.equal(average["bias"], torch.zeros(2))


def test_command_line_runs_validates_and_resumes(base, tmp_path, capsys, monkeypatch, one_torch_thread):
    """A resumed run ends exactly where a straight one does; validation scores the moving average, keeps the best."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        Image.fromarray(synthetic(80, 96, 10 + i)).save(data / f"im{i}.png")
    # each validation's BD-rate is scripted: the untrained tiny model's curves give NaN
    monkeypatch.setattr(encoder_tune, "bd_against", lambda anchor, test: script.pop(0))
    out, straight = tmp_path / "run", tmp_path / "straight"
    common = ["--weights", str(base), "--data", str(data), "--batch", "2", "--crop", "64", "--holdout", "2"]
    common += ["--eval-every", "1", "--log-every", "1", "--threads", "1"]
    script = [float("nan")] * 3
    encoder_tune.main([*common, "--out", str(straight), "--steps", "3"])
    script = [-1.0, 2.0]  # step 1 beats the untuned encoder, step 2 does not beat step 1
    encoder_tune.main([*common, "--out", str(out), "--steps", "2"])
    assert "3 training images loaded" in capsys.readouterr().out  # the held-out images are not trained on
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    last, meta = load_weights(out / "last.safetensors")
    assert meta["encoder_update_steps"] == "2"
    assert not all(torch.equal(ckpt["average"][k], ckpt["encoder"][k]) for k in ckpt["encoder"])
    for k, v in ckpt["average"].items():  # what is scored and saved is the moving average
        assert torch.equal(last[f"float.{k}"], v), k
    with pytest.raises(SystemExit):  # an existing run is continued only when asked
        encoder_tune.main([*common, "--out", str(out), "--steps", "3"])
    script = [-0.5]  # worse than step 1's -1.0, which the resumed run remembers
    encoder_tune.main([*common, "--out", str(out), "--steps", "3", "--resume"])
    assert "resumed from" in capsys.readouterr().out and not script
    ckpt, other_ckpt = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (out, straight))
    assert ckpt["step"] == other_ckpt["step"] == 3 and set(ckpt["average"]) == set(ckpt["encoder"])
    for part in ("encoder", "average"):  # the resumed run is the straight run, bit for bit
        for k, v in other_ckpt[part].items():
            assert torch.equal(ckpt[part][k], v), (part, k)
    rows = list(csv.DictReader(open(out / "val.csv")))
    assert [(r["step"], float(r["bd_rate"]), r["best"]) for r in rows] == [
        ("0", 0.0, "1"), ("1", -1.0, "1"), ("2", 2.0, "0"), ("3", -0.5, "0")
    ]  # fmt: skip
    assert load_weights(out / "best.safetensors")[1]["encoder_update_steps"] == "1"
    # the tiny model codes a few dozen bytes here, so the 4-byte words of the streams dominate
    assert all(abs(float(r[f"q{q}_est_vs_stream"])) < 0.3 for r in rows for q in (1, 3, 5, 8))
    assert (out / "holdout.txt").read_text().count("\n") == 2
    tensors, _ = load_weights(base)
    last, meta = load_weights(out / "last.safetensors")
    assert meta["encoder_update_steps"] == "3"
    for k, v in load_weights(straight / "last.safetensors")[0].items():
        assert torch.equal(last[k], v), k
    for k, v in tensors.items():
        if not k.startswith(("float.g_a.", "float.h_a.", "float.log_gain")):
            assert torch.equal(last[k], v), k
    # a resume of a run that is not there is refused before any work, not started again from step 0
    with pytest.raises(SystemExit, match="does not exist"):
        encoder_tune.main([*common, "--out", str(tmp_path / "mistyped"), "--steps", "4", "--resume"])
    assert not (tmp_path / "mistyped").exists()
    # a resume tunes the weights the run started from: other ones (here another encoder) are refused
    other = tmp_path / "other.safetensors"
    other.write_bytes((out / "last.safetensors").read_bytes())
    changed = [*common, "--out", str(out), "--steps", "4", "--resume"]
    changed[changed.index(str(base))] = str(other)
    with pytest.raises(SystemExit, match="other weights"):
        encoder_tune.main(changed)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    # and the images and options it was trained with: another held-out draw would score a new set against the old
    # baseline and train on images held out before
    held_out = (out / "holdout.txt").read_text()
    resume = [*common, "--out", str(out), "--steps", "4", "--resume"]
    for extra, what in ((["--holdout-seed", "2"], "held_out"), (["--batch", "1"], "batch"), (["--lr", "1e-3"], "lr")):
        with pytest.raises(SystemExit, match=f"other {what}"):
            encoder_tune.main([*resume, *extra])
    assert (out / "holdout.txt").read_text() == held_out
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    # other training images are refused before any image is loaded; the same images in a moved folder resume
    trained = next(p for p in sorted(data.iterdir()) if p.name not in held_out)
    original = trained.read_bytes()
    Image.fromarray(synthetic(96, 80, 99)).save(trained)
    assert len(trained.read_bytes()) != len(original)
    with monkeypatch.context() as m:
        m.setattr(training_data, "load_rgb", lambda *a, **k: pytest.fail("an image was loaded"))
        with pytest.raises(SystemExit, match="other training_images"):
            encoder_tune.main(resume)
    trained.write_bytes(original)
    moved = data.rename(tmp_path / "moved")
    script = [-0.25]
    encoder_tune.main([str(moved) if a == str(data) else a for a in resume])
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4 and not script
    moved.rename(data)
    # a checkpoint written before the images were named by digest names their folder: it still resumes there
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    del ckpt["run"]["training_images"]
    ckpt["run"]["data"] = str(data.resolve())
    torch.save(ckpt, out / "checkpoint.pt")
    script = [-0.125]
    encoder_tune.main([*common, "--out", str(out), "--steps", "5", "--resume"])
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 5 and not script
    with pytest.raises(SystemExit, match="--holdout 5 must be from 0 to 4"):
        encoder_tune.main([*common, "--out", str(tmp_path / "run2"), "--holdout", "5"])


def test_ctrl_c_ends_the_run_after_its_step_with_a_checkpoint_and_gives_the_handlers_back(
    base, tmp_path, monkeypatch, one_torch_thread, sigint_interrupts
):
    """Ctrl-C during step 2 of 50: the step ends, is saved, and the run returns; the caller's handlers
    (Python's KeyboardInterrupt for SIGINT) are back (pillow_jac.training.stop_signals)."""
    from pillow_jac.training import train

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(synthetic(80, 96, 20 + i)).save(data / f"im{i}.png")
    before = stop_handlers()
    calls = signal_in_the_second_step(monkeypatch, train, signal.SIGINT)  # encoder_tune's qualities are train's
    out = tmp_path / "run"
    status = encoder_tune.main(
        ["--weights", str(base), "--data", str(data), "--batch", "2", "--crop", "64", "--holdout", "1"]
        + ["--eval-every", "1000", "--threads", "1", "--out", str(out), "--steps", "50"]
    )
    assert status == 130  # as the jac command returns after Ctrl-C, not a finished run's 0
    assert len(calls) == 2 and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    assert stop_handlers() == before
