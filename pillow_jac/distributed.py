"""Convert collections of images on a Ray cluster: ``jac batch`` across many machines.

Install with ``pip install "pillow_jac[ray]"`` on the machine that submits and on every node of the cluster.
The command line form is ``jac batch SRC DST --to jac --ray [ADDRESS]``; this module is its API:

* :func:`convert` ``(inputs, out_dir, to="jac", *, quality, effort, recursive, base_dir, resume, address,
  workers, num_cpus, num_gpus, device, in_flight, progress) -> Report``
* :func:`plan` ``(inputs, out_dir, to, ...) -> dict[Path, Path]``: the input and output of every file
* :func:`is_done` ``(src, dst, to, quality) -> bool``: the rule that ``resume`` skips a file by
* :class:`Report` and :class:`FileResult`: counts, timings and the per-file error report

How it runs:

* **Actors.** Each Ray worker is an actor (:class:`Worker`) that loads the model once when it starts and then
  converts one file per call with the function ``jac batch`` runs for each file, so the outputs are
  byte-identical to ``jac batch -j 1`` with the same options and device, written atomically (a temporary file
  beside the target, then a rename) with the same names: ``NAME.jac`` (or ``NAME.png``) in ``out_dir``,
  mirroring subfolders.
* **GPUs.** ``num_gpus`` is each worker's share of a GPU. By default every worker gets one GPU when the
  cluster has GPUs (and encodes with ``device="cuda"``) and none otherwise; ``num_gpus=0.25`` puts four
  workers on each GPU.
* **Backpressure.** At most ``in_flight`` calls (default two per worker) are submitted at a time; the next
  file goes out when one comes back (:func:`ray.wait`), so memory on the driver and in the object store
  stays bounded whatever the number of files.
* **Errors.** A file that fails is reported in :attr:`Report.failed` (one line each, as ``jac batch``
  prints) and the others go on. A worker that dies (a lost node) is replaced and its files are tried once
  more.
* **Resume.** With ``resume=True`` (the default) a file whose output is done is skipped, so a batch
  that was stopped continues where it was when run again. Writes are atomic, so an output that exists is
  complete; :func:`is_done` also redoes outputs older than their input and ``.jac`` files of another
  quality. A worker killed mid-file can leave a ``.jac-XXXXXXXX.tmp`` file beside the outputs: nothing
  reads it, and it can be deleted.
* **Paths.** Workers open the files themselves: every node must see ``inputs`` and ``out_dir`` at the same
  absolute paths (a local folder on a one-machine instance, or shared storage mounted alike on every node).

Ray Data's image reader (``ray.data.read_images``) is not used: it returns pixel arrays only, so the
ICC profile, EXIF and XMP that ``jac batch`` keeps would be lost, and the outputs would not be those of
``jac batch``. A list of paths (from any listing, a manifest or a Ray Data dataset's path column) is
accepted instead.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> src = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (8, 8)).save(src / "a.png")
    >>> [(s.name, d.name) for s, d in plan(src, src / "out", "jac").items()]
    [('a.png', 'a.jac')]
    >>> report = convert(src, src / "out", quality=4)  # doctest: +SKIP
    >>> report.done, report.skipped, report.failed  # doctest: +SKIP
    (1, 0, [])
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import container
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY, validate_effort, validate_quality
from .conversion import Progress, batch_inputs, convert_file, one_line

__all__ = ["FileResult", "Report", "Worker", "convert", "is_done", "plan"]

#: Calls each worker may have submitted at once (one running, one queued): enough to hide the round trip.
IN_FLIGHT_PER_WORKER = 2
#: How often a file is tried when its worker dies (a file that kills two workers is reported as failed).
ATTEMPTS = 2


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    Attributes:
        src: the input path.
        dst: the output path.
        status: ``"done"``, ``"skipped"`` (the output was already done) or ``"failed"``.
        error: one line saying why, for a failed file; else None.
        in_bytes: size of the input (0 unless done).
        out_bytes: size of the output written (0 unless done).
        seconds: time the worker spent on the file.
        node: host name of the worker's machine.
        pid: the worker's process id.
    """

    src: str
    dst: str
    status: str
    error: str | None = None
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    node: str = ""
    pid: int = 0


