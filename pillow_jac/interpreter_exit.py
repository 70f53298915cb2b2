"""Codec work in daemon threads ends cleanly when the interpreter exits, instead of aborting the process.

When the main thread ends, CPython runs the exit handlers and then finalises with daemon threads
still running; one that is inside torch's C++ at that moment makes the process abort (SIGABRT,
``terminate called without an active exception``, exit status 134), which loses what the program
wrote but had not flushed. Non-daemon threads (``threading.Thread`` by default,
``concurrent.futures`` pools) are joined before this and are not affected.

The codec counts the threads inside its torch work (:func:`working`: building an engine, the transforms,
the latent coding; not reading files, so a thread blocked on a pipe does not hold the exit up). Each
public call that holds tensors runs as one region (:func:`counted`), so that the frames which hold them
return, and free them, inside it: a daemon thread that frees a tensor releases the GIL, and one that
does so during finalisation is ended inside torch's C++. The first engine the codec builds registers an
exit handler (:func:`watch`), after torch is imported, so it runs before torch's own. It sets a flag and
waits, at most :data:`EXIT_WAIT_SECONDS`, until no thread is inside; then it gives each thread it
stopped up to :data:`STOPPED_JOIN_SECONDS` to end. The work checks the flag between stripes, wavefront
steps and search steps (:func:`check`), and on entering a region (:func:`working`), and leaves by
:class:`SystemExit`, which ends a thread without a traceback. A stopped thread is joined, not only
counted out: while it unwinds it still frees tensors, and CPython ends a daemon thread found running at
finalisation inside whatever C++ it is in. The main thread is never stopped this way, nor waited for: by
then its own work is done (a count it left behind, when a KeyboardInterrupt cut a region short between
its bookkeeping steps, does not hold the exit up).
Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

_F = TypeVar("_F", bound=Callable)

__all__ = ["working", "counted", "check", "watch", "threads_inside", "EXIT_WAIT_SECONDS", "STOPPED_JOIN_SECONDS"]

#: how long the interpreter's exit waits for torch work in daemon threads to reach a check and stop
EXIT_WAIT_SECONDS = 30.0
#: how long the exit then waits for each stopped thread to end (it unwinds in milliseconds; one that
#: goes on with other work is left to end as daemon threads do)
STOPPED_JOIN_SECONDS = 2.0

#: the counts below are changed under this C lock, taken by ``with`` (a ``Condition``'s own ``__enter__`` is
#: Python code, where a KeyboardInterrupt could land after the acquire and leave it held)
_idle_lock = threading.RLock()
_idle = threading.Condition(_idle_lock)
#: per thread (ident): how many regions of torch work it is inside
_inside: dict[int, int] = {}
_exiting = False
_watching = False
_stopped: list[threading.Thread] = []  # the threads check() stopped, joined by the exit handler


@contextlib.contextmanager
def working() -> Iterator[None]:
    """A region of torch work: the exit waits for the threads inside (a thread that enters during the exit stops).

    Example:
        >>> from pillow_jac import interpreter_exit
        >>> with working():
        ...     inside = interpreter_exit.threads_inside()
        >>> inside, interpreter_exit.threads_inside()
        (1, 0)
    """
    me = threading.get_ident()
    entered = False
    try:
        with _idle_lock:  # tested under the lock: the exit handler sets the flag under it too
            _stop_if_exiting()
            _inside[me] = _inside.get(me, 0) + 1
            entered = True
        yield
    finally:
        if entered:
            with _idle_lock:
                left = _inside.pop(me, 1) - 1
                if left > 0:
                    _inside[me] = left
                _idle.notify_all()


def counted(function: _F) -> _F:
    """``function`` run as one region of torch work (:func:`working`).

    Its frame, and every tensor it holds, is freed before the region ends.
    """

    @functools.wraps(function)
    def run(*args, **kwargs):
        with working():
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]


def threads_inside(but: int | None = None) -> int:
    """How many threads are inside regions of torch work now (less the thread ``but``, by ident)."""
    with _idle_lock:
        return sum(1 for ident, count in _inside.items() if count > 0 and ident != but)


def check() -> None:
    """Stop this thread (:class:`SystemExit`) if the interpreter is exiting and it is not the main thread."""
    if _exiting:
        with _idle_lock:
            _stop_if_exiting()


def _stop_if_exiting() -> None:
    """:func:`check`, with the lock held."""
    if _exiting and threading.current_thread() is not threading.main_thread():
        _stopped.append(threading.current_thread())
        raise SystemExit("pillow_jac: the interpreter is exiting")


def watch() -> None:
    """Register the exit handler, once (the codec calls this after importing torch)."""
    global _watching
    if _watching:  # the codec asks at every engine request: no lock once registered
        return
    with _idle_lock:
        if _watching:
            return
        _watching = True
    try:
        atexit.register(_at_exit)
    except RuntimeError:  # the interpreter is already exiting (a first decode in an exit handler): nothing to wait for
        pass


def _at_exit() -> None:
    global _exiting
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    me = threading.get_ident()  # the thread that exits; what it left counted is not waited for
    with _idle_lock:
        _exiting = True
        _idle.wait_for(lambda: threads_inside(but=me) == 0, timeout=EXIT_WAIT_SECONDS)
        stopped = list(_stopped)
    for thread in stopped:
        thread.join(max(0.0, min(STOPPED_JOIN_SECONDS, deadline - time.monotonic())))


def _after_fork_in_child() -> None:
    global _idle, _idle_lock
    _idle_lock = threading.RLock()  # the parent's may have been held by a thread the child lacks
    _idle = threading.Condition(_idle_lock)
    _inside.clear()  # the threads inside were the parent's
    _stopped.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
