"""Using JAC through Pillow: save options, metadata, alpha, file objects and thumbnails.

Run from the repository root:  python examples/pillow_usage.py
"""

import io
import tempfile
from pathlib import Path

from PIL import Image, ImageCms

import pillow_jac  # noqa: F401  (importing registers the .jac format with Pillow)

SAMPLE = Path(__file__).with_name("sample.png")

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "photo.jac"
    photo = Image.open(SAMPLE).crop((96, 64, 224, 160))  # 128x96: small, so the example runs fast

    # Save by extension; quality runs from 1 to 8 (fractions allowed), not JPEG's 0-100.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010E] = "A hovercraft at sea"  # ImageDescription
    photo.save(path, quality=5.5, icc_profile=srgb, exif=exif)

    # Opening reads and checks the container (header, metadata, streams): no neural network runs yet.
    with Image.open(path) as im:
        print(im.format, im.size, im.mode, "quality", im.info["jac_quality"])
        print("EXIF description:", im.getexif()[0x010E])
        print("ICC profile kept:", im.info["icc_profile"] == srgb)
        im.thumbnail((96, 96))  # decodes, then resizes
        print("thumbnail:", im.size)

    # Metadata in im.info is kept on re-save unless you pass e.g. exif=b"" to drop it.
    with Image.open(path) as im:
        buffer = io.BytesIO()
        im.save(buffer, format="JAC", quality=3, exif=b"")
    print("re-saved to memory:", len(buffer.getvalue()), "bytes, EXIF dropped:", "exif" not in Image.open(buffer).info)

    # Alpha is stored losslessly next to the lossy colour planes.
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    buffer = io.BytesIO()
    rgba.save(buffer, format="JAC")
    back = Image.open(buffer)
    exact = back.getchannel("A").tobytes() == rgba.getchannel("A").tobytes()
    print("RGBA round trip:", back.mode, "alpha exact:", exact)

    # Palette, bilevel and CMYK images are converted (P -> RGB/RGBA, 1 -> L, CMYK -> RGB).
    buffer = io.BytesIO()
    photo.convert("P").save(buffer, format="JAC")
    print("P image stored as", Image.open(buffer).mode)
