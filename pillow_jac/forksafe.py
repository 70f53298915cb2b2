"""What a forked child needs to run the codec: fresh locks, and torch on one thread.

``os.fork`` copies a process with only the calling thread. A lock that another thread held at that
moment stays held in the child for ever, and GNU OpenMP's worker threads (torch's intra-op pool) are
gone there too. ``multiprocessing`` forks by default on Linux, from whatever thread calls it, so both
happen to ordinary users: a pool started while another thread builds the first engine (about a second
at the first encode or decode) would give a child whose first decode waits for ever.

Every lock of the codec comes from :func:`fork_safe_lock`, and one at-fork hook, registered here, gives
the child new unlocked ones and, once the codec has run in the process, sets torch to one thread (its
parallel ops would wait for the lost OpenMP workers; PyTorch's DataLoader does the same for its workers).
Decoded latents do not depend on the thread count, nor pixels but for a rare one-level difference (SPEC.md
section 1; tests/test_concurrency.py). A child that raises torch's thread count again hangs in its first
parallel op: use the ``spawn`` or ``forkserver`` start method then.

Other state is not renewed in a child either, and the codec's set-up is where another thread holds it:
Python's per-module import lock while the codec imports its torch modules (most of the first second
of the first encode or decode); while an engine is built, a one-time initialisation of safetensors'
native code left running (its first ``safe_open``) and the mutex of torch's random generator (the
model's layers are created with random weights before the file's are loaded). A child copied at such
a moment waits for ever in its first decode. The codec sets itself up under :func:`setting_up`, and a
fork waits (before it forks, at most :data:`SETUP_WAIT_SECONDS`) until no set-up is in progress. Once
an engine is built, a fork while another thread decodes needs no wait (tests/test_concurrency.py).

A thread that ran the codec and has ended still holds locks while it exits: ``Thread.join`` returns
once its Python code is done, before the thread's native clean-up (MKL's memory manager, linked into
torch, frees the thread's buffers under its lock). A fork right after the join copied that lock held
about once in ten tries on a loaded 2-core machine, and the child waited for ever in its first encode.
Each thread that gets an engine is recorded (:func:`note_codec_thread`), and a fork first waits, at
most :data:`EXIT_WAIT_SECONDS`, until every recorded thread that no longer runs Python has left the
process (on Linux, where ``/proc/self/task`` shows it; elsewhere nothing is waited for). Not covered:
the OpenMP worker threads such a thread started end on their own, after it, with the same kind of
clean-up, and are not waited for; a native thread that calls into Python only now and then counts as
ended between its calls, so a fork then waits the full 5 s for it.
Standard library only.
"""

from __future__ import annotations

import _thread
import logging  # noqa: F401 - see below
import os
import signal
import sys
import threading
import time

# logging and concurrent.futures.thread register paired before/after-fork hooks when first imported, and
# torch's import imports them. os.fork lists its before-hooks when it starts: a module first imported
# while a fork waits in ours would get its after-hook run without its before-hook (its lock released
# unheld). Imported here, they are registered before any fork can wait.
try:
    import concurrent.futures.thread  # noqa: F401
except RuntimeError:  # first imported while the interpreter exits (a decode in an exit handler): no fork follows
    pass

__all__ = ["fork_safe_lock", "setting_up"]

#: every lock :func:`fork_safe_lock` made (module-level locks: kept for the life of the process)
_LOCKS: list = []
#: how long a fork waits for the codec's set-up in another thread to finish
SETUP_WAIT_SECONDS = 120.0
#: how long after a fork a Ctrl-C that came during its wait comes again (the fork's hooks are done by then)
_REDELIVER_SECONDS = 0.02
#: how long a fork waits for ended codec threads to leave the process
EXIT_WAIT_SECONDS = 5.0
_TASKS = "/proc/self/task"
#: recorded threads at which those that have left the process are forgotten
_PRUNE_AT = 64
#: native id -> (start time in ``/proc``, Python ident) of each thread that got an engine; added to and
#: pruned under ``_threads_lock`` (below)
_codec_threads: dict[int, tuple[str, int]] = {}
#: per thread: whether :func:`note_codec_thread` recorded it
_noted = threading.local()
#: whether the codec has run in this process (or the process it was forked from): only then does a fork's child
#: get torch on one thread, so that ``import pillow_jac`` alone leaves a program's forks as they were
_codec_ran = False
#: held while the codec imports its torch modules or builds an engine (reentrant: these nest)
_setting_up = threading.RLock()
#: per thread: whether this thread's fork holds ``_setting_up`` (taken before the fork, given back after)
_forking = threading.local()


def fork_safe_lock() -> threading.RLock:
    """A lock for a module of the codec (a :class:`threading.RLock`) that a forked child gets back unlocked.

    The standard library's C lock: ``with lock:`` takes it in C, so a KeyboardInterrupt that lands as it is
    taken cannot leave it held (a lock class written in Python can: its ``__enter__`` runs bytecode after the
    acquire, where the signal's handler runs, and the lock would stay held for good). Reentrant, so that a
    call into the codec from a signal handler or a finaliser that interrupted the codec in the same thread goes
    on instead of waiting for itself for ever.

    Example:
        >>> lock = fork_safe_lock()
        >>> with lock, lock:
        ...     lock._is_owned()
        True
    """
    lock = threading.RLock()
    _LOCKS.append(lock)
    return lock


_threads_lock = fork_safe_lock()


