"""``python -m pillow_jac.training.evaluate --json``: the rows and what they were measured on."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pillow_jac.bench.metrics import portable_path
from pillow_jac.engine import get_engine
from pillow_jac.training import evaluate


def test_json_records_rows_model_and_portable_data(tmp_path, monkeypatch):
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(data / "a.png")
    out = tmp_path / "cost.json"
    monkeypatch.chdir(tmp_path)
    evaluate.main(["--data", "images", "--qualities", "2", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    engine = get_engine("cpu", None)
    assert report["meta"]["model"] == {
        "model_id": engine.model_id,
        "weights_hash": engine.weights_hash.hex(),
        "encoder_hash": engine.encoder_hash,
    }
    assert report["meta"]["data"] == portable_path(data) and not report["meta"]["data"].startswith("/")
    assert report["meta"]["images"] == ["a.png"]
    (row,) = report["rows"]
    assert row["quality"] == 2.0
    assert 0 < row["float_bpp"] <= row["bpp"] * 1.5
    assert row["psnr"] > 10
