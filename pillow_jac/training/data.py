"""Training images: decoded once into memory, then served as random flipped crops.

Decoding a JPEG costs more than a training step's worth of crops, and the training set (1247
photos, about 0.7 GB as pixels after the size cap) fits easily in memory, so the sampler keeps
every image as a uint8 array and cuts crops with numpy slicing: no worker processes needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}

__all__ = ["CropSampler", "list_images", "load_rgb", "to_model_input"]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def load_rgb(path: Path, max_short_side: int | None = None) -> np.ndarray:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 array, the short side at most ``max_short_side``.

    Downscaling large photos removes sensor noise and JPEG artefacts. 16-bit grey samples (modes ``I;16``
    and ``I`` within 0..65535) become ``round(v / 257)``; 16-bit colour, which Pillow reads as RGB, keeps
    each sample's high byte (within one level of that). Other samples wider than 8 bits (32-bit integers,
    floats) are refused.

    Raises:
        ValueError: the image has samples that do not fit 16 bits, or floating-point samples (naming ``path``).
    """
    with Image.open(path) as im:
        if im.mode.startswith("I"):  # I;16, I;16B, I (32-bit) ...: Image.convert("RGB") would clip them
            wide = np.asarray(im).astype(np.int64)
            if wide.size and (wide.min() < 0 or wide.max() > 0xFFFF):
                raise ValueError(f"{path}: mode {im.mode} samples outside 0..65535: convert it to 8 bits per sample")
            grey = ((wide * 2 + 257) // 514).astype(np.uint8)  # round(v / 257)
            im = Image.fromarray(grey, "L").convert("RGB")
        elif im.mode == "F":
            raise ValueError(f"{path}: floating-point samples (mode F): convert it to 8 bits per sample")
        else:
            im = im.convert("RGB")
        if max_short_side and min(im.size) > max_short_side:
            f = max_short_side / min(im.size)
            im = im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.LANCZOS)
        return np.asarray(im).copy()


class CropSampler:
    """Random ``crop x crop`` patches with random horizontal and vertical flips.

    Example:
        >>> import numpy as np
        >>> sampler = CropSampler([np.zeros((40, 50, 3), np.uint8)], crop=32, seed=0)
        >>> sampler.batch(4).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0):
        self.images = [im for im in images if min(im.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no image is at least {crop} pixels on each side")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_folder(cls, folder: str | Path, crop: int, seed: int = 0, max_short_side: int = 512) -> CropSampler:
        """Load every image of ``folder`` (see :func:`load_rgb`)."""
        return cls([load_rgb(p, max_short_side) for p in list_images(folder)], crop, seed)

    def batch_uint8(self, size: int, pin_memory: bool = False) -> torch.Tensor:
        """The next ``size`` crops as a uint8 ``(size, crop, crop, 3)`` tensor (channels last).

        A quarter of the bytes of :meth:`batch` to copy to a GPU; :func:`to_model_input` finishes
        the conversion there. ``pin_memory`` puts it in page-locked memory, for asynchronous copies.
        """
        c = self.crop
        out = torch.empty((size, c, c, 3), dtype=torch.uint8, pin_memory=pin_memory)
        view = out.numpy()
        for i in range(size):
            im = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(im.shape[0] - c + 1)
            left = self.rng.integers(im.shape[1] - c + 1)
            patch = im[top : top + c, left : left + c]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            view[i] = patch
        return out

    def batch(self, size: int) -> torch.Tensor:
        """A float32 batch ``(size, 3, crop, crop)`` in ``[0, 1]``."""
        return to_model_input(self.batch_uint8(size), torch.device("cpu"))

    def state(self) -> dict:
        """The generator state, for exact resumption."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`state`."""
        self.rng.bit_generator.state = state


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 ``(B, H, W, 3)`` batch as float32 ``(B, 3, H, W)`` in ``[0, 1]`` on ``device``.

    The result is channels_last in memory (the permuted view of the channels-last bytes), the
    layout the trainer runs in. Division by 255 is exact IEEE arithmetic, so the values are the
    same on every device. A pinned batch is copied without waiting for the device.

    Example:
        >>> import torch
        >>> x = to_model_input(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8), torch.device("cpu"))
        >>> x.shape, float(x.max()), x.is_contiguous(memory_format=torch.channels_last)
        (torch.Size([1, 3, 2, 2]), 1.0, True)
    """
    x = batch.to(device, non_blocking=batch.is_pinned())
    return x.permute(0, 3, 1, 2).float().div_(255.0)
