"""The codec's first import of torch sets OpenMP's passive wait policy, only then (pillow_jac.openmp_wait)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pillow_jac import local_batch
from pillow_jac.bench import contention
from pillow_jac.openmp_wait import CHOSEN_BY_USER, passive_unless_chosen
from pillow_jac.openmp_wait import _state as passive_state

ROOT = Path(__file__).resolve().parents[1]
VECTOR = min((ROOT / "format_spec" / "vectors" / "mbt-128-192-r006").glob("*.jac"))

#: records the policy the environment holds when torch's import begins, then uses the codec as a program would
_PROGRAM = """
import importlib.abc, io, json, os, sys
seen = []
class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Recorder())
if sys.argv[1] == "torch-first":
    import torch
import numpy as np
from PIL import Image
import pillow_jac
worker_imports = None
if sys.argv[1] == "decode":  # the first codec call of the process is a decode
    Image.open(sys.argv[2]).load()
elif sys.argv[1] == "fork-server":  # what jac batch's fork server preloads before it forks the workers
    import importlib
    for name in json.loads(sys.argv[3]):
        importlib.import_module(name)
    preloaded = set(sys.modules)
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(io.BytesIO(), "JAC")  # a worker's first file
    worker_imports = sorted(m for m in set(sys.modules) - preloaded if m.startswith("pillow_jac"))
else:
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(io.BytesIO(), "JAC")
from pillow_jac.openmp_wait import threads_sleep
print(json.dumps({"at_import": seen[0] if seen else None, "after": os.environ.get("OMP_WAIT_POLICY"),
                  "sleep": threads_sleep(), "worker_imports": worker_imports}))
"""


def _run(mode: str, **extra: str) -> dict:
    """The policy when torch's import began, and the variable after the codec ran, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in CHOSEN_BY_USER}
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode, str(VECTOR), json.dumps(local_batch._WORKER_PRELOAD)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first_call", ["encode", "decode", "fork-server"])
def test_the_codecs_import_of_torch_is_passive_and_leaves_the_environment_as_it_was(first_call):
    """Also: a jac batch worker, forked from a server that imported the preload list, imports none of the
    package's modules at its first file (each cost it tens of milliseconds)."""
    worker_imports = [] if first_call == "fork-server" else None
    assert _run(first_call) == {"at_import": "PASSIVE", "after": None, "sleep": True, "worker_imports": worker_imports}


def test_a_program_that_chose_keeps_its_choice():
    expected = {"at_import": "ACTIVE", "after": "ACTIVE", "sleep": False, "worker_imports": None}
    assert _run("encode", OMP_WAIT_POLICY="ACTIVE") == expected


@pytest.mark.parametrize("variable", [None, *CHOSEN_BY_USER])
def test_the_policy_is_set_only_before_torch_and_only_where_nothing_was_chosen(variable, monkeypatch):
    for name in CHOSEN_BY_USER:
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, "7")
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch's first import
    monkeypatch.setitem(passive_state, "passive", False)
    with passive_unless_chosen():
        during = os.environ.get("OMP_WAIT_POLICY")
    assert during == ("PASSIVE" if variable is None else "7" if variable == "OMP_WAIT_POLICY" else None)
    assert os.environ.get("OMP_WAIT_POLICY") == ("7" if variable == "OMP_WAIT_POLICY" else None)
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # torch imported already: nothing set
    with passive_unless_chosen():
        during = os.environ.get("OMP_WAIT_POLICY")
    assert during == ("7" if variable == "OMP_WAIT_POLICY" else None)


def test_torch_imported_first_keeps_torchs_policy():
    assert _run("torch-first") == {"at_import": None, "after": None, "sleep": False, "worker_imports": None}


def test_jac_batch_workers_fork_from_a_server_that_imported_torch_passively(tmp_path, monkeypatch):
    import multiprocessing.context

    from pillow_jac import local_batch

    preloads = []

    class Recorded(Exception):
        pass

    def record(self, modules):
        preloads.append(list(modules))
        raise Recorded  # stop before any worker starts

    monkeypatch.setattr(multiprocessing.context.BaseContext, "set_forkserver_preload", record)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server here")
    with pytest.raises(Recorded):
        list(local_batch._run_jobs({tmp_path / "a.png": tmp_path / "a.jac"}, (), False, 2))
    # torch comes in through passive_torch, before any module that imports it; only the SIGINT module before it
    assert preloads and preloads[0][:2] == ["pillow_jac.forkserver_signals", "pillow_jac.passive_torch"]
    assert "torch" not in preloads[0]


