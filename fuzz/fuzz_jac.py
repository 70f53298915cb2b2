"""Fuzz harness for the ``.jac`` reader: the container parser and the full decode path.

Targets (``--target``):

* ``container``: :func:`pillow_jac.container.parse`, :func:`~pillow_jac.container.read_header` and
  :func:`~pillow_jac.container.read_file` on a non-seekable stream that returns a few bytes per read,
  and ``Image.open`` (header and chunks only, no pixels) with ``draft()``, which decodes the preview
  (``prvw``, SPEC.md section 5.4) with Pillow when it can stand for the image. Thousands of inputs a second.
* ``decode``: all of the above, then :func:`pillow_jac.codec.decode`, ``Image.open(...).load()``,
  ``verify()``, ``ImageFile.Parser``, for a file with a preview ``thumbnail()``, ``codec.decode_batch`` of
  the file alone, ``codec.decode_symbols``, ``load()`` under ``ImageFile.LOAD_TRUNCATED_IMAGES`` and ``jac
  info`` (``pillow_jac.cli.main``), for the input as it is and with its ``model_id``/``weights_hash``
  re-stamped to the installed weights (so that inputs reach the range decoder and the networks whatever
  weights are installed). A file that decodes runs one of ``decode_batch``, ``decode_symbols`` and the load
  under the flag (:func:`~fuzz.read_paths.rotated_check`): each costs another whole decode.

The oracle (:func:`check_container`, :func:`check_decode`) raises :class:`Finding` when

* an exception escapes that a Pillow user does not expect of a damaged file (only ``OSError``, ``SyntaxError``,
  ``ValueError``, ``MemoryError`` and the decompression-bomb error/warning may; ``PIL.UnidentifiedImageError``
  is an ``OSError``; Pillow's own fuzzers also allow ``NotImplementedError`` and ``OverflowError``), a
  ``BaseException`` such as constriction's ``PanicException`` included;
* an input takes longer than :attr:`Limits.seconds` or raises the peak RSS above
  :attr:`Limits.rss_mb` (``MemoryError`` counts as a memory finding too);
* the entry points disagree: ``parse`` accepts what the streaming reader or ``Image.open`` rejects
  (or the other way round), ``draft()`` fails on a file ``Image.open`` accepted or uses a preview
  SPEC.md section 5.4 rules out,
  ``codec.decode`` and ``Image.open(...).load()`` disagree on the pixels, ``thumbnail()`` fails where
  ``load()`` succeeds, or the decoded shape differs from the header;
* ``codec.decode_batch`` of the file alone or ``codec.decode_symbols`` disagrees with ``codec.decode``
  (success, pixels, the class of the error); ``load()`` under ``LOAD_TRUNCATED_IMAGES`` does what the
  plugin's docstring says (a whole file as without the flag, a damaged ancillary chunk or end skipped with
  a warning each, nothing else recovered); ``jac info`` fails on a file ``parse`` accepts, or reports
  another error than ``parse``'s.

While fuzzing, ``Image.MAX_IMAGE_PIXELS`` is lowered to :attr:`Limits.max_pixels` (default 96 x 96),
so that forged dimensions exercise the size checks but nothing decodes more than ~18k pixels;
``codec.decode`` honours the same limit (twice ``MAX_IMAGE_PIXELS``, as Pillow's error).

Engines: ``atheris`` (coverage-guided libFuzzer, with the JAC-aware :func:`mutate` as custom
mutator; ``pip install atheris``) and ``random`` (a plain mutation loop over the same mutators, nothing to
install). The
hypothesis-driven tests in ``tests/test_fuzz.py`` reuse the mutators and the oracle. The ``random``
engine, ``replay`` and ``distill`` run each input under a :func:`watchdog` (a hang becomes a
``timeout`` finding) and write it to :data:`CURRENT_INPUT` in their output folder before running it,
so an input that kills the process is on disk afterwards.

This module is the command line (:func:`main`); the harness lives in the modules next to it, and this
one re-exports their public names, so ``from fuzz import fuzz_jac`` gives all of it:

* ``fuzz/chunks.py``: the chunk-level view of a file (:func:`split`, :func:`join`, the JHDR fields,
  :func:`restamp`);
* ``fuzz/mutators.py``: the mutators (:data:`MUTATORS`) and :func:`mutate`;
* ``fuzz/limits.py``: :class:`Limits`, :class:`Finding` and its kinds, the time and memory budget of an
  oracle call and the :func:`watchdog`;
* ``fuzz/calls.py``: the modules under test (:func:`lib`) and running one reader on an input (``call``);
* ``fuzz/oracle.py``: :func:`check_container`, :func:`check_decode` and :func:`run_one`;
* ``fuzz/read_paths.py``: the rules of ``decode_batch``, ``decode_symbols``, ``LOAD_TRUNCATED_IMAGES`` and
  ``jac info``;
* ``fuzz/corpus.py``: the seeds (``fuzz/seeds``, :func:`make_seeds`) and :func:`load_corpus`;
* ``fuzz/engines.py``: :func:`run_random`, :func:`run_atheris`, :func:`distill` and :func:`setup`.

A function replaced for a test takes effect where it is looked up: in the module that calls it
(``fuzz.oracle.check_container`` for :func:`run_one`, which the random engine, ``distill`` and
``replay`` call), or in this module for what :func:`main` calls (:func:`setup`, :func:`installed_model`,
:func:`distill`, :func:`run_atheris`, :func:`run_random`, :func:`run_one`, :func:`make_seeds`).

Usage (see ``fuzz/README.md``); paths may come before or after the options, libFuzzer's own
``-flag=value`` options go to the ``atheris`` engine::

    python fuzz/fuzz_jac.py seeds                       # (re)make fuzz/seeds/*.jac
    python fuzz/fuzz_jac.py atheris --target decode WORK_DIR fuzz/seeds -- -max_total_time=600
    python fuzz/fuzz_jac.py random --target container --seconds 60 [CORPUS...]
    python fuzz/fuzz_jac.py replay FILE_OR_DIR...       # run the oracle on files, print outcomes
    python fuzz/fuzz_jac.py distill --out tests/fuzz_corpus DIR...   # smallest file per outcome
"""

