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


def test_a_save_killed_inside_atomic_path_is_finished_by_the_next_holder_of_the_lock(tmp_path):
    """Killed before its rename: the temporary copy goes, the old version stays. Killed between a folder's two
    renames (old moved aside, new not yet in place): the old version goes back."""
    folder = RunFolder(tmp_path / "run")
    adapters = folder.root / "adapters"
    (adapters / "sft").mkdir(parents=True)
    (adapters / "sft" / "weights").write_text("old sft")
    (adapters / ".tmp-sft-k2j3h1" / "sft").mkdir(parents=True)  # a new sft, killed before its rename
    (adapters / ".tmp-sft-k2j3h1" / "sft" / "weights").write_text("new sf")
    (adapters / ".tmp-old-policy-4242").mkdir()  # policy moved aside, the new one not in place yet
    (adapters / ".tmp-old-policy-4242" / "weights").write_text("old policy")
    (adapters / ".tmp-policy-x9y8z7" / "policy").mkdir(parents=True)
    (adapters / ".tmp-old-value-77").mkdir()  # value replaced, only the cleanup of the old one was cut short
    (adapters / "value").mkdir()
    (adapters / "value" / "weights").write_text("new value")
    (folder.root / ".tmp-metrics.json-abc").write_text("{")

    with folder.lock() as note:
        assert "restored adapters/policy" in note
    assert (adapters / "sft" / "weights").read_text() == "old sft"
    assert (adapters / "policy" / "weights").read_text() == "old policy"
    assert (adapters / "value" / "weights").read_text() == "new value"
    assert not [p for p in folder.root.rglob(".tmp-*")]
