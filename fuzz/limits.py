"""The bounds every fuzz input must stay within, and what enforces them.

:class:`Limits` holds the bounds (time per oracle call and per wavefront step, peak RSS, Pillow's pixel
limit while fuzzing, the watchdog's limit); :class:`Finding` and its subclasses :class:`Overrun` and
:class:`Timeout` are what the harness raises when an input breaks a rule. :class:`_Budget` measures the
time and peak RSS (:func:`reset_peak_rss`, :func:`peak_rss_mb`) of one oracle call, and
:func:`watchdog` stops an input that hangs (``SIGALRM``, with a ``faulthandler`` exit as a backstop).
"""

from __future__ import annotations

import contextlib
import faulthandler
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Finding(AssertionError):
    """An input broke the harness's rules: a forbidden exception, a time or memory overrun, disagreement."""


class Overrun(Finding):
    """An input took too long or too much memory (re-checked once: a busy machine can cause it)."""


class Timeout(Finding):
    """An input ran past the :func:`watchdog`'s limit: it was stopped, not re-checked."""


class _Alarm(BaseException):
    """Raised by the :func:`watchdog`'s signal handler; not an ``Exception``, so ``except Exception`` lets it by."""


@dataclass
class Limits:
    """Bounds every input must stay within.

    Decoding time grows with the number of wavefront steps ``3 (Hy - 1) + Wy`` of the latent (one
    batched step each, CODING.md section 1.3), which for thin images is far more than the pixel count
    suggests (a 1 x 18432 image has 1161 steps, a 135 x 136 one 45: latents are padded to multiples of 64
    pixels), so the time bound of a decode is ``seconds + seconds_per_step * steps`` for each decoder:
    linear in the declared size, so that only super-linear behaviour (a hang) is a finding.

    Attributes:
        seconds: wall-clock time of one oracle call, before the per-step allowance.
        seconds_per_step: allowance per wavefront step and decoder (~3-10 ms measured on 1 busy core).
        rss_mb: peak resident memory of the process while one input runs, in MiB.
        max_pixels: ``Image.MAX_IMAGE_PIXELS`` while fuzzing (files above twice this are refused).
        timeout: the :func:`watchdog`'s limit on one input of the random engine, ``replay`` and
            ``distill``, in seconds; ``None``: three times the input's time bounds
            (:func:`~fuzz.oracle.time_limit`).
    """

    seconds: float = 5.0
    seconds_per_step: float = 0.015
    rss_mb: float = 3072.0
    max_pixels: int = 96 * 96
    timeout: float | None = None


def reset_peak_rss() -> None:
    """Reset the peak RSS that :func:`peak_rss_mb` reports (Linux; elsewhere a no-op)."""
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since the last reset where Linux allows it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Budget:
    """Time and memory bound of one oracle call; raises :class:`Finding` on overrun."""

    def __init__(self, limits: Limits, what: str, seconds: float | None = None) -> None:
        self.limits, self.what = limits, what
        self.bound = limits.seconds if seconds is None else seconds

    def __enter__(self) -> _Budget:
        reset_peak_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        self.rss = peak_rss_mb()
        if exc_type is None or issubclass(exc_type, Exception):
            if self.seconds > self.bound:
                raise Overrun(f"{self.what}: took {self.seconds:.1f} s (bound {self.bound:.1f} s)") from exc
            if self.rss > self.limits.rss_mb:
                raise Overrun(f"{self.what}: peak RSS {self.rss:.0f} MiB (bound {self.limits.rss_mb:.0f})") from exc


@contextlib.contextmanager
def watchdog(seconds: float | None) -> Iterator[None]:
    """Stop the block with :class:`Timeout` once it has run ``seconds`` (POSIX main thread; elsewhere no limit).

    ``SIGALRM`` raises an exception in the block after ``seconds``, and again every second until the block
    ends (code under test may swallow one); the block then raises :class:`Timeout` whatever it raised or
    returned. Native code that never returns to Python does not see the signal: after ``2 * seconds + 10``
    s faulthandler prints the stack of every thread and ends the process with status 1. Not for the
    ``atheris`` engine: libFuzzer's ``-timeout`` uses ``SIGALRM`` itself.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"armed": True, "fired": False}

    def alarm(signum: int, frame: Any) -> None:
        if state["armed"]:
            state["fired"] = True
            raise _Alarm

    def disarm() -> None:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if backstop:
            faulthandler.cancel_dump_traceback_later()

    previous = signal.signal(signal.SIGALRM, alarm) or signal.SIG_DFL  # None: a handler not set from Python
    backstop = False
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no stderr with a file descriptor
        faulthandler.dump_traceback_later(2 * seconds + 10, exit=True, file=sys.__stderr__)
        backstop = True
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        try:
            yield
        finally:
            disarm()
    except _Alarm:
        disarm()  # again, should the alarm have come before the first one finished
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        if not state["fired"]:
            raise
    if state["fired"]:
        stopped = time.perf_counter() - start
        raise Timeout(f"timeout: still running after {seconds:.3g} s, stopped after {stopped:.3g} s")
