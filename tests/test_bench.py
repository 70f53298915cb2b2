"""Unit tests of the benchmark helpers: metrics, BD-rate, codec adapters, the rd and speed drivers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_jac
from pillow_jac.bench import metrics
from pillow_jac.bench.codecs import ALL_CODECS, CodecUnavailable, get_codec, get_codecs

# -- PSNR, bpp, MS-SSIM ---------------------------------------------------------------------------


def test_bits_per_pixel():
    assert metrics.bits_per_pixel(768 * 512 // 8, 512, 768) == 1.0
    with pytest.raises(ValueError):
        metrics.bits_per_pixel(10, 0, 5)


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    assert metrics.psnr(a, a) == math.inf
    # MSE 1 -> 20 log10(255)
    assert metrics.psnr(a, a + 1) == pytest.approx(20 * math.log10(255))
    # half the samples off by 2: MSE 2
    b = a.copy()
    b[:4] = 2
    assert metrics.mse(a, b) == 2.0
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 2))
    # no uint8 wrap-around: 0 vs 255 is MSE 255^2, 0 dB
    assert metrics.psnr(a, np.full_like(a, 255)) == pytest.approx(0.0)


def test_psnr_rejects_mismatch():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(TypeError):
        metrics.psnr(np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32))


def test_ms_ssim_db():
    assert metrics.ms_ssim_db(0.9) == pytest.approx(10.0)
    assert metrics.ms_ssim_db(1.0) == math.inf


def test_ms_ssim():
    pytest.importorskip("pytorch_msssim")
    rng = np.random.default_rng(1)
    a = (rng.random((192, 200, 3)) * 255).astype(np.uint8)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert 0.0 < metrics.ms_ssim(a, noisy) < 1.0
    assert math.isnan(metrics.ms_ssim(a[:100], a[:100]))  # too small for five scales


# -- BD-rate -----------------------------------------------------------------------------------------

ANCHOR_RATE = [0.1, 0.2, 0.4, 0.8, 1.6]
ANCHOR_PSNR = [28.0, 30.5, 33.0, 35.5, 38.0]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor", [0.8, 1.0, 1.25, 0.5])
def test_bd_rate_constant_factor(method, factor):
    # the test codec needs `factor` times the anchor's bits at every quality: BD-rate = factor - 1
    test_rate = [r * factor for r in ANCHOR_RATE]
    assert metrics.bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR, method) == pytest.approx(
        (factor - 1) * 100, abs=1e-9
    )


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_hand_checked_linear(method):
    # log2(rate) = (psnr - 30) / 3 for the anchor; the test curve is 1 dB better everywhere, so at equal PSNR it
    # needs 2^(-1/3) of the bits: BD-rate = 2^(-1/3) - 1 = -20.63%; on the partial overlap [31, 39] dB too.
    psnr = np.arange(30.0, 40.0, 1.0)
    anchor = 2 ** ((psnr - 30) / 3)
    expected = (2 ** (-1 / 3) - 1) * 100
    got = metrics.bd_rate(anchor, psnr, anchor, psnr + 1, method)
    assert got == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(-20.63, abs=0.01)
    # and BD-PSNR of the same pair is +1 dB
    assert metrics.bd_quality(anchor, psnr, anchor, psnr + 1, method) == pytest.approx(1.0, abs=1e-9)


def test_bd_rate_is_antisymmetric_in_log_domain():
    test_rate = [0.09, 0.21, 0.35, 0.7, 1.5]
    test_psnr = [28.3, 30.9, 33.1, 35.8, 38.6]
    ab = metrics.bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, test_psnr)
    ba = metrics.bd_rate(test_rate, test_psnr, ANCHOR_RATE, ANCHOR_PSNR)
    assert (1 + ab / 100) * (1 + ba / 100) == pytest.approx(1.0, abs=1e-12)


def test_bd_rate_degenerate_inputs():
    assert math.isnan(metrics.bd_rate([1.0], [30.0], [1.0, 2.0], [30.0, 33.0]))
    # no overlap in quality
    assert math.isnan(metrics.bd_rate([1, 2], [30, 31], [1, 2], [40, 41]))
    # unsorted input, NaN points and duplicates are handled
    got = metrics.bd_rate(
        [0.4, 0.1, 0.2, 0.8, math.nan], [33, 28, 30.5, 35.5, 40], [0.32, 0.08, 0.16, 0.64], [33, 28, 30.5, 35.5]
    )
    assert got == pytest.approx(-20.0, abs=1e-9)
    with pytest.raises(ValueError):
        metrics.bd_rate([1, 2], [30, 31], [1, 2], [30, 31], method="linear")


def test_pchip_integral_piecewise_linear_data():
    # monotone data with a kink: PCHIP keeps it monotone, integral between the trapezoid bounds
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    d = metrics.pchip_slopes(x, y)
    assert d.tolist() == [0.0, 0.0, 0.0, 0.0]  # flat neighbours force zero slopes
    # each segment is a smooth step: integral over [1, 2] is exactly 1/2 by symmetry
    assert metrics.pchip_integral(x, y, 1.0, 2.0) == pytest.approx(0.5)
    assert metrics.pchip_integral(x, y, 0.0, 3.0) == pytest.approx(1.5)


#: published Kodak curves (bpp, PSNR RGB dB): BPG 4:4:4 (x265), and CompressAI's mbt2018 and mbt2018-mean
#: (MSE, CUDA), as its results files give them (the tests read nothing outside the repository)
PUBLISHED_KODAK = {
    "bpg": (
        [0.067768, 0.161023, 0.351554, 0.684697, 1.199665, 1.929712, 3.057876, 4.703143],
        [26.1951, 28.6815, 31.5947, 34.8575, 38.2599, 41.4789, 44.7031, 47.6325],
    ),
    "mbt": (
        [0.110531, 0.186971, 0.287696, 0.432339, 0.638767, 0.885305, 1.200365, 1.587345],
        [28.0885, 29.6455, 31.3623, 33.0859, 35.0938, 36.9888, 38.9335, 40.6391],
    ),
    "mean": (
        [0.123922, 0.197981, 0.307244, 0.460612, 0.661665, 0.914405, 1.234209, 1.61909],
        [27.6995, 29.3588, 31.1289, 32.9507, 34.9683, 36.9111, 38.8375, 40.6333],
    ),
}


def test_bd_rate_against_published_compressai_numbers():
    # CompressAI's own mbt2018 vs BPG 4:4:4: -11.5% (cubic), vs its mbt2018-mean: -8.1%, as published
    bpg, mbt, mean = PUBLISHED_KODAK["bpg"], PUBLISHED_KODAK["mbt"], PUBLISHED_KODAK["mean"]
    assert metrics.bd_rate(*bpg, *mbt, method="cubic") == pytest.approx(-11.5, abs=0.05)
    assert metrics.bd_rate(*mean, *mbt, method="cubic") == pytest.approx(-8.1, abs=0.05)
    # PCHIP agrees within half a percent
    assert metrics.bd_rate(*bpg, *mbt) == pytest.approx(-11.5, abs=0.5)


# -- codec adapters ------------------------------------------------------------------------------------


def _tiny_image() -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:96]
    rgb = np.stack([xx * 2, yy * 3, (xx + yy) % 256], axis=2).astype(np.uint8)
    return rgb


@pytest.mark.parametrize("name", [n for n in ALL_CODECS if not n.startswith("jac")])
def test_classical_adapter_round_trip(name):
    try:
        codec = get_codec(name)
    except CodecUnavailable as e:
        pytest.skip(str(e))
    rgb = _tiny_image()
    low, high = codec.ladder[0], codec.ladder[-1]
    data_low = codec.encode(rgb, low)
    data_high = codec.encode(rgb, high)
    assert isinstance(data_low, bytes) and len(data_low) > 0
    assert len(data_high) > len(data_low)  # the ladder goes from small files to good quality
    out = codec.decode(data_high)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert metrics.psnr(rgb, out) > 30.0
    assert list(codec.ladder) == sorted(codec.ladder, reverse=codec.parameter == "distance")


def test_unknown_codec():
    with pytest.raises(KeyError):
        get_codec("png9000")


def test_get_codecs_skips_missing(capsys, monkeypatch):
    import pillow_jac.bench.codecs as codecs_module

    def unavailable():
        raise CodecUnavailable("not here")

    monkeypatch.setattr(codecs_module, "_webp", unavailable)
    got = [c.name for c in get_codecs(["jpeg420", "webp"])]
    assert got == ["jpeg420"]
    assert "skipping webp: not here" in capsys.readouterr().err


@pytest.mark.slow
def test_jac_adapter_round_trip():
    # JAC is this package, with its weights: never optional, so any error here is a failure, not a skip
    codec = get_codec("jac", jac_qualities=[1, 8])
    rgb = _tiny_image()
    data = codec.encode(rgb, 2.5)
    assert data[:8] == b"\x8bJAC\r\n\x1a\n"
    out = codec.decode(data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pillow_jac.decode(data))  # the codec's own pixels, channels in order
    assert metrics.psnr(rgb, out) > 20


# -- the drivers -------------------------------------------------------------------------------------------


#: two or one tiny images give curves that overlap in one point only; the warning has a test of its own
_FEW_POINTS = pytest.mark.filterwarnings("ignore:only 1 point of the .* curve:UserWarning")


@_FEW_POINTS
def test_rd_end_to_end_tiny(tmp_path: Path):
    from pillow_jac.bench import rd

    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.roll(_tiny_image(), 7 * i, axis=1)).save(data / f"img{i}.png")
    published = tmp_path / "anchors"
    published.mkdir()
    (published / "fake.json").write_text(
        json.dumps({"name": "fake", "results": {"bpp": [0.5, 1, 2, 4], "psnr-rgb": [25, 30, 35, 40]}})
    )
    out = tmp_path / "out"
    rd.main(
        [
            "--data", str(data), "--out", str(out), "--codecs", "jpeg420,jpeg444",
            "--ladder", "jpeg420=20,50,80,95", "--ladder", "jpeg444=20,50,80,95",
            "--anchors", str(published), "--published", "fake", "--no-ms-ssim",
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["images"] == 2
    avg = results["codecs"]["jpeg420"]["average"]
    assert [p["param"] for p in avg] == [20, 50, 80, 95]
    assert all(p["images"] == 2 for p in avg)
    assert set(results["codecs"]["jpeg420"]["per_image"]) == {"img0", "img1"}
    assert (out / "rd.md").read_text().startswith("# Rate-distortion results")
    # no jac measured: no BD-rate table, but the comparison helper works on any pair
    table = rd.bd_table({k: v["average"] for k, v in results["codecs"].items()}, results["published"], test="jpeg444")
    assert {row["anchor"] for row in table} == {"jpeg420", "fake"}
    assert "published" in results["published"]["fake"]["label"]
    # --resume reuses every point
    cached = (out / "cache.jsonl").read_text().count("\n")
    rd.main(["--data", str(data), "--out", str(out), "--codecs", "jpeg420", "--ladder", "jpeg420=20,50,80,95",
             "--anchors", str(published), "--published", "fake", "--no-ms-ssim", "--resume"])  # fmt: skip
    assert (out / "cache.jsonl").read_text().count("\n") == cached
    pytest.importorskip("matplotlib")  # CI installs it (the bench extra); the numbers above are checked without
    assert (out / "rd.png").stat().st_size > 10_000


def test_published_curves_are_compared_only_on_their_own_image_set(tmp_path: Path):
    from pillow_jac.bench import rd

    anchors = tmp_path / "anchors" / "kodak"
    anchors.mkdir(parents=True)
    curve = {"name": "paper", "results": {"bpp": [0.5, 1, 2, 4], "psnr-rgb": [25, 30, 35, 40]}}
    (anchors / f"{rd.DEFAULT_PUBLISHED[0]}.json").write_text(json.dumps(curve))
    published = {}
    full_size = np.kron(_tiny_image(), np.ones((8, 8, 1), np.uint8))  # 512 x 768, as kodim04
    # a Kodak image at its size in a folder of the anchors' name is compared; a downscaled one, or another
    # image there, is not: the published curves are of the 24 Kodak images at 768 x 512
    for name, folder, image, file in (
        ("urban20", "urban20", full_size, "img0"),
        ("kodak", "kodak", full_size, "kodim04"),
        ("small", "kodak", _tiny_image(), "kodim04"),
        ("other", "kodak", full_size, "img0"),
    ):
        data = tmp_path / name / folder
        data.mkdir(parents=True)
        Image.fromarray(image).save(data / f"{file}.png")
        out = tmp_path / f"out-{name}"
        rd.main(["--data", str(data), "--out", str(out), "--codecs", "jpeg420", "--ladder", "jpeg420=30,60,90",
                 "--anchors", str(anchors), "--no-ms-ssim"])  # fmt: skip
        published[name] = set(json.loads((out / "results.json").read_text())["published"])
    assert published == {"urban20": set(), "kodak": {rd.DEFAULT_PUBLISHED[0]}, "small": set(), "other": set()}


def test_speed_subprocess_measurement(tmp_path: Path):
    from pillow_jac.bench import speed

    image = tmp_path / "in.npy"
    np.save(image, _tiny_image())
    stream = tmp_path / "out.jpg"
    spec = {"codec": "jpeg420", "param": 75, "threads": 1, "device": "cpu", "repeat": 2}
    enc = speed.measure_in_subprocess({**spec, "op": "encode", "input": str(image), "output": str(stream)})
    assert "error" not in enc, enc
    assert len(enc["times_s"]) == 2 and enc["peak_rss"] >= enc["baseline_rss"] > 0
    assert enc["bytes"] == stream.stat().st_size
    dec = speed.measure_in_subprocess({**spec, "op": "decode", "input": str(stream), "pixels": 64 * 96})
    assert "error" not in dec, dec
    bad = speed.measure_in_subprocess(
        {**spec, "codec": "nonexistent", "op": "encode", "input": str(image), "output": "x"}
    )
    assert "error" in bad


def test_benchmarks_time_jac_with_the_threads_users_get(tmp_path: Path):
    """The codec imports torch with OpenMP's passive wait policy (pillow_jac/openmp_wait.py); a benchmark that
    imported torch first would time spinning threads, which no plain ``pillow_jac.encode`` runs."""
    from pillow_jac.bench import speed

    image = tmp_path / "in.npy"
    np.save(image, _tiny_image())
    spec = {"codec": "jac", "param": 2, "threads": 2, "device": "cpu", "repeat": 1, "op": "encode"}
    enc = speed.measure_in_subprocess({**spec, "input": str(image), "output": str(tmp_path / "out.jac")})
    assert enc.get("threads_sleep") is True, enc
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    script = (
        "import sys; from pillow_jac.bench import rd; from pillow_jac.openmp_wait import threads_sleep; "
        "rd.main(sys.argv[1:]); print('threads sleep', threads_sleep())"
    )
    argv = ["--data", str(data), "--out", str(tmp_path / "rd"), "--codecs", "jpeg420", "--ladder", "jpeg420=50",
            "--no-ms-ssim", "--threads", "2"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert "threads sleep True" in done.stdout, done.stderr[-2000:]


#: a stand-in for CompressAI's package: the model's calls, with the shapes the real one takes and gives
FAKE_COMPRESSAI = {
    "compressai/__init__.py": '__version__ = "0.0-fake"\n',
    "compressai/models.py": """
