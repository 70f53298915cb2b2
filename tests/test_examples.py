"""The scripts in examples/ run as written, from the repository root."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, monkeypatch, capsys) -> str:
    """Run an example in this process (torch is already loaded here), as ``python examples/NAME``."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_sample_image_is_bundled() -> None:
    from PIL import Image

    with Image.open(EXAMPLES / "sample.png") as im:
        assert im.size == (384, 256) and im.mode == "RGB"
    assert "sample.png" in (EXAMPLES / "README.md").read_text()


@pytest.mark.slow
def test_quickstart(monkeypatch, capsys) -> None:
    out = run_example("quickstart.py", monkeypatch, capsys)
    assert "384x256" in out
    assert "bpp:" in out
    assert "PSNR:" in out and " dB" in out


@pytest.mark.slow
def test_pillow_usage(monkeypatch, capsys) -> None:
    out = run_example("pillow_usage.py", monkeypatch, capsys)
    assert "JAC (128, 96) RGB quality 5.5" in out
    assert "EXIF description: A hovercraft at sea" in out
    assert "alpha exact: True" in out
    assert "EXIF dropped: True" in out
    assert "P image stored as RGB" in out


@pytest.mark.slow
def test_imageio_usage(monkeypatch, capsys) -> None:
    pytest.importorskip("imageio")
    out = run_example("imageio_usage.py", monkeypatch, capsys)
    assert "read back: (96, 128, 3) uint8" in out
    assert "v2 imread: (96, 128, 3)" in out


@pytest.mark.slow
def test_batch_convert() -> None:
    # A real subprocess: the example starts worker processes.
    result = subprocess.run(
        [sys.executable, "examples/batch_convert.py"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and all(" B JAC -> tile" in line for line in lines)
    assert result.stderr == ""  # --quiet: no progress output, and no warnings
