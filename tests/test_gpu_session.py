"""The one-call GPU training script as a CPU dry run: load, crop, train, average, checkpoint, resume, pieces, report."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac.engine import load_model
from pillow_jac.training import gpu_session
from pillow_jac.training.device_crops import DeviceCrops
from pillow_jac.training.pack import join_file
from pillow_jac.training.train import FastWeightAverage, WeightAverage
from pillow_jac.weights import load_weights

from .helpers import natural_image, signal_in_the_second_step, stop_handlers

LADDER = (0.0004, 0.000957393, 0.0022915, 0.00548468, 0.0131275, 0.0314204, 0.0752042, 0.18)
REPORT_FIELDS = {
    "step_start",
    "step_end",
    "steps",
    "stop",
    "crops_per_s",
    "s_per_step",
    "peak_gpu_memory_bytes",
    "macs_per_pixel_forward",
    "flops_per_crop_train",
    "achieved_flops",
    "peak_flops",
    "share_of_peak",
    "compile",
    "data",
    "seconds",
    "pieces",
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    for i, (h, w) in enumerate([(80, 96), (64, 72), (96, 64), (40, 200)]):  # the last is smaller than a crop
        Image.fromarray(natural_image(h, w, seed=20 + i)).save(folder / f"im{i}.png")
    return folder


def session(folder, out, *extra):
    return gpu_session.main(["--dry-run", "--data", str(folder), "--out", str(out), "--minutes", "1", *extra])


def test_dry_run_resumes_and_its_pieces_make_a_weights_file(image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    first = session(image_folder, out, "--pieces", str(pieces), "--lambdas", ",".join(map(str, LADDER)))
    assert (first["step_start"], first["step_end"], first["stop"]) == (0, 3, "steps")
    assert first["signal"] is None and gpu_session.exit_status(first) == 0
    assert first["data"]["images"] == 3 and first["data"]["images_smaller_than_crop"] == 1
    with pytest.raises(SystemExit, match="--resume"):  # a second run would overwrite the first
        session(image_folder, out, "--pieces", str(pieces))

    second = session(image_folder, out, "--pieces", str(pieces), "--resume", "--steps", "2")
    assert (second["step_start"], second["step_end"], second["steps"]) == (3, 5, 2)
    assert REPORT_FIELDS <= second.keys()
    assert second["crops_per_s"] > 0 and second["measured_steps"] == 1
    assert second["achieved_flops"] == pytest.approx(second["flops_per_crop_train"] * second["crops_per_s"])
    assert second["flops_per_crop_train"] == pytest.approx(6 * second["macs_per_pixel_forward"] * 64 * 64)
    assert second["compile"] == {"asked": False, "mode": None, "error": None, "used": False}
    assert json.loads((pieces / gpu_session.REPORT).read_text())["step_end"] == 5
    log = (pieces / gpu_session.LOG).read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "1", "2", "3", "4", "5"]

    assert all((pieces / name).stat().st_size <= 16 << 20 for name in second["pieces"])
    joined = join_file(pieces / gpu_session.WEIGHTS, tmp_path / "ema.safetensors")
    model = load_model(joined)
    assert (model.config.N, model.config.M, model.config.lambdas) == (8, 12, LADDER)
    checkpoint = torch.load(out / gpu_session.CHECKPOINT, weights_only=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["average"][name]), name
    assert not torch.equal(checkpoint["model"]["g_a.0.weight"], checkpoint["average"]["g_a.0.weight"])


def test_failed_compile_falls_back_to_eager_and_time_stops_it(image_folder, tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no compiler here")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("OUT", str(tmp_path / "out_env"))
    report = gpu_session.main(
        ["--dry-run", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--compile"]
        + ["--minutes", "0.08", "--margin", "1", "--steps", "0", "--log-every", "1000"]
    )  # its deadline 3.8 s after its start, of which set-up took about 1.1 s on 2 busy cores (7 s on loaded ones)
    assert report["stop"] == "time"
    assert report["compile"]["used"] is False and "no compiler here" in report["compile"]["error"]
    seconds = report["seconds"]
    assert seconds["setup"] + seconds["train"] < 3.8 + 1.5 or seconds["train"] < 1.5  # no step long past it
    if seconds["setup"] < 2.5:  # a set-up that left the loop its time (a loaded machine's may not)
        assert report["steps"] > 1
        # stopped on time, its last step inside the last 30% of its time: the learning rate had begun to fall
        # (time_decay's own values are its doctest's)
        warm = 1e-4 * min(1.0, report["step_end"] / 200)
        assert report["decay_last"] == 0.3 and report["lr"] < warm, (report["lr"], warm)
    assert (tmp_path / "out_env" / gpu_session.REPORT).exists()  # the pieces go to $OUT when it is set


def test_device_crops_are_flipped_windows_of_the_images():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (17, 17, 3), dtype=np.uint8)]
    crops = DeviceCrops.from_arrays(images, crop=16, seed=3)
    kinds = {}  # each window of each image, and its flips: which it is
    for im in images:
        for top in range(im.shape[0] - 15):
            for left in range(im.shape[1] - 15):
                patch = im[top : top + 16, left : left + 16]
                for kind, p in (("none", patch), ("rows", patch[::-1]), ("cols", patch[:, ::-1]),
                                ("both", patch[::-1, ::-1])):  # fmt: skip
                    kinds.setdefault(p.tobytes(), kind)
    state = crops.state()
    batch = crops.batch_uint8(64)
    seen = [kinds.get(crop.numpy().tobytes()) for crop in batch]
    assert None not in seen  # every crop is a window, flipped or not
    assert set(seen) == {"none", "rows", "cols", "both"}, seen  # flipped at random both ways (64 crops)
    crops.set_state(state)
    assert torch.equal(crops.batch_uint8(64), batch)


def test_fast_weight_average_matches_the_trainers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    slow, fast = WeightAverage(model, 0.9), FastWeightAverage(model, 0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].num_batches_tracked += 1
        slow.update(model)
        fast.update(model)
    for name, value in slow.shadow.items():
        assert torch.allclose(value, fast.shadow[name]), name


def test_a_failing_step_still_leaves_checkpoint_pieces_and_report(image_folder, tmp_path, monkeypatch):
    calls = []

    def failing_qualities(batch):
        calls.append(batch)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return torch.linspace(1, 8, batch)

    monkeypatch.setattr(gpu_session, "stratified_qualities", failing_qualities)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    with pytest.raises(RuntimeError, match="device lost"):
        session(image_folder, out, "--pieces", str(pieces))
    report = json.loads((pieces / gpu_session.REPORT).read_text())
    assert (report["stop"], report["step_end"]) == ("error", 2) and "device lost" in report["error"]
    assert torch.load(out / gpu_session.CHECKPOINT, weights_only=False)["step"] == 2
    assert (pieces / (gpu_session.WEIGHTS + ".000")).exists()


def test_a_call_killed_before_its_end_still_returns_its_last_save(image_folder, tmp_path, monkeypatch):
    """The pieces and the report are published at every save, not only at the end: a call killed by the
    device's time limit (here a BaseException that skips the final save) returns the weights of its last one."""
    calls = []

    def killed_at_the_fourth_step(batch):
        calls.append(batch)
        if len(calls) == 4:
            raise SystemExit("killed")
        return torch.linspace(1, 8, batch)

    monkeypatch.setattr(gpu_session, "stratified_qualities", killed_at_the_fourth_step)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    with pytest.raises(SystemExit):
        session(image_folder, out, "--pieces", str(pieces), "--steps", "10", "--save-every", "1e-9", "--bf16")
    report = json.loads((pieces / gpu_session.REPORT).read_text())
    assert (report["stop"], report["step_end"], report["pieces_step"], report["bf16"]) == ("running", 3, 3, True)
    joined = join_file(pieces / gpu_session.WEIGHTS, tmp_path / "ema.safetensors")
    checkpoint = torch.load(out / gpu_session.CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == 3
    for name, value in load_model(joined).state_dict().items():
        assert torch.equal(value, checkpoint["average"][name]), name


def test_a_call_killed_while_it_saves_its_checkpoint_reports_its_pieces(image_folder, tmp_path, monkeypatch):
    """A save published the pieces, wrote the checkpoint, then the report: a call killed during the checkpoint's
    write (the longest) returned new pieces beside the report of the save before, whose pieces_step was wrong."""
    saves = []
    save = gpu_session.Session.save

    def killed_in_the_second_save(self):
        saves.append(self.step)
        if len(saves) == 2:
            raise SystemExit("killed")
        save(self)

    monkeypatch.setattr(gpu_session.Session, "save", killed_in_the_second_save)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    with pytest.raises(SystemExit):
        session(image_folder, out, "--pieces", str(pieces), "--steps", "10", "--save-every", "1e-9")
    report = json.loads((pieces / gpu_session.REPORT).read_text())
    _, meta = load_weights(join_file(pieces / gpu_session.WEIGHTS, tmp_path / "ema.safetensors"))
    assert report["pieces_step"] == int(meta["step"]) == saves[1]


def test_sigterm_ends_the_call_after_its_step_and_gives_the_handlers_back(image_folder, tmp_path, monkeypatch):
    """SIGTERM during step 2 of 10: the step ends, is saved and reported as stopped by a signal; the
    caller's handlers are back (pillow_jac.training.stop_signals)."""
    before = stop_handlers()
    calls = signal_in_the_second_step(monkeypatch, gpu_session, signal.SIGTERM)
    out = tmp_path / "run"
    pieces = tmp_path / "pieces"
    report = session(image_folder, out, "--pieces", str(pieces), "--steps", "10", "--save-every", "1e-9")
    assert (report["stop"], report["signal"], report["step_end"], len(calls)) == ("signal", signal.SIGTERM, 2, 2)
    assert gpu_session.exit_status(report) == 143  # the command's status: not 0, as if the call had finished
    assert torch.load(out / gpu_session.CHECKPOINT, weights_only=False)["step"] == 2
    assert stop_handlers() == before
    # the device's time limit sends it, and its reply collects the pieces meanwhile: the publish of step 1 stays
    # whole, unwritten (a publish then could mix old and new pieces), and the report says which step it holds
    assert report["pieces_step"] == 1 and report["pieces"] == ["ema.safetensors.000"]
    assert json.loads((pieces / gpu_session.REPORT).read_text())["pieces_step"] == 1
    assert sorted(p.name for p in pieces.iterdir()) == sorted(
        ["ema.safetensors.000", "ema.safetensors.sha256", gpu_session.REPORT, gpu_session.LOG]
    )


def test_weights_not_finite_at_a_signal_are_reported_and_not_kept(image_folder, tmp_path, monkeypatch):
    """A signal, then weights that are not finite: the report said "signal", as if the checkpoint had been saved."""
    signal_in_the_second_step(monkeypatch, gpu_session, signal.SIGTERM)
    monkeypatch.setattr(gpu_session.Session, "finite", lambda self: self.step < 2)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    report = session(image_folder, out, "--pieces", str(pieces), "--steps", "10", "--save-every", "1e-9")
    assert (report["stop"], report["step_end"], report["pieces_step"]) == ("nonfinite", 2, 1)
    assert gpu_session.exit_status(report) == 143
    assert gpu_session.exit_status({**report, "signal": None}) == 1  # weights not finite, no signal: a failure
    assert torch.load(out / gpu_session.CHECKPOINT, weights_only=False)["step"] == 1
    assert not list(pieces.glob("*.new"))


@pytest.mark.parametrize("log_every", ["1", "5"])  # found at a log line, or by the check before a save
def test_a_loss_that_is_not_finite_keeps_the_last_finite_weights(image_folder, tmp_path, monkeypatch, log_every):
    calls = []
    real_lambda = gpu_session.quality_lambda

    def nan_at_the_third_step(quality, lambdas):
        calls.append(quality)
        lmbda = real_lambda(quality, lambdas)
        return lmbda * float("nan") if len(calls) == 3 else lmbda

    monkeypatch.setattr(gpu_session, "quality_lambda", nan_at_the_third_step)
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    options = ["--pieces", str(pieces), "--steps", "10", "--save-every", "1e-9", "--log-every", log_every]
    report = session(image_folder, out, *options)
    assert (report["stop"], report["step_end"], report["pieces_step"]) == ("nonfinite", 3, 2)
    assert report["pieces"] == ["ema.safetensors.000"]
    text = (pieces / gpu_session.REPORT).read_text()
    assert "NaN" not in text and json.loads(text)["pieces_step"] == 2
    checkpoint = torch.load(out / gpu_session.CHECKPOINT, weights_only=False)
    assert checkpoint["step"] == 2  # the last finite save
    joined = join_file(pieces / gpu_session.WEIGHTS, tmp_path / "ema.safetensors")
    for name, value in load_model(joined).state_dict().items():
        assert torch.isfinite(value).all() and torch.equal(value, checkpoint["average"][name]), name


def test_a_loss_that_is_not_finite_before_the_first_save_still_writes_the_report(image_folder, tmp_path, monkeypatch):
    real_lambda = gpu_session.quality_lambda
    monkeypatch.setattr(gpu_session, "quality_lambda", lambda q, lambdas: real_lambda(q, lambdas) * float("nan"))
    out, pieces = tmp_path / "run", tmp_path / "pieces"
    report = session(image_folder, out, "--pieces", str(pieces), "--steps", "3", "--save-every", "600")
    assert (report["stop"], report["pieces"]) == ("nonfinite", [])
    assert json.loads((pieces / gpu_session.REPORT).read_text())["stop"] == "nonfinite"


def test_profiled_steps_are_summarised_and_left_out_of_the_timing(image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    report = session(image_folder, tmp_path / "run", "--steps", "6", "--profile-steps", "2")
    assert report["steps"] == 6 and report["measured_steps"] == 6 - 1 - 2  # 1 unmeasured, 2 profiled
    profile = report["profile"]
    assert (profile["steps"], profile["ranked_by"], profile["device_busy_share"]) == (2, "CPU time", None)
    assert profile["wall_s_per_step"] > 0 and 0 < len(profile["top"]) <= 12
    assert all(row["calls"] >= 1 and row["ms_per_step"] >= 0 for row in profile["top"])
    assert any("conv" in row["op"] for row in profile["top"])  # the model's own work is among the heaviest
    assert session(image_folder, tmp_path / "plain", "--steps", "2")["profile"] is None
    cut_short = session(image_folder, tmp_path / "short", "--steps", "3", "--profile-steps", "5")
    assert cut_short["profile"] is None and not torch.autograd.profiler._is_profiler_enabled  # the window is closed


@pytest.mark.parametrize("where", ["start", "stop"])
def test_a_profiler_that_fails_ends_its_window_and_not_the_training(image_folder, tmp_path, monkeypatch, where):
    """The profile is a measurement: its error goes into the report, and the run trains, times and saves."""
    monkeypatch.delenv("OUT", raising=False)

    class Broken(torch.profiler.profile):
        def __enter__(self):
            if where == "start":
                raise RuntimeError("no profiler here")
            return super().__enter__()

        def key_averages(self, *args, **kwargs):
            raise RuntimeError("no events here")

    monkeypatch.setattr(torch.profiler, "profile", Broken)
    report = session(image_folder, tmp_path / "run", "--steps", "6", "--profile-steps", "2")
    message = "no profiler here" if where == "start" else "no events here"
    assert report["steps"] == 6 and report["profile"] == {"error": f"RuntimeError: {message}"}
    assert report["measured_steps"] >= 6 - 1 - 2 and (tmp_path / "run" / "ema.safetensors").exists()
    assert not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("option", ["--log-every", "--batch"])
def test_counts_below_one_are_refused(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as stop:
        gpu_session.parse_args(["--dry-run", "--data", str(tmp_path), "--minutes", "1", option, "0"])
    assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_the_documented_data_parts_fit_a_call_beside_the_tree():
    """Each data call carries the working tree plus one part, at most 64 MiB (docs/training_on_a_gpu.md). Fixed
    parts (28 MB, then 24 MB) stopped fitting as the tree grew, so the doc packs with ``--part-mb auto``: parts sized
    to the room left. Every release adds a kept decoder (19 MB) to the tree, which no call needs: the doc sets the
    kept decoders aside before the pack and puts them back after the calls. This fails when the room left with them
    set aside falls below 6 MB (about 45 images a call), before a lent minute finds out."""
    import re
    import shutil
    from pathlib import Path

    from pillow_jac.training import travel

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "training_on_a_gpu.md").read_text()
    documented = set(re.findall(r"pack --data \S+ --out \.gpu --part-mb (\S+)", doc))
    assert documented == {"auto"}, documented
    set_aside = doc.index("python -m pillow_jac.training.travel set-aside")
    assert set_aside < doc.index("pack --data ") < doc.index("## The calls")
    assert doc.index("## After") < doc.index("python -m pillow_jac.training.travel put-back")
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("the tree that travels is what git does not ignore: needs git and a checkout")
    kept = sum(path.stat().st_size for path in travel.travelling_kept_decoders(root))
    tree = travel.travelling_tree_bytes(root) - kept
    room = travel.room_mb(root) + kept / travel.MB
    assert room >= 6, f"a device call has room for only {room:.1f} MB of data beside the {tree / 1e6:.1f} MB tree"


def test_every_documented_gpu_session_command_parses(tmp_path, monkeypatch):
    """The doc's commands run on a lent machine, where a misspelt option costs the call: each must parse."""
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training_on_a_gpu.md").read_text()
    commands = re.findall(r"python3? -m pillow_jac\.training\.gpu_session ([^;&|`]+)", doc)
    assert len(commands) >= 4, commands  # the dry run, call 1, call K and its restart
    monkeypatch.setenv("OUT", str(tmp_path))
    for command in commands:
        words = [w.replace("$OUT", str(tmp_path)) for w in shlex.split(command, comments=True)]
        words = [w for w in words if not w.startswith("2>")]
        if "M" in words:  # the restart's minutes, taken from the table
            words[words.index("M")] = "5"
        args = gpu_session.parse_args(words)
        assert args.minutes > 0, command


def test_the_gpu_options_and_pack_refuse_what_would_waste_a_run(tmp_path, capsys) -> None:
    """An evaluation set as training data, an average that never moves (or overshoots), and split pieces over the
    16 MiB a file may come back in: refused or sized before a lent minute is spent."""
    from pillow_jac.training import gpu_options, pack

    for argv, message in (
        (
            ["--dry-run", "--minutes", "1", "--data", str(tmp_path / "kodak"), "--out", str(tmp_path / "o")],
            "kodak evaluation",
        ),
        (
            ["--dry-run", "--minutes", "1", "--data", str(tmp_path / "t"), "--out", str(tmp_path / "o"), "--ema", "1"],
            "--ema",
        ),
    ):
        with pytest.raises(SystemExit) as stop:
            gpu_options.parse_args(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        pack.main(["--data", str(tmp_path / "urban20"), "--out", str(tmp_path / "p")])
    assert stop.value.code == 2 and "urban20 evaluation set" in capsys.readouterr().err
    big = tmp_path / "ema.safetensors"
    big.write_bytes(bytes(20_000_000))
    pack.main(["--split", str(big), "--out", str(tmp_path / "pieces")])
    pieces = sorted((tmp_path / "pieces").glob("ema.safetensors.0*"))
    assert len(pieces) == 2 and max(p.stat().st_size for p in pieces) <= 15_000_000 < 16 * 2**20


def test_a_signal_during_the_last_save_waits_for_it(image_folder, tmp_path, monkeypatch):
    """The final publish and checkpoint ran after the training loop's signal handlers were put back: a second
    Ctrl-C or SIGTERM (or the first, arriving then) killed the save half-way."""
    import os
    import signal

    keep = gpu_session.Session.keep

    def interrupted_keep(self):
        os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C while the weights are written
        return keep(self)

    monkeypatch.setattr(gpu_session.Session, "keep", interrupted_keep)
    out = tmp_path / "run"
    report = session(image_folder, out)
    assert report["stop"] == "steps" and (out / gpu_session.CHECKPOINT).exists() and (out / gpu_session.REPORT).exists()
