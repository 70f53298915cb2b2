"""Convert collections of images on a Ray cluster: ``jac batch`` across many machines.

Install the ``ray`` extra (``pip install -e ".[ray]"`` in a checkout) on the machine that submits and on
every node of the cluster.
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
  cluster has GPUs (and encodes with ``device="cuda"``), unless ``device`` is a CPU, and none otherwise;
  ``num_gpus=0.25`` puts four workers on each GPU.
* **Backpressure.** At most ``in_flight`` calls (default two per worker) are submitted at a time; the next
  file goes out when one comes back (:func:`ray.wait`), so memory on the driver and in the object store
  stays bounded whatever the number of files.
* **Errors.** A file that fails is reported in :attr:`Report.failed` (one line each, as ``jac batch``
  prints) and the others go on. A worker that dies (killed for memory, a lost node) is replaced; the file
  it was converting is tried once more, and fails alone if it kills that worker too.
* **Resume.** With ``resume=True`` (the default) a file whose output is done is skipped, so a batch
  that was stopped continues where it was when run again. Writes are atomic, so an output that exists is
  complete; :func:`is_done` also redoes outputs older than their input and ``.jac`` files of another
  quality. Beyond :func:`is_done`, :func:`convert` redoes an output whose input has another size or time
  than when it was made (an older copy put in its place: the output folder's record of sources,
  :meth:`~pillow_jac.source_record.SourceRecord.changed`). A worker killed mid-file
  can leave a ``.jac-HOST-PID-XXXXXXXX.tmp`` file beside the outputs: nothing reads it, and it can be deleted
  (``jac batch`` removes those of its own dead workers, by the machine and process id in the name).
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
    >>> tmp = tempfile.TemporaryDirectory()
    >>> src = Path(tmp.name)
    >>> Image.new("RGB", (8, 8)).save(src / "a.png")
    >>> [(s.name, d.name) for s, d in plan(src, src / "out", "jac").items()]
    [('a.png', 'a.jac')]
    >>> report = convert(src, src / "out", quality=4)  # doctest: +SKIP
    >>> report.done, report.skipped, report.failed  # doctest: +SKIP
    (1, 0, [])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .batch_plan import Progress, batch_settings, done_before, file_options, is_done, plan, plan_batch, shown_name
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY, validate_effort, validate_quality
from .conversion import convert_noting_warnings, one_line
from .preview import asked as asked_preview
from .preview import preview_size
from .source_record import SourceRecord, note_made, note_started
from .targets import validate_targets

__all__ = ["FileResult", "Report", "Worker", "convert", "is_done", "plan"]

#: Calls each worker may have submitted at once (one running, one queued): enough to hide the round trip.
IN_FLIGHT_PER_WORKER = 2


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
        warnings: the first line of each warning raised while converting the file.
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
    warnings: tuple[str, ...] = ()


@dataclass
class Report:
    """The outcome of :func:`convert`.

    Attributes:
        done: files converted.
        skipped: files whose output was already done (``resume``).
        failed: the files that failed, with their errors, in the order they came back.
        in_bytes: bytes read by the converted files.
        out_bytes: bytes written.
        seconds: wall time from the first worker's start (the first file submitted) to the last result.
        workers: one dict per worker that started and lived to the end (one still starting when the files ran
            out is not listed): ``node``, ``pid``, ``load_seconds`` (start-up including
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
        pixel_limit: ``PIL.Image.MAX_IMAGE_PIXELS`` for the worker's files: the driver's (``jac batch --ray
            --max-image-pixels``), which a worker process would not have otherwise.
    """

    def __init__(self, to: str, device: str | None, threads: int, pixel_limit: float | None) -> None:
        start = time.perf_counter()
        import numpy as np

        from . import codec
        from .openmp_wait import passive_unless_chosen

        with passive_unless_chosen():  # pillow_jac/openmp_wait.py
            import torch

        torch.set_num_threads(max(1, threads))
        Image.MAX_IMAGE_PIXELS = None  # the warm-up's 64x64 image, whatever the batch's limit
        data = codec.encode(np.zeros((64, 64, 3), np.uint8), device=device)  # loads the newest generation
        if to == "png":
            codec.decode(data, device=device)
        Image.MAX_IMAGE_PIXELS = pixel_limit
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
        force: bool = False,
        unrecorded: str | None = None,
    ) -> FileResult:
        """Convert one file as ``jac batch`` does; never raises (a failure is a ``"failed"`` result).

        ``extra``: the batch's ``target_size``, ``target_psnr`` and ``preview``; ``force``: as
        :func:`pillow_jac.conversion.convert_file`'s. ``unrecorded``: why the driver could not note the file
        in the output folder's record; then only a file already done is taken (skipped), and no output written.
        """
        start = time.perf_counter()
        where = {"node": self._info["node"], "pid": self._info["pid"]}
        extra = extra or {}
        try:
            done = resume and done_before(src, dst, to, quality, extra)
        except Exception as e:
            return FileResult(src, dst, "failed", one_line(e), **where)
        if done:
            return FileResult(src, dst, "skipped", **where)
        if unrecorded is not None:  # an output no record holds would be refused by every later batch
            return FileResult(src, dst, "failed", f"not converted: {unrecorded}", **where)
        result, notes = convert_noting_warnings(src, dst, to, quality, effort, device, extra, force=force)
        seconds = time.perf_counter() - start
        if isinstance(result, Exception):
            return FileResult(src, dst, "failed", one_line(result), seconds=seconds, warnings=tuple(notes), **where)
        return FileResult(src, dst, "done", None, *result, seconds, warnings=tuple(notes), **where)


def convert(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    quality: float | None = None,
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
    strip: bool = False,
    model: str | None = None,
    force: bool = False,
) -> Report:
    """Convert images to ``.jac`` (or ``.jac`` files to PNG) on Ray workers, as ``jac batch`` does.

    Uses the Ray instance this process is connected to; when there is none, connects to ``address``
    (``"auto"``: the cluster this machine belongs to; ``"ray://HOST:10001"``: a remote cluster through Ray
    Client; None: a new local instance, stopped again at the end).

    Args:
        inputs: a folder or an iterable of file paths (see :func:`pillow_jac.batch_plan.plan_batch`; inputs that
            would share an output fail, in :attr:`Report.failed`, and the others convert).
        out_dir: the output folder (created if needed).
        to: ``"jac"`` or ``"png"``.
        quality: quality from 1 to 8 (``to="jac"``; default :data:`~pillow_jac.constants.DEFAULT_QUALITY`; not
            with a target).
        effort: encoder effort from 0 to 3 (``to="jac"``).
        recursive: include a folder's subfolders.
        base_dir: for a list of paths, the folder whose layout ``out_dir`` mirrors.
        resume: skip files whose output is done (:func:`is_done`).
        address: where to find Ray when this process is not connected yet.
        workers: number of actors (default: as many as the cluster holds now, by ``num_cpus`` and ``num_gpus``;
            never more than the files). More than it holds is warned about: those start when it has room,
            and the others convert meanwhile.
        num_cpus: CPUs each worker reserves, and its torch threads.
        num_gpus: share of a GPU each worker reserves (default: 1 when the cluster has GPUs and ``device`` is
            not a CPU, else 0).
        device: torch device (default: ``"cuda"`` for workers with a GPU, else ``JAC_DEVICE`` or cpu).
        in_flight: the most calls submitted at once (default: two per worker; at least one per worker).
        progress: True for ``jac batch``'s progress line on stderr, or a function called with each
            :class:`FileResult` as it comes back.
        target_size: instead of ``quality``, each file's size at most (:mod:`pillow_jac.targets`).
        target_psnr: instead of ``quality``, each file's PSNR at least.
        preview: store a gallery preview in each file (``to="jac"``): True, or its long side in pixels.
        strip: leave out each image's ICC profile, EXIF and XMP (``to="jac"``).
        model: the ``model_id`` of the decoder generation to encode for (``to="jac"``; default the newest).
        force: with ``to="png"``, also replace images that no decode wrote (by default they are kept and the
            file fails: they may be the originals the ``.jac`` files were made from).

    The workers take this process's ``PIL.Image.MAX_IMAGE_PIXELS`` (``jac batch --ray --max-image-pixels``).

    Returns:
        The :class:`Report`; failed files are in :attr:`Report.failed` and do not raise.

    Raises:
        ImportError: Ray is not installed.
        ValueError: bad options or inputs (see :func:`pillow_jac.batch_plan.plan_batch`).
        RuntimeError: no worker could be started (after one has, files no worker is left for fail instead).
        ConnectionError: ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) takes no connection, or ``"auto"``
            finds no cluster on this machine.
    """
    if target_size is not None or target_psnr is not None:
        if quality is not None:
            raise ValueError("give quality or a target (target_size, target_psnr), not both")
        target_size, target_psnr = validate_targets(target_size, target_psnr)
    quality = validate_quality(DEFAULT_QUALITY if quality is None else quality)
    effort = validate_effort(effort)
    if asked_preview(preview):
        preview_size(preview)
    extra = file_options(
        to, target_size=target_size, target_psnr=target_psnr, preview=preview, strip=strip, model=model
    )
    if workers is not None and workers < 1 or in_flight is not None and in_flight < 1:
        raise ValueError("workers and in_flight must be at least 1")
    if not num_cpus > 0 or num_gpus is not None and not num_gpus >= 0:
        raise ValueError("num_cpus must be above 0 and num_gpus at least 0")
    made_from = SourceRecord(out_dir)
    jobs, clashes = plan_batch(inputs, out_dir, to, recursive=recursive, base_dir=base_dir, record=made_from)
    try:
        import ray
    except ImportError:
        msg = 'the Ray path needs Ray: install the ray extra (pip install -e ".[ray]" in a checkout)'
        raise ImportError(msg) from None
    shown = _progress_function(progress, len(jobs) + len(clashes), inputs)

    settings = batch_settings(to, quality, effort, extra)

    def report_file(result: FileResult) -> None:
        if result.status == "done":
            note_made(out_dir, result.src, result.dst, settings)
        elif result.status == "skipped":  # this source's too: its pending line ends
            with contextlib.suppress(OSError):  # recorded before (a batch run again in a folder it may not write)
                note_made(out_dir, result.src, result.dst, settings)
        shown(result)

    failed = [FileResult(str(src), str(dst), "failed", why) for src, (dst, why) in clashes.items()]
    for result in failed:  # two inputs for one output: neither is converted, the others are
        report_file(result)
    if not jobs:
        report = Report()
        for result in failed:
            report.add(result)
        return report
    os.makedirs(out_dir, exist_ok=True)

    stop_ray = None  # Ray started here is stopped again at the end
    if not ray.is_initialized():
        # "local": a new instance, not a cluster that RAY_ADDRESS or an earlier `ray start` would name
        options: dict[str, Any] = {"address": address or "local", "log_to_driver": False}
        options["logging_level"] = logging.ERROR  # its notices are not the batch's; its errors reach the caller
        if address is None:
            options["include_dashboard"] = False
        else:
            _check_reachable(address)
        try:
            stop_ray = _start_ray(ray, options)
        except ConnectionError as exc:
            if address != "auto":
                raise
            raise ConnectionError(
                "no Ray cluster runs on this machine (--ray auto / address 'auto'): start one with "
                "`ray start --head`, or give the address of one (--ray HOST:PORT or ray://HOST:PORT)"
            ) from exc
    try:
        # a local instance started here never grows: a worker that does not fit now never will
        grows = stop_ray is None or address is not None
        placed = _placement(ray.cluster_resources(), len(jobs), workers, num_cpus, num_gpus, device, grows)
        workers, num_gpus, device = placed
        slots_each = max(1, (in_flight or IN_FLIGHT_PER_WORKER * workers) // workers)
        actor_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(Worker)
        pixel_limit = Image.MAX_IMAGE_PIXELS  # the workers' too
        threads = max(1, int(num_cpus))
        from .ray_driver import run

        def options(src: str, dst: str) -> tuple:
            # noted as started as it is sent (the workers decide which files are done already): a batch stopped
            # meanwhile is not lost, and one stopped before it reached a file leaves that file's record as it was
            may_skip = resume and not made_from.changed(src, dst, settings)
            try:
                note_started(out_dir, {src: dst})
                unrecorded = None
            except OSError as e:  # the worker takes it only if it is done (a batch run again, a read-only folder)
                unrecorded = str(e)
            return (to, quality, effort, device, may_skip, extra, force, unrecorded)

        report = run(
            ray, jobs, lambda: actor_class.remote(to, device, threads, pixel_limit), workers, slots_each, options,
            report_file,
        )  # fmt: skip
        report.failed[:0] = failed
        return report
    finally:
        getattr(shown, "close", lambda: None)()
        if stop_ray is not None:
            stop_ray()


def _placement(
    resources: dict[str, float],
    files: int,
    workers: int | None,
    num_cpus: float,
    num_gpus: float | None,
    device: str | None,
    grows: bool = True,
) -> tuple[int, float, str | None]:
    """``(workers, num_gpus, device)`` for ``files`` files on a cluster of ``resources`` (:func:`convert`'s defaults).

    A worker gets a GPU when the cluster has some, unless ``device`` is not a GPU device; ``workers``
    defaults to as many as the cluster holds now, and is never more than the files. More than the cluster
    holds is warned about: they wait for room (an autoscaling cluster may grow), and the others convert
    meanwhile.

    Raises:
        ValueError: the cluster holds no worker at all now and ``workers`` is not given, or it cannot grow
            (``grows`` False: a local instance started for this call) and holds none.
    """
    if num_gpus is None:
        wants_gpu = device is None or str(device).split(":")[0] in ("cuda", "auto")
        num_gpus = 1.0 if wants_gpu and resources.get("GPU", 0) > 0 else 0.0
    if device is None and num_gpus > 0:
        device = "cuda"
    fits = resources.get("CPU", 0) / num_cpus
    if num_gpus > 0:
        fits = min(fits, resources.get("GPU", 0) / num_gpus)
    kind = f"{num_cpus:g} CPU and {num_gpus:g} GPU"
    if int(fits) == 0 and files and (workers is None or not grows):
        raise ValueError(
            f"the cluster holds no worker of {kind} now ({resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs): ask for less"
            + (", or give workers= to wait until it has room" if grows else "; this local instance does not grow")
        )
    asked = workers
    workers = min(max(1, int(fits)) if workers is None else workers, files)
    if asked is not None and workers > int(fits) and not grows:  # the others would hold their place, unstarted
        warnings.warn(
            f"{workers} workers of {kind} each asked for, but this local instance holds {int(fits)} and does not "
            f"grow: {int(fits)} convert",
            stacklevel=3,
        )
        workers = int(fits)
    if asked is not None and workers > int(fits):
        then = "the others start when it has room" if int(fits) else "nothing converts until it has room"
        warnings.warn(
            f"{workers} workers of {kind} each asked for, but the cluster holds {int(fits)} now: {then}",
            stacklevel=3,
        )
    return workers, num_gpus, device


#: seconds to wait for a Ray address to take a connection before saying it cannot be reached
CONNECT_SECONDS = 10.0


def _check_reachable(address: str) -> None:
    """Raise :class:`ConnectionError` at once when ``HOST:PORT`` (or ``ray://HOST:PORT``) takes no connection.

    ``ray.init`` itself retries an address that does not answer for many minutes, printing only its own log
    lines. ``auto`` and other forms are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def _start_ray(ray: Any, options: dict[str, Any]) -> Callable[[], None]:
    """``ray.init(**options)``; returns the function that stops that instance and puts the process back.

    ``ray.init`` changes the calling process for good, beyond the instance it starts: it installs its own
    SIGTERM handler (exit 15 and a stack dump), which would replace the caller's (``jac``'s stops as Ctrl-C
    does: status 143, temporary files removed, the workers cancelled), so the caller's is put back at once,
    also when ``ray.init`` fails; and it sets environment variables (``PYTHONBREAKPOINT`` among them, after
    which ``breakpoint()`` no longer stops in the caller's debugger), enables :mod:`faulthandler` and draws
    from :mod:`random`'s shared generator. After ``ray.shutdown()`` (or a failed ``ray.init``) the
    variables it changed are put back, unless something has changed them since, and so are faulthandler's
    state and the generator's, unless something other than ``ray.init`` and ``ray.shutdown`` has drawn
    from it meanwhile: a program that seeded :mod:`random` then draws the numbers it would have drawn
    without the batch.
    """
    import faulthandler
    import random
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    environ, generator, fault_handler = dict(os.environ), random.getstate(), faulthandler.is_enabled()

    def changes() -> tuple[dict[str, str], list[str]]:
        """The variables Ray has set so far, and those it has removed."""
        return {k: v for k, v in os.environ.items() if environ.get(k) != v}, [k for k in environ if k not in os.environ]

    def put_back(changed: dict[str, str], removed: list[str], untouched: bool) -> None:
        for key, value in changed.items():
            if os.environ.get(key) == value:
                if key in environ:
                    os.environ[key] = environ[key]
                else:
                    del os.environ[key]
        for key in removed:
            os.environ.setdefault(key, environ[key])
        if untouched:
            random.setstate(generator)
        if not fault_handler:
            faulthandler.disable()

    try:
        ray.init(**options)
    except BaseException:
        put_back(*changes(), untouched=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    started, drawn = changes(), random.getstate()

    def stop() -> None:
        untouched = random.getstate() == drawn  # ray.shutdown draws too
        ray.shutdown()
        put_back(*started, untouched=untouched)

    return stop


def _progress_function(
    progress: bool | Callable[[FileResult], None], total: int, inputs: Any = None
) -> Callable[[FileResult], None]:
    """What reports each file: ``progress`` itself, nothing, or ``jac batch``'s progress line on stderr.

    A file of a folder given as ``inputs`` is named as the user named the folder (``photos/a.png``), as
    ``jac batch`` without Ray names it, not by the absolute path the workers are given.
    """
    if callable(progress):
        return progress
    if not progress:
        return lambda result: None
    bar = Progress(total, sys.stderr)
    name = shown_name(inputs) if isinstance(inputs, (str, os.PathLike)) and os.path.isdir(inputs) else str

    def report(result: FileResult) -> None:
        for note in result.warnings:
            bar.warn(name(result.src), note)
        bar.step(name(result.src), result.error, "already done" if result.status == "skipped" else None)

    report.close = bar.close  # type: ignore[attr-defined]  # ends a bar left part-way (convert's finally)
    return report
