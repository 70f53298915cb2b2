"""One speed measurement in a fresh interpreter: its time and its own peak memory (for :mod:`pillow_jac.bench.speed`).

:func:`measure_in_subprocess` starts ``python -m pillow_jac.bench.isolated SPEC`` (or, for CompressAI's mbt2018,
:data:`COMPRESSAI_CHILD` in the interpreter of a separate virtualenv: CompressAI is never a dependency of
pillow_jac). The child first encodes and decodes a 64x64 image (loading the weights, warming caches), records its
peak RSS so far as the *baseline*, makes one untimed call on the real input (a first call at full size ran 18-25%
slower than the next: allocations and kernels chosen for that size), times ``repeat`` calls on it, and prints one
``RESULT`` line of JSON. The parent samples the child's RSS with psutil (when installed) and kills it above
``max_mem`` or after ``timeout`` seconds.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ALIGN
from ..peak_memory import peak_rss_bytes
from .codecs import get_codec
from .images import load_rgb

__all__ = ["measure_in_subprocess", "COMPRESSAI_CHILD", "MIB"]

MIB = 1 << 20


def _load_input(path: str) -> np.ndarray:
    return np.load(path) if path.endswith(".npy") else load_rgb(path)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (in the child process) and return its record."""
    name = spec["codec"]
    device = spec.get("device") or None
    if name.startswith("jac"):
        from pillow_jac.passive_torch import torch  # the codec's OpenMP wait policy, as users get it

        torch.set_num_threads(int(spec["threads"]))
    codec = get_codec(name, jac_device=device)
    param = float(spec["param"])
    rng = np.random.default_rng(0)
    small = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    codec.decode(codec.encode(small, param))  # warm-up: weights, tables, library initialisation
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    baseline = peak_rss_bytes()
    times = []
    if spec["op"] == "encode":
        image = _load_input(spec["input"])
        pixels = image.shape[0] * image.shape[1]
        codec.encode(image, param)  # untimed at full size too: the first such call ran 18-25% slower
        for _ in range(int(spec["repeat"])):
            t0 = time.perf_counter()
            data = codec.encode(image, param)
            times.append(time.perf_counter() - t0)
        Path(spec["output"]).write_bytes(data)
    else:
        data = Path(spec["input"]).read_bytes()
        pixels = int(spec["pixels"])
        codec.decode(data)
        for _ in range(int(spec["repeat"])):
            t0 = time.perf_counter()
            codec.decode(data)
            times.append(time.perf_counter() - t0)
    record: dict[str, Any] = {
        "times_s": times,
        "baseline_rss": baseline,
        "peak_rss": peak_rss_bytes(),
        "bytes": len(data),
        "bpp": 8.0 * len(data) / pixels,
    }
    if name.startswith("jac"):
        import torch

        from pillow_jac.openmp_wait import threads_sleep

        record["threads_sleep"] = threads_sleep()  # what the figure holds for (pillow_jac/openmp_wait.py)
        record["torch"] = torch.__version__  # as the CompressAI child records its own, which may differ
    if cuda:
        import torch

        record["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated())
    return record


#: the CompressAI measurement, run by the interpreter of ``--compressai-python`` (no pillow_jac there)
COMPRESSAI_CHILD = r"""
import json, pickle, resource, sys, time
spec = json.loads(sys.argv[1])
ALIGN = int(spec["align"])  # what the image is padded to a multiple of, as pillow_jac pads it
import numpy as np
import torch
torch.set_num_threads(int(spec["threads"]))
from PIL import Image
import compressai
from compressai.models import JointAutoregressiveHierarchicalPriors

_MAX_RSS_SOURCE

device = spec.get("device") or "cpu"
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()

torch.manual_seed(0)
net = JointAutoregressiveHierarchicalPriors(N=int(spec["N"]), M=int(spec["M"])).eval().to(device)
net.update(force=True)
with torch.no_grad():
    warm = net.compress(torch.rand(1, 3, 64, 64, device=device))
    net.decompress(warm["strings"], warm["shape"])
    baseline = peak_rss_bytes()
    times = []
    if spec["op"] == "encode":
        path = spec["input"]
        a = np.load(path) if path.endswith(".npy") else np.asarray(Image.open(path).convert("RGB"))
        h, w = a.shape[:2]
        x = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float().div(255)
        x = torch.nn.functional.pad(x, (0, (-w) % ALIGN, 0, (-h) % ALIGN), mode="replicate").to(device)
        pixels = h * w
        net.compress(x)  # untimed at full size, as for pillow_jac
        for _ in range(int(spec["repeat"])):
            sync(); t0 = time.perf_counter()
            out = net.compress(x)
            sync(); times.append(time.perf_counter() - t0)
        with open(spec["output"], "wb") as f:
            pickle.dump({"strings": out["strings"], "shape": list(out["shape"]), "pixels": pixels}, f)
        strings = out["strings"]
    else:
        with open(spec["input"], "rb") as f:
            d = pickle.load(f)
        pixels, strings = d["pixels"], d["strings"]
        net.decompress(d["strings"], d["shape"])
        for _ in range(int(spec["repeat"])):
            sync(); t0 = time.perf_counter()
            net.decompress(d["strings"], d["shape"])
            sync(); times.append(time.perf_counter() - t0)
nbytes = sum(len(s) for group in strings for s in group)
print("RESULT " + json.dumps({"times_s": times, "baseline_rss": baseline, "peak_rss": peak_rss_bytes(),
      "bytes": nbytes, "bpp": 8.0 * nbytes / pixels, "compressai": compressai.__version__,
      "torch": torch.__version__}), flush=True)
"""
COMPRESSAI_CHILD = COMPRESSAI_CHILD.replace("_MAX_RSS_SOURCE\n", inspect.getsource(peak_rss_bytes))  # one source


def measure_in_subprocess(
    spec: dict[str, Any],
    python: str = sys.executable,
    max_mem: int | None = None,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its record.

    Args:
        spec: what to measure: ``codec`` (a :data:`~pillow_jac.bench.codecs.ALL_CODECS` name or
            ``"compressai"``), ``op`` (``"encode"`` or ``"decode"``), ``param``, ``input`` (image
            ``.png``/``.npy`` to encode, or the file to decode), ``output`` (where ``encode`` writes its
            file), ``pixels`` (for ``decode``), ``threads``, ``device`` and ``repeat``.
        python: the interpreter; CompressAI's may live in another virtualenv.
        max_mem: kill the child when its RSS exceeds this many bytes (needs psutil).
        timeout: seconds before the child is killed.

    Returns:
        The child's record (``times_s``, ``baseline_rss``, ``peak_rss``, ``bytes``, ``bpp``...) plus
        ``median_s``, ``min_s``, ``sampled_peak_rss``; or ``{"error": ...}``.
    """
    threads = str(spec.get("threads", 1))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    if spec["codec"] == "compressai":
        cmd = [python, "-c", COMPRESSAI_CHILD, json.dumps({"align": ALIGN, **spec})]
        cwd = tempfile.gettempdir()  # keep the working tree's pillow_jac off that interpreter's path
    else:
        cmd = [python, "-m", "pillow_jac.bench.isolated", json.dumps(spec)]
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        cwd = None
    try:
        import psutil
    except ImportError:
        psutil = None
    sampled = 0
    killed = None
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        handle = psutil.Process(proc.pid) if psutil is not None else None
        while proc.poll() is None:
            if handle is not None:
                try:
                    sampled = max(sampled, handle.memory_info().rss)
                except psutil.Error:
                    pass
            if max_mem is not None and sampled > max_mem:
                killed = f"killed: RSS above --max-mem ({sampled / MIB:.0f} MiB)"
            elif time.monotonic() - start > timeout:
                killed = f"killed: over {timeout:.0f} s"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if killed:
        return {"error": killed, "sampled_peak_rss": sampled}
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}", "sampled_peak_rss": sampled}
    record = json.loads(lines[-1][len("RESULT ") :])
    record["median_s"] = statistics.median(record["times_s"])
    record["min_s"] = min(record["times_s"])
    record["sampled_peak_rss"] = sampled
    return record


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: ``python -m pillow_jac.bench.isolated SPEC`` (``SPEC`` as JSON)."""
    (spec,) = sys.argv[1:] if argv is None else argv
    print("RESULT " + json.dumps(_child(json.loads(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