import torch

class JointAutoregressiveHierarchicalPriors(torch.nn.Module):
    def __init__(self, N, M):
        super().__init__()
    def update(self, force=False):
        pass
    def compress(self, x):
        assert x.shape[2] % 64 == 0 and x.shape[3] % 64 == 0, x.shape  # padded as pillow_jac pads
        return {"strings": [[b"y" * 7], [b"z" * 3]], "shape": [x.shape[2] // 64, x.shape[3] // 64]}
    def decompress(self, strings, shape):
        return {"x_hat": torch.zeros(1, 3, 64 * shape[0], 64 * shape[1])}
""",
}


def test_speed_compressai_child(tmp_path: Path, monkeypatch):
    """The CompressAI measurement's script runs (in an interpreter without pillow_jac on its path)."""
    from pillow_jac.bench import speed

    for name, text in FAKE_COMPRESSAI.items():
        (tmp_path / "fake" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / name).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    image = tmp_path / "in.npy"
    np.save(image, _tiny_image())
    spec = {"codec": "compressai", "N": 8, "M": 8, "threads": 1, "device": "cpu", "repeat": 1}
    enc = speed.measure_in_subprocess({**spec, "op": "encode", "input": str(image), "output": str(tmp_path / "s")})
    assert "error" not in enc, enc
    assert enc["bytes"] == 10 and enc["compressai"] == "0.0-fake"
    dec = speed.measure_in_subprocess({**spec, "op": "decode", "input": str(tmp_path / "s")})
    assert "error" not in dec, dec
    assert dec["bytes"] == 10


def test_tile_and_parse_memory():
    from pillow_jac.bench.speed import parse_memory, tile_image

    rgb = _tiny_image()
    big = tile_image(rgb, 250, 150)
    assert big.shape == (150, 250, 3)
    assert np.array_equal(big[:64, :96], rgb)
    assert np.array_equal(big[:64, 96:192], rgb[:, ::-1])
    assert parse_memory("12G") == 12 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1000") == 1000


@_FEW_POINTS
def test_rd_tables_for_each_effort(tmp_path: Path):
    from pillow_jac.bench import rd

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    out = tmp_path / "out"
    rd.main(
        [
            "--data", str(data), "--out", str(out), "--codecs", "jac,jac-e1,jpeg420",
            "--jac-qualities", "1,4,8", "--ladder", "jpeg420=20,50,80,95", "--published", "", "--no-ms-ssim",
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert set(results["codecs"]) == {"jac", "jac-e1", "jpeg420"}
    assert {row["anchor"] for row in results["bd_rate"]} == {"jac-e1", "jpeg420"}
    assert {row["anchor"] for row in results["bd_rate_by_codec"]["jac-e1"]} == {"jac", "jpeg420"}
    text = (out / "rd.md").read_text()
    assert "## BD-rate of .jac" in text and "## BD-rate of JAC (pillow_jac), effort 1" in text
    # the gain per added second of encoding: BD-rate and times of this one run (the README quoted a ratio of two)
    from pillow_jac.bench.rd_report import effort_gains

    def mean_encode(name: str) -> float:
        points = [p for ps in results["codecs"][name]["per_image"].values() for p in ps]
        return sum(p["encode_s"] for p in points) / len(points)

    (bd,) = [row["psnr"] for row in results["bd_rate_by_codec"]["jac-e1"] if row["anchor"] == "jac"]
    gain = effort_gains(results)["jac-e1"]
    assert gain["added_s"] == pytest.approx(mean_encode("jac-e1") - mean_encode("jac"))
    assert gain["bd_rate"] == bd and gain["gain_per_second"] == pytest.approx(-bd / gain["added_s"])
    assert "## Gain per added second of encoding" in text and f"{gain['gain_per_second']:.2f}%" in text


# -- averaged points, the resume cache, warm-up, report and records -------------------------------------------


def _point(param: float, bpp: float, psnr: float, ms_ssim: float = 0.99) -> dict:
    return {"param": param, "bpp": bpp, "psnr": psnr, "ms_ssim": ms_ssim, "encode_s": 0.01, "decode_s": 0.01}


def test_an_averaged_point_is_a_mean_over_one_image_set(tmp_path: Path):
    """An image decoded exactly (PSNR inf) makes the point's PSNR undefined instead of leaving its PSNR mean."""
    from pillow_jac.bench import rd, rd_curves
    from pillow_jac.bench.rd_report import write_markdown

    per_image = {
        "flat": [_point(50, 0.1, math.inf, 1.0), _point(90, 0.2, math.inf, 1.0)],
        "busy": [_point(50, 1.0, 30.0, 0.95), _point(90, 2.0, 40.0, 0.99)],
    }
    avg = rd.average(per_image)
    assert [p["bpp"] for p in avg] == pytest.approx([0.55, 1.1])
    assert all(math.isnan(p["psnr"]) for p in avg)  # not busy's 30 and 40 dB beside both images' bpp
    assert avg[0]["ms_ssim"] == pytest.approx(0.975) and "ms_ssim" not in avg[0]["undefined"]
    assert avg[0]["undefined"]["psnr"] == {"images": ["flat"], "why": rd_curves.UNDEFINED_WHY["psnr"]}
    # one image too small for MS-SSIM: the point's MS-SSIM is undefined, its PSNR a mean over both
    small = rd.average({"small": [_point(50, 0.5, 35.0, math.nan)], "busy": [_point(50, 1.0, 30.0, 0.95)]})[0]
    assert small["psnr"] == 32.5 and math.isnan(small["ms_ssim"]) and math.isnan(small["ms_ssim_db"])
    assert small["undefined"] == {"ms_ssim": {"images": ["small"], "why": rd_curves.UNDEFINED_WHY["ms_ssim"]}}
    # a run without MS-SSIM lists nothing
    plain = rd.average({"a": [_point(50, 0.5, 35.0, math.nan)], "b": [_point(50, 1.0, 30.0, math.nan)]})[0]
    assert "undefined" not in plain
    # the point leaves the PSNR curve of the BD-rates, and the report names the image
    measured = {"jac": rd.average({"busy": [_point(q, 0.5 * q, 28.0 + 3 * q) for q in (1, 2, 3)]}), "jpeg420": avg}
    assert math.isnan(rd.bd_table(measured, {})[0]["psnr"])
    results = {"meta": {"images": 2, "data": "flat", "date": "now"}, "codecs": {}, "published": {}, "bd_rate": []}
    results["codecs"]["jpeg420"] = {"label": "JPEG", "parameter": "quality", "average": avg}
    path = tmp_path / "rd.md"
    write_markdown(path, results)
    assert "- quality 50: PSNR n/a, 1 of 2 image(s) decoded exactly (PSNR infinite): `flat`." in path.read_text()


def test_the_committed_kodak_bd_rates_are_reproduced_from_their_points():
    """benchmarks/results/results.json (Kodak: no image decoded exactly) gives the same curves and BD-rates."""
    from pillow_jac.bench import rd

    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/results.json").read_text())
    measured = {name: rd.average(codec["per_image"]) for name, codec in results["codecs"].items()}
    for name, codec in results["codecs"].items():
        for got, committed in zip(measured[name], codec["average"], strict=True):
            assert "undefined" not in got
            for key in ("bpp", "psnr", "ms_ssim", "ms_ssim_db"):
                assert got[key] == pytest.approx(committed[key], rel=1e-12)
    table = {row["anchor"]: row for row in rd.bd_table(measured, results["published"])}
    assert round(table["jpeg420"]["psnr"], 1) == -38.1 and round(table["webp"]["psnr"], 1) == -1.7
    for row in results["bd_rate"]:
        assert table[row["anchor"]]["psnr"] == pytest.approx(row["psnr"], rel=1e-9)


def _rd_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--codecs", "jpeg420", "--ladder", "jpeg420=50,90",
            "--published", "", *extra]  # fmt: skip


def test_resume_measures_again_another_image_of_the_same_name(tmp_path: Path):
    from pillow_jac.bench import rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    rd.main(_rd_argv(data, out, "--no-ms-ssim"))
    other = np.ascontiguousarray(255 - _tiny_image()[:, ::-1])
    Image.fromarray(other).save(data / "img0.png")
    assert rd.main(_rd_argv(data, out, "--no-ms-ssim", "--resume")) == 0
    points = json.loads((out / "results.json").read_text())["codecs"]["jpeg420"]["per_image"]["img0"]
    jpeg = get_codec("jpeg420")
    assert [p["bytes"] for p in points] == [len(jpeg.encode(other, q)) for q in (50, 90)]


def test_resume_passes_over_damaged_and_older_cache_lines(tmp_path: Path, capsys):
    from pillow_jac.bench import rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    rd.main(_rd_argv(data, out, "--no-ms-ssim"))
    good = (out / "cache.jsonl").read_text().count("\n")
    older = {"codec": "jpeg420", "key": "0" * 16, "param": 50.0, "image": "img0", "bpp": 1.0}  # no pixels digest
    with (out / "cache.jsonl").open("a") as cache:
        cache.write("\n".join(["[]", "3", '"text"', "{", json.dumps(older)]) + "\n")
    assert rd.main(_rd_argv(data, out, "--no-ms-ssim", "--resume")) == 0
    assert f"resume: {good} cached points in {out / 'cache.jsonl'}, 5 lines unused" in capsys.readouterr().err


def test_resume_measures_again_a_point_without_ms_ssim_when_it_is_wanted(tmp_path: Path):
    pytest.importorskip("pytorch_msssim")
    from pillow_jac.bench import rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    big = np.concatenate([np.concatenate([_tiny_image()] * 2, axis=1)] * 3, axis=0)  # 192 x 192: has MS-SSIM
    Image.fromarray(big).save(data / "img0.png")
    rd.main(_rd_argv(data, out, "--no-ms-ssim"))
    rd.main(_rd_argv(data, out, "--resume"))
    points = json.loads((out / "results.json").read_text())["codecs"]["jpeg420"]["per_image"]["img0"]
    assert all(0.5 < p["ms_ssim"] <= 1.0 for p in points)
    # and a point measured with MS-SSIM serves a run without it, which records none
    lines = (out / "cache.jsonl").read_text().count("\n")
    rd.main(_rd_argv(data, out, "--resume", "--no-ms-ssim"))
    assert (out / "cache.jsonl").read_text().count("\n") == lines
    strict = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    points = strict["codecs"]["jpeg420"]["per_image"]["img0"]
    assert all(p["ms_ssim"] is None for p in points)  # not measured: null, as RFC 8259 JSON has no NaN


def test_the_jac_fingerprint_names_the_resolved_device(monkeypatch):
    """A point measured on another device (the codec's None resolved through JAC_DEVICE), or with another encoder
    of the same decoder, is not reused."""
    import os

    import pillow_jac.engine as engine
    from pillow_jac.bench import rd

    class Stub:
        model_id, weights_hash, encoder_hash = "stub", b"\x01\x02", "e1"

    monkeypatch.setattr(engine, "get_engine", lambda device=None, weights=None: Stub())
    monkeypatch.setattr(engine, "resolve_device", lambda device=None: device or os.environ.get("JAC_DEVICE", "cpu"))
    codec = get_codec("jac")
    monkeypatch.setenv("JAC_DEVICE", "cpu")

    def fingerprint():
        return rd._fingerprint(codec, rd._identity(codec))

    on_cpu = fingerprint()
    monkeypatch.setenv("JAC_DEVICE", "cuda:1")
    assert fingerprint() != on_cpu
    monkeypatch.setenv("JAC_DEVICE", "cpu")
    assert fingerprint() == on_cpu
    Stub.encoder_hash = "e2"  # an encoder update: the same decoder and weights_hash, measured again
    assert fingerprint() != on_cpu
    Stub.encoder_hash = "e1"
    import torch

    threads = torch.get_num_threads()
    try:  # effort 1-3 bytes depend on the thread count
        torch.set_num_threads(threads + 1)
        assert fingerprint() != on_cpu
    finally:
        torch.set_num_threads(threads)
    assert fingerprint() == on_cpu
    from pillow_jac.model import precision

    native = precision._cpu_has_native_bf16()
    with monkeypatch.context() as other_cpu:
        other_cpu.setattr(precision, "_cpu_has_native_bf16", lambda: not native)
        assert fingerprint() != on_cpu  # another CPU's search precision: its effort 1-3 files differ
    assert fingerprint() == on_cpu
    monkeypatch.setattr(rd, "code_digest", lambda: "changed")  # a change to the codec's code: measured again
    assert fingerprint() != on_cpu


def test_an_anchor_is_measured_again_after_a_change_to_the_code_or_packages_that_measure_it(
    tmp_path: Path, monkeypatch
):
    """The anchors' points are keyed like ``.jac``'s on the bench code (adapters, PSNR) and the package versions: a
    resumed run after a fix to the PSNR would otherwise compare ``.jac`` measured anew with anchors measured before."""
    from pillow_jac.bench import rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    argv = ["--data", str(data), "--out", str(out), "--ladder", "jpeg420=50", "--codecs", "jpeg420",
            "--published", "", "--no-ms-ssim", "--resume"]  # fmt: skip

    def reused() -> bool:
        rd.main(argv)
        return json.loads((out / "results.json").read_text())["codecs"]["jpeg420"]["per_image"]["img0"][0].get(
            "reused", False
        )

    assert not reused() and reused()
    monkeypatch.setattr(rd, "code_digest", lambda: "changed")
    assert not reused() and reused()
    monkeypatch.setattr(rd, "_versions", lambda: {"pillow": "another"})
    assert not reused()


def test_the_code_digest_covers_the_package_code(tmp_path: Path, monkeypatch):
    import pillow_jac
    from pillow_jac.bench import rd

    package = tmp_path / "pillow_jac"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "refine.py").write_text("TILE = 48\n")
    monkeypatch.setattr(pillow_jac, "__file__", str(package / "__init__.py"))
    before = rd.code_digest()
    (package / "notes.txt").write_text("not code")
    assert rd.code_digest() == before
    (package / "model" / "refine.py").write_text("TILE = 32\n")
    assert rd.code_digest() != before


def test_readme_adds_a_codec_to_a_run_by_listing_every_codec():
    """``--resume`` writes the codecs of ``--codecs`` only: the README's command lists the run's and the new one."""
    import re

    from pillow_jac.bench.codecs import DEFAULT_CODECS

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "README.md").read_text()
    commands = re.findall(r"python -m pillow_jac\.bench\.rd (?:[^\n]*\\\n)*[^\n]*", text)
    resumed = [c for c in commands if "--resume" in c]
    assert resumed
    for command in resumed:
        codecs = re.search(r"--codecs (\S+)", command)
        assert codecs is not None and set(DEFAULT_CODECS) < set(codecs.group(1).split(",")), command


def test_a_codec_asked_for_and_not_measured_is_recorded_and_fails_the_run(tmp_path: Path, monkeypatch, capsys):
    """A codec whose library is missing was left out with a note on stderr only: results.json and rd.md did not say,
    and the run exited 0, so a README comparison could lose an anchor unseen."""
    from pillow_jac.bench import codecs, rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    real = codecs.get_codec

    def get_codec(name, **kwargs):
        if name == "webp":
            raise codecs.CodecUnavailable("libwebp is not installed")
        return real(name, **kwargs)

    monkeypatch.setattr(codecs, "get_codec", get_codec)
    argv = ["--data", str(data), "--out", str(out), "--ladder", "jpeg420=50", "--published", "", "--no-ms-ssim"]
    assert rd.main([*argv, "--codecs", "jpeg420,webp"]) == 1
    assert "webp was asked for and not measured: libwebp is not installed" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["codecs"]) == {"jpeg420"} and results["meta"]["skipped"] == {"webp": "libwebp is not installed"}
    assert "Not measured: webp (libwebp is not installed)." in (out / "rd.md").read_text()


