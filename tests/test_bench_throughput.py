"""The bulk throughput benchmark runs on the CPU and writes portable results."""

from __future__ import annotations

import json
from pathlib import Path

from pillow_jac.bench import throughput


def test_throughput_writes_json_and_markdown(tmp_path):
    out = tmp_path / "results"
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "2,1", "--images", "2", "--out", str(out)]
    assert throughput.main(argv) == 0
    report = json.loads((out / "throughput.json").read_text())
    assert [(r["size"], r["batch"], r["images"]) for r in report["rows"]] == [("40x24", 1, 2), ("40x24", 2, 2)]
    assert report["rows"][0]["encode_peak_gpu_mib"] is None  # no GPU memory on the CPU
    assert report["rows"][1]["files_identical_to_batch_1"] <= 2
    text = (out / "throughput.json").read_text() + (out / "throughput.md").read_text()
    assert str(tmp_path) not in text and str(Path(__file__).resolve().parents[1]) not in text
    assert "| 40x24 | 0 | 2 | 2 |" in (out / "throughput.md").read_text()


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
    try:
        throughput.main(argv)
    except KeyboardInterrupt:
        pass
    report = json.loads((out / "throughput.json").read_text())
    assert [(r["size"], r["batch"]) for r in report["rows"]] == [("40x24", 1)]
    assert "| 40x24 |" in (out / "throughput.md").read_text()


def test_every_batched_row_is_compared_with_batch_size_1(tmp_path):
    """Without batch size 1 among the batch sizes, its files are still what the rows are compared with."""
    out = tmp_path / "results"
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "2", "--images", "2", "--out", str(out)]
    assert throughput.main(argv) == 0
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [2]
    assert 0 <= rows[0]["files_identical_to_batch_1"] <= 2
    assert 0.0 <= rows[0]["pixel_values_differing_from_batch_1"] <= 1.0


def test_throughput_writes_under_bench_out_by_default(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    image = tmp_path / "source.png"
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(image)
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--sizes", "40x24", "--batch", "1", "--images", "1", "--image", str(image)]
    assert throughput.main(argv) == 0
    assert (tmp_path / "bench_out" / "throughput" / "throughput.json").is_file()
    assert not (tmp_path / "benchmarks").exists()
