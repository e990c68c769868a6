"""A reward model on its own encoder (reward.model): the tiny BERT trained beside the tiny T5, used by PPO, evaluate,
the reward judge and merge; a merged one used as it is (reward.train: false); what is refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import EXAMPLE_DATA, tiny_ppo_section, tiny_reward_section, tiny_run_recipe
from lorahf import pipeline
from lorahf.backbone import Backbone
from lorahf.errors import LorahfError
from lorahf.recipe import validate
from lorahf.reward_model import MARKER, EncoderReward, SharedReward, of_run
from lorahf.runs import RunFolder


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory, tiny_model_dir, tiny_encoder_dir):
    """sft -> reward (the tiny BERT, LoRA) -> ppo (2 iterations, gae: a value model with no reward adapter to start
    from) -> evaluate (reward and gold judges), one run."""
    root = tmp_path_factory.mktemp("encoder-reward")
    reward = {**tiny_reward_section(max_steps=6, eval_every=3), "model": str(tiny_encoder_dir)}
    recipe = validate(tiny_run_recipe(root, tiny_model_dir, "encoder", ["sft", "reward", "ppo", "evaluate"],
                                      sft_steps=4, reward=reward, ppo=tiny_ppo_section(iterations=2, eval_every=1, advantage="gae"),
                                      evaluate={"max_prompts": 8, "judges": ["reward", "gold"]}))
    return recipe, pipeline.run(recipe)


def test_the_encoder_trains_is_saved_centred_and_shown(encoder_run, tiny_encoder_dir):
    recipe, result = encoder_run
    folder = RunFolder(recipe.run_dir)
    reward = result.metrics["reward"]
    assert reward["model"] == "encoder" and reward["steps"] == 6 and reward["eval_pairs"] == 10
    saved = folder.adapter_dir("reward")
    marker = json.loads((saved / MARKER).read_text())
    assert marker["model"] == str(tiny_encoder_dir) and marker["tuning"] == "lora"
    assert marker["offset"] == pytest.approx(reward["offset"]) and marker["offset"] != 0
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "head.safetensors").exists()
    assert result.memory["reward_model"] == str(tiny_encoder_dir)
    assert result.memory["reward_model_bytes"] == reward["memory_bytes"] > 1_000_000  # fp32 ("auto": small)
    assert "reward" not in result.memory["adapter_bytes"]  # nothing of it on the shared base

    # a fresh process's view: the saved encoder, its offset applied (the SFT data's responses average 0)
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization)
    try:
        loaded = of_run(recipe, backbone, folder)
        assert isinstance(loaded, EncoderReward) and of_run(recipe, backbone, folder) is loaded  # loaded once
        with open(EXAMPLE_DATA / "sft.jsonl", encoding="utf-8") as handle:
            rows = [json.loads(line) for line, _ in zip(handle, range(512))]
        scores = loaded.score([r["document"] for r in rows], [r["summary"] for r in rows])
        assert abs(sum(scores) / len(scores)) < 1e-4
        assert not backbone.has_adapter("reward")
    finally:
        backbone.close()


def test_ppo_and_evaluate_score_with_the_encoder(encoder_run):
    recipe, result = encoder_run
    ppo, evaluate = result.metrics["ppo"], result.metrics["evaluate"]
    assert ppo["value_init"] == "sft"  # no reward adapter on the base to copy
    folder = RunFolder(recipe.run_dir)
    checked = [json.loads(line) for line in folder.samples_path("ppo").read_text().splitlines()]
    encoder = EncoderReward.from_folder(folder.adapter_dir("reward"), recipe, torch.device("cpu"))
    assert [row["reward"] for row in checked] == pytest.approx(  # PPO's held-out checks scored with the encoder
        encoder.score([row["prompt"] for row in checked], [row["response"] for row in checked]), abs=1e-5)
    low, high = evaluate["win_rate_ci.reward"]
    assert low <= evaluate["win_rate.reward"] <= high
    samples = [json.loads(line) for line in (RunFolder(recipe.run_dir).samples_path("evaluate")).read_text().splitlines()]
    assert all(isinstance(row["reward.policy"], float) for row in samples)


def test_the_rollout_scorer_reads_the_policy_tokens_as_text(encoder_run, tiny_model_dir):
    """PPO's scorer decodes the base's tokens and re-tokenizes them for the encoder: the same scores as the texts."""
    from lorahf.data import collate, encode_prompts, encode_responses

    recipe, _ = encoder_run
    backbone = Backbone.load(str(tiny_model_dir), "8bit")
    try:
        reward = of_run(recipe, backbone, RunFolder(recipe.run_dir))
        prompts = ["The Falcons beat the Tigers 3-1 in Leeds.", "Rain fell all day in York; the match was off."]
        texts = ["Falcons beat Tigers 3-1.", "Rain in York stopped the match."]
        prompt_ids, _ = encode_prompts(backbone.tokenizer, prompts, 64)
        response_ids, _ = encode_responses(backbone.tokenizer, texts, 16)
        batch = collate(prompt_ids, response_ids, backbone.tokenizer.pad_token_id)
        assert reward(backbone, prompts, batch).tolist() == pytest.approx(reward.score(prompts, texts), abs=1e-6)
        assert reward.score(prompts, texts) != reward.score(prompts, texts[::-1])  # it reads the response
    finally:
        backbone.close()


def test_the_reward_judge_merge_and_generate_work_with_the_encoder(encoder_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorahf.generate import generate
    from lorahf.merge import merge

    recipe, result = encoder_run
    assert all(generate(recipe.run_dir, ["The Falcons beat the Tigers 3-1 in Leeds."]))  # the policy answers
    judged = pipeline.judge(recipe.run_dir, "reward", "sft", "policy", n=4, out=tmp_path / "judged.jsonl")
    assert judged["judged"] + judged["no_verdict"] == 4
    assert all(json.loads(line)["judge"] == "reward" for line in (tmp_path / "judged.jsonl").read_text().splitlines())

    merged = merge(recipe.run_dir, "reward", tmp_path / "merged-reward")
    assert merged.identical == merged.prompts == 20 and merged.max_logit_difference <= 1e-4  # 10 pairs, both answers
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged-reward")  # plain transformers
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged-reward")
    samples = [json.loads(line) for line in RunFolder(recipe.run_dir).samples_path("reward").read_text().splitlines()]
    first = samples[0]
    with torch.no_grad():
        scores = model(**tokenizer([first["prompt"]] * 2, [first["chosen"], first["rejected"]], padding=True,
                                   return_tensors="pt")).logits[:, 0]
    assert (scores[0] - scores[1]).item() == pytest.approx(first["margin"], abs=1e-4)


def test_a_trained_reward_model_is_only_evaluated_and_gated(encoder_run, tmp_path, tiny_model_dir):
    """reward.train false on the merged reward model: no training step, the same held-out accuracy as the run that
    trained it, and a gate that still stops PPO."""
    from lorahf.merge import merge

    recipe, result = encoder_run
    merge(recipe.run_dir, "reward", tmp_path / "trained")
    reward = {**tiny_reward_section(max_steps=6, eval_every=3), "model": str(tmp_path / "trained"), "train": False,
              "min_accuracy": 0.99}
    again = validate(tiny_run_recipe(tmp_path, tiny_model_dir, "given", ["sft", "reward", "ppo"], sft_steps=4,
                                     reward=reward, ppo=tiny_ppo_section(iterations=1)))
    folder = RunFolder(again.run_dir)
    pipeline.run(again, stage="reward")
    metrics = folder.marker("reward").metrics
    assert metrics["steps"] == 0 and metrics["train_loss_first"] is None
    assert metrics["eval_accuracy"] == pytest.approx(result.metrics["reward"]["eval_accuracy"])
    assert metrics["offset"] == pytest.approx(0, abs=1e-4)  # already centred on the same SFT data
    assert metrics["gate"] == "fail"  # 6 steps on 190 pairs: far from 0.99
    assert [row for row in folder.read_metrics("reward") if "loss" in row] == []
    assert json.loads((folder.adapter_dir("reward") / MARKER).read_text())["tuning"] == "none"
    with pytest.raises(LorahfError, match="quality gate"):
        pipeline.run(again, stage="ppo")


def test_the_shared_adapter_is_the_default(tiny_model_dir, tmp_path):
    """Without reward.model nothing changes: the run's reward model is the adapter on the base."""
    recipe = validate(tiny_run_recipe(tmp_path, tiny_model_dir, "shared", ["sft", "reward"], sft_steps=2,
                                      reward=tiny_reward_section(max_steps=2, eval_every=2)))
    result = pipeline.run(recipe)
    assert result.metrics["reward"]["model"] == "adapter" and "reward_model" not in result.memory
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization)
    try:
        assert isinstance(of_run(recipe, backbone, RunFolder(recipe.run_dir)), SharedReward)
    finally:
        backbone.close()


