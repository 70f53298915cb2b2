"""The Ray path's worker actor and what it reports (:func:`pillow_jac.distributed.convert`).

:class:`Worker` loads the model once when it starts, then converts one file per call with the function ``jac
batch`` runs for each file (:func:`pillow_jac.conversion.convert_noting_warnings`) and never raises: each call
returns a :class:`FileResult`, which the driver adds up in a :class:`Report`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .conversion import convert_noting_warnings, one_line
from .peak_memory import peak_rss_bytes
from .resume_checks import done_before

__all__ = ["FileResult", "Report", "Worker"]


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    Attributes:
        src: the input path.
        dst: the output path.
        status: ``"done"``, ``"skipped"`` (the output was already done) or ``"failed"``.
        error: one line saying why, for a failed file; else None.
        in_bytes: size of the input (0 unless done).
        out_bytes: size of the output written (0 unless done).
        seconds: time the worker spent on the file.
        node: host name of the worker's machine.
        pid: the worker's process id.
        warnings: the first line of each warning raised while converting the file.
        made: the output's size and modification time as the worker wrote it (a done file's; else None), which
            the driver notes in the output folder's record (:func:`pillow_jac.source_record.note_made`).
    """

    src: str
    dst: str
    status: str
    error: str | None = None
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    node: str = ""
    pid: int = 0
    warnings: tuple[str, ...] = ()
    made: dict[str, int] | None = None


@dataclass
class Report:
    """The outcome of :func:`pillow_jac.distributed.convert`.

    Attributes:
        done: files converted.
        skipped: files whose output was already done (``resume``).
        failed: the files that failed, with their errors, in the order they came back.
        in_bytes: bytes read by the converted files.
        out_bytes: bytes written.
        seconds: wall time from the first worker's start (the first file submitted) to the last result.
        workers: one dict per worker that started and lived to the end (one still starting when the files ran
            out is not listed): ``node``, ``pid``, ``load_seconds`` (start-up including
            the model load), ``rss_loaded_bytes`` (the worker's peak resident memory once loaded) and
            ``rss_peak_bytes`` (its peak after its last file); memory is 0 where the platform does not say.
    """

    done: int = 0
    skipped: int = 0
    failed: list[FileResult] = field(default_factory=list)
    in_bytes: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Files converted per second of :attr:`seconds` (skipped files do not count)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: FileResult) -> None:
        """Count one file's result."""
        if result.status == "done":
            self.done += 1
            self.in_bytes += result.in_bytes
            self.out_bytes += result.out_bytes
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append(result)


class Worker:
    """A Ray actor that loads the model once, then converts files one per call.

    Args:
        to: ``"jac"`` or ``"png"``.
        device: torch device for the model (None: ``JAC_DEVICE``, else cpu).
        threads: torch threads (the worker's CPUs).
        pixel_limit: ``PIL.Image.MAX_IMAGE_PIXELS`` for the worker's files: the driver's (``jac batch --ray
            --max-image-pixels``), which a worker process would not have otherwise.
    """

    def __init__(self, to: str, device: str | None, threads: int, pixel_limit: float | None) -> None:
        start = time.perf_counter()
        import numpy as np

        from . import codec
        from .openmp_wait import passive_unless_chosen

        with passive_unless_chosen():  # pillow_jac/openmp_wait.py
            import torch

        torch.set_num_threads(max(1, threads))
        Image.MAX_IMAGE_PIXELS = None  # the warm-up's 64x64 image, whatever the batch's limit
        data = codec.encode(np.zeros((64, 64, 3), np.uint8), device=device)  # loads the newest generation
        if to == "png":
            codec.decode(data, device=device)
        Image.MAX_IMAGE_PIXELS = pixel_limit
        self._info = {
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "load_seconds": time.perf_counter() - start,
            "rss_loaded_bytes": peak_rss_bytes(),
        }

    def info(self) -> dict[str, Any]:
        """The worker's ``node``, ``pid``, ``load_seconds`` and memory (see :attr:`Report.workers`)."""
        return {**self._info, "rss_peak_bytes": peak_rss_bytes()}

    def convert(
        self,
        src: str,
        dst: str,
        to: str,
        quality: float,
        effort: int,
        device: str | None,
        resume: bool,
        extra: dict | None = None,
        force: bool = False,
        unrecorded: str | None = None,
        vouched: dict | None = None,
    ) -> FileResult:
        """Convert one file as ``jac batch`` does; never raises (a failure is a ``"failed"`` result).

        ``extra``: the batch's ``target_size``, ``target_psnr`` and ``preview``; ``force``: as
        :func:`pillow_jac.conversion.convert_file`'s. ``unrecorded``: why the driver could not note the file
        in the output folder's record; then only a file already done is taken (skipped), and no output written.
        ``vouched``: what that record vouches ``dst`` was made from
        (:meth:`pillow_jac.source_record.SourceRecord.vouched`), compared here with the files as this worker
        finds them (:func:`pillow_jac.resume_checks.is_done`): a source saved again after the driver sent it
        is not taken for the one the output was made from.
        """
        start = time.perf_counter()
        where = {"node": self._info["node"], "pid": self._info["pid"]}
        extra = extra or {}
        try:
            done = resume and done_before(src, dst, to, quality, extra, vouched)
        except Exception as e:
            return FileResult(src, dst, "failed", one_line(e), **where)
        if done:
            return FileResult(src, dst, "skipped", **where)
        if unrecorded is not None:  # an output no record holds would be refused by every later batch
            return FileResult(src, dst, "failed", f"not converted: {unrecorded}", **where)
        result, notes = convert_noting_warnings(src, dst, to, quality, effort, device, extra, force=force)
        seconds = time.perf_counter() - start
        if isinstance(result, Exception):
            return FileResult(src, dst, "failed", one_line(result), seconds=seconds, warnings=tuple(notes), **where)
        in_bytes, out_bytes, made = result
        return FileResult(
            src, dst, "done", None, in_bytes, out_bytes, seconds, warnings=tuple(notes), made=made, **where
        )
