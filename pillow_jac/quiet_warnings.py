"""Warnings ignored for a moment, one thread at a time.

``warnings.catch_warnings`` saves the process's filter list on entry and puts it back on exit. Two such
blocks in two threads that overlap put back each other's lists: the filter one of them added stays for
good, and every later warning of the process is ignored. The codec's own short blocks (reading a header
back, a trial save of one pixel) therefore run under one lock (:func:`ignoring`), so they never overlap one
another. Only the standard library is imported here.

Example:
    >>> import warnings
    >>> before = list(warnings.filters)
    >>> with ignoring():
    ...     warnings.warn("not shown")
    >>> warnings.filters == before
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .forksafe import fork_safe_lock

__all__ = ["ignoring"]

_FILTERS_LOCK = fork_safe_lock()


@contextmanager
def ignoring(category: type[Warning] = Warning) -> Iterator[None]:
    """Ignore warnings of ``category`` inside the block, the filter list saved and put back under one lock."""
    with _FILTERS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield
