"""Using JAC through imageio (v3 and v2 APIs).

Run from the repository root:  python examples/imageio_usage.py
"""

import tempfile
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio

import pillow_jac  # noqa: F401  (importing registers .jac with Pillow and imageio)

SAMPLE = Path(__file__).with_name("sample.png")

pixels = iio.imread(SAMPLE)[64:160, 96:224]  # a 128x96 crop, (H, W, 3) uint8

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "photo.jac"
    iio.imwrite(path, pixels, quality=4)  # extra keywords go to Pillow's save()
    print("properties:", iio.improps(path))
    meta = iio.immeta(path)
    print("metadata:", {k: meta[k] for k in ("jac_quality", "model_id")})
    back = iio.imread(path)
    print("read back:", back.shape, back.dtype)

    # In memory: name the extension, since bytes have no file name.
    data = iio.imwrite("<bytes>", pixels, extension=".jac", quality=2)
    print("encoded to memory:", len(data), "bytes")
    print("decoded from memory:", iio.imread(data, extension=".jac").shape)

    # The legacy v2 API works too.
    print("v2 imread:", iio2.imread(path).shape)
