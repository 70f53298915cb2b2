"""Tests of reading and writing ``.jac`` through imageio (v3 and v2 APIs)."""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_jac
from pillow_jac import imageio_plugin
from pillow_jac.constants import DEFAULT_QUALITY, MAGIC

iio = pytest.importorskip("imageio.v3")
iio2 = pytest.importorskip("imageio.v2")


def known_extensions() -> dict:
    from imageio.config import known_extensions

    return known_extensions


ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB"))[100:140, 200:248].copy()  # 40x48


@pytest.fixture(scope="module")
def jac_file(tmp_path_factory, rgb: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("imageio") / "image.jac"
    iio.imwrite(path, rgb, quality=5)
    return path


def test_known_extension_registered() -> None:
    from imageio.config import known_plugins

    entries = known_extensions()[".jac"]
    assert any(entry.priority == ["pillow_jac", "pillow"] for entry in entries)
    plugin = known_plugins["pillow_jac"].plugin_class
    assert plugin is imageio_plugin.JacPlugin
    from imageio.plugins.pillow import PillowPlugin

    assert issubclass(plugin, PillowPlugin)


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """Exceptions Python ignores (``Exception ignored in ...``, such as from ``__del__``)."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
    return seen


@pytest.mark.parametrize("frames", [np.zeros((2, 16, 16, 3), np.uint8), [np.zeros((16, 16), np.uint8)] * 3])
def test_multi_frame_write_is_refused(tmp_path: Path, unraisable: list, frames) -> None:
    n = len(frames)
    match = f"a JAC file holds one image, but {n} frames were written"
    with pytest.raises(ValueError, match=match):
        iio.imwrite("<bytes>", frames, extension=".jac")
    path = tmp_path / "frames.jac"
    with pytest.raises(ValueError, match=match):
        iio.imwrite(path, frames)
    with pytest.raises(ValueError, match=match):
        iio2.mimwrite(tmp_path / "v2.jac", frames)
    gc.collect()
    assert not path.exists() and not (tmp_path / "v2.jac").exists()
    assert unraisable == []


@pytest.mark.parametrize("shape", [(3, 16, 16), (16, 16, 5)])
def test_an_array_read_as_frames_says_how_its_shape_was_read(shape: tuple) -> None:
    """Channels first, or five channels: imageio reads the first axis as frames; the error says so."""
    with pytest.raises(ValueError, match=rf"an array of shape \({shape[0]}, 16, {shape[2]}\) is read as a batch"):
        iio.imwrite("<bytes>", np.zeros(shape, np.uint8), extension=".jac")


def test_incremental_writes_are_refused_after_one_frame(tmp_path: Path, rgb: np.ndarray, unraisable: list) -> None:
    """A second frame is refused, and the handle then writes nothing: not the first frame, over a file or anew."""
    path, kept = tmp_path / "one.jac", tmp_path / "kept.jac"
    kept.write_bytes(b"kept")
    with iio.imopen(path, "w") as f:
        f.write(rgb)
        with pytest.raises(ValueError, match="2 frames were written") as refused:
            f.write(rgb)
        assert "read as a batch" not in str(refused.value)  # a second image, not one array taken for frames
    assert not path.exists()
    with pytest.raises(ValueError, match="2 frames were written"):  # the error leaves the block
        with iio.imopen(kept, "w") as f:
            for frame in (rgb, rgb):
                f.write(frame)
    with pytest.raises(ValueError, match="2 frames were written"):  # imageio's v2 writer, which closes alike
        with iio2.get_writer(kept, format="JAC") as writer:
            for frame in (rgb, rgb):
                writer.append_data(frame)
    gc.collect()
    assert unraisable == []
    assert kept.read_bytes() == b"kept"
    assert iio.imwrite("<bytes>", rgb[None], extension=".jac").startswith(MAGIC)  # a batch of one is one image
    retried = tmp_path / "retried.jac"  # a batch refused before any frame was queued: the next image is written
    with iio.imopen(retried, "w") as f:
        with pytest.raises(ValueError, match="2 frames were written"):
            f.write(np.stack([rgb, rgb]))
        f.write(rgb)
    with Image.open(retried) as im:
        assert im.size == (48, 40)


@pytest.mark.filterwarnings("ignore:Can't determine file format to write as")
def test_the_jac_plugin_without_a_format_says_how_to_name_one(rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"no output format: .*extension= \(such as '.jac'\) or format="):
        iio.imwrite("<bytes>", rgb, plugin="pillow_jac")  # imageio's own plugin: KeyError: None


def test_a_write_that_failed_is_no_frame(tmp_path: Path, rgb: np.ndarray, unraisable: list) -> None:
    """A write refused (an array Pillow cannot take, a bad quality) leaves the handle ready for the one image."""
    path = tmp_path / "retry.jac"
    with iio.imopen(path, "w") as f:
        with pytest.raises(TypeError):
            f.write(rgb.astype(np.uint16))  # Pillow's error for 3-channel 16-bit data
        f.write(rgb)
    with Image.open(path) as im:
        assert im.size == (48, 40)
    with iio.imopen("<bytes>", "w", extension=".jac") as f:
        with pytest.raises(ValueError, match="quality"):
            f.write(rgb, quality=75)
        assert f.write(rgb, quality=4).startswith(MAGIC)
    gc.collect()
    assert unraisable == []


def test_register_is_idempotent() -> None:
    before = len(known_extensions()[".jac"])
    assert imageio_plugin.register() is True
    pillow_jac.register()
    assert len(known_extensions()[".jac"]) == before


def test_register_without_imageio(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio" else real_find_spec(name, *a)
    )
    monkeypatch.delitem(sys.modules, "imageio")  # not imported yet
    assert imageio_plugin.register() is False
    monkeypatch.setitem(sys.modules, "imageio", None)  # its import blocked
    assert imageio_plugin.register() is False


def test_v3_write_read_path(jac_file: Path, rgb: np.ndarray) -> None:
    assert jac_file.read_bytes().startswith(MAGIC)
    back = iio.imread(jac_file)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert np.mean(np.abs(back.astype(int) - rgb)) < 24


def test_v3_bytes_roundtrip(rgb: np.ndarray) -> None:
    data = iio.imwrite("<bytes>", rgb, extension=".jac")
    assert isinstance(data, bytes) and data.startswith(MAGIC)
    assert data == pillow_jac.encode(rgb, DEFAULT_QUALITY)
    np.testing.assert_array_equal(iio.imread(data, extension=".jac"), pillow_jac.decode(data))
    assert iio.improps(data).shape == rgb.shape  # found by its signature too
    assert iio.immeta(data)["jac_quality"] == DEFAULT_QUALITY


def test_v3_quality_and_plugin_argument(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "q.jac"
    iio.imwrite(path, rgb, plugin="pillow", quality=2.5)
    assert iio.immeta(path)["jac_quality"] == 2.5


def test_v3_invalid_quality(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="quality"):
        iio.imwrite(tmp_path / "bad.jac", rgb, quality=90)


def test_failed_write_keeps_the_file_there(tmp_path: Path, rgb: np.ndarray, unraisable: list) -> None:
    """imageio's Pillow plugin opens (empties) the output before Pillow encodes: a failed encode destroyed the
    file that was there. The JAC plugin encodes first."""
    path = tmp_path / "keep.jac"
    iio.imwrite(path, rgb, quality=2)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="too small"):
        iio.imwrite(path, rgb, target_size=50)
    with pytest.raises(ValueError, match="quality"):
        iio.imwrite(path, rgb, quality=90)
    with pytest.raises(ValueError, match="cannot write mode I;16"):
        iio.imwrite(path, np.zeros((8, 8), np.uint16))
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="quality"):
        iio.imwrite(tmp_path / "new.jac", rgb, quality=90)
    gc.collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jac"]  # no empty file for the failed new one
    assert unraisable == []  # not tried again when the plugin was collected


def test_improps(jac_file: Path) -> None:
    props = iio.improps(jac_file)
    assert props.shape == (40, 48, 3)
    assert props.dtype == np.uint8


def test_immeta(jac_file: Path) -> None:
    meta = iio.immeta(jac_file)
    assert meta["jac_quality"] == 5.0
    assert isinstance(meta["model_id"], str)
    assert meta["mode"] == "RGB"


def test_gray_and_alpha_layouts(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[:, :, 1].copy()
    iio.imwrite(tmp_path / "g.jac", gray)
    assert iio.imread(tmp_path / "g.jac").shape == gray.shape

    alpha = np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))
    rgba = np.dstack([rgb, alpha])
    iio.imwrite(tmp_path / "a.jac", rgba)
    back = iio.imread(tmp_path / "a.jac")
    assert back.shape == (40, 48, 4)
    np.testing.assert_array_equal(back[:, :, 3], alpha)


def test_v2_api(jac_file: Path, tmp_path: Path, rgb: np.ndarray) -> None:
    assert iio2.imread(jac_file).shape == rgb.shape
    data = jac_file.read_bytes()
    assert iio2.imread(data, format=".jac").shape == rgb.shape
    out = tmp_path / "v2.jac"
    iio2.imwrite(out, rgb, quality=3)
    with Image.open(out) as im:
        assert im.format == "JAC" and im.info["jac_quality"] == 3.0


def test_16_bit_data_is_rejected(tmp_path: Path) -> None:
    deep = np.zeros((8, 8), np.uint16)
    with pytest.raises(ValueError, match="cannot write mode I;16"):
        iio.imwrite(tmp_path / "deep.jac", deep)


def test_importing_pillow_jac_leaves_imageio_for_later_and_registers_when_it_comes() -> None:
    """``import pillow_jac`` does not import imageio (and numpy with it); importing imageio later registers .jac."""
    script = (
        "import sys\n"
        "import pillow_jac\n"
        "assert 'imageio' not in sys.modules and 'numpy' not in sys.modules, 'imported at once'\n"
        "import numpy as np, imageio.v3 as iio\n"
        "from imageio.config import known_plugins\n"
        "names = list(known_plugins)\n"
        "assert names.index('pillow_jac') == names.index('pillow') - 1, names\n"
        "assert type(sys.modules['imageio'].__loader__).__name__ == 'SourceFileLoader', 'imageio keeps its loader'\n"
        "data = iio.imwrite('<bytes>', np.zeros((8, 8, 3), np.uint8), extension='.jac', quality=1)\n"
        "assert iio.imread(data, extension='.jac').shape == (8, 8, 3)\n"
        "assert not any(type(f).__module__ == 'pillow_jac.imageio_plugin' for f in sys.meta_path), 'hook left'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_unusable_imageio_is_warned_about_and_pillow_still_works(tmp_path: Path) -> None:
    """An imageio without ``imageio.config`` (before 2.16) or one that fails to import broke ``import pillow_jac``."""
    (tmp_path / "imageio").mkdir()
    (tmp_path / "imageio" / "__init__.py").write_text("")  # an imageio of no use to us
    script = (
        "import warnings\n"
        "import pillow_jac\n"
        "from PIL import Image\n"
        "assert 'JAC' in Image.OPEN\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    import imageio\n"
        "assert [str(w.message) for w in seen if 'not registered with imageio' in str(w.message)], seen\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.filterwarnings("ignore:Can.t determine file format")
def test_format_jac_reaches_the_jac_plugin_without_an_extension(tmp_path: Path, rgb: np.ndarray) -> None:
    """imageio gives a write without ``.jac`` in its name to the first plugin that takes it: ours, before ``pillow``."""
    path = tmp_path / "no-extension"
    path.write_bytes(b"kept")
    with pytest.raises(ValueError, match="quality"):
        iio.imwrite(path, rgb, format="JAC", quality=9)  # refused before the file is touched
    assert path.read_bytes() == b"kept"
    out = io.BytesIO()
    with pytest.raises(ValueError, match="2 frames"):
        iio.imwrite(out, np.stack([rgb, rgb]), format="JAC")
    assert out.getvalue() == b""
    iio.imwrite(out, rgb, format="JAC")
    assert out.getvalue().startswith(MAGIC)
    png = iio.imwrite("<bytes>", rgb, format="PNG")  # another format: imageio's Pillow plugin, unchanged
    assert np.array_equal(iio.imread(png), rgb)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE")
def test_a_write_that_fails_on_the_disk_leaves_the_old_file(tmp_path: Path, jac_file: Path) -> None:
    """A write cut short (a full disk, here a file-size limit) left a truncated .jac in place of the old file."""
    old = tmp_path / "old.jac"
    old.write_bytes(jac_file.read_bytes())
    script = (
        "import resource, signal, sys\n"
        "import numpy as np, imageio.v3 as iio\n"
        "import pillow_jac\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))\n"
        "big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)\n"
        "try:\n"
        "    iio.imwrite(sys.argv[1], big, quality=8)\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    limit = str(old.stat().st_size + 64)
    result = subprocess.run(
        [sys.executable, "-c", script, str(old), limit], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("refused")
    assert old.read_bytes() == jac_file.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jac"]


@pytest.mark.skipif(not hasattr(os, "link"), reason="hard links")
def test_a_write_to_a_hard_linked_file_reaches_every_name(tmp_path: Path, rgb: np.ndarray) -> None:
    """A replaced file would leave the old bytes under the other names: such a file is written in place."""
    path, other = tmp_path / "a.jac", tmp_path / "other-name.jac"
    path.write_bytes(b"OLD")
    os.link(path, other)
    iio.imwrite(path, rgb, quality=2)
    assert other.read_bytes() == path.read_bytes() and path.read_bytes().startswith(MAGIC)


@pytest.mark.parametrize(
    ("shape", "mode", "rule"),
    [((40, 48, 3), "L", "(height, width)"), ((2, 16, 16, 3), "RGB", "(height, width, channels)")],
)
def test_with_a_mode_the_batch_hint_states_that_modes_rule(shape: tuple, mode: str, rule: str) -> None:
    """imageio reads the frames by ``mode=`` when it is given; the hint stated the rule without it, which says
    a (40, 48, 3) array is one image, in the same message that refused it as 40 frames."""
    with pytest.raises(ValueError, match="is read as a batch of frames") as refused:
        iio.imwrite("<bytes>", np.zeros(shape, np.uint8), extension=".jac", mode=mode)
    assert str(refused.value).endswith(f"with mode={mode!r} one image is {rule})")
    assert "1 to 4 channels" not in str(refused.value)
