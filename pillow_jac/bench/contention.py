r"""Encode and decode time with the cores idle and beside other torch work, for two OpenMP wait policies.

Usage (from the repository root)::

    python -m pillow_jac.bench.contention --image ../shared/data/kodak/kodim01.png

The codec imports torch with OpenMP's passive wait policy (:mod:`pillow_jac.openmp_wait`); torch's own
default lets idle OpenMP threads spin. Each measurement runs in a fresh interpreter: ``codec`` lets the
codec import torch (so the codec's policy holds), ``spin`` imports torch before pillow_jac (so torch's
default holds). Beside it run ``--neighbours`` processes of other torch work (a small convolutional
network in training, torch's default thread count), each in its own session as a program started
elsewhere would be: none (``idle``), at the lowest priority (``nice 19``, a background job) or at the
normal one (``nice 0``). Every measured child runs with the environment's own OpenMP variables removed
and ``--threads`` torch threads, encodes and decodes the image once to warm up, then times ``--repeat``
calls of each; the table gives the fastest and the median. The figures of the policy's docstring were
measured with this command, on the default image.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..openmp_wait import CHOSEN_BY_USER
from ..signal_handlers import handling
from . import metrics
from .images import find_shared

__all__ = ["main", "POLICIES", "LOADS"]

POLICIES = ("codec", "spin")
#: the neighbours' niceness per load (None: no neighbours)
LOADS = {"idle": None, "nice 19": 19, "nice 0": 0}

#: other torch work: a small network trained at the niceness in argv[1] until the process is killed or its
#: parent (argv[2]) is gone (it runs in its own session, where no terminal's signal reaches it)
_NEIGHBOUR = """
import os, sys
os.nice(int(sys.argv[1]))
parent = int(sys.argv[2])
import torch
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 64, 5, 2, 2), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 5, 2, 2), torch.nn.ReLU(),
    torch.nn.ConvTranspose2d(64, 3, 4, 4),
)
optimiser = torch.optim.Adam(net.parameters())
x = torch.rand(4, 3, 128, 128)
while os.getppid() == parent:
    loss = (net(x) - x).square().mean()
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
"""


def _child(policy: str, image: str, quality: float, threads: int, repeat: int) -> dict:
    """Time ``repeat`` encodes and decodes in this interpreter (run by :func:`measure` in a fresh one)."""
    if policy == "spin":
        import torch  # noqa: F401 - before pillow_jac: torch's own wait policy

    import numpy as np
    from PIL import Image

    import pillow_jac

    pixels = np.asarray(Image.open(image).convert("RGB"))
    data = pillow_jac.encode(pixels, quality=quality)  # the first call imports torch and loads the weights
    pillow_jac.decode(data)
    import torch

    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"encode": [], "decode": []}
    for _ in range(repeat):
        start = time.perf_counter()
        pillow_jac.encode(pixels, quality=quality)
        times["encode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        pillow_jac.decode(data)
        times["decode"].append(time.perf_counter() - start)
    return {"bytes": len(data), "times": times}


def measure(policy: str, load: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh interpreter, with ``--neighbours`` other torch processes beside it under load."""
    env = {k: v for k, v in os.environ.items() if k not in CHOSEN_BY_USER}
    neighbours = []
    try:
        if LOADS[load] is not None:
            command = [sys.executable, "-c", _NEIGHBOUR, str(LOADS[load]), str(os.getpid())]
            for _ in range(args.neighbours):
                neighbours.append(subprocess.Popen(command, env=env, start_new_session=True))
            time.sleep(2.0)  # past their import of torch
        command = [sys.executable, "-m", "pillow_jac.bench.contention", "--child", policy, "--image", args.image]
        command += ["--quality", str(args.quality), "--threads", str(args.threads), "--repeat", str(args.repeat)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=args.timeout)
    finally:
        for process in neighbours:
            process.kill()
            process.wait()
    if done.returncode != 0:
        raise RuntimeError(f"{policy}/{load} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(policy=policy, load=load)
    return result


def markdown(rows: list[dict], meta: dict) -> str:
    """The table of fastest and median times, each policy beside the other."""
    lines = [
        f"# Encode and decode beside other torch work ({meta['image']}, quality {meta['quality']:g}, "
        f"{meta['threads']} torch threads)",
        "",
        f"{meta['machine']}; load: {meta['neighbours']} other torch process(es) in training beside the codec, "
        f"in their own session, at the niceness named; fastest / median of {meta['repeat']} calls, seconds.",
        "",
        "| load | OpenMP wait policy | encode | decode |",
        "|---|---|---|---|",
    ]
    names = {"codec": "passive (the codec's)", "spin": "spin (torch's default)"}
    for row in rows:
        cells = [f"{min(t):.2f} / {statistics.median(t):.2f}" for t in (row["times"]["encode"], row["times"]["decode"])]
        lines.append(f"| {row['load']} | {names[row['policy']]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _stop(signum: int, frame) -> None:
    """SIGTERM: leave as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write ``contention.json`` and ``contention.md`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None, help="image to time (default: shared/data/kodak/kodim01.png)")
    parser.add_argument("--quality", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the codec")
    parser.add_argument("--neighbours", type=int, default=1, help="other torch processes beside it under load")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one measurement may take")
    parser.add_argument("--out", type=Path, default=Path("bench_out/contention"))
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.image, args.quality, args.threads, args.repeat)))
        return 0
    if args.image is None:
        kodak = find_shared("data/kodak")
        if kodak is None:
            parser.error("no --image given and no shared/data/kodak found")
        args.image = str(kodak / "kodim01.png")
    if args.repeat < 1 or args.neighbours < 1 or args.threads < 1:
        parser.error("--repeat, --neighbours and --threads must be at least 1")
    meta = {
        "image": Path(args.image).name,
        "quality": args.quality,
        "threads": args.threads,
        "neighbours": args.neighbours,
        "repeat": args.repeat,
        "machine": metrics.machine_description(),
        "date": time.strftime("%Y-%m-%d"),
    }
    # a terminated run stops its neighbours (measure's finally); the caller's handler is back after
    with handling({signal.SIGTERM: _stop}):
        rows = []
        for load in LOADS:
            for policy in POLICIES:
                rows.append(measure(policy, load, args))
                print(f"{load} {policy}: done", file=sys.stderr, flush=True)
    text = markdown(rows, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contention.json").write_text(metrics.json_text({"meta": meta, "rows": rows}) + "\n")
    (args.out / "contention.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