@pytest.mark.parametrize("patch, field", [
    ({"likelihood_term": True}, "reward.likelihood_term"),
    ({"full_finetune": True, "quantization": "8bit"}, "reward.full_finetune"),
])
def test_settings_that_need_the_shared_adapter_are_refused(patch, field, tmp_path, tiny_model_dir):
    from lorahf.errors import RecipeError

    reward = {**tiny_reward_section(max_steps=2, eval_every=2), "model": "models/any-encoder", **patch}
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        validate(tiny_run_recipe(tmp_path, tiny_model_dir, "bad", ["sft", "reward"], sft_steps=2, reward=reward))


def test_a_killed_encoder_reward_stage_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, tiny_encoder_dir):
    """A SIGKILL just after a random step of the encoder's training: the next start resumes at the checkpoint's next
    step and ends with the unbroken run's metrics, bit for bit (benchmarks/kill_resume.py)."""
    import yaml

    from tests.test_kill_resume import _harness

    reward = {**tiny_reward_section(max_steps=12, eval_every=4), "model": str(tiny_encoder_dir),
              "checkpoint_every": 5, "patience": None}
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "killed", ["reward"], sft_steps=2, reward=reward)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = _harness().main(["--recipe", "recipe.yaml", "--kills", "1", "--mode", "steps", "--seed", "1",
                              "--tolerance", "0", "--cwd", str(tmp_path)])
    assert result["kills"] == 1 and result["problems"] == [], result
    assert result["landed_in"][0].split()[0] == "reward" and int(result["resumed_at"][0].split()[1]) > 1, result


