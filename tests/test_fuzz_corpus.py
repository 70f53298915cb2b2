"""Replay the fuzzing regression corpus (``tests/fuzz_corpus``) through the whole oracle.

The corpus holds, for every distinct outcome the fuzz sessions met (which error, from which entry
point), the smallest input that produced it, plus the inputs of the bugs found (``index.json`` says
which). Every file must still meet the harness's rules (only allowed exceptions, time and memory
bounds, agreeing entry points), and each entry point must still accept or reject it as recorded. The decode
path re-stamps each file for the installed generation: those distilled against an earlier one exercise the
container and model checks, those distilled against release 6 also decode to pixels, so that the pixel rules
(``decode`` against ``load()``, ``decode_batch``, previews) run on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz import fuzz_jac as fz

from .test_fuzz import LIMITS, small_pixel_limit

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
INDEX: dict[str, dict[str, str]] = json.loads((CORPUS / "index.json").read_text())
FILES = sorted(CORPUS.glob("*.jac"))


def test_index_lists_every_file() -> None:
    assert sorted(INDEX) == [p.name for p in FILES]
    assert len(FILES) >= 20
    assert all(p.stat().st_size <= 8192 for p in FILES)
    # files that decode to pixels, with and without a preview: the replay's pixel rules have something to check
    decoded = [e["outcome"] for e in INDEX.values() if e["outcome"].endswith(" | ok")]
    assert len(decoded) >= 5 and any("preview:used" in o for o in decoded)


def _param(path: Path) -> object:
    """The file as a test parameter; those that decode a long latent (seconds) are marked slow."""
    slow = fz.steps(path.read_bytes()) > 100 and INDEX[path.name]["outcome"].endswith("ok")
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_replay(path: Path) -> None:
    with small_pixel_limit():
        label = fz.check_decode(path.read_bytes(), LIMITS)
    assert fz.container_verdict(label) == INDEX[path.name]["container"], label
    # and every entry point's outcome as recorded: a decoder that, say, clipped latents out of range instead of
    # refusing them changes these (index.json is re-recorded, with its reasons, when a change is meant)
    assert label == INDEX[path.name]["outcome"]