# ruff: noqa: E402  (the package ``fuzz`` is importable only once a script run has put the repository on sys.path)
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__" and str(HERE.parent) not in sys.path:  # run as a script, not imported from the package
    sys.path.insert(0, str(HERE.parent))

from fuzz.chunks import JHDR_FIELDS, MAGIC, Chunk, crc, derived_shapes, join, pack_jhdr, restamp, split, unpack_jhdr
from fuzz.corpus import SEED_PREVIEW, SEED_SPECS, SEEDS_DIR, load_corpus, make_seeds, seed_image
from fuzz.engines import CURRENT_INPUT, Stats, container_verdict, distill, run_atheris, run_random, setup
from fuzz.limits import Finding, Limits, Overrun, Timeout, peak_rss_mb, reset_peak_rss, watchdog
from fuzz.mutators import (
    CHUNK_TYPES,
    DIM_VALUES,
    MUTATORS,
    PREVIEW_FORMATS,
    U16_VALUES,
    U32_VALUES,
    WEIGHTS,
    break_crc,
    chunk_ops,
    flip_bits,
    forge_alpha,
    forge_dims,
    forge_field,
    forge_length,
    forge_preview,
    forge_stream,
    insert_delete,
    mutate,
    preview_file,
    random_file,
    set_bytes,
    splice,
    trailing,
    truncate,
)
from fuzz.oracle import (
    ALLOWED,
    DECODERS,
    ROTATED_CHECKS,
    Unseekable,
    check_confirmed,
    check_container,
    check_decode,
    info_path,
    installed_model,
    lib,
    preview_request,
    rotated_check,
    run_one,
    steps,
    time_limit,
)

__all__ = [
    "ALLOWED", "CHUNK_TYPES", "CURRENT_INPUT", "DECODERS", "DIM_VALUES", "HERE", "JHDR_FIELDS", "LIBFUZZER_OPTION",
    "MAGIC", "MUTATORS", "PREVIEW_FORMATS", "ROTATED_CHECKS", "SEEDS_DIR", "SEED_PREVIEW", "SEED_SPECS",
    "U16_VALUES", "U32_VALUES", "WEIGHTS",
    "Chunk", "Finding", "Limits", "Overrun", "Stats", "Timeout", "Unseekable",
    "break_crc", "check_confirmed", "check_container", "check_decode", "chunk_ops", "container_verdict", "crc",
    "derived_shapes",
    "distill", "flip_bits", "forge_alpha", "forge_dims", "forge_field", "forge_length", "forge_preview",
    "forge_stream", "info_path", "insert_delete", "installed_model", "join", "lib", "load_corpus", "main",
    "make_seeds", "mutate", "pack_jhdr", "peak_rss_mb", "preview_file", "preview_request", "random_file",
    "reset_peak_rss", "restamp", "rotated_check", "run_atheris", "run_one", "run_random", "seed_image", "set_bytes",
    "setup", "splice", "split", "steps", "time_limit", "trailing", "truncate", "unpack_jhdr", "watchdog",
]  # fmt: skip


def _print_stats(stats: Stats) -> None:
    print(json.dumps({**stats.__dict__, "exec_per_s": round(stats.executions / max(stats.seconds, 1e-9), 2)}, indent=1))


#: a libFuzzer option (``-max_total_time=600``); this harness's own options all start with ``--``
LIBFUZZER_OPTION = re.compile(r"-[A-Za-z_]+=.*")


def _files(paths: Iterable[Path]) -> list[Path]:
    """The files given and those directly in the directories given (sorted by name), in order."""
    out: list[Path] = []
    for p in paths:
        out += sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    return out


