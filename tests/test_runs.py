"""The run folder: atomic writes, markers, the metrics log."""

from __future__ import annotations

import json

import pytest

from lorahf.runs import RunFolder, atomic_path, write_json


def test_atomic_file_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "marker.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["marker.json"]


def test_atomic_folder_replace(tmp_path):
    target = tmp_path / "adapters" / "sft"
    for version in ("one", "two"):
        with atomic_path(target) as temp:
            temp.mkdir()
            (temp / "weights").write_text(version)
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["sft"]


def test_markers_and_metrics(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.marker("sft") is None and not folder.is_done("sft", "h1")
    folder.mark_done("sft", "h1", {"eval_loss": 0.5, "bad": float("nan")}, wall_s=1.23456)
    assert folder.is_done("sft", "h1") and not folder.is_done("sft", "h2")
    marker = folder.marker("sft")
    assert marker.metrics == {"eval_loss": 0.5, "bad": None} and marker.wall_s == 1.235
    folder.log_metrics("sft", 1, {"loss": 2.0})
    folder.log_metrics("sft", 2, {"loss": 1.5})
    folder.log_metrics("reward", 1, {"accuracy": 0.7})
    with open(folder.metrics_path, "a") as handle:
        handle.write('{"stage": "sft", "st')  # a line cut by a kill
    assert [r["loss"] for r in folder.read_metrics("sft")] == [2.0, 1.5]
    assert len(folder.read_metrics()) == 3
