"""Training crops cut where the pixels already are (GPU memory, or pinned host memory), for :mod:`.gpu_session`.

Every training image is decoded once and kept as uint8 pixels; a batch of random crops with random flips is cut
by one gather, drawn from a generator on the same device, so the training loop copies no image data from the
host (docs/training_on_a_gpu.md).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .data import list_images, load_rgb

__all__ = ["DeviceCrops", "load_pixels"]


class DeviceCrops:
    """Random ``crop x crop`` patches with random flips, cut from pixels already in memory on ``device``.

    Every image is one slice of a single ``(pixels, 3)`` uint8 tensor; a batch is drawn (image,
    position, flips: uniform, as :class:`~.data.CropSampler` draws them) from a generator on the
    same device and gathered in one indexing operation, so no draw waits for the host.

    Example:
        >>> import numpy as np, torch
        >>> crops = DeviceCrops.from_arrays([np.zeros((40, 50, 3), np.uint8), np.ones((8, 8, 3), np.uint8)], 32)
        >>> crops.batch_uint8(4).shape, len(crops)
        (torch.Size([4, 32, 32, 3]), 1)
    """

    def __init__(self, pixels: torch.Tensor, shapes: list[tuple[int, int]], crop: int, seed: int = 0):
        device = pixels.device
        offsets = np.cumsum([0] + [h * w for h, w in shapes[:-1]])
        self.pixels, self.crop, self.device = pixels, crop, device
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.heights = torch.tensor([h for h, _ in shapes], dtype=torch.int64, device=device)
        self.widths = torch.tensor([w for _, w in shapes], dtype=torch.int64, device=device)
        self._ramp = torch.arange(crop, device=device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @classmethod
    def from_arrays(cls, images: list[np.ndarray], crop: int, seed: int = 0, device="cpu", pin=False) -> DeviceCrops:
        """Copy the images that are at least ``crop`` on each side into one tensor on ``device``."""
        images = [im for im in images if min(im.shape[:2]) >= crop]
        if not images:
            raise ValueError(f"no image is at least {crop} pixels on each side")
        total = sum(im.shape[0] * im.shape[1] for im in images)
        pixels = torch.empty((total, 3), dtype=torch.uint8, device=device, pin_memory=pin)
        at = 0
        for im in images:
            n = im.shape[0] * im.shape[1]
            pixels[at : at + n].copy_(torch.from_numpy(np.ascontiguousarray(im)).view(n, 3))
            at += n
        return cls(pixels, [im.shape[:2] for im in images], crop, seed)

    def __len__(self) -> int:
        return len(self.heights)

    def batch_uint8(self, size: int) -> torch.Tensor:
        """The next ``size`` crops as a uint8 ``(size, crop, crop, 3)`` tensor on the pixels' device."""
        c, g, d = self.crop, self.generator, self.device
        image = torch.randint(len(self), (size,), generator=g, device=d)
        h, w = self.heights[image], self.widths[image]
        top = (torch.rand(size, generator=g, device=d) * (h - c + 1)).long().clamp_max(h - c)
        left = (torch.rand(size, generator=g, device=d) * (w - c + 1)).long().clamp_max(w - c)
        flips = torch.rand(size, 2, generator=g, device=d) < 0.5
        rows = torch.where(flips[:, :1], c - 1 - self._ramp, self._ramp) + top[:, None]
        cols = torch.where(flips[:, 1:], c - 1 - self._ramp, self._ramp) + left[:, None]
        index = (self.offsets[image, None, None] + rows[:, :, None] * w[:, None, None]) + cols[:, None, :]
        return self.pixels[index]

    def state(self) -> torch.Tensor:
        """The generator state, for resumption."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`state`."""
        self.generator.set_state(state)


def load_pixels(folder: Path, crop: int, device: torch.device, data_on: str, seed: int) -> tuple[DeviceCrops, dict]:
    """Decode every image of ``folder`` (in threads) into a :class:`DeviceCrops` on ``device`` or in pinned memory."""
    started = time.monotonic()
    paths = list_images(folder)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda p: load_rgb(p, 512), paths))  # the size cap of CropSampler.from_folder
    usable = [im for im in images if min(im.shape[:2]) >= crop]
    total = sum(im.size for im in usable)
    where = "device"
    if device.type == "cuda" and data_on != "device":
        free, _ = torch.cuda.mem_get_info(device)
        # the pixels leave at least a quarter of the free memory (and 16 GiB) for training
        if data_on == "host" or total > free - max(free // 4, 16 << 30):
            where = "pinned host"
    storage = device if where == "device" else torch.device("cpu")
    crops = DeviceCrops.from_arrays(usable, crop, seed, storage, pin=where == "pinned host")
    info = {
        "images": len(usable),
        "images_smaller_than_crop": len(images) - len(usable),
        "bytes": total,
        "where": where,
        "load_s": round(time.monotonic() - started, 2),
    }
    return crops, info
