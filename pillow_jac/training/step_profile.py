"""Where a training step's time goes on the device: a short ``torch.profiler`` window of a GPU call.

:mod:`pillow_jac.training.gpu_session` runs ``--profile-steps`` steps under the profiler right after its
first (unmeasured) steps, then starts its timing, so the report's throughput leaves the profiled steps
out. The summary (:meth:`StepProfile.summary`) says whether the step is bound by the device or by the
host: the share of the window's wall time in which device kernels and copies ran (``device_busy_share``;
one stream, so they do not overlap), their number per step (each a launch from the host), the wall
time per step, and the operators that took the most device time (the most CPU time on a CPU dry run).
The profiler's own host work lowers ``device_busy_share``; the report adds ``device_share_of_timed_step``,
the device time of a profiled step over the wall time of an unprofiled one. ``top`` lists operators and
the kernels they launch side by side, so its rows are not to be summed. A profiler that fails ends the
window with its error as the summary (``{"error": ...}``): the training goes on.
"""

from __future__ import annotations

import contextlib
import time

import torch

__all__ = ["StepProfile"]

#: operators listed in the summary
TOP = 12
#: what :attr:`StepProfile.profiler` holds after an error: not None, so the window is not started again
_FAILED = object()


def _device_us(event) -> float:
    """An averaged event's own device time in microseconds, across torch versions' names for it."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


class StepProfile:
    """Profile ``steps`` training steps: :meth:`start`, then :meth:`step_done` after each; then :meth:`summary`."""

    def __init__(self, steps: int, cuda: bool):
        self.steps, self.cuda = steps, cuda
        self.done = 0
        self.profiler: torch.profiler.profile | None = None
        self.started = self.ended = 0.0
        self.result: dict | None = None

    def start(self) -> None:
        """Begin the window (after the device has finished the steps queued before it)."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        try:
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        except Exception as exc:  # the profile is a measurement: the training must not end for it
            self._fail(exc)
        self.started = time.monotonic()

    def step_done(self) -> bool:
        """Count a finished step; after the last one stop the profiler and summarise. True when it stopped."""
        if self.result is not None:  # ended by an error
            return True
        self.done += 1
        if self.done < self.steps:
            return False
        try:
            if self.cuda:
                torch.cuda.synchronize()
            self.ended = time.monotonic()
            self.profiler.__exit__(None, None, None)
            self.result = self._summarise()
        except Exception as exc:
            self._fail(exc)
        return True

    def _fail(self, exc: Exception) -> None:
        """End the window on a profiler error: the error is the summary, and the profiler is let go."""
        self.result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if self.profiler is not None:
            with contextlib.suppress(Exception):
                self.profiler.__exit__(None, None, None)
        self.profiler = _FAILED

    def _summarise(self) -> dict:
        wall_us = (self.ended - self.started) * 1e6
        averages = self.profiler.key_averages()
        device_events = []
        if self.cuda:
            device_events = [e for e in self.profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        device_us = sum(e.time_range.elapsed_us() for e in device_events)
        key = _device_us if self.cuda else (lambda e: float(e.self_cpu_time_total))
        top = sorted(averages, key=key, reverse=True)[:TOP]
        return {
            "steps": self.done,
            "wall_s_per_step": round(wall_us / 1e6 / self.done, 5),
            "device_busy_share": round(device_us / wall_us, 4) if self.cuda and wall_us > 0 else None,
            "device_s_per_step": round(device_us / 1e6 / self.done, 5) if self.cuda else None,
            "device_events_per_step": len(device_events) / self.done if self.cuda else None,
            "ranked_by": "device time" if self.cuda else "CPU time",
            "top": [
                {"op": e.key[:80], "calls": int(e.count), "ms_per_step": round(key(e) / 1e3 / self.done, 4)}
                for e in top
            ],
        }

    def close(self) -> None:
        """Stop a window that the run's end cut short (no summary then)."""
        if self.profiler is not None and self.result is None:
            with contextlib.suppress(Exception):
                self.profiler.__exit__(None, None, None)
            self.profiler = None

    def summary(self) -> dict | None:
        """The summary once the window is over, else None (a call that ended inside it)."""
        return self.result
