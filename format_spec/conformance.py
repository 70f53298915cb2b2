"""Does this installation decode every released generation's test vectors? ``python format_spec/conformance.py``.

For each ``format_spec/vectors/<model_id>/vectors.json`` it checks, for every vector (SPEC.md section 9.4):

* the file's SHA-256 and the reference pixels' digest (the vector and its ``.decoded.png`` are intact);
* that the generation is installed (:func:`pillow_jac.generations.find`);
* the decoded integer latents, which MUST match exactly on every machine (CODING.md section 3);
* where the entry records ``metadata_sha256``, the bytes of each metadata chunk as read (SPEC.md 5.2);
* the decoded pixels: ``exact`` when they match the reference bit for bit, ``within 1`` when a few
  colour or grey samples differ by one level (allowed: g_s runs in floating point, SPEC.md section 1): at
  most :data:`~pillow_jac.constants.VECTOR_OFF_BY_ONE_SHARE` of them, or two, else a failure (a decoder that
  truncates instead of rounding moves a fifth to a half of them); alpha samples are lossless and must match
  exactly (SPEC.md 5.1).

The model variants' vectors (``format_spec/vectors/variants/<model_id>/``, CODING.md section 4) are
checked the same way with the tiny generation stored beside them (``weights.safetensors``). The invalid
vectors (``format_spec/vectors/invalid/``, made by ``make_invalid.py``) must each be rejected: a decoder
that decodes one of them breaks a rule of SPEC.md section 8.2. The edge vectors
(``format_spec/vectors/edge/``, made by ``make_edge.py``: escapes in both streams, a preview, unknown
chunks, another chunk order, a later minor version) must each decode, checked as a generation's are.

It prints one line per vector and a summary, and exits 0 when every vector passes. Options:
``--generation ID`` checks one generation; ``--device cuda`` decodes on a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent / "vectors"
EDGE = HERE / "edge"


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()


def _intact(folder: Path, table: dict, results: list) -> Iterator[tuple[str, dict, bytes]]:
    """``(name, entry, bytes)`` of each vector of ``table`` whose bytes are those it records.

    A damaged vector is reported in ``results`` instead.
    """
    for name, entry in table.items():
        data = (folder / entry["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() == entry["file_sha256"]:
            yield name, entry, data
        else:
            results.append((name, "the vector file is damaged", False))


def _metadata_differs(data: bytes, recorded: dict | None) -> str:
    """The metadata fields whose bytes the reader gives other than ``recorded`` (an entry's ``metadata_sha256``)."""
    if not recorded:
        return ""
    from pillow_jac import container
    from pillow_jac.constants import METADATA_FIELDS

    read = container.parse(data).metadata_digests()
    return ", ".join(f for f in METADATA_FIELDS if read.get(f) != recorded.get(f))


def generations() -> list[str]:
    """Every generation with vectors: released ones by model id, variants as ``variants/<model_id>``."""
    return sorted(q.parent.relative_to(HERE).as_posix() for q in HERE.glob("*/vectors.json")) + sorted(
        q.parent.relative_to(HERE).as_posix() for q in HERE.glob("variants/*/vectors.json")
    )


def check(generation: str, device: str | None = None) -> list[tuple[str, str, bool]]:
    """``(vector, outcome, passed)`` for every vector of one generation (or ``variants/<model_id>``)."""
    folder = HERE / generation
    weights = folder / "weights.safetensors" if (folder / "weights.safetensors").exists() else None
    return check_folder(folder, weights, device, generation)


def check_folder(
    folder: Path,
    weights: Path | None = None,
    device: str | None = None,
    generation: str | None = None,
    table: str = "vectors.json",
    share: float | None = None,
) -> list[tuple[str, str, bool]]:
    """``(vector, outcome, passed)`` for every vector of ``folder``, decoded with ``weights``.

    ``weights`` None decodes with the installed generation each file names; ``generation`` names the
    decoder in a "not installed" outcome. The colour or grey samples may be one level off in at most
    ``share`` of them, or two (default :data:`~pillow_jac.constants.VECTOR_OFF_BY_ONE_SHARE`; SPEC.md 9.4);
    alpha samples never.
    """
    from pillow_jac import codec
    from pillow_jac.constants import VECTOR_OFF_BY_ONE_SHARE

    share = VECTOR_OFF_BY_ONE_SHARE if share is None else share

    results = []
    entries = json.loads((folder / table).read_text())
    for name, entry, data in _intact(folder, entries, results):
        try:
            z_hat, y_hat = codec.decode_symbols(data, device=device, weights=weights)
            pixels = codec.decode(data, device=device, weights=weights)
        except codec.ModelNotInstalledError:
            results.append((name, f"decoder {generation or folder.name} is not installed", False))
            continue
        except (ValueError, OSError) as exc:  # the codec's errors (a weights file's among them) for a vector
            results.append((name, f"not decoded ({type(exc).__name__}: {exc})", False))
            continue
        symbols = hashlib.sha256(((_digest(z_hat) if z_hat is not None else "") + _digest(y_hat)).encode())
        if symbols.hexdigest() != entry["symbols_sha256"]:
            results.append((name, "latents differ (the entropy path is not exact here)", False))
            continue
        expected = np.asarray(Image.open(folder / entry["decoded"]))
        if _digest(expected) != entry["pixels_sha256"]:
            results.append((name, f"the reference pixels {entry['decoded']} are damaged", False))
            continue
        carried = _metadata_differs(data, entry.get("metadata_sha256"))
        if carried:
            results.append((name, f"metadata not carried unchanged: {carried} (SPEC.md 5.2)", False))
            continue
        if pixels.shape != expected.shape:
            results.append((name, f"shape {pixels.shape}, expected {expected.shape}", False))
            continue
        off = np.abs(pixels.astype(np.int64) - expected)
        if off.ndim == 3 and off.shape[2] in (2, 4):  # LA, RGBA: alpha is lossless (SPEC.md 5.1), never off
            off, alpha_off = off[..., :-1], int(np.count_nonzero(off[..., -1]))
            if alpha_off:
                results.append((name, f"{alpha_off} alpha samples differ (alpha is returned exactly)", False))
                continue
        diff, count = int(off.max(initial=0)), int(np.count_nonzero(off))
        outcome = "exact" if diff == 0 else f"within {diff} ({count} of {off.size} samples off)"
        results.append((name, outcome, diff <= 1 and count <= max(2, share * off.size)))
    return results


def check_edge(device: str | None = None) -> list[tuple[str, str, bool]]:
    """``(vector, outcome, passed)`` for every edge vector (``edge/edge.json``), checked as a generation's are."""
    return check_folder(EDGE, None, device, table="edge.json")


def check_invalid(device: str | None = None) -> list[tuple[str, str, bool]]:
    """``(vector, outcome, passed)`` for every invalid vector: passed when the decoder rejects it."""
    from pillow_jac import codec
    from pillow_jac.weights import WeightsError

    folder = HERE / "invalid"
    table = json.loads((folder / "invalid.json").read_text()) if (folder / "invalid.json").exists() else {}
    results = []
    for name, entry, data in _intact(folder, table, results):
        try:
            codec.decode(data, device=device)
        except (codec.ModelNotInstalledError, WeightsError) as e:  # the rule was never reached: nothing tested
            results.append((name, f"not tested: its generation cannot be loaded ({type(e).__name__}: {e})", False))
        except (ValueError, OSError) as e:  # the reference's classes are informative; rejection is normative
            results.append((name, f"rejected ({type(e).__name__}; {entry['rule']})", True))
        else:
            results.append((name, f"decoded, but it breaks {entry['rule']}", False))
    return results


def main(argv: list[str] | None = None) -> int:
    """Check the vectors and print a report; 0 when all pass."""
    p = argparse.ArgumentParser(description="Check that this installation decodes every generation's vectors")
    p.add_argument("--generation", help="one model_id (default: every generation with vectors)")
    p.add_argument("--device", help="torch device (default: JAC_DEVICE or cpu)")
    args = p.parse_args(argv)
    gens = [args.generation] if args.generation else generations()
    if args.generation and args.generation not in generations():
        known = ", ".join(generations())
        print(f"conformance.py: no vectors for generation {args.generation!r} (vectors: {known})", file=sys.stderr)
        return 1
    failed = total = 0
    for gen in gens:
        for name, outcome, passed in check(gen, args.device):
            total += 1
            failed += not passed
            print(f"{'PASS' if passed else 'FAIL'}  {gen}/{name}: {outcome}")
    print(f"{total - failed} of {total} vectors of {len(gens)} generation(s) pass")
    edge = [] if args.generation or not (EDGE / "edge.json").exists() else check_edge(args.device)
    for name, outcome, passed in edge:
        total += 1
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  edge/{name}: {outcome}")
    if edge:
        print(f"{sum(p for _, _, p in edge)} of {len(edge)} edge vectors decode")
    invalid = [] if args.generation else check_invalid(args.device)
    for name, outcome, passed in invalid:
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  invalid/{name}: {outcome}")
    if invalid:
        print(f"{sum(p for _, _, p in invalid)} of {len(invalid)} invalid vectors are rejected")
    return 1 if failed or not total else 0


if __name__ == "__main__":
    sys.exit(main())
