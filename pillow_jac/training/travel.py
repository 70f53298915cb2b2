"""What a device call carries: the working tree's size, the room left for data, and the kept decoders set aside.

A call to the lent GPU machine sends the working tree (every file git tracks, and every untracked file it does
not ignore) plus the paths it carries, at most :data:`CALL_LIMIT` bytes in all (docs/training_on_a_gpu.md).
The newest generation's full weights file travels because training starts from it; the kept generations'
decoder files (``weights/generations/``, about 19 MB each) are needed by no training or GPU check, yet each
release adds one, and the room for training data shrinks by as much. So during a GPU session they are *set
aside*: truncated to 0 bytes in the working tree (a file of 0 bytes travels as 0 bytes, and an empty weights
file is no generation: :func:`pillow_jac.generations.generation_of`), and *put back* from git's index once the
calls are over. Only a file whose bytes are those of the index is set aside, so putting it back restores
exactly what was there; the test suite refuses an empty tracked weights file, so a set-aside cannot land.

``python -m pillow_jac.training.travel room`` prints the travelling tree and the room beside it,
``... set-aside`` and ``... put-back`` do the above.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .. import generations

__all__ = [
    "CALL_LIMIT",
    "CALL_MARGIN",
    "MB",
    "travelling_files",
    "travelling_tree_bytes",
    "room_mb",
    "kept_decoder_files",
    "travelling_kept_decoders",
    "set_aside",
    "put_back",
]

MB = 1_000_000
#: what one device call carries at most: the working tree (what git does not ignore) and the carried paths
CALL_LIMIT = 64 * 2**20
#: room kept for the tree to grow between the pack and the calls (a results file, a note)
CALL_MARGIN = 1_500_000


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout


def repository_root(where: Path) -> Path:
    """The top of the git working tree ``where`` lies in."""
    return Path(_git(where, "rev-parse", "--show-toplevel").decode().strip())


def travelling_files(root: Path) -> list[Path]:
    """The files a device call sends: those git tracks, and those it does not ignore."""
    listed = _git(root, "ls-files", "-co", "--exclude-standard", "-z").split(b"\0")
    return [path for name in listed if name and (path := root / name.decode()).is_file()]


def travelling_tree_bytes(root: Path) -> int:
    """Bytes of the working tree a device call sends, as the files are on disk now."""
    return sum(path.stat().st_size for path in travelling_files(root))


def room_mb(where: Path) -> float:
    """The largest part, in MB, that one call carries beside the working tree ``where`` lies in (less a margin)."""
    return (CALL_LIMIT - CALL_MARGIN - travelling_tree_bytes(repository_root(where))) / MB


def kept_decoder_files(root: Path) -> list[Path]:
    """The kept generations' decoder files that git tracks in the checkout at ``root``."""
    kept = generations.package_weights_dir() / generations.KEPT_DIR
    try:
        relative = kept.resolve().relative_to(root.resolve())
    except ValueError:  # an installed package: its weights are not in this checkout
        relative = Path("weights") / generations.KEPT_DIR
    listed = _git(root, "ls-files", "-z", "--", f"{relative.as_posix()}/*.safetensors").split(b"\0")
    return [root / name.decode() for name in listed if name]


def travelling_kept_decoders(root: Path) -> list[Path]:
    """The kept decoder files of :func:`kept_decoder_files` that are not set aside (neither empty nor missing)."""
    return [path for path in kept_decoder_files(root) if path.is_file() and path.stat().st_size > 0]


def _as_in_index(root: Path, path: Path) -> bool:
    return subprocess.run(["git", "diff", "--quiet", "--", str(path)], cwd=root).returncode == 0


def set_aside(root: Path) -> list[Path]:
    """Empty every kept decoder file whose bytes are the index's; refuse (nothing changed) if one differs.

    Returns:
        The files emptied now (those already empty are left as they are and not listed).
    """
    kept = travelling_kept_decoders(root)
    changed = [path for path in kept if not _as_in_index(root, path)]
    if changed:
        names = ", ".join(str(path.relative_to(root)) for path in changed)
        raise ValueError(f"{names}: not as git's index has it, so it could not be put back; commit or restore it first")
    for path in kept:
        with open(path, "r+b") as f:
            f.truncate(0)
    return kept


def put_back(root: Path) -> list[Path]:
    """Restore every empty (or missing) kept decoder file from git's index, and check each is a generation again.

    Returns:
        The files restored.
    """
    empty = [path for path in kept_decoder_files(root) if not path.is_file() or path.stat().st_size == 0]
    if empty:
        _git(root, "checkout", "--", *(str(path.relative_to(root)) for path in empty))
    broken = [str(path.relative_to(root)) for path in empty if generations.generation_of(path) is None]
    if broken:
        raise ValueError(
            f"{', '.join(broken)}: not a weights file after restoring it from git's index (was the empty file "
            f"staged?); restore it from the last commit: git checkout HEAD -- {' '.join(broken)}"
        )
    return empty


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m pillow_jac.training.travel", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("room", "set-aside", "put-back"))
    args = p.parse_args(argv)
    try:
        root = repository_root(Path.cwd())
        if args.action == "set-aside":
            done = set_aside(root)
            print(
                f"set aside {len(done)} kept decoder file(s); put them back after the calls with: "
                "python -m pillow_jac.training.travel put-back"
            )
        elif args.action == "put-back":
            done = put_back(root)
            print(f"put back {len(done)} kept decoder file(s)")
        else:
            done = []
        for path in done:
            print(f"  {path.relative_to(root)}")
    except (ValueError, OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else exc
        p.error(str(detail))
    tree = travelling_tree_bytes(root)
    print(f"travelling tree {tree / MB:.1f} MB; room for data beside it {room_mb(root):.1f} MB a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
