"""`report_to: [tensorboard]` sends every logged metric to RUN/tensorboard/ as well (offline, tensorboardX)."""

from __future__ import annotations

import importlib.util
import struct

import pytest

from lorahf import pipeline
from lorahf.errors import LorahfError
from lorahf.recipe import validate
from tests.conftest import tiny_run_recipe


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files (TFRecord framing: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_metrics_go_to_tensorboard_too(tmp_path, tiny_model_dir):
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "board", ["sft"], sft_steps=4)
    raw["sft"]["eval_every"] = 2
    result = pipeline.run(validate({**raw, "report_to": ["tensorboard"]}))
    logged = scalars(result.folder.root / "tensorboard")
    jsonl = [row for row in result.folder.read_metrics("sft") if "loss" in row]
    assert [step for step, _ in logged["sft/loss"]] == [row["step"] for row in jsonl]
    assert [value for _, value in logged["sft/loss"]] == pytest.approx([row["loss"] for row in jsonl], rel=1e-6)
    assert "sft/eval_loss" in logged


def test_tensorboard_without_its_package_is_one_line_before_anything_runs(tmp_path, tiny_model_dir, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboardX" else found(name, *a))
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "board", ["sft"], sft_steps=4)
    with pytest.raises(LorahfError, match="tensorboardX") as error:
        pipeline.run(validate({**raw, "report_to": ["tensorboard"]}))
    assert "lorahf[tensorboard]" in error.value.hint
    assert not (tmp_path / "runs" / "board").exists()
