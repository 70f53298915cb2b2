"""What a forked child needs to run the codec: fresh locks, and torch on one thread.

``os.fork`` copies a process with only the calling thread. A lock that another thread held at that
moment stays held in the child for ever, and GNU OpenMP's worker threads (torch's intra-op pool) are
gone there too. ``multiprocessing`` forks by default on Linux, from whatever thread calls it, so both
happen to ordinary users: a pool started while another thread builds the first engine (about a second
at the first encode or decode) would give a child whose first decode waits for ever.

Every lock of the codec is a :class:`ForkSafeLock`, and one at-fork hook, registered here, gives the
child new unlocked ones and sets torch to one thread (its parallel ops would wait for the lost
OpenMP workers; PyTorch's DataLoader does the same for its workers). Decoded pixels do not depend on
the thread count (tests/test_concurrency.py). A child that raises torch's thread count again hangs
in its first parallel op: use the ``spawn`` or ``forkserver`` start method then. Standard library only.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref

__all__ = ["ForkSafeLock"]

_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A non-reentrant lock that a forked child gets back unlocked (usable as ``with lock:``).

    Example:
        >>> lock = ForkSafeLock()
        >>> with lock:
        ...     lock.locked()
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def locked(self) -> bool:
        """Whether some thread holds the lock."""
        return self._lock.locked()

    def _renew(self) -> None:
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._renew()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
