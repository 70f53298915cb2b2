"""Convert a folder of images to JAC and back with worker processes (what `jac batch` does).

Run from the repository root:  python examples/batch_convert.py
"""

import tempfile
from pathlib import Path

from PIL import Image

from pillow_jac.cli import main

SAMPLE = Path(__file__).with_name("sample.png")

if __name__ == "__main__":  # needed: the workers are separate processes that import this file
    with tempfile.TemporaryDirectory() as tmp:
        photos, encoded, decoded = Path(tmp, "photos"), Path(tmp, "jac"), Path(tmp, "png")
        photos.mkdir()
        sample = Image.open(SAMPLE)
        for i in range(4):  # four 128x128 tiles of the sample stand in for a folder of photos
            x, y = 128 * (i % 2), 128 * (i // 2)
            sample.crop((x, y, x + 128, y + 128)).save(photos / f"tile{i}.png")

        # Same as the shell command:  jac batch photos jac --to jac -q 3 -j 2
        assert main(["batch", str(photos), str(encoded), "--to", "jac", "-q", "3", "-j", "2", "--quiet"]) == 0
        assert main(["batch", str(encoded), str(decoded), "--to", "png", "-j", "2", "--quiet"]) == 0

        for src in sorted(photos.iterdir()):
            jac = encoded / (src.stem + ".jac")
            png = decoded / (src.stem + ".png")
            print(f"{src.name}: {src.stat().st_size:6d} B PNG -> {jac.stat().st_size:6d} B JAC -> {png.name}")