def test_resume_keeps_only_the_codecs_named(tmp_path: Path):
    from pillow_jac.bench import rd

    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    argv = ["--data", str(data), "--out", str(out), "--ladder", "jpeg420=50,90", "--ladder", "webp=50,90",
            "--published", "", "--no-ms-ssim"]  # fmt: skip
    rd.main([*argv, "--codecs", "jpeg420"])
    rd.main([*argv, "--codecs", "webp", "--resume"])
    assert set(json.loads((out / "results.json").read_text())["codecs"]) == {"webp"}
    rd.main([*argv, "--codecs", "jpeg420,webp", "--resume"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["codecs"]) == {"jpeg420", "webp"}
    # the points of earlier runs say so, and the report says whose times they hold
    reused = {name: [p.get("reused", False) for p in c["per_image"]["img0"]] for name, c in results["codecs"].items()}
    assert reused == {"jpeg420": [True, True], "webp": [True, True]}
    assert "4 of 4 points were measured by an earlier run" in (out / "rd.md").read_text()
    rd.main([*argv, "--codecs", "jpeg420"])
    assert "earlier run" not in (out / "rd.md").read_text()


def test_each_codec_is_warmed_up_before_its_first_timed_point(tmp_path: Path, monkeypatch):
    import io
    import time

    from pillow_jac.bench import rd
    from pillow_jac.bench.codecs import Codec

    calls = []

    def encode(rgb: np.ndarray, quality: float) -> bytes:
        if not calls:
            time.sleep(0.6)  # a library's start-up, paid by the first call only
        calls.append(rgb.shape)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=int(quality))
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    codec = Codec("slowstart", "slow start", "quality", (50, 90), encode, decode, ".jpg")
    monkeypatch.setattr(rd, "get_codecs", lambda *args, **kwargs: [codec])
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    results = rd.run(data, tmp_path / "out", ["slowstart"], with_ms_ssim=False, published=[])
    points = results["codecs"]["slowstart"]["per_image"]["img0"]
    assert all(p["encode_s"] < 0.3 for p in points), points
    assert calls[0] == (64, 64, 3) and len(calls) == 3  # the untimed crop, then the two points


