"""The bulk throughput benchmark runs on the CPU and writes portable results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pillow_jac import codec_batch
from pillow_jac.bench import throughput
from pillow_jac.bench.metrics import portable_path


@pytest.fixture(autouse=True)
def no_shared_data(monkeypatch):
    """The benchmark's default image lies in ../shared, which tests never read: its synthetic image instead."""
    monkeypatch.setattr(throughput, "find_shared", lambda relative: None)


@pytest.fixture
def batching_differs(monkeypatch):
    """Batches of more than one image code differently from batch size 1, by a known amount.

    ``encode_batch`` writes the second image's file in the first slot; ``decode_batch`` adds one to
    every pixel value (subtracts one from 255): one file of two is batch size 1's, every pixel value
    differs, by at most 1.
    """
    encode, decode = codec_batch.encode_batch, codec_batch.decode_batch

    def encode_batch(images, *args, batch_size=8, **kwargs):
        files = encode(images, *args, batch_size=batch_size, **kwargs)
        return files[1:2] + files[1:] if batch_size > 1 and len(files) > 1 else files

    def decode_batch(files, *args, batch_size=8, **kwargs):
        images = decode(files, *args, batch_size=batch_size, **kwargs)
        return [np.where(i < 255, i + 1, i - 1).astype(np.uint8) for i in images] if batch_size > 1 else images

    monkeypatch.setattr(codec_batch, "encode_batch", encode_batch)
    monkeypatch.setattr(codec_batch, "decode_batch", decode_batch)


def check_rates(rows: list[dict]) -> None:
    for r in rows:
        assert r["encode_images_per_second"] == pytest.approx(r["images"] / r["encode_seconds"])
        assert r["decode_images_per_second"] == pytest.approx(r["images"] / r["decode_seconds"])


def test_throughput_writes_json_and_markdown(tmp_path, batching_differs):
    out = tmp_path / "results"
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "2,1", "--images", "2", "--out", str(out)]
    assert throughput.main(argv) == 0
    report = json.loads((out / "throughput.json").read_text())
    rows = report["rows"]
    assert [(r["size"], r["batch"], r["images"]) for r in rows] == [("40x24", 1, 2), ("40x24", 2, 2)]
    assert rows[0]["encode_peak_gpu_mib"] is None  # no GPU memory on the CPU
    assert "files_identical_to_batch_1" not in rows[0]
    assert rows[1]["files_identical_to_batch_1"] == 1
    assert rows[1]["pixel_values_differing_from_batch_1"] == 1.0 and rows[1]["largest_pixel_difference"] == 1
    check_rates(rows)
    text = (out / "throughput.json").read_text() + (out / "throughput.md").read_text()
    assert str(tmp_path) not in text and str(Path(__file__).resolve().parents[1]) not in text
    table = (out / "throughput.md").read_text()
    assert "| 40x24 | 0 | 2 | 2 |" in table and "| 1/2 | 1.00e+00 (1) |" in table


def test_a_run_stopped_by_a_time_limit_keeps_its_finished_rows(tmp_path, monkeypatch):
    """The results are written after every row: a device call's ``timeout`` keeps what was measured."""
    out = tmp_path / "results"
    real_run = throughput.run

    def stopped_after_the_first_row(*args, on_row=None, **kwargs):
        def first_then_stop(rows):
            on_row(rows)
            raise KeyboardInterrupt  # as the time limit's signal would

        return real_run(*args, on_row=first_then_stop, **kwargs)

    monkeypatch.setattr(throughput, "run", stopped_after_the_first_row)
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "1,2", "--images", "2", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):  # the interrupt still ends the program, after the rows are written
        throughput.main(argv)
    report = json.loads((out / "throughput.json").read_text())
    assert [(r["size"], r["batch"]) for r in report["rows"]] == [("40x24", 1)]
    assert "| 40x24 |" in (out / "throughput.md").read_text()


def test_every_batched_row_is_compared_with_batch_size_1(tmp_path, batching_differs):
    """Without batch size 1 among the batch sizes, its files are still what the rows are compared with."""
    out = tmp_path / "results"
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "2", "--images", "2", "--out", str(out)]
    assert throughput.main(argv) == 0
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [2]
    assert rows[0]["files_identical_to_batch_1"] == 1
    assert rows[0]["pixel_values_differing_from_batch_1"] == 1.0 and rows[0]["largest_pixel_difference"] == 1
    check_rates(rows)


def test_throughput_writes_under_bench_out_by_default(tmp_path, monkeypatch):
    """The source image is named as every results file names an input (metrics.portable_path), never by an
    absolute path."""
    from PIL import Image

    image = tmp_path / "source.png"
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(image)
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "1", "--images", "1", "--image", str(image)]
    assert throughput.main(argv) == 0
    text = (tmp_path / "bench_out" / "throughput" / "throughput.json").read_text()
    assert not (tmp_path / "benchmarks").exists()
    meta = json.loads(text)["meta"]
    # its name, or a path relative to the repository where it lies beside it (../pytest-of-.../source.png)
    assert meta["source"] == portable_path(image) and meta["source"].endswith("source.png")
    assert not Path(meta["source"]).is_absolute() and meta["command"].endswith(f"--image {meta['source']}")
    assert str(tmp_path) not in text