def atheris_installed() -> bool:
    """Whether the ``atheris`` engine can run here."""
    return importlib.util.find_spec("atheris") is not None


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring).

    Paths may come before, between or after the options. libFuzzer's own options (``-name=value``)
    and everything after ``--`` go to the ``atheris`` engine; other commands refuse them.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["seeds", "atheris", "random", "replay", "distill"])
    parser.add_argument(
        "paths", nargs="*", type=Path,
        help="atheris: WORK_DIR (libFuzzer writes new inputs there) and more corpus dirs; random: corpus "
        "(default fuzz/seeds); replay, distill: files and directories of inputs",
    )  # fmt: skip
    parser.add_argument("--target", choices=["container", "decode"], default="decode")
    parser.add_argument("--seconds", type=float, default=60.0, help="random engine: session length")
    parser.add_argument("--time-bound", type=float, default=Limits.seconds, help="seconds per input")
    parser.add_argument("--rss-mb", type=float, default=Limits.rss_mb, help="peak RSS bound")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="Image.MAX_IMAGE_PIXELS")
    parser.add_argument(
        "--timeout", type=float,
        help="random, replay, distill: stop an input after this many seconds and report a timeout "
        "(default: three times its time bounds)",
    )  # fmt: skip
    findings = Path(tempfile.gettempdir()) / "jac-fuzz-findings"
    parser.add_argument("--crashes", type=Path, default=findings, help=f"random engine: findings (default {findings})")
    parser.add_argument("--keep", type=Path, help="random engine: save inputs with new outcomes here")
    parser.add_argument("--out", type=Path, help="seeds: output directory (default fuzz/seeds); distill: required")
    parser.add_argument("--seed", type=int, help="random engine: RNG seed")
    argv = list(sys.argv[1:] if argv is None else argv)
    fuzzer_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    fuzzer_args = [a for a in ours if LIBFUZZER_OPTION.fullmatch(a)] + fuzzer_args
    args = parser.parse_intermixed_args([a for a in ours if not LIBFUZZER_OPTION.fullmatch(a)])
    if fuzzer_args and args.command != "atheris":
        parser.error(f"libFuzzer options are for the atheris engine only: {' '.join(fuzzer_args)}")
    limits = Limits(args.time_bound, Limits.seconds_per_step, args.rss_mb, args.max_pixels, args.timeout)
    if args.command == "seeds":
        if args.paths:
            parser.error("seeds takes no paths (--out names the directory)")
        for p in make_seeds(args.out or SEEDS_DIR):
            print(p, p.stat().st_size)
        return 0
    if args.command == "atheris":
        if not args.paths:
            parser.error("atheris needs WORK_DIR, where libFuzzer writes the inputs it keeps")
        if not atheris_installed():
            parser.error("the atheris engine needs atheris (pip install atheris); the random engine needs nothing")
    elif args.command in ("replay", "distill") and not args.paths:
        parser.error(f"{args.command} needs files or directories of inputs")
    if args.command == "distill" and args.out is None:
        parser.error("distill needs --out")
    missing = [str(p) for p in args.paths[1 if args.command == "atheris" else 0 :] if not p.exists()]
    if missing:
        parser.error(f"no such file or directory: {', '.join(missing)}")
    if args.command == "atheris":
        args.paths[0].mkdir(parents=True, exist_ok=True)
        run_atheris(args.target, [*fuzzer_args, *map(str, args.paths)], limits, load_corpus([SEEDS_DIR]))
        return 0
    files = _files(args.paths or [SEEDS_DIR])
    if not files:
        parser.error(f"no input files in {', '.join(map(str, args.paths))}")
    if not faulthandler.is_enabled():  # a Python stack on a fatal signal (SIGSEGV and the like)
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no stderr with a file descriptor
            faulthandler.enable()
    decodes = args.target == "decode" or args.command == "distill"  # distill runs the decode target
    setup(limits, threads=1 if decodes else None)
    if decodes:
        installed_model()  # build the engine before the first input (its cost is not the input's)
    if args.command == "random":
        corpus = [f.read_bytes() for f in files]
        stats = run_random(args.target, corpus, args.seconds, limits, args.crashes, args.keep, args.seed)
        _print_stats(stats)
        return 1 if stats.findings else 0
    if args.command == "distill":
        index = distill((f.read_bytes() for f in files), args.out, limits=limits)
        print(json.dumps(index, indent=1))
        return 0
    status = 0
    for f in files:
        print(f"{f}\t", end="", flush=True)  # the name first: if the process dies on this file, it is the last line
        t0 = time.perf_counter()
        try:
            label = run_one(args.target, f.read_bytes(), limits)
        except Finding as exc:
            label, status = f"FINDING {exc}", 1
        print(f"{time.perf_counter() - t0:.2f}s\t{label}", flush=True)
    return status


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