def setting_up() -> threading.RLock:
    """The lock that holds off forks while a ``with`` block runs (the codec's imports and engine builds).

    The C lock itself, not a generator around it: ``with`` takes it in C, so a KeyboardInterrupt that lands as
    it is taken cannot leave it held (as :func:`fork_safe_lock` says; a ``@contextmanager`` suspended after its
    ``yield`` kept the lock for as long as the interrupt's traceback lived, and every later encode waited).
    Called at each use: a fork's child gets a new one.

    Example:
        >>> with setting_up():
        ...     import json
    """
    return _setting_up


def _start_time(tid: int) -> str | None:
    """The start time of thread ``tid`` of this process (``/proc``), None when it has left or cannot be read."""
    try:
        with open(f"{_TASKS}/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after the name, which may hold spaces
    return fields[19].decode() if len(fields) > 19 else None


def note_codec_thread() -> None:
    """Record the calling thread, so that a fork waits for it to leave the process once it has ended.

    Example:
        >>> note_codec_thread()
        >>> threading.get_native_id() in _codec_threads or not os.path.isdir(_TASKS)
        True
    """
    global _codec_ran
    _codec_ran = True
    if getattr(_noted, "done", False):
        return
    _noted.done = True
    if not os.path.isdir(_TASKS):  # nothing to wait for where /proc does not show the threads
        return
    tid = threading.get_native_id()
    started = _start_time(tid)
    if started is not None:
        with _threads_lock:
            if len(_codec_threads) >= _PRUNE_AT:  # threads that have left are forgotten: the record stays bounded
                for other, (other_started, _) in list(_codec_threads.items()):
                    if _start_time(other) != other_started:
                        _codec_threads.pop(other, None)  # a fork in another thread may have dropped it
            _codec_threads[tid] = (started, threading.get_ident())


def _running_python() -> dict[int, int | None]:
    """Ident -> native id (None where ``threading`` does not know it) of the threads that run Python now.

    Raw ``_thread`` threads are there too. A new thread often gets the ident of one that has ended (the
    same stack), so the native id, where known, tells them apart.
    """
    native = {t.ident: t.native_id for t in threading.enumerate()}
    return {ident: native.get(ident) for ident in sys._current_frames()}


def _wait_for_ended_threads() -> None:
    """Wait until each recorded thread that no longer runs Python has left the process (or its id is reused).

    Takes no lock: a fork from a signal handler that interrupted :func:`note_codec_thread` must not wait on
    its own thread (a copy and a ``pop`` of the dict are each atomic in CPython).
    """
    if not _codec_threads:
        return
    running = _running_python()
    ended = {
        tid: started
        for tid, (started, ident) in dict(_codec_threads).items()
        if ident not in running or running[ident] not in (None, tid)
    }
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    while ended:
        for tid, started in list(ended.items()):
            if _start_time(tid) != started:  # left (or the id now names another thread)
                del ended[tid]
                _codec_threads.pop(tid, None)
        if not ended:
            return
        if time.monotonic() > deadline:  # not waited for again
            for tid in ended:
                _codec_threads.pop(tid, None)
            return
        time.sleep(0.001)


def _before_fork() -> None:
    """Wait for ended codec threads and the codec's set-up; a Ctrl-C meanwhile comes after the fork.

    An exception from an at-fork hook is only reported as ignored, and the fork goes on: a KeyboardInterrupt
    that cut the wait short was lost, and the child, forked during the set-up, waited for ever. The wait goes
    on to its end instead, and :func:`_after_fork_in_parent` has SIGINT come again once the fork is done (a
    Python hook cannot raise into the code that forked).
    """
    _forking.interrupted = False
    deadline = time.monotonic() + SETUP_WAIT_SECONDS
    while True:
        try:
            if deadline is not None:
                _wait_for_ended_threads()
                deadline, waited = None, deadline
            _forking.held = _setting_up.acquire(timeout=max(0.0, waited - time.monotonic()))
            break
        except KeyboardInterrupt:
            _forking.interrupted = True
    if not _forking.held:
        print(
            f"pillow_jac: forking while the codec is still setting up after {SETUP_WAIT_SECONDS:g} s; "
            "the child may hang in its first encode or decode",
            file=sys.stderr,
        )


def _after_fork_in_parent() -> None:
    if getattr(_forking, "held", False):
        _forking.held = False
        _setting_up.release()
    if getattr(_forking, "interrupted", False):  # the Ctrl-C that came during the wait, now that it is over:
        _forking.interrupted = False  # from another thread, so that it lands after the hooks, as a Ctrl-C would
        threading.Thread(target=_interrupt_main_soon, daemon=True).start()


def _interrupt_main_soon() -> None:
    """SIGINT for the main thread, once the code that started this thread has gone on (a Ctrl-C, later)."""
    time.sleep(_REDELIVER_SECONDS)
    _thread.interrupt_main(signal.SIGINT)


def _after_fork_in_child() -> None:
    global _setting_up
    _setting_up = threading.RLock()
    _codec_threads.clear()  # the child has only the forking thread
    _noted.__dict__.clear()
    _forking.held = False
    for lock in _LOCKS:
        lock._at_fork_reinit()
    torch = sys.modules.get("torch") if _codec_ran else None
    set_num_threads = getattr(torch, "set_num_threads", None)  # None while torch is still being imported
    if set_num_threads is not None:
        try:
            set_num_threads(1)
        except Exception:  # a torch too broken to run anything: the child's first decode will say so
            pass


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
