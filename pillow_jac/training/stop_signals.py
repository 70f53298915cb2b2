"""SIGTERM and Ctrl-C as a request to stop a training loop at the end of its step.

:func:`stop_on_signals` is how :mod:`~pillow_jac.training.train`, :mod:`~pillow_jac.training.encoder_tune` and
:mod:`~pillow_jac.training.gpu_session` let ``kill``, ``timeout`` or Ctrl-C end a run with a checkpoint
(README "Training"). The handlers last only while the block runs: a program (a notebook, a test process) that
calls one of their ``main`` functions gets its own handlers back, so that Ctrl-C interrupts it again afterwards
and a ``multiprocessing`` pool it forks later can still end its workers with SIGTERM (a worker that had
inherited a handler that only records the request would never end, and the pool would wait on it for ever).

Off the main thread, and for a signal the program ignores, nothing changes (:mod:`pillow_jac.signal_handlers`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from ..signal_handlers import handling

#: the signals that ask a run to stop
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked for, and by which signal (true once one arrived)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def record(self, signum: int, frame: object) -> None:
        """The signal handler: remember the request; the loop ends at the end of its step."""
        self.signum = signum


def exit_status(signum: int | None) -> int:
    """128 + the signal's number (130 after Ctrl-C, 143 after SIGTERM), 0 for none.

    The status a shell reports for a program the signal ended, which the ``jac`` command line returns too:
    a run stopped early, even with its checkpoint saved, does not tell a script that it finished.
    """
    return 128 + signum if signum else 0


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Record SIGTERM and SIGINT in the yielded :class:`StopRequest` for the block, then restore the handlers."""
    request = StopRequest()
    with handling(dict.fromkeys(STOP_SIGNALS, request.record)):
        yield request
