"""Imported first by ``jac batch``'s fork server (:data:`pillow_jac.local_batch._WORKER_PRELOAD`): Ctrl-C ignored.

The fork server ignores SIGINT once it has imported its preload modules (torch among them, a few
seconds); before that, a Ctrl-C to the terminal's process group would print a KeyboardInterrupt traceback
from inside torch's import below the command's own one-line message, and end the server. ``jac batch`` starts
the server with SIGINT blocked (:func:`pillow_jac.local_batch._start_fork_server`), so that one sent while the
interpreter starts waits; here SIGINT is ignored first and then unblocked, which discards it.
:mod:`pillow_jac.forkserver_signals_restored`, imported last, puts back the handler the server had (Python's,
or SIGINT ignored where ``jac batch`` ignores it), so that the processes the server forks get it as they would
without this module.

A Ctrl-C can also stop ``jac batch`` while it waits for the server to fork a worker: the request is already
sent, and the server forks the worker once its preload is done, after the batch has removed the semaphores of
the pool the request names. Such a worker cannot start, and has no-one to tell: it exits with status 1 and
no traceback (:func:`_quiet_when_its_pool_is_gone`, the server's ``sys.excepthook``, which its forks inherit).
Every other error is printed as before.
"""

from __future__ import annotations

import signal
import sys

#: the server's SIGINT handler before this module (put back by pillow_jac.forkserver_signals_restored)
BEFORE = signal.getsignal(signal.SIGINT)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

_EXCEPTHOOK = sys.excepthook


def _quiet_when_its_pool_is_gone(kind, value, tb) -> None:
    """``sys.excepthook``: nothing for a forked worker whose pool's semaphores were removed, else the hook before.

    A pool removes a semaphore's name only once it has no use for it (multiprocessing.synchronize.SemLock's
    finaliser); the server's forks fail so in ``SemLock.__setstate__`` with FileNotFoundError.
    """
    last = tb
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    code = last.tb_frame.f_code if last is not None else None
    if (
        isinstance(value, FileNotFoundError)
        and code is not None
        and code.co_name == "__setstate__"
        and code.co_filename.endswith("synchronize.py")
    ):
        return
    _EXCEPTHOOK(kind, value, tb)


sys.excepthook = _quiet_when_its_pool_is_gone
