"""Reward model: losses on hand-made tensors, a separable toy set, centring, and what may change."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from lorahf import pipeline
from lorahf.runs import RunFolder
from lorahf.stages.reward import group_loss, pairwise_loss, ranking_pairs


def test_pairwise_loss_known_values():
    better, worse = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    assert torch.allclose(pairwise_loss(better, worse), torch.tensor([math.log1p(math.exp(-1)), math.log(2)]))
    assert torch.allclose(pairwise_loss(better, worse, margin=0.5)[0], torch.tensor(math.log1p(math.exp(-0.5))))


def test_ranking_pairs_cover_every_ordered_pair_and_skip_ties():
    assert sorted(ranking_pairs([2, 1, 3])) == [(0, 2), (1, 0), (1, 2)]
    assert ranking_pairs([1, 1]) == []
    assert len(ranking_pairs([1, 2, 3, 4])) == 6  # K(K-1)/2


def test_group_loss_weighs_each_prompt_equally():
    one_pair = torch.tensor([2.0, 0.0])
    three_pairs = torch.tensor([0.0, 0.0, 0.0])
    loss = group_loss([one_pair, three_pairs], [[(0, 1)], [(0, 1), (0, 2), (1, 2)]], margin=0.0)
    expected = (math.log1p(math.exp(-2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mse_on_targets():
    loss = group_loss([torch.tensor([1.0]), torch.tensor([-1.0])], [[], []], 0.0, targets=[[0.0], [1.0]])
    assert loss.item() == pytest.approx((1 + 4) / 2)


def _toy_preferences(path, rows=160):
    """Trivially separable: the chosen response always carries the marker word 'excellent'."""
    words = ["match", "game", "team", "score", "city", "crowd", "coach", "pitch"]
    with open(path, "w") as handle:
        for i in range(rows):
            topic = f"The {words[i % 8]} was {words[(i * 3) % 8]} number {i}."
            handle.write(json.dumps({"prompt": topic, "chosen": f"excellent {words[(i + 1) % 8]}",
                                     "rejected": f"{words[(i + 1) % 8]} {words[(i + 2) % 8]}"}) + "\n")


def _recipe(tmp_path, model_dir, stages, extra=None):
    raw = {"name": "toy", "output_dir": str(tmp_path / "runs"), "seed": 0,
           "model": {"name": str(model_dir), "quantization": "8bit"},
           "max_prompt_tokens": 32, "max_response_tokens": 8, "stages": stages,
           "reward": {"data": {"files": [str(tmp_path / "prefs.jsonl")], "eval_fraction": 0.2},
                      "learning_rate": 3e-3, "batch_size": 16, "max_steps": 40, "eval_every": 20,
                      "init_from": "random", "lr_schedule": "constant"}}
    for key, value in (extra or {}).items():
        raw[key] = value
    from lorahf.recipe import validate
    return validate(raw)


def test_reward_model_separates_a_trivial_toy_set_and_is_centred(tmp_path, family_model_dir):
    """On the tiny T5 and on the tiny Llama."""
    _toy_preferences(tmp_path / "prefs.jsonl")
    result = pipeline.run(_recipe(tmp_path, family_model_dir, ["reward"]))
    metrics = result.metrics["reward"]
    assert metrics["eval_accuracy"] >= 0.95 and metrics["gate"] == "pass"
    assert metrics["eval_pairs"] == 32

    # centring: the responses it was centred on (here the preference data's own) average 0
    from lorahf.backbone import Backbone
    from lorahf.data import collate, encode_prompts, encode_responses, load_rows
    from lorahf.stages.reward import CENTRING_ROWS

    backbone = Backbone.load(str(family_model_dir), "8bit")
    try:
        backbone.load_adapter("reward", result.folder.adapter_dir("reward"))
        backbone.use("reward").model.eval()
        rows = load_rows(str(tmp_path / "prefs.jsonl"), "preference")
        train, _ = __import__("lorahf.data", fromlist=["split"]).split(rows, 0.2, seed=0)
        prompts = [p for p in train["prompt"] for _ in range(2)][:CENTRING_ROWS]
        responses = [r for c, w in zip(train["chosen"], train["rejected"]) for r in (c, w)][:CENTRING_ROWS]
        prompt_ids, _ = encode_prompts(backbone.tokenizer, prompts, 32)
        response_ids, _ = encode_responses(backbone.tokenizer, responses, 8)
        with torch.no_grad():
            scores = backbone.sequence_scores(collate(prompt_ids, response_ids, 0))
        assert abs(scores.mean().item()) < 1e-4
    finally:
        backbone.close()


def test_weak_reward_fails_the_gate(tmp_path, tiny_model_dir):
    _toy_preferences(tmp_path / "prefs.jsonl")
    recipe = _recipe(tmp_path, tiny_model_dir, ["reward"])
    recipe.reward.max_steps = 1
    recipe.reward.learning_rate = 1e-6
    recipe.reward.min_accuracy = 0.99
    assert pipeline.run(recipe).metrics["reward"]["gate"] == "fail"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_reward_from_sft_changes_only_its_own_adapter(tmp_path, tiny_model_dir):
    _toy_preferences(tmp_path / "prefs.jsonl")
    sft_rows = tmp_path / "sft.jsonl"
    sft_rows.write_text("".join(json.dumps({"prompt": f"say {w}", "response": w}) + "\n"
                                for w in ["match", "game", "team", "score"] * 10))
    sft = {"data": {"files": [str(sft_rows)]}, "max_steps": 5, "eval_every": 5, "eval_samples": 2}
    recipe = _recipe(tmp_path, tiny_model_dir, ["sft", "reward"], {"sft": sft})
    recipe.reward.init_from = "sft"
    recipe.reward.max_steps = 5
    pipeline.run(recipe, stage="sft")
    folder = RunFolder(recipe.run_dir)
    sft_files = _digest(folder.adapter_dir("sft"))
    base_files = _digest(tiny_model_dir)
    pipeline.run(recipe, stage="reward")
    assert _digest(folder.adapter_dir("sft")) == sft_files
    assert _digest(tiny_model_dir) == base_files
    assert (folder.adapter_dir("reward") / "head.safetensors").is_file()
    from safetensors.torch import load_file
    sft_weights = load_file(folder.adapter_dir("sft") / "adapter_model.safetensors")
    reward_weights = load_file(folder.adapter_dir("reward") / "adapter_model.safetensors")
    assert sft_weights.keys() == reward_weights.keys()
    assert any(not torch.equal(sft_weights[k], reward_weights[k]) for k in sft_weights)


def test_bad_preference_rows_stop_the_stage_with_one_line(tmp_path, tiny_model_dir):
    from lorahf.errors import DataError

    (tmp_path / "prefs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n"
                                          + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError) as error:
        pipeline.run(_recipe(tmp_path, tiny_model_dir, ["reward"]))
    assert "prefs.jsonl: row 1" in str(error.value) and "\n" not in str(error.value)


def test_ranking_and_score_data_train_and_report_their_metrics(tmp_path, tiny_model_dir):
    from pathlib import Path

    EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "summaries" / "data"
    formats = {"ranking": ("rankings.jsonl", {"prompt": "document", "responses": "candidates", "ranking": "ranks"}),
               "score": ("scores.jsonl", {"prompt": "document", "response": "summary", "score": "rating"})}
    for name, (file, columns) in formats.items():
        recipe = _recipe(tmp_path / name, tiny_model_dir, ["reward"])
        recipe.reward.data.files = [str(EXAMPLE_DATA / file)]
        recipe.reward.data.columns = columns
        recipe.reward.data.max_rows = 60
        recipe.reward.max_steps = 3
        recipe.max_prompt_tokens = 128
        recipe.max_response_tokens = 32
        metrics = pipeline.run(recipe).metrics["reward"]
        assert metrics["format"] == name
        assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_pairs"] > 0
        if name == "ranking":
            assert metrics["eval_pairs"] == 12 * 6  # 20 % of 60 groups held out, 4 candidates: 6 pairs each
        else:
            assert -1.0 <= metrics["pearson"] <= 1.0 and -1.0 <= metrics["spearman"] <= 1.0
