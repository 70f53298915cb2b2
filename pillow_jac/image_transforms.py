"""The float transforms of one engine on numpy images (Minnen et al. 2018, fig. 1; CODING.md section 1).

Encoder: the padded image (edge pixels repeated, CODING.md section 1.2) through g_a in stripes
(:func:`analyze`), the quality's gains and h_a (:func:`hyper_analyze`), then the effort's refinement
(:mod:`pillow_jac.model.refine`) and rounding to the integer symbols (:func:`symbols`). Decoder: the
inverse gains and g_s in stripes, to 8-bit colour planes (:func:`synthesize`, CODING.md section 1.4).

:func:`pillow_jac.encode`, the batches (:mod:`pillow_jac.codec_batch`) and the target search
(:mod:`pillow_jac.target_search`) run these same steps, so their latents, and files, are the same.
Every step runs as :func:`torch_work` of its images' size. Imported with torch, by the codec's set-up
(:func:`pillow_jac.codec_steps.guarded_engine`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from . import container, interpreter_exit
from .constants import DOWNSAMPLING, EFFORT_ITERATIONS, EFFORT_REAL_CHECK_PIXELS
from .forksafe import fork_safe_lock
from .intra_op_threads import single_threaded
from .latent_coding import SYMBOL_LIMIT
from .stripes import analyze_in_stripes, stripe_rows_for, synthesize_in_stripes

__all__ = [
    "SMALL_IMAGE_PIXELS",
    "SMALL_IMAGE_THREADS",
    "torch_work",
    "ieee_float32_convolutions",
    "padded_pixels",
    "analyze",
    "hyper_analyze",
    "symbols",
    "coded",
    "synthesize",
]

#: images up to this many pixels run their float transforms on one torch thread where OpenMP's threads
#: spin (:mod:`pillow_jac.openmp_wait`) or more than :data:`SMALL_IMAGE_THREADS` are set: beside other
#: work, spinning threads made their thousands of small ops many times slower
SMALL_IMAGE_PIXELS = 512 * 512
#: the thread count small images keep where OpenMP's threads sleep (two was measured; more was not)
SMALL_IMAGE_THREADS = 2


def torch_work(pixels: int, engine, coding: bool = False) -> contextlib.AbstractContextManager:
    """The context of torch work on ``pixels`` pixels of images (a context manager).

    One torch thread for small images on the CPU unless OpenMP's threads sleep and at most
    :data:`SMALL_IMAGE_THREADS` are set, and for the exact entropy coding (``coding``: its wavefronts are
    hundreds of small products) of any image where OpenMP's threads spin (beside other work a 768x512 decode
    took 2.4-13 s on two spinning threads against 1.0-1.4 s on one; on an otherwise idle machine 0.30 s
    against 0.39 s); IEEE float32 convolutions on the engine's device
    (:func:`ieee_float32_convolutions`: the decoder's pixels, and the encoder's latents the same whether a
    decode overlaps it or not); no autocast that a caller entered (its bf16 or fp16 would reach g_s and move
    samples by up to 255 levels, or make them NaN: CODING.md section 1.1; the effort search enters its own);
    new tensors on the engine's device, whatever default device a caller set (``torch.set_default_device``);
    and the work counted for a clean interpreter exit (:func:`pillow_jac.interpreter_exit.working`). With
    sleeping threads two are faster than one from 128x128 pixels up and level beside other work (2-core AVX2
    CPU, kodim01 crops at quality 4: 512x512 encode 0.73 s against 1.12 s, decode 1.20 s against 1.65 s, an
    effort-1 encode of 384x256 4.6 s against 8.5 s; with a torch program beside it, level).
    """
    with contextlib.ExitStack() as region:  # left again if entering the second part fails
        region.enter_context(interpreter_exit.working())
        if engine.device.type == "cpu" and (pixels <= SMALL_IMAGE_PIXELS or coding):
            keep = SMALL_IMAGE_THREADS if pixels <= SMALL_IMAGE_PIXELS else sys.maxsize  # sleeping: as set
            region.enter_context(single_threaded(keep_if_sleeping=keep))
        region.enter_context(ieee_float32_convolutions(engine.device.type))
        region.enter_context(torch.autocast(engine.device.type, enabled=False))
        if torch.empty(0).device != engine.device:  # a mode that every torch call goes through: only if needed
            # (a new tensor's device: where a caller's torch.device block or set_default_device puts it)
            region.enter_context(torch.device(engine.device))  # not a default device the caller set (meta, cuda)
        return region.pop_all()


_precision_lock = fork_safe_lock()
_precision_users: dict[str, int] = {}  # by device type: the blocks open now
_precision_saved: dict[str, object] = {}  # by device type: the program's setting while blocks are open


def _conv_precision(device_type: str) -> tuple[Callable[[], object], Callable[[object], None], object] | None:
    """``(get, set, ieee)`` of the float32 convolution precision on ``device_type``, or None where it has none.

    On CUDA, cuDNN's: the per-operator setting where torch has it (torch 2.9 and later refuse to read the
    legacy ``allow_tf32`` once a program has set the per-operator flags differently, so the legacy flag is
    used only where the per-operator one does not exist). On the CPU, oneDNN's per-operator setting, which a
    program may set to bf16 or TF32 (taken on CPUs with such instructions).
    """
    if device_type == "cuda":
        cudnn = torch.backends.cudnn
        conv = getattr(cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            return (lambda: conv.fp32_precision), (lambda value: setattr(conv, "fp32_precision", value)), "ieee"
        return (lambda: cudnn.allow_tf32), (lambda value: setattr(cudnn, "allow_tf32", value)), False
    conv = getattr(torch.backends.mkldnn, "conv", None) if device_type == "cpu" else None
    if conv is not None and hasattr(conv, "fp32_precision"):
        return (lambda: conv.fp32_precision), (lambda value: setattr(conv, "fp32_precision", value)), "ieee"
    return None


@contextlib.contextmanager
def ieee_float32_convolutions(device_type: str = "cuda") -> Iterator[None]:
    """Float32 convolutions on ``device_type`` in IEEE float32 within the block (CODING.md section 1.1).

    cuDNN's default multiplies float32 convolution inputs rounded to TF32 (10 bits of mantissa). On
    latents far from what an encoder writes (the edge vector ``escapes``, values up to 4095) that moves
    samples by up to 255 levels, where float32 and float64 stay within one. On the CPU, oneDNN is IEEE
    unless a program chose bf16 or TF32 (``torch.backends.mkldnn.conv.fp32_precision``). The setting is
    the process's: it is changed when the first of overlapping blocks (of any thread) enters and restored
    when the last one leaves, so a program's own convolutions in another thread meanwhile run in IEEE
    float32 too, and there, on torch 2.9 and later, reading the legacy ``torch.backends.cudnn.allow_tf32``
    raises (torch refuses it while the convolutions' and RNNs' settings differ; the per-operator settings
    read as usual).
    """
    access = _conv_precision(device_type)
    if access is None:
        yield
        return
    get, put, ieee = access
    entered = False
    try:
        with _precision_lock:
            if _precision_users.get(device_type, 0) == 0:
                if device_type not in _precision_saved:  # else left by a restore that an interrupt cut short
                    _precision_saved[device_type] = get()
                put(ieee)
            _precision_users[device_type] = _precision_users.get(device_type, 0) + 1
            entered = True
        yield
    finally:
        if entered:
            with _precision_lock:
                _precision_users[device_type] -= 1
                if _precision_users[device_type] == 0:
                    put(_precision_saved[device_type])  # restored before it is forgotten
                    del _precision_saved[device_type]


def _precision_in_child() -> None:
    """A forked child has none of its parent's blocks: the program's setting back, and the counts forgotten."""
    for device_type, saved in list(_precision_saved.items()):
        access = _conv_precision(device_type)
        if access is not None:
            access[1](saved)
    _precision_saved.clear()
    _precision_users.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_precision_in_child)


def padded_pixels(
    colors: Sequence[np.ndarray],
    first: int,
    end: int,
    latent_width: int,
    device,
    columns: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Rows ``[first, end)`` of padded images (edge pixels repeated) as a ``(B, 3, rows, 16 Wy)`` tensor in [0, 1].

    The input of g_a (CODING.md section 1.2). ``columns``: only those ``[first, end)`` columns of the padded width.
    """
    blocks = []
    start, stop = (0, latent_width * DOWNSAMPLING) if columns is None else columns
    for color in colors:
        height, width = color.shape[:2]
        rows = np.minimum(np.arange(first, end), height - 1)
        columns_read = np.minimum(np.arange(start, stop), width - 1)
        blocks.append(color[rows[:, None], columns_read[None, :]])
    x = torch.from_numpy(np.stack(blocks)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def _rows_of(colors: Sequence[np.ndarray], device) -> Callable[..., torch.Tensor]:
    """``(first, end[, first_column, end_column]) -> padded rows`` of images of one latent shape.

    Built stripe by stripe (g_a), or window by window (the effort search's tiles) where columns are given.
    """
    (_, yw), _ = container.latent_shapes(colors[0].shape[1], colors[0].shape[0])

    def rows(first: int, end: int, first_column: int | None = None, end_column: int | None = None) -> torch.Tensor:
        columns = None if first_column is None else (first_column, end_column)
        return padded_pixels(colors, first, end, yw, device, columns)

    return rows


def analyze(engine, colors: Sequence[np.ndarray]) -> torch.Tensor:
    """g_a of images of one latent shape, ``(H, W, 3)`` uint8 each: ``y`` as ``(B, M, Hy, Wy)``, in stripes."""
    shape, _ = container.latent_shapes(colors[0].shape[1], colors[0].shape[0])
    with torch.inference_mode(), torch_work(sum(c.shape[0] * c.shape[1] for c in colors), engine):
        rows = stripe_rows_for(shape[1] * len(colors))  # the images of a batch share one stripe's pixels
        return analyze_in_stripes(engine.model.g_a, _rows_of(colors, engine.device), shape, rows)


def hyper_analyze(engine, y: torch.Tensor, quality: float, pixels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """g_a's output scaled by the gains of a stored quality, and h_a of it: ``(y, z)`` (z None without a hyperprior).

    ``pixels``: the images' pixel count, for :func:`torch_work`.
    """
    with torch.inference_mode(), torch_work(pixels, engine):
        y = y * engine.gains(quality).to(y)
        z = engine.model.h_a(y) if engine.config.hyperprior else None
    return y, z


def symbols(
    engine, y: torch.Tensor, z: torch.Tensor | None, quality: float, effort: int, color: np.ndarray
) -> tuple[tuple[np.ndarray | None, np.ndarray], tuple[bytes, bytes] | None]:
    """One image's integer latents ``(z_hat, y_hat)``: its scaled ``y`` and ``z`` refined at ``effort`` and rounded.

    ``color`` is the image's ``(H, W, 3)`` colour planes, the target of the refinement. Returns the latents
    and their coded streams ``(z, y)`` where choosing them coded them (an image of up to
    :data:`~pillow_jac.constants.EFFORT_REAL_CHECK_PIXELS` whose search changed a latent: the effort's real
    check, :mod:`pillow_jac.model.refine`), else None: :func:`pillow_jac.codec_steps.streams_of` codes them once.
    """
    height, width = color.shape[:2]
    if not effort:
        return _symbols_of(y, z), None
    from .model.refine import refine_latents

    with torch_work(height * width, engine):
        refined = _symbols_of(*refine_latents(
            engine.model, _rows_of([color], engine.device), y.clone(), None if z is None else z.clone(), quality,
            (height, width), EFFORT_ITERATIONS[effort],
        ))  # fmt: skip
    if height * width > EFFORT_REAL_CHECK_PIXELS:  # on a 16x16 image 2 estimated bytes saved became 1 dB lost
        return refined, None
    plain = _symbols_of(y, z)
    if all(np.array_equal(a, b) for a, b in zip(plain, refined, strict=True)):
        return plain, None  # the search kept every latent: nothing to compare
    candidates = [(latents, coded(engine, *latents)) for latents in (plain, refined)]
    return min(candidates, key=lambda candidate: _real_loss(engine, *candidate, quality, color))


def _symbols_of(y: torch.Tensor, z: torch.Tensor | None) -> tuple[np.ndarray | None, np.ndarray]:
    """``(z_hat, y_hat)``: one image's latents rounded (:func:`_rounded`), z_hat None without a hyperprior."""
    return None if z is None else _rounded(z), _rounded(y)


def coded(engine, z_hat: np.ndarray | None, y_hat: np.ndarray) -> tuple[bytes, bytes]:
    """The coded streams ``(z, y)`` of one image's integer latents (CODING.md section 2), as torch work.

    Of the padded image's size, as entropy coding (:func:`torch_work`).
    """
    pixels = y_hat.shape[-2] * y_hat.shape[-1] * DOWNSAMPLING**2
    with torch.inference_mode(), torch_work(pixels, engine, coding=True):
        return engine.latents.encode(z_hat, y_hat)


def _real_loss(engine, latents: tuple, streams: tuple[bytes, bytes], quality: float, color: np.ndarray) -> float:
    """``lambda * 255^2 * MSE + bpp`` of the real file of ``latents``: its coded ``streams`` and its decoded pixels."""
    from .model.objective import quality_lambda

    _, y_hat = latents
    z_stream, y_stream = streams
    (pixels,) = synthesize(engine, [y_hat], [quality], [color.shape[:2]])
    mse = float(np.mean((pixels.astype(np.float64) - color) ** 2)) / 255.0**2
    with torch.device("cpu"):  # not a default device the caller set
        lmbda = float(quality_lambda(torch.tensor([float(quality)]), engine.config.lambdas)[0])
    bpp = 8 * (len(z_stream) + len(y_stream)) / (color.shape[0] * color.shape[1])
    return lmbda * 255.0**2 * mse + bpp


def _rounded(t: torch.Tensor) -> np.ndarray:
    """The integer symbols of one image's latents ``(1, C, H, W)``: rounded and clamped to the symbol range.

    The encoder's quantisation (CODING.md section 1.2).
    """
    with interpreter_exit.working():  # torch work (on CUDA, .cpu() waits for the analysis queued before it)
        return torch.round(t).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)[0].cpu().numpy().astype(np.int64)


def synthesize(engine, y_hats: Sequence[np.ndarray], qualities: Sequence[float], sizes: Sequence[tuple[int, int]]):
    """g_s of integer latents ``(M, Hy, Wy)`` of one shape at stored qualities: ``(H, W, 3)`` uint8 colour planes each.

    ``clamp(round(255 * g_s(y_hat * inverse_gain(q))), 0, 255)`` cropped to each image's ``(height, width)``
    (CODING.md section 1.4), computed stripe by stripe, each stripe stored as it is made.
    """
    outputs = [np.empty((h, w, 3), np.uint8) for h, w in sizes]
    with torch.inference_mode(), torch_work(sum(h * w for h, w in sizes), engine):
        y = torch.from_numpy(np.stack(y_hats)).to(engine.device).float()
        y = y * torch.cat([engine.gains(q, inverse=True) for q in qualities]).to(y)
        if engine.device.type == "cpu":
            y = y.contiguous(memory_format=torch.channels_last)

        def store(first_row: int, x_hat: torch.Tensor) -> None:  # one stripe of g_s output to 8-bit pixels
            for i, (height, width) in enumerate(sizes):
                end = min(height, first_row + x_hat.shape[2])
                if first_row < end:
                    part = x_hat[i, :, : end - first_row, :width]
                    # NaN is 0 (CODING.md 1.4): clamp passes NaN on, and its cast to uint8 is the machine's
                    part = part.nan_to_num(nan=0.0, posinf=1.0, neginf=0.0)
                    pixels = (part.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
                    outputs[i][first_row:end] = pixels.cpu().numpy()

        synthesize_in_stripes(engine.synthesis, y, sink=store)
    return outputs
