"""The ``jac`` command line tool (also ``python -m pillow_jac``).

Commands::

    jac encode IN OUT.jac [-q Q | --size BYTES | --psnr DB] [-e E] [--model M] [--preview] [--strip] [--force]
              [--device D]
    jac decode IN.jac OUT [--force] [--device D]                    .jac -> any format Pillow writes (by extension)
    (encode, decode and batch also take --max-image-pixels N: Pillow's decompression-bomb limit)
    jac info FILE.jac... [--json]                                   header, sizes, decoder needed; never imports torch
    jac models [--json]                                             installed decoder generations; never imports torch
    jac batch IN_DIR OUT_DIR --to jac|png [-q Q | --size BYTES | --psnr DB] [--preview] [--strip] [--model M] [-j N]
              [-r] [--no-resume] [--device D] [--ray [ADDRESS] [--worker-cpus N] [--worker-gpus F]]

``--size 50k`` and ``--psnr 38`` choose the quality per image, as cwebp's ``-size`` and ``-psnr`` do
(:mod:`pillow_jac.targets`): the largest whose file fits, or the smallest that reaches the PSNR.

Exit status: 0 on success, 1 on any error (one line ``jac: error: ...`` on stderr, no traceback),
2 for command line usage errors (argparse's convention), 130 when interrupted, 143 when terminated.

Outputs are encoded in memory, then written to a temporary file next to the target and renamed into
place, so a failed, interrupted or terminated command never leaves a partial or truncated output file.
Two outputs are written in place instead, as Pillow's own writers write every file (a replacement would
lose something): a file with other hard links, and a writable file in a folder that takes no new file
(:func:`pillow_jac.files.write_file`; the space is reserved first where the file system can).
An output is never the input file (also through another path or a link), and ``encode`` writes only
names ending in ``.jac`` unless ``--force`` is given. ``-`` reads standard input or writes standard
output (:mod:`pillow_jac.conversion`).

Example:
    >>> args = build_parser().parse_args(["encode", "photo.png", "photo.jac", "-q", "2.5"])
    >>> args.command, args.quality
    ('encode', 2.5)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .cli_args import PILLOWS_PIXEL_LIMIT, build_parser
from .cli_info import print_out, show_info
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY
from .conversion import PROG, ConversionError, decode_file, encode_file, one_line, show_warning, source_name
from .signal_handlers import handling

__all__ = ["main", "console", "build_parser"]


class CliError(ConversionError):
    """An error reported as one line on stderr, with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jac`` command line; return the exit status.

    Any error, whatever its type, is reported in one line on stderr, without a traceback; so are
    warnings (``jac: warning: ...``).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    SIGTERM (``kill``, ``timeout``, ``docker stop``) stops it as Ctrl-C does: the file being written is
    removed, and the status is 143 (128 + SIGTERM), as if the signal had ended the process.

    Returns:
        0 on success, 1 on error, 130 when interrupted, 143 when terminated. Usage errors raise
        ``SystemExit(2)`` from argparse.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    usage_error = getattr(args, "usage_error", parser.error)
    if hasattr(args, "effort"):  # the encoder's options (encode, batch)
        options = {"-q": args.quality, "-e": args.effort, "--size": args.size, "--psnr": args.psnr,
                   "--preview": args.preview or None, "--strip": args.strip or None, "--model": args.model}  # fmt: skip
        given = [flag for flag, value in options.items() if value is not None]
        if args.command == "batch" and args.to == "png" and given:
            usage_error(f"{', '.join(given)}: options of --to jac, not of --to png")
        if args.command == "batch" and args.to == "jac" and args.force:
            usage_error("--force: an option of --to png (a .jac made from another file is never replaced)")
        args.quality = DEFAULT_QUALITY if args.quality is None else args.quality
        args.effort = DEFAULT_EFFORT if args.effort is None else args.effort
    if args.command == "batch" and args.ray is None:
        for given, flag in ((args.worker_cpus, "--worker-cpus"), (args.worker_gpus is not None, "--worker-gpus")):
            if given:
                usage_error(f"{flag} is an option of --ray")
    terminated: list[int] = []  # a SIGTERM came, whatever a library made of the exception it raised

    def terminate(signum: int, frame: Any) -> None:
        terminated.append(signum)
        raise _Terminated

    limit = getattr(args, "max_image_pixels", PILLOWS_PIXEL_LIMIT)
    with handling({signal.SIGTERM: terminate}), _pixel_limit_set(limit):  # the caller's, back after
        try:
            with warnings.catch_warnings():
                # an encode's warnings are of its source (Pillow's reading it); a decode's of its output
                converting = source_name(args.input) if args.command == "encode" else None
                warnings.showwarning = functools.partial(show_warning, source=converting)
                _run(args)
            if sys.stdout is not None:
                sys.stdout.flush()  # here, where a reader that went away is handled, not at exit
        except BrokenPipeError:  # the reader of "-" went away (| head): stop quietly, as other filters do
            _silence_stdout()
            return 128 + getattr(signal, "SIGPIPE", 13)
        except KeyboardInterrupt:  # Ctrl-C, or a SIGTERM (its _Terminated, or what Ray's wait raised in its place)
            if terminated:
                print(f"{PROG}: terminated", file=sys.stderr)
                return 128 + signal.SIGTERM
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except SystemExit:
            raise
        except BaseException as e:  # one line, no traceback
            print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
            return 1
        return 0


