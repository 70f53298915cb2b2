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
  it was converting is tried once more, and fails alone if it kills that worker too. A file sent to a worker
  that had died idle is not charged for it (:mod:`pillow_jac.ray_driver`).
* **Resume.** With ``resume=True`` (the default) a file whose output is done is skipped, so a batch
  that was stopped continues where it was when run again. Writes are atomic, so an output that exists is
  complete; :func:`is_done` also redoes outputs older than their input and ``.jac`` files of another
  quality. Beyond :func:`is_done`, :func:`convert` redoes an output whose input has another size or time
  than when it was made (an older copy put in its place: the output folder's record of sources,
  :meth:`~pillow_jac.source_record.SourceRecord.changed`). An output that record vouches for is judged
  without comparing times where the worker finds its source and itself as the record notes them (a source
  dated in the future would never be done otherwise): the driver sends what the record vouches for
  (:meth:`~pillow_jac.source_record.SourceRecord.vouched`), and the worker compares it with the files as it
  finds them (:func:`is_done`). A worker killed mid-file
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
import sys
from collections.abc import Callable, Iterable
from typing import Any

from PIL import Image

from . import ray_cluster
from .batch_plan import Progress, check_encoder, file_options, plan, plan_batch, shown_name
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY, validate_effort, validate_quality
from .preview import asked as asked_preview
from .preview import preview_size
from .ray_worker import FileResult, Report, Worker
from .resume_checks import batch_settings, is_done
from .source_record import SourceRecord, note_made, note_skipped, note_started
from .targets import validate_targets

__all__ = ["FileResult", "Report", "Worker", "convert", "is_done", "plan"]

#: Calls each worker may have submitted at once (one running, one queued): enough to hide the round trip.
IN_FLIGHT_PER_WORKER = 2


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
        ModelNotInstalledError: ``model`` (or ``JAC_WEIGHTS``) cannot encode here (``to="jac"``).
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
    check_encoder(to, model)  # here, not on every worker for every file
    made_from = SourceRecord(out_dir)
    jobs, clashes = plan_batch(inputs, out_dir, to, recursive=recursive, base_dir=base_dir, record=made_from)
    try:
        import ray
    except ImportError:
        msg = 'the Ray path needs Ray: install the ray extra (pip install -e ".[ray]" in a checkout)'
        raise ImportError(msg) from None
    shown = _progress_function(progress, len(jobs) + len(clashes), inputs)

    settings = batch_settings(to, quality, effort, extra)

    # each file noted as started: its source's identity before any worker read it, and what the record vouched
    # for when it was sent (until its result comes back)
    sent: dict[str, tuple[dict, dict | None]] = {}

    def report_file(result: FileResult) -> None:
        source, vouched = sent.pop(result.src, (None, None))
        if result.status == "done":
            note_made(
                out_dir, result.src, result.dst, settings, source={} if source is None else source, made=result.made
            )
        elif result.status == "skipped" and source is not None:  # its pending line ends, as made from that source
            with contextlib.suppress(OSError):  # recorded before (a batch run again in a folder it may not write)
                note_skipped(out_dir, result.src, result.dst, settings, source=source, vouched=vouched)
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
            ray_cluster.check_reachable(address)
        try:
            stop_ray = ray_cluster.start_ray(ray, options)
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
        placed = ray_cluster.placement(ray.cluster_resources(), len(jobs), workers, num_cpus, num_gpus, device, grows)
        workers, num_gpus, device = placed
        slots_each = max(1, (in_flight or IN_FLIGHT_PER_WORKER * workers) // workers)
        actor_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(Worker)
        pixel_limit = Image.MAX_IMAGE_PIXELS  # the workers' too
        threads = max(1, int(num_cpus))
        from .ray_driver import run

        def options(src: str, dst: str) -> tuple:
            # noted as started as it is sent (the workers decide which files are done already): a batch stopped
            # meanwhile is not lost, and one stopped before it reached a file leaves that file's record as it was
            # the source is read once, here: judged as noted, so that an older copy put in its place meanwhile is
            # not recorded as the file an output was judged done for
            try:
                identity, unrecorded = note_started(out_dir, {src: dst})[src], None
            except OSError as e:  # the worker takes it only if it is done (a batch run again, a read-only folder)
                identity, unrecorded = None, str(e)
            may_skip = resume and not made_from.changed(src, dst, settings, identity)
            vouched = made_from.vouched(dst, settings) if may_skip else None  # the worker checks it against the files
            if unrecorded is None:
                sent[src] = (identity, vouched)
            else:
                sent.pop(src, None)
            return (to, quality, effort, device, may_skip, extra, force, unrecorded, vouched)

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