def test_an_8bit_encoder_trains_with_its_classifier_unquantized(tiny_encoder_dir):
    """reward.quantization 8bit: the encoder's linears are int8, its classifier (which peft trains whole) is not, and
    a LoRA training step runs (an int8 classifier under peft's trainable copy cannot). On a CPU its int8 layers
    multiply by their dequantized weight in eval mode too, as the shared base's do (test_backbone)."""
    import bitsandbytes as bnb

    from lorahf.ppo.rollout_weights import dense_weight
    from lorahf.recipe import DataSpec, LoraSpec, RewardStage

    spec = RewardStage(data=DataSpec(files=["unused.jsonl"]), model=str(tiny_encoder_dir), quantization="8bit")
    reward = EncoderReward.load(str(tiny_encoder_dir), spec, LoraSpec(), "8bit", torch.device("cpu"))
    kinds = {name: type(module).__name__ for name, module in reward.model.named_modules()}
    assert "Linear8bitLt" in kinds.values() and not any("8bit" in kind for name, kind in kinds.items()
                                                          if ".classifier" in name)
    layer = next(m for m in reward.model.modules() if isinstance(m, bnb.nn.Linear8bitLt))
    inputs = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0))
    reward.model.eval()
    with torch.no_grad():
        assert torch.allclose(layer(inputs), torch.nn.functional.linear(inputs, dense_weight(layer), layer.bias),
                              atol=1e-5)
    reward.set_trainable("reward")
    reward.model.train()
    reward.forward(reward.tokenize(["Rain in York.", "Falcons won."], ["Rain.", "Falcons."])).sum().backward()
    assert all(p.grad is not None for p in reward.parameters("reward"))
