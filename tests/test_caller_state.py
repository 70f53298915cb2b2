"""What a caller has set in torch does not change what a file decodes to, nor the file an encoder writes.

A program that decodes inside its own training or inference loop may be under bf16 or fp16 autocast, or
may have set float64 as torch's default dtype. The codec's float transforms run in their own context
(:func:`pillow_jac.image_transforms.torch_work`, which also holds oneDNN's and cuDNN's convolutions to IEEE
float32: tests/test_float32_synthesis.py), and its engine is float32 whatever the default dtype
(:func:`pillow_jac.engine.build_model`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac import codec, generations
from pillow_jac.entropy_coding import log2_ratio

from .helpers import natural_image

VECTORS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"
EDGE = VECTORS / "edge"


def _escapes() -> tuple[bytes, np.ndarray]:
    """The edge vector with latents up to 4095, where reduced precision moved samples by 255 levels."""
    entry = json.loads((EDGE / "edge.json").read_text())["escapes"]
    return (EDGE / entry["file"]).read_bytes(), np.asarray(Image.open(EDGE / entry["decoded"]))


CALLER_STATES = {
    "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    "fp16 autocast": lambda: torch.autocast("cpu", dtype=torch.float16),
}


def test_effort_searches_under_a_callers_inference_mode() -> None:
    """torch.enable_grad() does not leave inference mode: the search found no gradient and effort 1 raised."""
    image = natural_image(40, 56)
    expected = codec.encode(image, 4, effort=1)
    with torch.inference_mode():
        assert codec.encode(image, 4, effort=1) == expected


@pytest.mark.parametrize("state", CALLER_STATES)
def test_a_callers_torch_settings_change_no_decoded_pixel_and_no_encoded_byte(state: str) -> None:
    data, reference = _escapes()
    image = natural_image(24, 40)
    expected_pixels, expected_file = codec.decode(data), codec.encode(image, 4)
    assert np.abs(expected_pixels.astype(int) - reference).max() <= 1
    with CALLER_STATES[state]():
        pixels, file = codec.decode(data), codec.encode(image, 4)
    np.testing.assert_array_equal(pixels, expected_pixels)  # under fp16 autocast g_s gave NaN, 255 levels off
    assert file == expected_file


def test_an_engine_built_under_a_float64_default_dtype_decodes_as_any_other(tmp_path: Path) -> None:
    """A float64 default when the engine was built made its layers float64, and every decode of the process
    failed on g_s's float32 input (the engine is cached)."""
    data, _ = _escapes()
    expected = codec.decode(data)
    weights = tmp_path / "copy.safetensors"  # another path: an engine of its own, built here
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, weights)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pixels = codec.decode(data, weights=weights)
    finally:
        torch.set_default_dtype(saved)
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(codec.decode(data, weights=weights), expected)


@contextlib.contextmanager
def _meta_by_default() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


DEFAULT_DEVICES = {"context": lambda: torch.device("meta"), "default": _meta_by_default}


@pytest.mark.parametrize("how", DEFAULT_DEVICES)
def test_a_callers_default_device_changes_no_byte_and_no_pixel(tmp_path: Path, how: str) -> None:
    """Under ``with torch.device("meta")`` (or ``torch.set_default_device``), common in model code, the engine
    was built on the meta device and every encode and decode raised NotImplementedError; a CUDA default would
    have put the codec's own tensors on another device than its model."""
    image = natural_image(40, 56)
    weights = tmp_path / "copy.safetensors"  # another path: an engine of its own, built under the setting
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, weights)
    expected = [codec.encode(image, 4), codec.encode(image, 4, effort=1), codec.encode(image, target_size=700)]
    pixels = codec.decode(expected[0])
    with DEFAULT_DEVICES[how]():
        files = [codec.encode(image, 4, weights=weights), codec.encode(image, 4, effort=1)]
        files.append(codec.encode(image, target_size=700))
        decoded = codec.decode(expected[0], weights=weights)
    assert files == expected
    np.testing.assert_array_equal(decoded, pixels)


def test_log2_ratio_is_correctly_rounded_where_libm_and_numpy_disagree() -> None:
    """The bound on a stream's length (CODING.md 2.4) takes -log2(fmax / 2**16): rounded correctly, the same
    on every machine, where libm's and numpy's log2 differ on some of these ratios."""
    import decimal
    import math

    fmax = np.arange(1, 2**16 + 1)
    with_numpy = np.log2(fmax / 2.0**16)
    disagree = [int(f) for f, v in zip(fmax, with_numpy, strict=True) if math.log2(f / 2**16) != v]
    checked = disagree[:200] + [1, 3, 255, 40000, 65531, 65534, 65535, 65536]
    with decimal.localcontext() as context:
        context.prec = 100
        for f in checked:
            exact = (decimal.Decimal(f).ln() - decimal.Decimal(2**16).ln()) / decimal.Decimal(2).ln()
            value = log2_ratio(f, 2**16)
            for neighbour in (math.nextafter(value, -math.inf), math.nextafter(value, math.inf)):
                assert abs(decimal.Decimal(value) - exact) <= abs(decimal.Decimal(neighbour) - exact), f
    # the shipped generation's y and z tables (largest frequencies 65531 and 65534): the value it always had
    assert [log2_ratio(f, 2**16) for f in (65531, 65534)] == [float(np.log2(f / 2**16)) for f in (65531, 65534)]


@pytest.mark.parametrize("sleeping", [True, False])
def test_the_entropy_coding_runs_on_one_thread_where_openmp_threads_spin(monkeypatch, sleeping: bool) -> None:
    """Beside other work, two spinning OpenMP threads made a 768x512 decode's hundreds of small wavefront products
    2-10 times slower than one thread: where the threads spin, the exact coding runs on one, whatever the image's
    size; where they sleep, on the threads set."""
    from pillow_jac import engine, image_transforms, intra_op_threads

    monkeypatch.setattr(image_transforms, "SMALL_IMAGE_PIXELS", 0)  # a "large" image, without its cost
    monkeypatch.setattr(intra_op_threads, "threads_sleep", lambda: sleeping)
    coder_class = type(engine.get_engine("cpu").latents)
    seen = []

    def recorded(real):
        def recording(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(self, *args, **kwargs)

        return recording

    for method in ("encode", "decode"):
        monkeypatch.setattr(coder_class, method, recorded(getattr(coder_class, method)))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        codec.decode(codec.encode(natural_image(32, 48), 3))
    finally:
        torch.set_num_threads(saved)
    assert seen == ([2, 2] if sleeping else [1, 1]), seen


def test_the_first_encode_and_decode_leave_the_environment_and_warning_filters_as_they_were() -> None:
    """Checking a weights file's shapes on torch's meta device (since replaced) imported torch._dynamo at the first
    decode: 1.7 s more, a TORCHINDUCTOR_CACHE_DIR every later child process inherited, and a warning filter."""
    import subprocess
    import sys

    code = (
        "import os, sys, warnings\n"
        "import numpy as np, torch, pillow_jac\n"
        "env, filters = dict(os.environ), list(warnings.filters)\n"
        "pillow_jac.decode(pillow_jac.encode(np.zeros((16, 16, 3), np.uint8), 4))\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert warnings.filters == filters\n"
        "assert 'torch._dynamo' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