def test_every_curve_of_the_plot_is_drawn_its_own_way(tmp_path: Path, monkeypatch):
    """The published curves took colours the measured anchors had (AVIF and the paper's mbt2018 both red), and every
    effort level the same grey line; a results file read back (nulls for MS-SSIM not measured) is drawn too."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from pillow_jac.bench import rd_report

    drawn = []
    real = Axes.plot

    def plot(self, *args, **kwargs):
        drawn.append((kwargs["label"], kwargs["color"], kwargs.get("linestyle")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    average = [{**_point(50, 0.5, 30.0), "ms_ssim_db": None}, {**_point(90, 1.0, 33.0), "ms_ssim_db": None}]
    names = ["jac", "jac-e1", "jac-e2", "jpeg420", "jpeg444", "webp", "avif", "jpeg2000", "heic", "jxl"]
    published = {f"p{i}": {"label": f"P{i}", "bpp": [0.5, 1.0], "psnr": [29, 32], "ms_ssim_db": None} for i in range(3)}
    results = {"meta": {"images": 1, "data": "kodak"}, "published": published,
               "codecs": {name: {"label": name, "average": average} for name in names}}  # fmt: skip
    assert rd_report.plot(tmp_path / "rd.png", json.loads(json.dumps(results)))
    assert len(drawn) == len(names) + len(published)  # the PSNR panel; the MS-SSIM one has no point to draw
    assert len({(color, style) for _, color, style in drawn}) == len(drawn), drawn
    from matplotlib.colors import to_rgb

    rgb = [to_rgb(color) for _, color, _ in drawn]  # and no two colours nearly the same (tab10's grey and "gray")
    assert (
        min(max(abs(a - b) for a, b in zip(x, y, strict=True)) for i, x in enumerate(rgb) for y in rgb[i + 1 :]) > 0.05
    )


def test_the_plot_mentions_published_curves_only_when_it_draws_some(tmp_path: Path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from pillow_jac.bench import rd_report

    titles = []
    real = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, *a, **k: titles.append(t) or real(self, t, *a, **k))
    average = [_point(50, 0.5, 30.0), _point(90, 1.0, 33.0)]
    for p in average:
        p["ms_ssim_db"] = 20.0
    results = {"meta": {"images": 1, "data": "../shared/data/urban20"}, "published": {}}
    results["codecs"] = {"jpeg420": {"label": "JPEG", "average": average}}
    assert rd_report.plot(tmp_path / "a.png", results)
    results["published"] = {"p": {"label": "P (published)", "bpp": [0.5, 1.0], "psnr": [29, 32], "ms_ssim_db": None}}
    assert rd_report.plot(tmp_path / "b.png", results)
    assert titles == ["1 image(s) from urban20", "1 image(s) from urban20; dashed: published results (24 Kodak images)"]


def test_ms_ssim_db_of_nan_is_nan():
    assert math.isnan(metrics.ms_ssim_db(math.nan))
    assert metrics.ms_ssim_db(1.0) == math.inf


@pytest.mark.slow
def test_results_record_the_jac_model_versions_and_no_absolute_path(tmp_path: Path, monkeypatch):
    import importlib.metadata

    from pillow_jac import __version__, generations
    from pillow_jac.bench import rd
    from pillow_jac.engine import get_engine

    monkeypatch.delenv("JAC_DEVICE", raising=False)
    weights = generations.encoder().path.resolve()
    data, out = tmp_path / "images", tmp_path / "out"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "img0.png")
    rd.main(["--data", str(data), "--out", str(out), "--codecs", "jac", "--jac-qualities", "2,6",
             "--jac-weights", str(weights), "--published", "", "--no-ms-ssim"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    engine = get_engine("cpu", weights)
    jac = results["codecs"]["jac"]
    assert jac["model"] == {
        "model_id": engine.model_id,
        "weights_hash": engine.weights_hash.hex(),
        "encoder_hash": engine.encoder_hash,
    }
    assert engine.encoder_hash
    assert jac["device"] == "cpu" and not Path(jac["settings"]["weights"]).is_absolute()
    versions = results["meta"]["versions"]
    assert versions["pillow_jac"] == __version__
    for package in ("torch", "constriction", "pytorch-msssim"):
        try:
            expected = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # not installed here: not recorded
            assert package.replace("-", "_") not in versions
            continue
        assert versions[package.replace("-", "_")] == expected
    text = (out / "results.json").read_text() + (out / "rd.md").read_text()
    assert str(weights.parent) not in text and str(tmp_path) not in text
    assert f"Model `{engine.model_id}`" in (out / "rd.md").read_text()


def test_speed_without_a_compressai_interpreter_keeps_the_other_codecs(tmp_path: Path, capsys):
    from pillow_jac.bench import speed

    assert speed._compressai_python(str(tmp_path)) is None  # a folder: cannot be run
    image = tmp_path / "in.png"
    Image.fromarray(_tiny_image()).save(image)
    out = tmp_path / "out"
    argv = ["--image", str(image), "--out", str(out), "--codecs", "jpeg420", "--repeat", "1", "--devices", "cpu",
            "--compressai-python", str(tmp_path / "no-venv" / "bin" / "python")]  # fmt: skip
    assert speed.main(argv) == 0
    report = json.loads((out / "speed.json").read_text())
    assert [r["codec"] for r in report["rows"]] == ["jpeg420"] and "median_s" in report["rows"][0]["encode"]
    from pillow_jac import generations

    assert report["meta"]["model"]["model_id"] == generations.encoder().model_id  # what .jac rows use
    assert len(report["meta"]["model"]["encoder_hash"]) == 16
    assert f"compressai does not import in {tmp_path / 'no-venv' / 'bin' / 'python'}" in capsys.readouterr().err


def test_a_compressai_interpreter_given_relative_to_here_is_found(tmp_path: Path, monkeypatch, capsys):
    """The README's ``--compressai-python ../bench-venv/bin/python`` was run from a temporary folder: not found."""
    from pillow_jac.bench import speed

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    speed._compressai_python(os.path.join("venv", "bin", "python"))  # found and run, compressai importing or not
    assert "No such file" not in capsys.readouterr().err


