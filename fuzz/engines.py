"""The fuzz harness's engines: the ``random`` mutation loop, ``atheris`` (libFuzzer) and ``distill``.

:func:`run_random` mutates corpus entries with :func:`~fuzz.mutators.mutate` and runs the oracle on
each (:func:`~fuzz.oracle.run_one`, under the watchdog), saving findings; :func:`run_atheris` runs
coverage-guided libFuzzer with the same mutators as its custom mutator and the oracle as its target;
:func:`distill` keeps the smallest input of each distinct outcome. :func:`setup` makes the process-wide
settings of a session. The random engine and ``distill`` write each input to :data:`CURRENT_INPUT` in
their output folder before running it, so an input that kills the process is on disk afterwards.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .limits import Finding, Limits, Timeout
from .mutators import mutate
from .oracle import check_confirmed, check_container, check_decode, installed_model, lib, run_one

#: the file the random engine and ``distill`` write each input to, in their output folder, before running it
CURRENT_INPUT = "current-input.jac"


def setup(limits: Limits, threads: int | None = 1) -> None:
    """Process-wide settings for a fuzzing session: small Pillow size limit, 1 torch thread."""
    lib().Image.MAX_IMAGE_PIXELS = limits.max_pixels
    if threads:
        import torch

        torch.set_num_threads(threads)


@dataclass
class Stats:
    """Counters of a fuzzing session."""

    executions: int = 0
    findings: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


def _save(data: bytes, directory: Path, prefix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{hashlib.sha1(data).hexdigest()[:16]}.jac"
    path.write_bytes(data)
    return path


def run_random(
    target: str,
    corpus: list[bytes],
    seconds: float,
    limits: Limits,
    crashes: Path,
    keep: Path | None = None,
    seed: int | None = None,
    log: Callable[[str], None] = print,
) -> Stats:
    """Plain mutation loop: mutate corpus entries, run the oracle, save findings (and new outcomes).

    Each input runs under the :func:`~fuzz.limits.watchdog` (a hang is saved as ``timeout-*.jac``, other findings as
    ``finding-*.jac``, in ``crashes``) after being written to ``crashes /`` :data:`CURRENT_INPUT`, which is
    removed when the loop ends: if the process dies (a crash, the OOM killer), that file is the input it ran.
    """
    rng = random.Random(seed)
    stats, start, pool = Stats(), time.monotonic(), list(corpus)
    last_report = start
    crashes.mkdir(parents=True, exist_ok=True)
    current = crashes / CURRENT_INPUT
    try:
        while time.monotonic() - start < seconds:
            data = mutate(rng.choice(pool), rng, pool)
            current.write_bytes(data)
            t0 = time.perf_counter()
            try:
                label = run_one(target, data, limits)
            except Finding as exc:
                stats.findings += 1
                path = _save(data, crashes, "timeout" if isinstance(exc, Timeout) else "finding")
                log(f"FINDING {path}: {exc}")
                continue
            finally:
                stats.executions += 1
                stats.max_seconds = max(stats.max_seconds, time.perf_counter() - t0)
            if label not in stats.outcomes:  # a new outcome: keep the input as a seed for more mutation
                pool.append(data)
                if keep:
                    _save(data, keep, "outcome")
            stats.outcomes[label] = stats.outcomes.get(label, 0) + 1
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                rate = stats.executions / (last_report - start)
                log(f"#{stats.executions} {rate:.1f}/s outcomes {len(stats.outcomes)} findings {stats.findings}")
    finally:
        current.unlink(missing_ok=True)
    stats.seconds = time.monotonic() - start
    return stats


def run_atheris(target: str, argv: list[str], limits: Limits, corpus: list[bytes]) -> None:
    """Coverage-guided fuzzing with atheris/libFuzzer; ``argv`` holds libFuzzer's arguments."""
    import atheris

    with atheris.instrument_imports(include=["pillow_jac"]):
        lib()
        import pillow_jac.engine  # noqa: F401
        import pillow_jac.entropy_coding  # noqa: F401
        import pillow_jac.latent_coding  # noqa: F401
    setup(limits, threads=1 if target == "decode" else None)
    if target == "decode":
        installed_model()  # build the engine before the first input (its cost is not the input's)
    check = check_decode if target == "decode" else check_container

    artifacts = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("-artifact_prefix=")), "./"))

    def one_input(data: bytes) -> None:
        try:
            check_confirmed(check, data, limits)
        except Finding:
            # libFuzzer writes crash-* too, but not always before a pending -timeout alarm kills it
            _save(data, artifacts if artifacts.is_dir() else artifacts.parent, "finding")
            raise

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.25:
            return atheris.Mutate(data, max_size)
        return mutate(data, rng, corpus)[:max_size]

    def custom_crossover(data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        return (data1[: rng.randint(0, len(data1))] + data2[rng.randint(0, len(data2)) :])[:max_out_size]

    # the hard timeout (a hang) covers two confirmed runs of the slowest admissible input
    defaults = [f"-rss_limit_mb={int(limits.rss_mb)}", "-timeout=120", "-max_len=16384"]
    given = {a.split("=")[0] for a in argv if a.startswith("-")}
    args = [sys.argv[0], *[d for d in defaults if d.split("=")[0] not in given], *argv]
    atheris.Setup(args, one_input, custom_mutator=custom_mutator, custom_crossover=custom_crossover)
    atheris.Fuzz()


def distill(inputs: Iterable[bytes], out: Path, max_bytes: int = 6000, limits: Limits | None = None) -> dict[str, str]:
    """Write the smallest input of each distinct :func:`check_decode` outcome to ``out``, listed in its ``index.json``.

    Returns ``{file name: outcome}``. Inputs larger than ``max_bytes`` are skipped. Each input runs
    under the :func:`~fuzz.limits.watchdog` (a hang is a ``FINDING timeout`` outcome) after being written to
    ``out /`` :data:`CURRENT_INPUT`, which is removed when the loop ends.
    """
    limits = limits or Limits()
    best: dict[str, bytes] = {}
    out.mkdir(parents=True, exist_ok=True)
    current = out / CURRENT_INPUT
    try:
        for data in inputs:
            if len(data) > max_bytes:
                continue
            current.write_bytes(data)
            try:
                label = run_one("decode", data, limits)
            except Finding as exc:
                label = f"FINDING {exc}"
            if label not in best or len(data) < len(best[label]):
                best[label] = data
    finally:
        current.unlink(missing_ok=True)
    index = {}
    for label, data in sorted(best.items()):
        name = f"{hashlib.sha1(data).hexdigest()[:12]}.jac"
        (out / name).write_bytes(data)
        index[name] = label
    _record(out / "index.json", index)
    return index


def container_verdict(label: str) -> str:
    """What a :func:`check_decode` outcome says of the container: ``ok`` or the exception's type."""
    return label.split(" | ")[0].split(":")[0]


def _record(path: Path, index: dict[str, str]) -> None:
    """Add each new file's entry to ``path``, the corpus's ``index.json`` (what tests/test_fuzz_corpus.py replays).

    An entry records the container's verdict and the whole outcome; entries already there, with their reasons,
    are kept.
    """
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for name, label in index.items():
        recorded.setdefault(
            name,
            {
                "container": container_verdict(label),
                "outcome": label,
                "why": "smallest fuzz input with this outcome (fuzz_jac.py distill)",
            },
        )
    path.write_text(json.dumps(dict(sorted(recorded.items())), indent=1) + "\n")
