"""Test images and tiny weights files shared by several test modules."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path
from typing import Any

import numpy as np


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test image with some texture (not just noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6)
        planes.append(128 + 90 * np.sin(fx * xx + phase) * np.cos(fy * yy + c))
    image = np.stack(planes, axis=2) + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with some texture and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 90 * np.sin(xx / (7 + 3 * c) + yy / (11 + c) + rng.uniform(0, 6)) + rng.normal(0, 6, (height, width))
        for c in range(3)
    ]
    return np.clip(np.stack(planes, axis=2), 0, 255).astype(np.uint8)


def tiny_weights(path: Path, seed: int) -> Path:
    """A frozen, untrained N=8, M=12 joint model written to ``path`` (release 0): a decoder in milliseconds."""
    import torch

    from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
    from pillow_jac.training.freeze import freeze
    from pillow_jac.weights import save_weights

    torch.manual_seed(seed)
    save_weights(path, *freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=0))
    return path


def _cmyk_corner_lab(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
    """The Lab colour of a CMYK corner in :func:`cmyk_profile`: inks far from Pillow's naive conversion."""
    lightness = max(5.0, 100 - 45 * c - 50 * m - 10 * y) * (0.15 if k else 1.0)
    chroma = 1 - 0.8 * k
    return lightness, (-30 * c + 70 * m - 5 * y) * chroma, (-50 * c - 5 * m + 85 * y) * chroma


def cmyk_profile() -> bytes:
    """A minimal ICC v2 output profile, CMYK to Lab through a 2-point lut8 ``A2B0`` (ICC.1:2001-04 section 6.5.7).

    Made here because no CMYK profile may be shipped or downloaded; :func:`_cmyk_corner_lab` gives its colours.
    """
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"pillow_jac test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67)
    wtpt = b"XYZ " + bytes(4) + d50
    clut = bytearray()
    for c in (0, 1):  # the first input channel varies slowest
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness, a, b = _cmyk_corner_lab(c, m, y, k)
                    clut += bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])
    identity = bytes(range(256))
    matrix = b"".join(s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + bytes(clut) + identity * 3
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"Lab "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + bytes(24) + struct.pack(">I", 0) + d50 + bytes(48)
    )  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def stop_handlers() -> dict[int, Any]:
    """The handlers of the signals that stop a training loop (pillow_jac.training.stop_signals)."""
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}


def signal_in_the_second_step(monkeypatch, module: Any, signum: int) -> list[int]:
    """Send ``signum`` to this process from the second call of ``module.stratified_qualities`` (once a
    training step); returns the list of calls, each the batch size it was asked for."""
    real, calls = module.stratified_qualities, []

    def signalling(batch: int):
        calls.append(batch)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return real(batch)

    monkeypatch.setattr(module, "stratified_qualities", signalling)
    return calls


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted, leaving out a batch's record of sources (pillow_jac.source_record)."""
    from pillow_jac.source_record import RECORD_NAME

    return sorted(p.name for p in folder.iterdir() if p.name != RECORD_NAME)


def assert_within_one_level_in_a_few_samples(pixels: np.ndarray, expected: np.ndarray) -> None:
    """The reference's pixels on another machine or thread count: g_s is float32, whose summation order differs,
    so one level off in a few samples; a changed rounding rule moved a fifth to a half of a vector's samples by
    one level (the latents, integer, are compared exactly elsewhere). Alpha (the last of 2 or 4 channels) is
    lossless: exact (SPEC.md 5.1, as format_spec/conformance.py holds it)."""
    from pillow_jac.constants import VECTOR_OFF_BY_ONE_SHARE

    assert pixels.shape == expected.shape
    off = np.abs(pixels.astype(np.int64) - expected)
    if off.ndim == 3 and off.shape[2] in (2, 4):
        assert not off[..., -1].any(), "alpha differs"
        off = off[..., :-1]
    assert off.max(initial=0) <= 1
    assert np.count_nonzero(off) <= max(2, VECTOR_OFF_BY_ONE_SHARE * off.size), np.count_nonzero(off)


def sixteen_bit_png(path: Path, samples: np.ndarray, colour_type: int, transparency: tuple | None = None) -> None:
    """A 16-bit PNG of ``samples`` (height, width, planes) written by hand (Pillow writes no 16-bit colour).

    ``transparency``: the 16-bit colour of a ``tRNS`` chunk (colour type 2), if any.
    """
    import struct
    import zlib

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    key = b"" if transparency is None else chunk(b"tRNS", struct.pack(">" + "H" * len(transparency), *transparency))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + key + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def safetensors_header(path: Path) -> tuple[int, dict]:
    """``(data_start, header)`` of a safetensors file: u64 LE header size, JSON header, then data."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))