def test_targets_writes_under_bench_out_by_default(tmp_path: Path, monkeypatch):
    from pillow_jac.bench import targets as bench_targets

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "a.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_targets, "run", lambda *args, **kwargs: [])
    assert bench_targets.main(["--data", str(data)]) == 0
    assert (tmp_path / "bench_out" / "targets" / "targets.json").is_file()
    assert not (tmp_path / "benchmarks").exists()
    assert "--out benchmarks/results" in bench_targets.__doc__


def test_bd_rate_warns_of_a_dominated_point_and_of_a_thin_overlap():
    """A saturating top point (more bits for less PSNR) and an overlap of one point move the figure
    without a word otherwise: a review added 1.6 bpp / 36.0 dB after 1.2 bpp / 36.5 dB and the BD-rate went
    from -24.1% to -18.2%."""
    import warnings

    from pillow_jac.bench.metrics import bd_rate

    anchor = ([0.25, 0.5, 1.0, 2.0], [28.0, 31.0, 34.0, 37.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bd_rate(*anchor, [0.2, 0.4, 0.8, 1.2], [28.0, 31.0, 34.0, 36.5])  # an ordinary curve: no warning
    with pytest.warns(UserWarning, match="test curve is not increasing"):
        bd_rate(*anchor, [0.2, 0.4, 0.8, 1.2, 1.6], [28.0, 31.0, 34.0, 36.5, 36.0])
    with warnings.catch_warnings():  # a dominated point beyond the overlap and its neighbour does not count
        warnings.simplefilter("error")
        bd_rate([*anchor[0], 4.0, 6.0, 7.0], [*anchor[1], 40.0, 43.0, 42.9], [0.2, 0.4, 0.8, 1.2], [28, 31, 34, 36.5])
    with pytest.warns(UserWarning, match="only 1 point of the (test|anchor) curve") as caught:
        bd_rate(*anchor, [1.5, 3.0], [36.0, 40.0])  # one point of each curve in the overlap: one warning each
    curves = sorted(str(w.message).split(" curve")[0].rsplit(" ", 1)[1] for w in caught)
    assert curves == ["anchor", "test"]


def test_avif_through_imagecodecs_encodes(monkeypatch) -> None:
    """Where Pillow has no AVIF and pillow-heif none either, the imagecodecs fallback raised KeyError: 444 at its
    first encode (it takes its PIXEL_FORMAT enum, not an integer), so bench.rd, whose default set has AVIF,
    stopped."""
    imagecodecs = pytest.importorskip("imagecodecs")
    if not imagecodecs.AVIF.available:
        pytest.skip("imagecodecs without AVIF")
    from PIL import features

    from pillow_jac.bench import codecs

    check = features.check
    monkeypatch.setattr(codecs.features, "check", lambda feature: False if feature == "avif" else check(feature))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # its import fails
    rgb = _tiny_image()
    for name in ("avif", "avif420"):
        codec = codecs.get_codec(name)
        assert "imagecodecs" in codec.label
        decoded = codec.decode(codec.encode(rgb, 60))
        assert decoded.shape == rgb.shape and np.abs(decoded.astype(int) - rgb).mean() < 40


def _target_row(kind: str, target: float, **outcome) -> dict:
    """One row of ``bench.targets.run``: a completed search (``hit=...``) or an unreachable target (``error=...``)."""
    row = {"image": "a.png", "pixels": 6144, "plain_seconds": 1.0, "kind": kind, "target": target}
    if "error" not in outcome:
        row.update(size=1000, quality=8.0, psnr=None, estimates=3, encodes=1, syntheses=0, refinements=0, seconds=2.0)
        row.update(capped=True, shortfall_percent=50.0, overshoot_db=0.0)
    return {**row, **outcome}


def test_targets_counts_unreachable_targets_apart_and_fails_only_on_a_miss(tmp_path: Path, monkeypatch):
    """Two unreachable size targets and two capped hits: 2/2 hits, 2 unreachable, no "-%", exit 0; a miss: 1."""
    from pillow_jac.bench import targets as bench_targets

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "a.png")
    rows = [_target_row("size", 50.0, error="too small")] * 2 + [_target_row("size", 2000.0, hit=True)] * 2
    monkeypatch.setattr(bench_targets, "run", lambda *args, **kwargs: rows)
    assert bench_targets.main(["--data", str(data), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "targets.json").read_text())
    assert report["totals"]["size_searches"] == report["totals"]["size_hits"] == 2
    assert report["totals"]["size_unreachable"] == 2
    total = (tmp_path / "out" / "targets.md").read_text().splitlines()[-1]
    assert total.startswith("All size searches: 2/2 hits, 2 unreachable; no search below quality 8;"), total
    assert "-%" not in total
    rows = [*rows, _target_row("psnr", 30.0, hit=False)]
    assert bench_targets.main(["--data", str(data), "--out", str(tmp_path / "out")]) == 1


def test_targets_records_the_model_and_the_versions(tmp_path: Path, monkeypatch):
    """targets.json names the generation it encoded with and the package versions, as rd's results.json does."""
    from pillow_jac import codec_steps
    from pillow_jac.bench import metrics, rd
    from pillow_jac.bench import targets as bench_targets

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(_tiny_image()).save(data / "a.png")
    monkeypatch.setattr(bench_targets, "run", lambda *args, **kwargs: [])
    assert bench_targets.main(["--data", str(data), "--out", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "targets.json").read_text())["meta"]
    assert meta["model"] == metrics.model_record(codec_steps.encoder_engine(None, None, None))
    assert meta["versions"] == rd._versions()
    assert f"Model `{meta['model']['model_id']}`" in (tmp_path / "out" / "targets.md").read_text()


def test_the_rd_report_computes_the_containers_share(tmp_path: Path):
    """The committed Kodak results: an empty file of the measured model and its share of the quality-1 files."""
    from pillow_jac import container
    from pillow_jac.bench import rd_report

    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "results.json").read_text())
    jac = results["codecs"]["jac"]
    model = jac["model"]
    empty = container.JacFile.create(
        width=768, height=512, layout="RGB", quality=1.0, model_id=model["model_id"],
        weights_hash=bytes.fromhex(model["weights_hash"]), z_stream=b"", y_stream=b"",
    )  # fmt: skip
    overhead = len(container.serialize(empty))
    sizes = [p["bytes"] for ps in jac["per_image"].values() for p in ps if p["param"] == 1.0]
    rd_report.write_markdown(tmp_path / "rd.md", results)
    text = " ".join((tmp_path / "rd.md").read_text().split())
    share = 100 * overhead / (sum(sizes) / len(sizes))
    assert f"({overhead} bytes an image: {share:.1f}% of the mean file at quality 1, less above)" in text


def test_speed_reads_memory_in_powers_of_1024_and_says_so(capsys):
    """``--max-mem 12G`` is 12 GiB (a size target's 12G is 12 * 10**9 bytes): the help says which."""
    from pillow_jac.bench import speed

    assert speed.parse_memory("12k") == 12288 and speed.parse_memory("12G") == 12 << 30
    with pytest.raises(SystemExit):
        speed.main(["--help"])
    assert "powers of 1024" in " ".join(capsys.readouterr().out.split())
