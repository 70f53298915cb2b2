"""Signal handlers installed for the length of a call, and the caller's put back after it.

One rule for every place that handles a signal for a while (the ``jac`` command's SIGTERM, the training
loops' stop requests in :mod:`pillow_jac.training.stop_signals`, the contention benchmark): a library call
gives the process back its handlers as it found them. Nothing is installed off the main thread (where
Python cannot install handlers), for a signal the program ignores (``SIG_IGN``, as a shell gives ``SIGINT``
to a command started with ``&``: it stays ignored), or where the current handler was not installed from
Python (``signal.getsignal`` gives None, and it could not be put back). Standard library only: the
command line imports it without torch.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["replace_handler", "handling"]


def replace_handler(signum: int, handler: Any) -> Any:
    """Install ``handler`` for ``signum`` and return the one it replaces, to be put back after.

    Nothing changes (and None is returned) off the main thread, for an ignored signal, or where the
    current handler was not installed from Python.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signum)
    if current is None or current == signal.SIG_IGN:
        return None
    return signal.signal(signum, handler)


@contextmanager
def handling(handlers: dict[int, Any]) -> Iterator[None]:
    """Install each ``{signum: handler}`` (by :func:`replace_handler`) for the block, then put the old ones back.

    The old handlers are put back also when the block raises, whatever the block did to them meanwhile.
    """
    replaced = {signum: replace_handler(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            if previous is not None:
                signal.signal(signum, previous)
