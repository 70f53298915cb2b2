"""Pack a training folder into parts small enough to carry to a remote GPU machine, and join files.

``python -m pillow_jac.training.pack --data ../shared/data/train --out .gpu --part-mb auto`` writes
``.gpu/part01``, ``.gpu/part02`` ... each at most ``--part-mb`` megabytes, plus ``.gpu/MANIFEST``
(name, bytes and SHA-256 of every packed file). The device machine of this workplace carries at
most 64 MiB of working tree per call, and the shipped weights travel in every call, so the set goes
over in several calls (docs/training_on_a_gpu.md). ``auto`` sizes the parts to the room one call
leaves beside the working tree as it is now (:func:`~.travel.room_mb`), with the kept decoder
generations set aside first (``python -m pillow_jac.training.travel set-aside``: they need not
travel). The files are dealt into the parts in a seeded random order, so the first parts are
already a fair sample of every source: a session that has time to carry only some of them still
trains on a mix (sorted by name, the first part of the project's set held nothing but ``bsds_``
photos).

The pixels the trainer sees do not change: images whose short side is at most ``max_short_side``
are copied byte for byte, larger ones are downscaled exactly as :func:`~.data.load_rgb` does and
stored as lossless WebP, which the trainer then loads without a second resize.

``python -m pillow_jac.training.pack --split FILE --out DIR --part-mb 15`` cuts a file (a
checkpoint on its way back: files come back from the device at most 16 MiB each) into numbered
pieces with a ``.sha256`` beside them; ``--join DIR/FILE --out FILE`` puts them back together and
checks the hash.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from .data import list_images, load_rgb
from .encoder_update import refuse_evaluation_data
from .travel import MB, repository_root, room_mb, travelling_kept_decoders

__all__ = ["pack", "split_file", "join_file"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(data: Path, out: Path, part_mb: float = 24, max_short_side: int = 512, seed: int = 0) -> list[Path]:
    """Copy or downscale every image of ``data`` into parts of at most ``part_mb`` MB under ``out``.

    The images are dealt out in an order shuffled with ``seed``, so every part mixes all sources.

    Returns:
        The part folders, in order.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> src, dst = Path(tmp.name) / "src", Path(tmp.name) / "pack"
        >>> src.mkdir()
        >>> Image.fromarray(np.zeros((600, 900, 3), np.uint8)).save(src / "big.png")
        >>> Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(src / "small.png")
        >>> parts = pack(src, dst, part_mb=1)
        >>> with Image.open(parts[0] / "big.webp") as im:
        ...     sorted(p.name for p in parts[0].iterdir()), im.size
        (['big.webp', 'small.png'], (768, 512))
        >>> tmp.cleanup()
    """
    plan = {}  # source -> (its name in the parts, whether it is copied as it is); a downscaled image is a .webp
    for path in list_images(data):
        with Image.open(path) as im:
            small = min(im.size) <= max_short_side
        plan[path] = (path.name, True) if small else (path.stem + ".webp", False)
    by_name: dict[str, list[str]] = {}
    for path, (name, _) in plan.items():
        by_name.setdefault(name, []).append(path.name)
    clashes = {name: sources for name, sources in by_name.items() if len(sources) > 1}
    if clashes:
        raise ValueError(
            f"images of {data} would share a name in the parts: "
            + "; ".join(f"{' and '.join(sources)} -> {name}" for name, sources in sorted(clashes.items()))
            + ": rename them"
        )
    staged = out / "staging"
    staged.mkdir(parents=True, exist_ok=True)
    files = []
    for path, (name, small) in plan.items():
        target = staged / name
        if small:
            shutil.copyfile(path, target)
        else:
            Image.fromarray(load_rgb(path, max_short_side)).save(target, lossless=True, quality=100, method=4)
        files.append(target)
    limit = part_mb * MB
    parts: list[list[Path]] = [[]]
    used = 0
    order = sorted(files, key=lambda p: p.name)
    random.Random(seed).shuffle(order)
    for f in order:
        size = f.stat().st_size
        if size > limit:
            raise ValueError(f"{f.name} alone ({size} bytes) is larger than a part")
        if used + size > limit:
            parts.append([])
            used = 0
        parts[-1].append(f)
        used += size
    folders = []
    manifest = []
    for i, group in enumerate(parts, 1):
        folder = out / f"part{i:02d}"
        folder.mkdir(exist_ok=True)
        for f in group:
            f.replace(folder / f.name)
            manifest.append(f"{folder.name}/{f.name}\t{(folder / f.name).stat().st_size}\t{_sha256(folder / f.name)}")
        folders.append(folder)
    staged.rmdir()
    (out / "MANIFEST").write_text("\n".join(manifest) + "\n")
    return folders


def split_file(path: Path, out: Path, part_mb: float = 15) -> list[Path]:
    """Cut ``path`` into ``out/<name>.000``, ``.001`` ... of at most ``part_mb`` MB, plus ``<name>.sha256``.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> d = Path(tmp.name)
        >>> _ = (d / "w.bin").write_bytes(bytes(range(256)) * 10)
        >>> [p.name for p in split_file(d / "w.bin", d / "out", part_mb=0.001)]
        ['w.bin.000', 'w.bin.001', 'w.bin.002']
        >>> join_file(d / "out" / "w.bin", d / "back.bin").read_bytes() == (d / "w.bin").read_bytes()
        True
        >>> tmp.cleanup()
    """
    out.mkdir(parents=True, exist_ok=True)
    size = int(part_mb * MB)
    pieces = []
    with open(path, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(size), b"")):
            piece = out / f"{path.name}.{i:03d}"
            piece.write_bytes(block)
            pieces.append(piece)
    (out / f"{path.name}.sha256").write_text(_sha256(path) + "\n")
    return pieces


def join_file(stem: Path, out: Path) -> Path:
    """Concatenate ``<stem>.000``, ``.001`` ... into ``out`` and check it against ``<stem>.sha256``."""
    pieces = sorted(stem.parent.glob(stem.name + ".[0-9][0-9][0-9]"))
    if not pieces:
        raise FileNotFoundError(f"no pieces {stem}.000 ...")
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        for piece in pieces:
            f.write(piece.read_bytes())
    expected = (stem.parent / f"{stem.name}.sha256").read_text().strip()
    if _sha256(tmp) != expected:
        tmp.unlink()
        raise ValueError(
            f"joined {len(pieces)} pieces of {stem.name}, but the SHA-256 differs: a piece is missing or damaged"
        )
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="training folder to pack")
    p.add_argument("--split", type=Path, help="file to cut into pieces")
    p.add_argument("--join", type=Path, help="pieces' common stem (DIR/NAME for DIR/NAME.000 ...)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--part-mb",
        help="MB per part, or auto: the room a device call leaves beside the working tree (default: 24 for --data; "
        "15 for --split, under the 16 MiB a file may have to come back from the device)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the order images are dealt into parts")
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.data, args.split, args.join)) != 1:
        p.error("give exactly one of --data, --split, --join")
    if args.data is not None:
        refuse_evaluation_data(p, args.data)
    if args.part_mb is None:
        args.part_mb = "15" if args.split else "24"
    try:
        part_mb = room_mb(Path.cwd()) if args.part_mb == "auto" else float(args.part_mb)
        auto = args.data is not None and args.part_mb == "auto"
        travelling = travelling_kept_decoders(repository_root(Path.cwd())) if auto else []
    except (ValueError, OSError, subprocess.CalledProcessError) as exc:
        p.error(f"--part-mb {args.part_mb}: {exc}")
    if travelling:
        size = sum(f.stat().st_size for f in travelling) / MB
        print(
            f"{len(travelling)} kept decoder file(s), {size:.1f} MB, travel with every call and shrink the parts: "
            "python -m pillow_jac.training.travel set-aside first (docs/training_on_a_gpu.md)"
        )
    if part_mb < 1:
        p.error(f"parts of {part_mb:.1f} MB: the working tree leaves no room for data in a device call")
    if args.data:
        print(f"parts of at most {part_mb:.1f} MB")
        for folder in pack(args.data, args.out, part_mb, seed=args.seed):
            total = sum(f.stat().st_size for f in folder.iterdir())
            print(f"{folder}: {len(list(folder.iterdir()))} files, {total / MB:.1f} MB")
    elif args.split:
        for piece in split_file(args.split, args.out, part_mb):
            print(piece)
    else:
        print(join_file(args.join, args.out))


if __name__ == "__main__":
    main()
