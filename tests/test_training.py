"""The training command: exact resumption, and starting from a shipped (compact) weights file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac.engine import build_model, load_model
from pillow_jac.model.integer import integerize
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.training import checkpoint, train
from pillow_jac.training.freeze import freeze
from pillow_jac.training.pack import join_file, pack, split_file
from pillow_jac.weights import WeightsError, load_weights, save_weights

from .helpers import natural_image, signal_in_the_second_step, stop_handlers

TINY = [
    "--N",
    "8",
    "--M",
    "12",
    "--crop",
    "64",
    "--batch",
    "2",
    "--threads",
    "1",
    "--no-bf16",
    "--eval-every",
    "0",
    "--log-every",
    "1",
]
INTEGER_NETS = ("h_s", "context", "entropy_parameters")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    for i in range(3):
        Image.fromarray(natural_image(80, 96, seed=10 + i)).save(folder / f"im{i}.png")
    return folder


def run(folder, out, *extra, status=0):
    """Train; return the weights and their running average (``ema.*`` tensors) in one dict."""
    assert train.main(["--data", str(folder), "--out", str(out), *TINY, *extra]) == status
    tensors, _ = load_weights(out / "float.safetensors")
    if (out / "ema.safetensors").exists():
        average, _ = load_weights(out / "ema.safetensors")
        tensors.update({f"ema.{k}": v for k, v in average.items()})
    return tensors


def test_resumed_run_equals_uninterrupted_run(image_folder, tmp_path):
    straight = run(image_folder, tmp_path / "a", "--steps", "4")
    run(image_folder, tmp_path / "b", "--steps", "2")
    resumed = run(image_folder, tmp_path / "b", "--steps", "4")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "1", "2", "3", "4"]
    # the weight average is saved, resumed with the rest, and lags the weights
    weight = "float.g_a.0.weight"
    assert not torch.equal(straight[weight], straight["ema." + weight])


def test_sigterm_ends_the_run_after_its_step_with_a_checkpoint_and_gives_the_handlers_back(
    image_folder, tmp_path, monkeypatch
):
    """SIGTERM (``kill``, ``timeout``) during step 2 of 50: the step ends, is saved, and the run returns
    143, as the jac command does (it returned 0, as if the run had finished); the caller's handlers are back
    (pillow_jac.training.stop_signals)."""
    before = stop_handlers()
    calls = signal_in_the_second_step(monkeypatch, train, signal.SIGTERM)
    run(image_folder, tmp_path / "run", "--steps", "50", status=143)
    assert len(calls) == 2 and torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert stop_handlers() == before


def test_a_signal_in_the_last_step_leaves_a_finished_run_finished(image_folder, tmp_path, monkeypatch):
    """SIGTERM during step 2 of 2: the run ends having taken every step, so it exits 0 (it returned 143, as
    if it had been cut short)."""
    signal_in_the_second_step(monkeypatch, train, signal.SIGTERM)
    run(image_folder, tmp_path / "run", "--steps", "2", status=0)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2


def test_weight_average_follows_the_weights(image_folder, tmp_path):
    none = tmp_path / "none"
    before = run(image_folder, none, "--steps", "1", "--ema", "0")
    assert not (none / "ema.safetensors").exists()
    assert "average" not in torch.load(none / "checkpoint.pt", weights_only=False)
    # a checkpoint without an average (older runs) resumes with the average starting at its weights;
    # one step later the average is 0.9 * old + 0.1 * new
    after = run(image_folder, none, "--steps", "2", "--ema", "0.9", "--allow-changed-options")
    for name in ("g_a.0.weight", "g_s.1.beta", "log_gain"):
        old, new = before[f"float.{name}"], after[f"float.{name}"]
        assert not torch.equal(old, new)
        torch.testing.assert_close(after[f"ema.float.{name}"], 0.9 * old + 0.1 * new)


@pytest.fixture()
def shipped_tiny(tmp_path):
    torch.manual_seed(3)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    tensors, metadata = freeze(model, release=9)
    path = tmp_path / "tiny.safetensors"
    save_weights(path, tensors, metadata)
    return model, path


def test_shipped_file_stores_integer_networks_only_once(shipped_tiny):
    model, path = shipped_tiny
    tensors, metadata = load_weights(path)
    assert not [k for k in tensors if k.split(".")[1] in INTEGER_NETS and k.startswith("float.")]
    assert set(json.loads(metadata["integer_networks"])) == set(INTEGER_NETS)
    recovered = load_model(path)
    for name in INTEGER_NETS:
        want_state = getattr(model, name).state_dict()
        for key, got in getattr(recovered, name).state_dict().items():
            want = want_state[key]
            if name == "context" and key == "weight":  # only the causal taps are kept (the rest is masked)
                want = want * model.context.mask
            if key.endswith("weight"):  # each weight within 2**-15 of the layer's largest (per channel, in fact)
                assert (got - want).abs().max() <= want.abs().max() * 2**-15, f"{name}.{key}"
            assert torch.allclose(got, want, atol=1e-4), f"{name}.{key}"
    # float layers are stored as they are
    assert torch.equal(recovered.g_s[0].weight, model.g_s[0].weight)
    # freezing the recovered model gives back the same file
    again, again_meta = freeze(recovered, release=9)
    assert again_meta["weights_hash"] == metadata["weights_hash"]
    for layer_a, layer_b in zip(integerize(recovered.h_s).layers, integerize(model.h_s).layers, strict=True):
        assert torch.equal(layer_a.weight, layer_b.weight) and torch.equal(layer_a.shift, layer_b.shift)


def test_missing_float_tensors_are_a_weights_error(shipped_tiny):
    _, path = shipped_tiny
    tensors, metadata = load_weights(path)
    del tensors["float.g_s.0.weight"]
    with pytest.raises(WeightsError, match="missing"):
        build_model(tensors, metadata)


def test_training_starts_from_a_shipped_file(image_folder, shipped_tiny, tmp_path):
    _, path = shipped_tiny
    tensors = run(image_folder, tmp_path / "run", "--init", str(path), "--steps", "1", "--lr", "1e-9")
    start = load_model(path).state_dict()
    assert torch.allclose(tensors["float.h_s.0.weight"], start["h_s.0.weight"], atol=1e-6)
    with pytest.raises(SystemExit, match="not the"):
        train.main(
            [
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "other"),
                "--init",
                str(path),
                "--N",
                "16",
                "--M",
                "12",
            ]
        )


def test_training_refuses_to_start_from_a_decoder_file(image_folder, shipped_tiny, tmp_path):
    """A kept generation's decoder file (no encoder, no z density) as ``--init`` trained from a random g_a, h_a and
    z density without a word, in train.py and in the GPU script (whose dry run read only the config)."""
    from pillow_jac import weights, weights_hashes
    from pillow_jac.training import gpu_session, gpu_setup

    _, path = shipped_tiny
    decoder_file = tmp_path / "decoder.safetensors"
    weights.save_weights(decoder_file, *weights_hashes.decoder_only(*load_weights(path)))
    with pytest.raises(WeightsError, match="a decoder file"):
        load_model(decoder_file)
    with pytest.raises(SystemExit, match="a decoder file"):
        train.main(["--data", str(image_folder), "--out", str(tmp_path / "run"), "--init", str(decoder_file)])
    argv = ["--dry-run", "--data", str(image_folder), "--out", str(tmp_path / "gpu"), "--init", str(decoder_file)]
    with pytest.raises(SystemExit, match="a decoder file"):
        gpu_session.main([*argv, "--minutes", "1"])
    with pytest.raises(SystemExit, match="a decoder file"):  # what a real run does once it has its device
        gpu_setup._init_weights(types.SimpleNamespace(dry_run=False, init=decoder_file))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_training_needs_no_range_coder(tmp_path):
    """A GPU machine that only trains lacks constriction: training, gpu_session and load_model must not import it,
    and the GPU doc's fallback trainer must run a step (it imported freeze, and through it the coder, at start)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(80, 96, seed=i)).save(data / f"{i}.png")
    code = (
        "import sys; sys.modules['constriction'] = None\n"  # any import of it now raises ImportError
        "from pillow_jac.training import train, pack, gpu_session\n"
        "from pillow_jac.engine import load_model, default_weights_path\n"
        "print(load_model(default_weights_path()).config.M)\n"
        "train.main(['--device', 'cpu', '--data', sys.argv[1], '--out', sys.argv[2], '--init', "
        "str(default_weights_path()), '--batch', '1', '--crop', '64', '--eval-every', '0', '--steps', '1'])\n"
    )
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", code, str(data), str(out)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "192"
    assert (out / "ema.safetensors").exists()


