"""`lorahf run`: stages run in order, finished ones are skipped, a changed recipe reruns what it changed."""

from __future__ import annotations

import json

import pytest
import yaml

from lorahf import pipeline
from lorahf.errors import LorahfError
from lorahf.progress import RecordingProgress
from lorahf.recipe import validate


@pytest.fixture
def recipe(tmp_path, tiny_model_dir):
    (tmp_path / "sft.jsonl").write_text("".join(
        json.dumps({"doc": f"report {i}", "summary": f"summary {i % 5}"}) + "\n" for i in range(40)))
    (tmp_path / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": f"report {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
        for i in range(40)))
    return validate({
        "name": "toy", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "max_prompt_tokens": 16, "max_response_tokens": 8, "stages": ["sft", "reward"],
        "sft": {"data": {"files": str(tmp_path / "sft.jsonl"), "columns": {"prompt": "doc", "response": "summary"}},
                "max_steps": 4, "eval_every": 2, "eval_samples": 2, "batch_size": 8},
        "reward": {"data": {"files": str(tmp_path / "prefs.jsonl")}, "max_steps": 3, "eval_every": 3,
                   "batch_size": 8}})


def test_run_resume_and_rerun(recipe):
    progress = RecordingProgress()
    first = pipeline.run(recipe, progress=progress)
    assert first.ran == ["sft", "reward"] and first.skipped == []
    assert progress.tasks["sft"]["steps"] == 4 and progress.tasks["reward"]["steps"] == 3
    folder = first.folder
    assert yaml.safe_load(folder.recipe_path.read_text())["sft"]["max_steps"] == 4
    for stage in ("sft", "reward"):
        marker = json.loads(folder.marker_path(stage).read_text())
        assert marker["done"] and marker["recipe_hash"] == recipe.stage_hash(stage)
    sft = first.metrics["sft"]
    assert {"train_loss_first", "train_loss_last", "eval_loss"} <= sft.keys()
    assert {"eval_accuracy", "eval_pairs", "gate"} <= first.metrics["reward"].keys()
    assert [r["step"] for r in folder.read_metrics("sft") if "loss" in r] == [4]
    assert len((folder.samples_path("sft")).read_text().splitlines()) == 2

    again = pipeline.run(recipe)
    assert again.ran == [] and again.skipped == ["sft", "reward"]
    assert again.metrics["sft"] == json.loads(folder.marker_path("sft").read_text())["metrics"]

    recipe.reward.learning_rate = 1e-4  # changes reward only: refused without --force, nothing touched
    saved = yaml.safe_load(folder.recipe_path.read_text())
    folder.recipe_path.write_text(yaml.safe_dump({**saved, "report_to": ["tensorboard"]}))  # no stage reads it
    with pytest.raises(LorahfError, match="reward would rerun because the recipe changed: reward.learning_rate") \
            as error:
        pipeline.run(recipe)
    assert "report_to" not in str(error.value) and " more" not in str(error.value)
    changed = pipeline.run(recipe, force=True)
    assert changed.ran == ["reward"] and changed.skipped == ["sft"]

    assert pipeline.run(recipe, stage="sft").ran == ["sft"]
    assert pipeline.run(recipe, from_stage="sft").ran == ["sft", "reward"]


def test_stage_selection_errors(recipe):
    with pytest.raises(LorahfError, match="not in this recipe's stages"):
        pipeline.run(recipe, stage="ppo")
    with pytest.raises(LorahfError, match="not both"):
        pipeline.run(recipe, stage="sft", from_stage="sft")


def test_reward_without_sft_adapter_says_what_to_run(recipe):
    with pytest.raises(LorahfError, match="reward needs the 'sft' adapter") as error:
        pipeline.run(recipe, stage="reward")
    assert error.value.hint == "the sft stage writes it: lorahf run RECIPE --stage sft"
