"""What a GPU training call (:mod:`pillow_jac.training.gpu_session`) says: its log lines and its JSON report.

The report (:func:`session_report`) gives steps, crops per second, seconds per step, the peak GPU memory
and the achieved FLOP/s as a share of the chip's bf16 dense peak (``--peak-tflops``: 989 TFLOP/s for an
H200). The model's multiply-adds per pixel are counted by forward hooks on a small input
(:func:`forward_macs_per_pixel`, about 102,000 for N=128, M=192); training is counted as three forward
passes (forward, and backward for the inputs and for the weights); ``--profile-steps`` adds where a
step's time goes (:mod:`~.step_profile`), from steps outside the timing.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING

import torch

from ..model.complexity import macs_per_pixel_by_network
from ..model.mbt2018 import ModelConfig

if TYPE_CHECKING:
    from .gpu_session import Session

__all__ = ["forward_macs_per_pixel", "log_line", "session_report", "text_of"]


def forward_macs_per_pixel(config: ModelConfig) -> float:
    """Multiply-adds of one training forward pass of ``config``'s model, per input pixel.

    Every network's convolutions and GDN, the masked context convolution at its full window (as
    training computes it): :func:`pillow_jac.model.complexity.macs_per_pixel_by_network`, summed.

    Example:
        >>> round(forward_macs_per_pixel(ModelConfig(N=8, M=12)), 2)
        680.75
    """
    return sum(macs_per_pixel_by_network(config).values())


def log_line(message: str) -> None:
    """Print one line of the call's log, flushed (a reply collects the output of a call cut short)."""
    print(f"[gpu_session] {message}", flush=True)


def _profile_summary(session: Session, s_per_step: float | None) -> dict | None:
    summary = session.profile.summary() if session.profile else None
    if summary is not None and summary.get("device_s_per_step") is not None and s_per_step:
        summary = {**summary, "device_share_of_timed_step": round(summary["device_s_per_step"] / s_per_step, 4)}
    return summary


def session_report(session: Session, pieces: list[str]) -> dict:
    """The JSON report of ``session``: progress, throughput, memory and the share of the FLOP/s peak."""
    args = session.args
    mark = session.mark
    measured_steps = session.step - mark[1] if mark else 0
    measured_s = session.loop_end - mark[0] if mark else 0.0
    crops_per_s = args.batch * measured_steps / measured_s if measured_steps and measured_s > 0 else None
    flops_per_crop = 3 * 2 * session.macs * args.crop**2
    achieved = flops_per_crop * crops_per_s if crops_per_s else None
    peak = args.peak_tflops * 1e12
    return {
        "step_start": session.step_start,
        "step_end": session.step,
        "steps": session.step - session.step_start,
        "stop": session.stop or "running",
        "signal": session.signum,
        "pieces_step": session.pieces_step,
        "error": session.error,
        "device": torch.cuda.get_device_name(session.device) if session.cuda else "cpu",
        "torch": torch.__version__,
        "config": session.config.to_dict(),
        "dry_run": args.dry_run,
        "batch": args.batch,
        "crop": args.crop,
        "lr": session.lr,
        "decay_last": args.decay_last,
        "bf16": args.bf16,
        "channels_last": True,
        "compile": {**session.compile_info, "used": session.compiled},
        "data": session.data_info,
        "seconds": {
            "setup": round(session.loop_start - session.started, 2),
            "train": round(session.loop_end - session.loop_start, 2),
            "first_steps": round(mark[0] - session.loop_start, 2) if mark else None,
            "total": round(time.monotonic() - session.started, 2),
        },
        "measured_steps": measured_steps,
        "crops_per_s": crops_per_s,
        "s_per_step": measured_s / measured_steps if measured_steps else None,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(session.device) if session.cuda else None,
        "macs_per_pixel_forward": session.macs,
        "flops_per_crop_train": flops_per_crop,
        "achieved_flops": achieved,
        "peak_flops": peak,
        "share_of_peak": achieved / peak if achieved else None,
        "profile": _profile_summary(session, measured_s / measured_steps if measured_steps else None),
        "last": {k: v if math.isfinite(v) else None for k, v in session.last.items()},
        "pieces": pieces,
    }


def text_of(report: dict) -> str:
    """The report as the JSON text written beside the pieces."""
    return json.dumps(report, indent=1)