def test_joining_damaged_pieces_fails(tmp_path):
    data = bytes(range(256)) * 50
    (tmp_path / "ckpt.bin").write_bytes(data)
    pieces = split_file(tmp_path / "ckpt.bin", tmp_path / "out", part_mb=0.005)
    assert len(pieces) == 3
    assert join_file(tmp_path / "out" / "ckpt.bin", tmp_path / "ok.bin").read_bytes() == data
    pieces[1].write_bytes(pieces[1].read_bytes()[:-1])
    with pytest.raises(ValueError, match="SHA-256 differs"):
        join_file(tmp_path / "out" / "ckpt.bin", tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()


def test_pack_deals_every_image_once_into_mixed_parts(tmp_path):
    """Parts hold every image exactly once, and a sorted-by-name source does not land in one part."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{group}_{i:02d}.png" for group in ("aaa", "zzz") for i in range(12)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(src / name)
    size = (src / names[0]).stat().st_size
    parts = pack(src, tmp_path / "out", part_mb=6.5 * size / 1e6)
    held = [sorted(f.name for f in part.iterdir()) for part in parts]
    assert sorted(n for names_in in held for n in names_in) == sorted(names)
    assert len(parts) >= 3
    assert {n[:3] for n in held[0]} == {"aaa", "zzz"}  # name order would fill part01 with aaa_ only
    again = pack(src, tmp_path / "again", part_mb=6.5 * size / 1e6)
    assert [sorted(f.name for f in part.iterdir()) for part in again] == held  # seeded: repeatable


def test_prefetching_trains_the_same_steps_and_resumes_exactly(image_folder, tmp_path):
    """--prefetch (the CUDA default) cuts the same crops in the same order, and checkpoints where it stopped."""
    plain = run(image_folder, tmp_path / "plain", "--steps", "4", "--no-prefetch")
    fetched = run(image_folder, tmp_path / "fetched", "--steps", "4", "--prefetch")
    run(image_folder, tmp_path / "resumed", "--steps", "2", "--prefetch", "--save-every", "1")
    resumed = run(image_folder, tmp_path / "resumed", "--steps", "4", "--prefetch")
    assert plain.keys() == fetched.keys() == resumed.keys()
    for name in plain:
        assert torch.equal(plain[name], fetched[name]), name
        assert torch.equal(plain[name], resumed[name]), name
    # the logged figures (loss, bpp, PSNR; not the wall time) are the same too
    logs = [(tmp_path / d / "log.csv").read_text().splitlines()[1:] for d in ("plain", "fetched", "resumed")]
    figures = [[(row.split(",")[0], *row.split(",")[2:]) for row in log] for log in logs]
    assert len(figures[0]) == 4 and figures[0] == figures[1] == figures[2]


def test_a_resume_with_other_run_options_is_refused(image_folder, tmp_path):
    """--batch, --lr, --ema ... shape the run: a resume repeats them, or says it changes them."""
    out = tmp_path / "run"
    run(image_folder, out, "--steps", "1")
    assert (out / "ema.safetensors").exists()
    for changed in (["--batch", "4"], ["--lr", "3e-4"], ["--seed", "1"], ["--ema", "0"]):
        with pytest.raises(SystemExit, match="trained with other options"):
            run(image_folder, out, "--steps", "2", *changed)
    run(image_folder, out, "--steps", "2", "--log-every", "2", "--save-every", "3")  # logging may change
    # a run without a weight average leaves no average of another run beside its weights
    run(image_folder, out, "--steps", "3", "--ema", "0", "--allow-changed-options")
    assert not (out / "ema.safetensors").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["options"]["ema"] == "0.0"


def test_a_checkpoint_without_recorded_options_resumes_with_a_warning(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    run(image_folder, out, "--steps", "1")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    del ckpt["options"]  # as a checkpoint written before the options were recorded
    torch.save(ckpt, out / "checkpoint.pt")
    capsys.readouterr()
    run(image_folder, out, "--steps", "2", "--batch", "3")
    assert "records no options" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=False)["options"]["batch"] == "3"


def test_every_rank_resumes_from_its_own_states(image_folder, tmp_path):
    """A DDP checkpoint holds each rank's crop sampler and RNG states; rank 1 resumes from rank 1's."""
    from pillow_jac.training.data import CropSampler

    samplers = [CropSampler.from_folder(image_folder, 64, seed=rank) for rank in range(2)]
    for sampler in samplers:
        sampler.batch_uint8(3)
    ranks = [checkpoint.gather_rank_states(s, torch.device("cpu"), distributed=False)[0] for s in samplers]
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, model, optimizer, 5, samplers[0], model.config, None, {}, ranks)
    ckpt = torch.load(path, weights_only=False)
    for rank, sampler in enumerate(samplers):
        state, rng = checkpoint.rank_state(ckpt, rank, 2, seed=0, step=5)
        fresh = CropSampler.from_folder(image_folder, 64, seed=99)
        fresh.set_state(state)
        assert torch.equal(fresh.batch_uint8(2), sampler.batch_uint8(2)), rank
        assert torch.equal(rng["torch"], ranks[rank]["rng"]["torch"])
    # a checkpoint of another number of ranks still gives the ranks different crops
    assert checkpoint.rank_state(ckpt, 1, 3, seed=0, step=5)[0] != checkpoint.rank_state(ckpt, 0, 3, seed=0, step=5)[0]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--batch", "0"], "--batch must be at least 1"),
        (["--log-every", "0"], "--log-every must be at least 1"),
        (["--save-every", "0"], "--save-every must be at least 1"),
        (["--crop", "100"], "--crop must be a positive multiple of"),
        (["--ema", "1"], "--ema must be in"),
        (["--ema", "-0.5"], "--ema must be in"),
    ],
)
def test_train_options_are_checked_before_anything_runs(image_folder, tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--data", str(image_folder), "--out", str(tmp_path / "x"), *options])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_data_must_be_a_folder_of_training_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    Image.fromarray(natural_image(64, 64, seed=1)).save(kodak / "kodim01.png")
    for data, message in (
        (tmp_path / "missing", "is not a folder"),
        (tmp_path / "empty", "no images in"),
        (kodak, "evaluation set"),
    ):
        with pytest.raises(SystemExit) as stop:
            train.parse_args(["--data", str(data)])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_periodic_evaluation_does_not_keep_its_engines(image_folder, tmp_path):
    from pillow_jac import engine

    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    result = train.evaluate_real(model, sorted(image_folder.iterdir())[:1], tmp_path, step=1)
    assert set(result) == {f"q{q}_{k}" for q in (1, 4, 8) for k in ("bpp", "psnr")}
    path = str((tmp_path / "eval.safetensors").resolve())
    assert not [key for key in engine._CACHE if key[0] == path]


def test_pack_refuses_images_that_would_share_a_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(600, 700, seed=1)).save(src / "x.png")  # downscaled: x.webp
    Image.fromarray(natural_image(600, 700, seed=2)).save(src / "x.jpg")  # downscaled: x.webp too
    with pytest.raises(ValueError, match=r"x.jpg and x.png -> x.webp"):
        pack(src, tmp_path / "out", part_mb=1)
    assert not (tmp_path / "out").exists()


def test_16_bit_grey_training_images_keep_their_levels(tmp_path):
    from pillow_jac.training.data import load_rgb

    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert load_rgb(tmp_path / "grey16.png").tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="float.tiff: floating-point samples"):
        load_rgb(tmp_path / "float.tiff")
