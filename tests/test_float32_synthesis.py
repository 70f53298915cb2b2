"""g_s in IEEE float32 on CUDA: why (TF32 breaks the one-level bound on the edge vector ``escapes``) and how.

cuDNN's default rounds float32 convolution inputs to TF32. The CPU cannot run cuDNN, so the first test
rounds g_s's convolution inputs and weights to TF32 itself and shows what an H200 showed:
``format_spec/conformance.py --device cuda`` decoded ``escapes`` with samples 255 levels off. The
others check :func:`pillow_jac.image_transforms.ieee_float32_convolutions`, which the decoder enters
on CUDA, on the flags it sets and restores; the device test decodes the edge vectors on CUDA.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pillow_jac import codec, codec_steps, image_transforms
from pillow_jac.image_transforms import ieee_float32_convolutions

EDGE = Path(__file__).resolve().parents[1] / "format_spec" / "vectors" / "edge"


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32: float32 with 10 bits of mantissa, to nearest."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + (1 << 12)) & ~((1 << 13) - 1)).view(torch.float32)


def _decode_with(data: bytes, synthesis_of) -> np.ndarray:
    """The RGB pixels of ``data`` with g_s replaced by ``synthesis_of(engine.synthesis)``."""
    jac, engine = codec_steps.file_and_decoder(data, None, None)
    h = jac.header
    _, y_hat = codec_steps.decode_latents(jac, engine)
    kept = engine.synthesis
    engine.synthesis = synthesis_of(kept)
    try:
        (rgb,) = image_transforms.synthesize(engine, [y_hat], [h.quality], [(h.height, h.width)])
    finally:
        engine.synthesis = kept
    return rgb.astype(np.int64)


def _with_tf32_inputs(synthesis: torch.nn.Module) -> torch.nn.Module:
    rounded = copy.deepcopy(synthesis)
    for layer in rounded.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            layer.weight.data = _tf32(layer.weight.data)
            layer.register_forward_pre_hook(lambda _layer, inputs: (_tf32(inputs[0]), *inputs[1:]))
    return rounded


class _InFloat64(torch.nn.Module):
    """g_s in float64: another arithmetic than the reference's float32, without TF32's rounding."""

    def __init__(self, synthesis: torch.nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(synthesis).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.double()).float()

    def __getitem__(self, index):  # synthesize_in_stripes reads the layers' strides
        return self.inner[index]

    def __len__(self) -> int:
        return len(self.inner)


def test_tf32_inputs_move_escapes_by_many_levels_where_float64_stays_within_one():
    entry = json.loads((EDGE / "edge.json").read_text())["escapes"]
    data = (EDGE / entry["file"]).read_bytes()
    reference = np.asarray(Image.open(EDGE / entry["decoded"])).astype(np.int64)
    as_float64 = np.abs(_decode_with(data, _InFloat64) - reference).max()
    as_tf32 = np.abs(_decode_with(data, _with_tf32_inputs) - reference).max()
    assert as_float64 <= 1
    assert as_tf32 > 100  # 255 here and on the H200


def _precision() -> object:
    get, _, _ = image_transforms._conv_precision("cuda")
    return get()


def test_the_block_sets_ieee_and_restores_the_programs_setting_also_after_an_error():
    _, put, ieee = image_transforms._conv_precision("cuda")
    before = _precision()
    assert before != ieee  # torch's default is TF32 for cuDNN convolutions
    with ieee_float32_convolutions():
        assert _precision() == ieee
    assert _precision() == before
    with pytest.raises(KeyError), ieee_float32_convolutions():
        raise KeyError("x")
    assert _precision() == before
    put(ieee)  # a program that chose IEEE itself keeps it
    try:
        with ieee_float32_convolutions():
            pass
        assert _precision() == ieee
    finally:
        put(before)


def test_torch_work_runs_convolutions_in_ieee_float32_on_the_engines_device():
    """Every float transform of the codec runs inside torch_work: for a CUDA engine cuDNN's convolutions are IEEE
    float32 (checked here without a GPU, on the flags it sets), for a CPU engine oneDNN's, each only there."""
    from types import SimpleNamespace

    _, _, ieee = image_transforms._conv_precision("cuda")
    cpu_get, cpu_put, cpu_ieee = image_transforms._conv_precision("cpu")
    before, cpu_before = _precision(), cpu_get()
    with image_transforms.torch_work(10**6, SimpleNamespace(device=torch.device("cuda"))):
        assert _precision() == ieee and cpu_get() == cpu_before
    assert _precision() == before
    cpu_put("bf16")  # a program that chose bf16 convolutions (taken on CPUs with AMX)
    try:
        with image_transforms.torch_work(10**6, SimpleNamespace(device=torch.device("cpu"))):
            assert cpu_get() == cpu_ieee and _precision() == before
        assert cpu_get() == "bf16"
    finally:
        cpu_put(cpu_before)


def test_overlapping_blocks_of_two_threads_keep_ieee_until_the_last_leaves():
    _, _, ieee = image_transforms._conv_precision("cuda")
    before = _precision()
    entered, release = threading.Event(), threading.Event()

    def other_thread():
        with ieee_float32_convolutions():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=other_thread)
    with ieee_float32_convolutions():
        worker.start()
        assert entered.wait(10)
    assert _precision() == ieee  # the other thread's block is still open
    release.set()
    worker.join(10)
    assert _precision() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_edge_vectors_decode_within_one_level_on_cuda():
    for name, entry in json.loads((EDGE / "edge.json").read_text()).items():
        reference = np.asarray(Image.open(EDGE / entry["decoded"])).astype(np.int64)
        pixels = codec.decode((EDGE / entry["file"]).read_bytes(), device="cuda").astype(np.int64)
        assert np.abs(pixels - reference).max() <= 1, name
