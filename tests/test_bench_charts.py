"""bench/_charts.py draws a PNG from a result record (no benchmark is run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from bench import _charts

RECORD = {
    "bench": "fake",
    "metric": "viewers held at >= 25 fps",
    "value": 128,
    "baseline": "a hand-written baseline",
    "baseline_value": 32,
    "ratio": 4.0,
    "params": {"steps": [1, 8, 16]},
    "steps": {
        "sansio_aio": [
            {"viewers": 0, "server_cpu": 0.02, "min_fps": None},
            {"viewers": 8, "server_cpu": 0.04, "min_fps": 30.0},
            {"viewers": 16, "server_cpu": 0.06, "min_fps": 29.9},
        ],
        "baseline": [
            {"viewers": 0, "server_cpu": 0.02, "min_fps": None},
            {"viewers": 8, "server_cpu": 0.3, "min_fps": 30.0},
            {"viewers": 16, "server_cpu": 0.6, "min_fps": 18.0},
        ],
    },
}


def is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_writes_a_png(tmp_path: Path) -> None:
    path = _charts.render(RECORD, tmp_path)
    assert path == tmp_path / "fake.png"
    assert is_png(path)


def test_series_found_per_step() -> None:
    panels = _charts.find_series(RECORD)
    assert [p[1] for p in panels] == ["viewers|min_fps", "viewers|server_cpu"]
    assert set(panels[0][2]) == {"sansio_aio", "baseline"}
    assert panels[0][2]["baseline"] == [(8.0, 30.0), (16.0, 18.0)]  # None skipped


def test_render_all_from_json_keeps_foreign_charts(tmp_path: Path) -> None:
    (tmp_path / "fake.json").write_text(json.dumps(RECORD))
    (tmp_path / "other.json").write_text(json.dumps({**RECORD, "bench": "other"}))
    (tmp_path / "other.png").write_bytes(b"a chart the benchmark drew itself")
    (tmp_path / "bad.json").write_text("{not json")
    drawn = _charts.render_all(tmp_path)
    assert drawn == [tmp_path / "fake.png"]
    assert is_png(tmp_path / "fake.png")
    assert (tmp_path / "other.png").read_bytes() == b"a chart the benchmark drew itself"
    # Charts drawn here are redrawn; a record without a value is not drawn.
    assert _charts.render(RECORD, tmp_path) == tmp_path / "fake.png"
    assert _charts.render({"bench": "novalue"}, tmp_path) is None
