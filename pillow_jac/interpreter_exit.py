"""Codec work in daemon threads ends cleanly when the interpreter exits, instead of aborting the process.

When the main thread ends, CPython runs the exit handlers and then finalises with daemon threads
still running; one that is inside torch's C++ at that moment makes the process abort (SIGABRT,
``terminate called without an active exception``, exit status 134), which loses what the program
wrote but had not flushed. Non-daemon threads (``threading.Thread`` by default,
``concurrent.futures`` pools) are joined before this and are not affected.

The codec counts the threads inside its torch work (:func:`working`: building an engine, the
transforms, the latent coding; not reading files, so a thread blocked on a pipe does not hold the exit
up). The first engine the codec builds registers an exit handler (:func:`watch`), after torch is
imported, so it runs before torch's own. It sets a flag and waits, at most :data:`EXIT_WAIT_SECONDS`,
until no thread is inside; then it gives each thread it stopped up to :data:`STOPPED_JOIN_SECONDS` to
end. The work checks the flag between stripes, wavefront steps and search steps (:func:`check`), and on
entering a region (:func:`working`), and leaves by :class:`SystemExit`, which ends a thread without a
traceback. A stopped thread is joined, not only counted out: while it unwinds it still frees tensors, and
CPython ends a daemon thread found running at finalisation inside whatever C++ it is in. The main thread is
never stopped this way: by then its own work is done. Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Iterator

__all__ = ["working", "check", "watch", "EXIT_WAIT_SECONDS", "STOPPED_JOIN_SECONDS"]

#: how long the interpreter's exit waits for torch work in daemon threads to reach a check and stop
EXIT_WAIT_SECONDS = 30.0
#: how long the exit then waits for each stopped thread to end (it unwinds in milliseconds; one that
#: goes on with other work is left to end as daemon threads do)
STOPPED_JOIN_SECONDS = 2.0

_idle = threading.Condition(threading.Lock())
_inside = 0
_exiting = False
_watching = False
_stopped: list[threading.Thread] = []  # the threads check() stopped, joined by the exit handler


@contextlib.contextmanager
def working() -> Iterator[None]:
    """A region of torch work: the exit waits for the threads inside (a thread that enters during the exit stops).

    Example:
        >>> from pillow_jac import interpreter_exit
        >>> with working():
        ...     inside = interpreter_exit._inside
        >>> inside, interpreter_exit._inside
        (1, 0)
    """
    global _inside
    with _idle:  # tested under the lock: the exit handler sets the flag under it too
        _stop_if_exiting()
        _inside += 1
    try:
        yield
    finally:
        with _idle:
            _inside -= 1
            if not _inside:
                _idle.notify_all()


def check() -> None:
    """Stop this thread (:class:`SystemExit`) if the interpreter is exiting and it is not the main thread."""
    if _exiting:
        with _idle:
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
    with _idle:
        if _watching:
            return
        _watching = True
    atexit.register(_at_exit)


def _at_exit() -> None:
    global _exiting
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    with _idle:
        _exiting = True
        _idle.wait_for(lambda: _inside == 0, timeout=EXIT_WAIT_SECONDS)
        stopped = list(_stopped)
    for thread in stopped:
        thread.join(max(0.0, min(STOPPED_JOIN_SECONDS, deadline - time.monotonic())))


def _after_fork_in_child() -> None:
    global _idle, _inside
    _idle = threading.Condition(threading.Lock())  # the parent's may have been held by a thread the child lacks
    _inside = 0  # the threads inside were the parent's
    _stopped.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