def console() -> int:
    """The ``jac`` command and ``python -m pillow_jac``: :func:`main`, then the process exits with its status.

    Interrupted (130) or terminated (143), the process ignores further Ctrl-Cs on its way out: one pressed
    again while the interpreter joins what ``jac batch -j N``'s pool left would print a traceback below the
    one-line message.
    """
    status = main()
    if status in (130, 128 + signal.SIGTERM) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


@contextlib.contextmanager
def _pixel_limit_set(limit: Any) -> Iterator[None]:
    """Pillow's pixel limit set to ``limit`` (unless :data:`PILLOWS_PIXEL_LIMIT`) for the command, then the caller's.

    Batch workers take the limit from this process (:func:`pillow_jac.local_batch.run_batch`, the Ray workers of
    :func:`pillow_jac.distributed.convert`).
    """
    before = Image.MAX_IMAGE_PIXELS
    if limit is not PILLOWS_PIXEL_LIMIT:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds (and cleans up) as Ctrl-C does."""


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _run(args: argparse.Namespace) -> None:
    if args.command == "encode":
        encode_file(
            args.input,
            args.output,
            args.quality,
            effort=args.effort,
            strip=args.strip,
            device=args.device,
            force=args.force,
            model=args.model,
            target_size=args.size,
            target_psnr=args.psnr,
            preview=args.preview,
        )
    elif args.command == "decode":
        decode_file(args.input, args.output, device=args.device, force=args.force)
    elif args.command == "models":
        import pillow_jac

        from .generations import generation_of, models_path_problems

        for problem in models_path_problems():
            warnings.warn(problem, stacklevel=1)
        gens = pillow_jac.models()
        chosen = os.environ.get("JAC_WEIGHTS")
        named = generation_of(Path(chosen)) if chosen else None
        if chosen and named is None:
            why = "no such file" if not os.path.exists(chosen) else "not a weights file, or another's lookalike"
            warnings.warn(f"JAC_WEIGHTS={chosen}: {why}; encoding fails until it names a weights file", stacklevel=1)
        elif named is not None and not named.can_encode:
            warnings.warn(f"JAC_WEIGHTS={chosen} is a decoder-only file: the newest full file encodes", stacklevel=1)
        if args.json:
            keys = ("model_id", "release", "can_encode", "role", "size")
            rows = [{**{k: getattr(g, k) for k in keys}, "weights_hash": g.weights_hash.hex(), "path": str(g.path)}
                    for g in gens]  # fmt: skip
            print_out(json.dumps(rows, indent=2))
        else:
            print_out("\n".join(g.describe() for g in gens) or "no decoder generation is installed")
    elif args.command == "info":
        show_info(args.inputs, args.json)
    elif args.command == "batch":
        if args.ray is not None:
            _run_ray_batch(args)
            return
        from .local_batch import run_batch

        done, skipped, failed = run_batch(
            args.in_dir,
            args.out_dir,
            args.to,
            quality=args.quality,
            effort=args.effort,
            workers=args.jobs or 1,
            recursive=args.recursive,
            device=args.device,
            progress=not args.quiet,
            target_size=args.size,
            target_psnr=args.psnr,
            preview=args.preview,
            force=args.force,
            resume=args.resume,
            strip=args.strip,
            model=args.model,
        )
        if not args.quiet and skipped:
            print(f"{PROG}: {skipped} files already done, skipped", file=sys.stderr)
        if failed:
            raise CliError(f"{failed} of {done + skipped + failed} files failed")


def _run_ray_batch(args: argparse.Namespace) -> None:
    """``jac batch --ray``: :func:`pillow_jac.distributed.convert` with the batch's options and output."""
    from . import distributed

    report = distributed.convert(
        args.in_dir,
        args.out_dir,
        args.to,
        quality=None if args.size is not None or args.psnr is not None else args.quality,  # a target instead
        effort=args.effort,
        recursive=args.recursive,
        address=None if args.ray == "local" else args.ray,
        workers=args.jobs,
        device=args.device,
        progress=not args.quiet,
        target_size=args.size,
        target_psnr=args.psnr,
        preview=args.preview,
        strip=args.strip,
        model=args.model,
        resume=args.resume,
        force=args.force,
        num_cpus=args.worker_cpus or 1,
        num_gpus=args.worker_gpus,
    )
    if not args.quiet and report.skipped:
        print(f"{PROG}: {report.skipped} files already done, skipped", file=sys.stderr)
    if report.failed:
        total = report.done + report.skipped + len(report.failed)
        raise CliError(f"{len(report.failed)} of {total} files failed")


if __name__ == "__main__":  # python -m pillow_jac.cli, as python -m pillow_jac
    sys.exit(console())
