"""``jac batch`` on this machine: a folder converted file by file, in this process or in worker processes.

The files and their names come from :func:`pillow_jac.batch_plan.plan_batch`, each file is converted by
:func:`pillow_jac.conversion.convert_file` (as :mod:`pillow_jac.distributed` does on Ray), and a file that
fails is reported on a line of its own while the others go on.

Worker processes (``workers > 1``):

* They start from a "forkserver" that has imported torch but never ran it (or by "spawn" where there is
  none), never by a plain fork of a process whose torch/OpenMP thread pools are running; each gets
  ``CPUs // workers`` torch threads, counting the CPUs this process may use (its affinity), not the machine's.
* **A worker that dies** (killed, or out of memory) breaks Python's process pool. The files not
  finished are converted again in a new pool; only a file that was being converted when a pool broke is
  counted as tried, and one tried :data:`~pillow_jac.batch_plan.ATTEMPTS` times is reported as failed. A
  shared byte per file (written by the workers, read by the parent after a break; no lock that a killed
  process could leave held) says which files were being converted. Files are submitted a few per worker
  at a time, so a pool that breaks is not racing thousands of submissions.
* **Ctrl-C and SIGTERM**: see :func:`_worker_init`. Queued files are dropped through the executor's own
  ``shutdown(cancel_futures=True)``, so its management thread, not this one, settles their futures.
* **Warnings** raised while converting a file are returned with its result and printed by the parent, with
  the file's name (:func:`pillow_jac.conversion.convert_noting_warnings`).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any

from PIL import Image

from .batch_plan import ATTEMPTS, Progress, check_encoder, file_options, plan_batch, shown_name
from .codec_steps import TORCH_MODULES
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY
from .conversion import ConversionError, convert_noting_warnings, one_line, show_warning
from .files import remove_orphaned_temporaries
from .openmp_wait import passive_unless_chosen
from .resume_checks import batch_settings, done_before
from .source_record import SourceRecord, note_made, note_started

__all__ = ["run_batch"]

# In a batch worker process: whether the batch was cancelled, whether a file is being converted, whether
# SIGTERM asked it to end, and the shared per-file states (_QUEUED, _CONVERTING, _FINISHED, _TERMINATED: its worker
# got SIGTERM while converting it and ended after cleaning up).
_cancelled = False
_converting = False
_in_job = False  # from a job's start to the end of its clean-up
_terminating = False
_states: Any = None
_QUEUED, _CONVERTING, _FINISHED, _TERMINATED = 0, 1, 2, 3
#: what the worker process converting a file reports when it died
_DIED = "the worker process converting it died (killed, or out of memory)"
#: a pool broken although no file was being converted (a worker killed while idle) is started again this often in a
#: row (a pool that converted files in between starts the count again)
_IDLE_BREAKS = 2
#: what the files not converted report when the worker processes kept dying while idle
_KEPT_DYING = "not converted: the worker processes kept dying while idle (killed, or out of memory)"
#: files submitted to a pool at once, per worker: a pool that breaks is not racing a flood of submissions
_IN_FLIGHT_PER_WORKER = 2
#: how long a cancelled worker waits for its pool to end it before it ends itself (its parent died)
_ORPHAN_GRACE_SECONDS = 10.0
#: how long the files of a broken pool may stay unsettled before they are taken as lost with it
_BROKEN_GRACE_SECONDS = 10.0


def run_batch(
    in_dir: Path,
    out_dir: Path,
    to: str,
    *,
    quality: float = DEFAULT_QUALITY,
    effort: int = DEFAULT_EFFORT,
    workers: int = 1,
    recursive: bool = False,
    device: str | None = None,
    progress: bool = True,
    stream: IO[str] | None = None,
    target_size: int | None = None,
    target_psnr: float | None = None,
    preview: bool | int = False,
    force: bool = False,
    resume: bool = True,
    strip: bool = False,
    model: str | None = None,
) -> tuple[int, int, int]:
    """Convert every image in ``in_dir`` into ``out_dir``; return (converted, skipped, failed) counts.

    With ``to="jac"`` every image Pillow can decode (by extension) is encoded to ``NAME.jac``; with
    ``to="png"`` every ``.jac`` file is decoded to ``NAME.png`` (an existing image that no decode wrote is
    replaced only with ``force``: it may be the original). Which files, and which fail before converting
    (two inputs for one output): :func:`pillow_jac.batch_plan.plan_batch`. ``target_size``, ``target_psnr``,
    ``preview``, ``strip`` and ``model`` are as in :func:`pillow_jac.conversion.encode_file`, for every file.
    ``workers > 1`` uses that many worker processes. With ``resume``, an output already done
    (:func:`pillow_jac.resume_checks.is_done`, whose times are not compared where the output folder's record
    vouches for the source and output as they are, :meth:`pillow_jac.source_record.SourceRecord.vouched`), and
    made from its source as the source is now (:meth:`pillow_jac.source_record.SourceRecord.changed`), is
    skipped, so that a stopped batch run again continues where it stopped, as on Ray.

    Raises:
        ConversionError: ``in_dir`` is not a folder or holds no images, or ``out_dir`` is a file.
        ModelNotInstalledError: ``model`` (or ``JAC_WEIGHTS``) cannot encode here (``to="jac"``).
        ValueError: ``device`` (or ``JAC_DEVICE``) is not a device this machine has.
    """
    check_encoder(to, model)  # once, not once per file from every worker
    if (device or os.environ.get("JAC_DEVICE", "").strip() or "cpu") != "cpu":
        with passive_unless_chosen():  # imports torch: only for a device that may be missing
            from .engine import resolve_device

        resolve_device(device)  # once, not once per file from every worker
    stream = sys.stderr if stream is None else stream
    try:
        made_from = SourceRecord(out_dir)
        jobs, clashes = plan_batch(in_dir, out_dir, to, recursive=recursive, record=made_from)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    Path(out_dir).mkdir(parents=True, exist_ok=True)

    bar = Progress(len(jobs) + len(clashes), stream, progress)
    shown = shown_name(in_dir)
    for src, (_, why) in clashes.items():  # two inputs for one output: neither is converted, the others are
        bar.step(shown(src), why)
    failed = len(clashes)
    extra = file_options(
        to, target_size=target_size, target_psnr=target_psnr, preview=preview, strip=strip, model=model
    )
    options = (to, quality, effort, device, extra)
    settings = batch_settings(to, quality, effort, extra)
    todo = {}
    try:
        for src, dst in jobs.items():
            may_skip = resume and not made_from.changed(src, dst, settings)
            # done_before compares what the record vouches for with the files as it finds them
            if may_skip and done_before(src, dst, to, quality, extra, made_from.vouched(dst, settings)):
                bar.step(shown(src), note="already done")
            else:
                todo[src] = dst
        # before any output is written (a batch stopped meanwhile is not lost), and before any source is read: the
        # sources' identities noted as made are these, not those of a source saved again meanwhile
        started = note_started(out_dir, todo)
        for src, result, notes in _run_jobs(todo, options, force, workers) if todo else ():
            name = shown(src)
            for note in notes:
                bar.warn(name, note)
            if isinstance(result, BaseException):
                failed += 1
                bar.step(name, one_line(result))
            else:
                note_made(out_dir, src, todo[src], settings, source=started[src], made=result.made)
                bar.step(name)
    finally:
        bar.close()
    return len(todo) + len(clashes) - failed, len(jobs) - len(todo), failed


#: what jac batch's fork server imports before it forks the workers: a module that ignores Ctrl-C there (as the
#: server does after its preload), torch under the codec's wait policy, then the modules of a conversion, among
#: them those the codec imports at its first call, so that no worker imports them again (about 50 ms a worker),
#: and last a module that puts Python's SIGINT handler back for the processes the server forks
_WORKER_PRELOAD = [
    "pillow_jac.forkserver_signals",
    "pillow_jac.passive_torch",
    "pillow_jac.local_batch",
    "pillow_jac.codec",
    *TORCH_MODULES,
    "pillow_jac.forkserver_signals_restored",
]


def _run_jobs(
    jobs: dict[Path, Path], options: tuple, force: bool, workers: int
) -> Iterator[tuple[Path, Any, list[str]]]:
    """``(source, what it made or the exception, warnings)`` for every file, as each is done.

    What it made: :class:`pillow_jac.conversion.Converted` (sizes, and the output as written).
    """
    if workers <= 1:
        for src, dst in jobs.items():
            yield (src, *convert_noting_warnings(str(src), str(dst), *options, force=force))
        return

    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        # Workers fork from a server process that has imported torch (with the codec's OpenMP wait
        # policy) but never ran it: fast to start, and no fork of a process whose torch/OpenMP thread
        # pools are running.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_PRELOAD)
        _start_fork_server()
    else:  # pragma: no cover - Windows
        ctx = multiprocessing.get_context("spawn")
    items = [(str(src), str(dst)) for src, dst in jobs.items()]
    sources = list(jobs)
    states = ctx.RawArray("b", len(items) + 1)  # and last, whether a worker got SIGTERM while idle
    tries = [0] * len(items)
    todo, idle_breaks = list(range(len(items))), 0
    while todo:
        lost, finished, hard_deaths = [], False, []
        states[len(items)] = 0
        for i, outcome in _run_pool(ctx, items, todo, states, workers, options, force, hard_deaths):
            if outcome is None:
                lost.append(i)
            else:
                finished = True
                yield (sources[i], *outcome)
        todo = []
        for folder in {Path(items[i][1]).parent for i in lost if states[i] == _CONVERTING}:
            remove_orphaned_temporaries(folder)  # what a killed worker was writing (its pool is joined)
        # The file whose worker died converting it broke the pool. Killed, it is still marked converting; sent
        # SIGTERM alone, it is marked terminated, the first so (the pool then ends the others with SIGTERM, and
        # their files are not). A worker killed while idle marks nothing: the file of a worker the pool then
        # ended would be taken for the first, so none is charged where a worker ended by another signal than
        # SIGTERM (or a worker ended idle by SIGTERM marked the pool: see _worker_job).
        converting = {i for i in lost if states[i] == _CONVERTING}
        charged = converting or (set() if hard_deaths else {i for i in lost if states[i] == _TERMINATED})
        idle_breaks = 0 if finished else idle_breaks
        if lost and not charged:
            idle_breaks += 1
        for i in sorted(lost):
            states[i] = _QUEUED  # no file stays marked as terminated: a worker's SIGTERM handling looks for one
            if i in charged:
                tries[i] += 1
            if tries[i] >= ATTEMPTS:
                yield sources[i], ConversionError(_DIED), []
            elif idle_breaks > _IDLE_BREAKS:
                yield sources[i], ConversionError(_KEPT_DYING), []
            else:
                todo.append(i)


def _start_fork_server() -> None:
    """Start multiprocessing's fork server (where it is not running) with SIGINT blocked in this thread.

    The server starts with this thread's signal mask, so a Ctrl-C that reaches it before its first preload
    module (:mod:`pillow_jac.forkserver_signals`) ignores SIGINT waits and is then discarded, where it would
    have printed a traceback from the interpreter's start-up. One that reaches this process meanwhile is
    raised here as KeyboardInterrupt once the mask is back. (The standard library starts its resource tracker so,
    bpo-33613, and unblocks SIGINT after: the tracker is started first, as the server's start would.)
    """
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run_pool(
    ctx: Any,
    items: list[tuple[str, str]],
    todo: list[int],
    states: Any,
    workers: int,
    options: tuple,
    force: bool,
    hard_deaths: list[int],
) -> Iterator[tuple[int, tuple[Any, list[str]] | None]]:
    """One process pool over the files ``todo``.

    Yields ``(index, (result, warnings))`` for each file, or ``(index, None)`` for a file whose result was
    lost when the pool broke. Once the pool is over, ``hard_deaths`` gets the exit status of each worker that
    ended otherwise than by finishing or by SIGTERM (SIGKILL: -9), as far as the executor says.
    """
    workers = min(workers, len(todo))
    threads = threads_per_worker(workers)
    cancel_reader, cancel = ctx.Pipe(duplex=False)  # closing `cancel` cancels the batch in the workers
    init = (threads, cancel_reader, states, Image.MAX_IMAGE_PIXELS, signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    sigint: list = []  # the handler to put back once the pool has stopped, when Ctrl-C is ignored meanwhile
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: sigint and signal.signal(signal.SIGINT, sigint[0]))  # the last thing on the way out
        stack.enter_context(cancel_reader)
        stack.enter_context(cancel)
        ex = stack.enter_context(
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=init)
        )
        # the executor's workers, a dict filled as they start (CPython's attribute; none: no exit status is known)
        processes = getattr(ex, "_processes", None)
        processes = processes if isinstance(processes, dict) else {}
        queue, pending, broken_at = deque(todo), {}, None
        try:
            while pending or (queue and broken_at is None):
                while queue and broken_at is None and len(pending) < _IN_FLIGHT_PER_WORKER * workers:
                    i = queue.popleft()
                    try:
                        pending[ex.submit(_worker_job, i, *items[i], *options, force)] = i
                    except BrokenProcessPool:
                        queue.appendleft(i)
                        broken_at = time.monotonic()
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                if not done and broken_at is not None and time.monotonic() - broken_at > _BROKEN_GRACE_SECONDS:
                    # a future submitted as the pool broke can stay unsettled (CPython 3.11's pool clears
                    # its work items without the lock submit takes): it is lost with the pool
                    done = set(pending)
                    for fut in done:
                        fut.cancel()
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        value = fut.result(timeout=0)
                    except (BrokenProcessPool, CancelledError, TimeoutError):
                        broken_at = broken_at or time.monotonic()
                        yield i, None
                        continue
                    except Exception as e:  # e.g. a result that could not be sent back
                        value = (e, [])
                    if value is None:  # a worker stopped by a SIGINT sent to it alone
                        value = (ConversionError("interrupted"), [])
                    yield i, value
            for i in queue:  # never submitted: for the next pool
                yield i, None
        except BaseException:  # e.g. KeyboardInterrupt: stop the running files, drop the queued ones
            cancel.close()
            previous = signal.getsignal(signal.SIGINT)  # None: a handler not set from Python, left alone
            if previous is not None and threading.current_thread() is threading.main_thread():
                sigint.append(signal.signal(signal.SIGINT, signal.SIG_IGN))  # more Ctrl-Cs while the pool stops
            ex.shutdown(wait=False, cancel_futures=True)
            raise
    # the pool is shut down and its workers joined
    ended = [getattr(process, "exitcode", None) for process in list(processes.values())]
    hard_deaths.extend(code for code in ended if code not in (None, 0, -signal.SIGTERM))


def threads_per_worker(workers: int) -> int:
    """The torch threads each of ``workers`` batch workers gets: an equal share of :func:`_usable_cpus`, at least 1."""
    return max(1, _usable_cpus() // workers)


def _usable_cpus() -> int:
    """The CPUs this process may run on (``taskset``, cgroups' cpusets, Slurm), not all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _worker_init(
    threads: int, cancel: Any, states: Any, pixel_limit: float | None, sigint_ignored: bool = False
) -> None:
    """Set up a batch worker: its torch threads, warnings, pixel limit and stopping when the batch is cancelled.

    ``pixel_limit`` is the batch's ``PIL.Image.MAX_IMAGE_PIXELS`` (``jac batch --max-image-pixels``): a worker
    started by the fork server has Pillow's own otherwise.

    Ctrl-C in a terminal signals every process of the group, workers included. A worker turns SIGINT
    into ``KeyboardInterrupt`` only while it converts a file (an idle one would die with a traceback).
    ``cancel`` is the reading end of a pipe that the parent closes to cancel the batch (also when the
    parent alone got the SIGINT, or died): a thread then interrupts the file being converted. Only that
    thread touches the pipe, and only plain module flags are shared with the main thread, so an
    interruption never leaves a lock held. ``states`` is the batch's shared byte per file. Where the batch
    ignores SIGINT (``jac batch ... &`` in a script), its workers ignore it too, as ``-j 1`` does.
    """
    global _states
    _states = states
    Image.MAX_IMAGE_PIXELS = pixel_limit
    warnings.showwarning = show_warning  # warnings outside a file's conversion (those inside go to the parent)
    # where SIGINT is ignored, a handler still: the cancel thread's interruption is a simulated SIGINT, which
    # Python drops for an ignored signal (a SIGTERM to the batch then waited for every running file)
    signal.signal(signal.SIGINT, _worker_sigint_when_cancelled if sigint_ignored else _worker_sigint)
    if signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:  # an ignored SIGTERM stays ignored, as in jac itself
        signal.signal(signal.SIGTERM, _worker_sigterm)
    threading.Thread(target=_interrupt_when_cancelled, args=(cancel,), daemon=True).start()
    try:
        with passive_unless_chosen():  # workers share the cores: OpenMP threads that spin slow each other
            import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(threads)


def _worker_sigint(signum: int, frame: Any) -> None:
    """Interrupt the file being converted, once.

    A Ctrl-C reaches a worker twice (the terminal's SIGINT to the group, and the cancel pipe's
    interruption); a second one during the first's clean-up would leave the temporary file behind.
    """
    global _converting
    if _converting:
        _converting = False
        raise KeyboardInterrupt


def _worker_sigint_when_cancelled(signum: int, frame: Any) -> None:
    """SIGINT in a worker of a batch that ignores it: ignored, but for the cancel thread's interruption."""
    if _cancelled:
        _worker_sigint(signum, frame)


def _worker_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a worker: the file being converted is cleaned up as on Ctrl-C, then the worker ends.

    ``timeout`` and ``kill -TERM -PGID`` signal the whole process group, workers included, and the
    process pool terminates its other workers this way when one of them died: a worker that lived on
    would wait for work for ever, and the batch with it.
    """
    global _terminating
    _terminating = True
    if _converting:
        _worker_sigint(signum, frame)  # _worker_job ends the process once the file is cleaned up
        return
    if _states is not None:  # ended while idle: a worker the pool ends after this is not the cause
        _states[len(_states) - 1] = 1
    _end_by_sigterm()


def _end_by_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _interrupt_when_cancelled(cancel: Any) -> None:
    """Interrupt the file being converted when the batch is cancelled, then end the worker if the pool does not.

    A parent that is alive ends its workers through the pool within moments. One that was killed (``kill
    -9``, the out-of-memory killer) never does, and an idle worker waits for work for ever (every worker
    holds the pool's queue, so it never sees its end): once the file being converted is cleaned up, a worker
    still there after :data:`_ORPHAN_GRACE_SECONDS` ends itself.
    """
    global _cancelled
    try:
        cancel.recv_bytes()  # nothing is ever sent: this returns when the parent closes its end
    except (EOFError, OSError):
        pass
    _cancelled = True
    _thread.interrupt_main(signal.SIGINT)
    deadline = time.monotonic() + _ORPHAN_GRACE_SECONDS
    while _in_job or time.monotonic() < deadline:  # a file's clean-up is never cut short
        time.sleep(0.1)
    os._exit(1)


def _worker_job(index: int, src: str, dst: str, *options: Any) -> tuple[Any, list[str]] | None:
    """One file in a worker: ``(result, warnings)``; None when the batch was cancelled before or while converting.

    ``options``: :func:`pillow_jac.conversion.convert_file`'s ``to, quality, effort, device, extra, force``.
    """
    global _converting, _in_job
    started, _in_job = False, True
    try:
        _converting = True  # before the check: a cancel from now on interrupts the conversion
        if _cancelled:
            return None
        _states[index], started = _CONVERTING, True
        *convert_options, force = options
        return convert_noting_warnings(src, dst, *convert_options, force=force)
    except KeyboardInterrupt:
        if _terminating:  # its temporary file is gone: end now
            # The pool ends its other workers with SIGTERM once one has died, after that one marked its file (or,
            # idle, the pool: the last byte): a SIGTERM after such a mark is the pool's, and this file is not
            # charged (the parent's loop)
            _states[index] = _QUEUED if _TERMINATED in _states[:-1] or _states[len(_states) - 1] else _TERMINATED
            started = False
            _end_by_sigterm()
        return None
    finally:
        _converting = False
        if started:
            _states[index] = _FINISHED
        _in_job = False
