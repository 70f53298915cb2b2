"""The codec's warning-filter blocks, one thread at a time and never across a fork.

``warnings.catch_warnings`` saves the process's filter list on entry and puts it back on exit. Two such
blocks in two threads that overlap put back each other's lists: the filter one of them added stays for
good, and every later warning of the process is ignored (or shown that should not be). The codec's own
blocks (reading a header back, a one-pixel trial save, a conversion's recorded warnings) therefore hold
one lock, so they never overlap one another; the short ones (:func:`ignoring`) also hold off forks
(:func:`pillow_jac.forksafe.setting_up`), so that a child is not copied with an "ignore" in place that
nothing would remove. A recording block can last a whole conversion, so forks do not wait for it. A
caller's own ``catch_warnings`` in another thread can still overlap one of them: that race is the
standard library's. Only the standard library and :mod:`pillow_jac.forksafe` are imported here (and Pillow,
already imported by then, when :func:`warn_at_caller` warns about a file).

Example:
    >>> import warnings
    >>> before = list(warnings.filters)
    >>> with ignoring():
    ...     warnings.warn("not shown")
    >>> warnings.filters == before
    True
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .forksafe import fork_safe_lock, setting_up

__all__ = ["first_line", "ignoring", "recording", "warn_at_caller"]

#: held by every block of this module; taken before setting_up, so that a recording block that reaches an
#: ignoring one, and an ignoring one in another thread, cannot each hold the lock the other waits for
_FILTERS_LOCK = fork_safe_lock()


@contextmanager
def ignoring(category: type[Warning] = Warning) -> Iterator[None]:
    """Ignore warnings of ``category`` inside the block."""
    with _FILTERS_LOCK, setting_up(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


@contextmanager
def recording(always: bool = False) -> Iterator[list[warnings.WarningMessage]]:
    """Record the block's warnings in the list it gives, instead of showing them; every one with ``always``."""
    with _FILTERS_LOCK, warnings.catch_warnings(record=True) as caught:
        if always:
            warnings.simplefilter("always")
        yield caught


def first_line(text: str) -> str:
    """The first line of a message (empty if there is none), as a warning or a one-line report quotes it."""
    text = text.strip()
    return text.splitlines()[0] if text else ""


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributed to the first caller outside pillow_jac, Pillow and imageio: the user's line."""
    import PIL  # the plugin's callers have imported it

    packages = [PIL, sys.modules.get("imageio")]  # imageio only where it is imported: it calls Pillow for users
    library = (os.path.dirname(__file__) + os.sep,) + tuple(
        os.path.dirname(p.__file__) + os.sep for p in packages if getattr(p, "__file__", None)
    )
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, stacklevel=2, skip_file_prefixes=library)
        return
    frame, level = sys._getframe(1), 2  # the caller of this function is stacklevel 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(library):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