@dataclass
class Report:
    """The outcome of :func:`convert`.

    Attributes:
        done: files converted.
        skipped: files whose output was already done (``resume``).
        failed: the files that failed, with their errors, in the order they came back.
        in_bytes: bytes read by the converted files.
        out_bytes: bytes written.
        seconds: wall time from the first submitted file to the last result, after the workers started.
        workers: one dict per worker that started: ``node``, ``pid``, ``load_seconds`` (start-up including
            the model load), ``rss_loaded_bytes`` (the worker's peak resident memory once loaded) and
            ``rss_peak_bytes`` (its peak after its last file); memory is 0 where the platform does not say.
    """

    done: int = 0
    skipped: int = 0
    failed: list[FileResult] = field(default_factory=list)
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Files converted per second of :attr:`seconds` (skipped files do not count)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: FileResult) -> None:
        """Count one file's result."""
        if result.status == "done":
            self.done += 1
            self.in_bytes += result.in_bytes
            self.out_bytes += result.out_bytes
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append(result)


def plan(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    recursive: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> dict[Path, Path]:
    """The input and output path of every file a batch converts, with ``jac batch``'s selection and names.

    Args:
        inputs: a folder (its images as ``jac batch`` selects them: every file Pillow reads by extension for
            ``to="jac"``, every ``.jac`` file for ``to="png"``) or an iterable of file paths (taken as given).
        out_dir: the output folder.
        to: ``"jac"`` or ``"png"``.
        recursive: include a folder's subfolders (mirrored in ``out_dir``).
        base_dir: for a list of paths, the folder whose layout ``out_dir`` mirrors (every path must be inside
            it); by default each output is ``out_dir`` / the input's name.

    Returns:
        ``{input: output}`` in the order the files are submitted, all paths absolute.

    Raises:
        ValueError: ``inputs`` is not a folder nor a list, has no images, a path is outside ``base_dir``, or two
            inputs would be written to the same output.
    """
    if to not in ("jac", "png"):
        raise ValueError(f"to must be 'jac' or 'png', not {to!r}")
    out = Path(os.path.abspath(out_dir))
    if isinstance(inputs, (str, os.PathLike)):
        in_dir = Path(os.path.abspath(inputs))
        if not in_dir.is_dir():
            raise ValueError(f"{inputs}: not a directory")
        sources, base = batch_inputs(in_dir, to, recursive), in_dir
        if not sources:
            raise ValueError(f"{inputs}: no {'images' if to == 'jac' else '.jac files'} found")
    else:
        sources = [Path(os.path.abspath(p)) for p in inputs]
        base = Path(os.path.abspath(base_dir)) if base_dir is not None else None
        if not sources:
            raise ValueError("no input files given")
    jobs: dict[Path, Path] = {}
    written: dict[Path, Path] = {}
    for src in sources:
        if base is None:
            relative = Path(src.name)
        else:
            try:
                relative = src.relative_to(base)
            except ValueError:
                raise ValueError(f"{src} is not inside {base}") from None
        dst = out / relative.with_suffix("." + to)
        if dst in written:
            raise ValueError(f"{src} and {written[dst]} would both be written to {dst}")
        jobs[src] = dst
        written[dst] = src
    return jobs


def is_done(src: str | os.PathLike, dst: str | os.PathLike, to: str, quality: float | None = DEFAULT_QUALITY) -> bool:
    """Whether ``dst`` is a finished conversion of ``src``, which ``resume`` skips.

    Outputs are written atomically, so a file at ``dst`` is complete. It counts as done when it is a regular
    file at least as new as ``src`` and, for ``to="jac"``, its header parses and holds ``quality`` (as stored, to
    1/256); ``quality=None`` (a size or PSNR target, whose quality is found per file) checks only the header.
    The effort, the target and the model are not checked: run with ``resume=False`` to redo a batch with another.
    """
    try:
        out = os.stat(dst)
        if not stat.S_ISREG(out.st_mode) or out.st_mtime_ns < os.stat(src).st_mtime_ns:
            return False
        if to != "jac":
            return True
        with open(dst, "rb") as f:
            header = container.read_header(f)
    except (OSError, ValueError):
        return False
    return quality is None or header.quality == container.quantize_quality(quality)


def _peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (0 where the platform does not say).

    ``VmHWM`` on Linux, where ``ru_maxrss`` counts the parent's peak from before ``exec``; ``ru_maxrss`` elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


class Worker:
    """A Ray actor that loads the model once, then converts files one per call.

    Args:
        to: ``"jac"`` or ``"png"``.
        device: torch device for the model (None: ``JAC_DEVICE``, else cpu).
        threads: torch threads (the worker's CPUs).
    """

    def __init__(self, to: str, device: str | None, threads: int) -> None:
        start = time.perf_counter()
        import numpy as np
        import torch

        from . import codec

        torch.set_num_threads(max(1, threads))
        data = codec.encode(np.zeros((64, 64, 3), np.uint8), device=device)  # loads the newest generation
        if to == "png":
            codec.decode(data, device=device)
        self._info = {
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "load_seconds": time.perf_counter() - start,
            "rss_loaded_bytes": _peak_rss_bytes(),
        }

    def info(self) -> dict[str, Any]:
        """The worker's ``node``, ``pid``, ``load_seconds`` and memory (see :attr:`Report.workers`)."""
        return {**self._info, "rss_peak_bytes": _peak_rss_bytes()}

    def convert(
        self,
        src: str,
        dst: str,
        to: str,
        quality: float,
        effort: int,
        device: str | None,
        resume: bool,
        extra: dict | None = None,
    ) -> FileResult:
        """Convert one file as ``jac batch`` does; never raises (a failure is a ``"failed"`` result).

        ``extra``: the batch's ``target_size``, ``target_psnr`` and ``preview``.
        """
        start = time.perf_counter()
        where = {"node": self._info["node"], "pid": self._info["pid"]}
        targeted = bool(extra) and (extra.get("target_size") is not None or extra.get("target_psnr") is not None)
        try:
            if resume and is_done(src, dst, to, None if targeted else quality):
                return FileResult(src, dst, "skipped", **where)
            in_bytes, out_bytes = convert_file(src, dst, to, quality=quality, effort=effort, device=device, extra=extra)
        except Exception as e:
            return FileResult(src, dst, "failed", one_line(e), seconds=time.perf_counter() - start, **where)
        return FileResult(src, dst, "done", None, in_bytes, out_bytes, time.perf_counter() - start, **where)


def convert(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    quality: float = DEFAULT_QUALITY,
    effort: int = DEFAULT_EFFORT,
    recursive: bool = False,
    base_dir: str | os.PathLike | None = None,
    resume: bool = True,
    address: str | None = None,
    workers: int | None = None,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    device: str | None = None,
    in_flight: int | None = None,
    progress: bool | Callable[[FileResult], None] = False,
    target_size: int | str | None = None,
    target_psnr: float | None = None,
    preview: bool | int = False,
) -> Report:
    """Convert images to ``.jac`` (or ``.jac`` files to PNG) on Ray workers, as ``jac batch`` does.

    Uses the Ray instance this process is connected to; when there is none, connects to ``address``
    (``"auto"``: the cluster this machine belongs to; ``"ray://HOST:10001"``: a remote cluster through Ray
    Client; None: a new local instance, stopped again at the end).

    Args:
        inputs: a folder or an iterable of file paths (see :func:`plan`).
        out_dir: the output folder (created if needed).
        to: ``"jac"`` or ``"png"``.
        quality: quality from 1 to 8 (``to="jac"``).
        effort: encoder effort from 0 to 3 (``to="jac"``).
        recursive: include a folder's subfolders.
        base_dir: for a list of paths, the folder whose layout ``out_dir`` mirrors.
        resume: skip files whose output is done (:func:`is_done`).
        address: where to find Ray when this process is not connected yet.
        workers: number of actors (default: the cluster's GPUs divided by ``num_gpus`` when workers use GPUs,
            else its CPUs divided by ``num_cpus``; never more than the files).
        num_cpus: CPUs each worker reserves, and its torch threads.
        num_gpus: share of a GPU each worker reserves (default: 1 when the cluster has GPUs, else 0).
        device: torch device (default: ``"cuda"`` for workers with a GPU, else ``JAC_DEVICE`` or cpu).
        in_flight: the most calls submitted at once (default: two per worker; at least one per worker).
        progress: True for ``jac batch``'s progress line on stderr, or a function called with each
            :class:`FileResult` as it comes back.
        target_size: instead of ``quality``, each file's size at most (:mod:`pillow_jac.targets`).
        target_psnr: instead of ``quality``, each file's PSNR at least.
        preview: store a gallery preview in each file (``to="jac"``).

    Returns:
        The :class:`Report`; failed files are in :attr:`Report.failed` and do not raise.

    Raises:
        ImportError: Ray is not installed.
        ValueError: bad options or inputs (see :func:`plan`).
        RuntimeError: no worker could be started, or every worker died.
    """
    quality, effort = validate_quality(quality), validate_effort(effort)
    extra = {"target_size": target_size, "target_psnr": target_psnr, "preview": preview}
    if workers is not None and workers < 1 or in_flight is not None and in_flight < 1:
        raise ValueError("workers and in_flight must be at least 1")
    if not num_cpus > 0 or num_gpus is not None and not num_gpus >= 0:
        raise ValueError("num_cpus must be above 0 and num_gpus at least 0")
    jobs = plan(inputs, out_dir, to, recursive=recursive, base_dir=base_dir)
    try:
        import ray
    except ImportError:
        raise ImportError('the Ray path needs Ray: pip install "pillow_jac[ray]"') from None

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:
            options["include_dashboard"] = False
        ray.init(**options)
    try:
        resources = ray.cluster_resources()
        if num_gpus is None:
            num_gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if device is None and num_gpus > 0:
            device = "cuda"
        if workers is None:
            capacity = resources.get("GPU", 0) / num_gpus if num_gpus > 0 else resources.get("CPU", 1) / num_cpus
            workers = max(1, int(capacity))
        workers = min(workers, len(jobs))
        slots_each = max(1, (in_flight or IN_FLIGHT_PER_WORKER * workers) // workers)
        actor_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(Worker)
        threads = max(1, int(num_cpus))
        return _run(
            ray,
            jobs,
            lambda: actor_class.remote(to, device, threads),
            workers,
            slots_each,
            (to, quality, effort, device, resume, extra),
            _progress_function(progress, len(jobs)),
        )
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray: Any, ref: Any, pending: dict[Any, tuple[Any, str, str]], slots: deque) -> FileResult | None:
    """The result of a finished call, its worker's slot given back; None (and nothing popped) if the worker died."""
    actor, src, dst = pending[ref]
    try:
        result = ray.get(ref)
    except ray.exceptions.RayActorError:
        return None
    except ray.exceptions.RayError as e:  # e.g. a result that could not be transferred
        result = FileResult(src, dst, "failed", one_line(e))
    del pending[ref]
    slots.append(actor)
    return result


def _progress_function(progress: bool | Callable[[FileResult], None], total: int) -> Callable[[FileResult], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda result: None
    bar = Progress(total, sys.stderr)
    return lambda result: bar.step(result.src, result.error)


def _run(
    ray: Any,
    jobs: dict[Path, Path],
    new_actor: Callable[[], Any],
    workers: int,
    slots_each: int,
    options: tuple[Any, ...],
    report_file: Callable[[FileResult], None],
) -> Report:
    """Start the actors, then keep at most ``slots_each`` calls submitted to each until every file is back."""
    report = Report()
    actors = [new_actor() for _ in range(workers)]
    pending: dict[Any, tuple[Any, str, str]] = {}
    try:
        try:
            ray.get([a.info.remote() for a in actors])
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the Ray workers could not start: {one_line(e)}") from None
        replacements = workers  # a lost worker is replaced, up to as many times as there are workers
        slots = deque(a for a in actors for _ in range(slots_each))
        todo = deque((str(s), str(d)) for s, d in jobs.items())
        attempts: dict[str, int] = {}
        dead: set[Any] = set()
        start = time.perf_counter()
        while todo or pending:
            while todo and slots:
                actor = slots.popleft()
                if actor in dead:
                    continue
                src, dst = todo.popleft()
                pending[actor.convert.remote(src, dst, *options)] = (actor, src, dst)
            if not pending:
                raise RuntimeError(f"every Ray worker died; {len(todo)} files were not converted")
            refs = list(pending)
            ray.wait(refs, num_returns=1)
            # Everything back by now, in one pass over the list: at thousands of results a second, one pass per
            # result would cost the driver more than the results themselves.
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                result = _collect(ray, ref, pending, slots)
                if result is None:  # the worker is gone
                    actor, src, dst = pending.pop(ref)
                    if actor not in dead:
                        dead.add(actor)
                        if replacements > 0:
                            replacements -= 1
                            actors.append(new_actor())
                            slots.extend([actors[-1]] * slots_each)
                    attempts[src] = attempts.get(src, 0) + 1
                    if attempts[src] < ATTEMPTS:
                        todo.appendleft((src, dst))
                        continue
                    result = FileResult(src, dst, "failed", "the worker died (lost process or node)")
                report.add(result)
                report_file(result)
        report.seconds = time.perf_counter() - start
        for actor in actors:
            if actor not in dead:
                try:
                    report.workers.append(ray.get(actor.info.remote()))
                except ray.exceptions.RayError:  # lost since its last file
                    pass
        return report
    finally:
        # Interrupted: calls not yet running are cancelled; a running one ends with its worker, which can
        # leave a temporary file beside its output (see the module's notes on resume).
        for ref in pending:
            ray.cancel(ref)
        for actor in actors:
            ray.kill(actor)