def test_contention_bench_measures_beside_a_neighbour_and_stops_it(tmp_path, monkeypatch):
    from PIL import Image

    from tests.helpers import natural_image

    image = tmp_path / "small.png"
    Image.fromarray(natural_image(48, 64)).save(image)
    started = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(contention.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(contention.time, "sleep", lambda seconds: None)
    # neighbours that wait instead of spinning on both cores beside the other tests (the real one's own test
    # is below); each is killed when the measurement ends
    monkeypatch.setattr(contention, "_NEIGHBOUR", "import time; time.sleep(600)")
    args = argparse.Namespace(image=str(image), quality=2.0, threads=1, repeat=1, neighbours=2, timeout=120.0)
    row = contention.measure("codec", "nice 19", args)
    assert (row["policy"], row["load"]) == ("codec", "nice 19")
    assert row["bytes"] > 0 and len(row["times"]["encode"]) == len(row["times"]["decode"]) == 1
    neighbours = [p for p in started if p.args[1] == "-c"]
    # both ran until the measurement ended and were killed then (an error would have ended them before)
    assert [p.returncode for p in neighbours] == [-9, -9]
    meta = {"image": "small.png", "quality": 2.0, "threads": 1, "neighbours": 2, "repeat": 1, "machine": "test"}
    text = contention.markdown([row], meta)
    assert "| nice 19 | passive (the codec's) |" in text


def test_contention_bench_stops_on_sigterm_while_it_runs_and_gives_the_handler_back(tmp_path, monkeypatch):
    """SIGTERM during the runs leaves as Ctrl-C does (so each measurement stops its neighbours); after the
    bench returns, or fails, the caller's handler is back."""

    def ours(signum, frame):  # pragma: no cover - never called
        pass

    during = []

    def measured(policy, load, args):
        during.append(signal.getsignal(signal.SIGTERM))
        return {"policy": policy, "load": load}

    monkeypatch.setattr(contention, "measure", measured)
    monkeypatch.setattr(contention, "markdown", lambda rows, meta: "")
    argv = ["--image", "unused.png", "--out", str(tmp_path)]
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        assert contention.main(argv) == 0
        assert during and set(during) == {contention._stop} and signal.getsignal(signal.SIGTERM) is ours
        monkeypatch.setattr(contention, "measure", lambda *args: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            contention.main(argv)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("sleeping", "threads", "pixels", "inside"),
    [
        (True, 2, 64 * 64, 2),  # sleeping threads: a small image keeps two
        (True, 3, 64 * 64, 1),  # more than two: one, as where they spin (not measured otherwise)
        (False, 2, 64 * 64, 1),  # spinning threads: one for a small image
        (False, 2, 600 * 600, 2),  # a large image keeps the count it is given
    ],
)
def test_small_images_keep_two_threads_only_where_they_sleep(sleeping, threads, pixels, inside, monkeypatch):
    import torch

    from pillow_jac import codec_steps, intra_op_threads, openmp_wait

    transforms = codec_steps.transforms()
    engine = argparse.Namespace(device=torch.device("cpu"))
    monkeypatch.setitem(intra_op_threads._single, "outside", intra_op_threads._single["outside"])
    monkeypatch.setitem(openmp_wait._state, "passive", sleeping)
    monkeypatch.setitem(openmp_wait._state, "chosen", False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with transforms.torch_work(pixels, engine):
            seen = torch.get_num_threads()
        assert (seen, torch.get_num_threads()) == (inside, threads)
    finally:
        torch.set_num_threads(before)


def test_a_thread_whose_first_torch_op_ran_inside_anothers_block_gets_its_count_back(monkeypatch):
    """Its first count is 1 (the other thread's block); a small image's work must not leave it there."""
    import threading

    import torch

    from pillow_jac import codec_steps, intra_op_threads, openmp_wait
    from pillow_jac.intra_op_threads import single_threaded

    transforms = codec_steps.transforms()
    monkeypatch.setitem(intra_op_threads._single, "outside", intra_op_threads._single["outside"])
    monkeypatch.setitem(openmp_wait._state, "passive", True)
    engine = argparse.Namespace(device=torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    inside, release, seen = threading.Event(), threading.Event(), {}

    def builder():  # as an engine is built for another generation
        torch.get_num_threads()
        with single_threaded():
            inside.set()
            release.wait(30)

    def coder():
        with transforms.torch_work(64 * 64, engine):
            seen["small image"] = torch.get_num_threads()
        release.set()
        other.join()
        with transforms.torch_work(1024 * 1024, engine):
            seen["large image later"] = torch.get_num_threads()

    other = threading.Thread(target=builder)
    try:
        other.start()
        assert inside.wait(30)
        worker = threading.Thread(target=coder)
        worker.start()
        worker.join(60)
    finally:
        release.set()
        torch.set_num_threads(before)
    assert seen == {"small image": 2, "large image later": 2}


def test_a_contention_neighbour_stops_when_its_parent_is_gone():
    neighbour = subprocess.run(
        [sys.executable, "-c", contention._NEIGHBOUR, "0", "-1"], capture_output=True, text=True, timeout=120
    )  # its parent is this test, never pid -1: it must leave at once rather than train for ever (at niceness 0:
    # at 19 its import of torch waited on every other process of a busy machine, a minute at times)
    assert neighbour.returncode == 0, neighbour.stderr
