"""This process's peak resident memory, as the benchmarks and the Ray workers report it.

Standard library only, and :func:`peak_rss_bytes` imports what it needs itself: the speed benchmark copies
its source into the CompressAI child it runs under another interpreter (:mod:`pillow_jac.bench.isolated`).
"""

from __future__ import annotations

__all__ = ["peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (0 where the platform does not say).

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` survives ``exec`` and so
    starts at the parent's peak (a parent that imported torch would make every child look 250 MiB large).
    Elsewhere ``ru_maxrss`` (KiB on Linux and BSD, bytes on macOS).
    """
    import sys

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024
