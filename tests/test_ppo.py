"""The PPO stage on the tiny bases: it learns a hand-written reward, trains only what it should (on the T5 and on the
Llama), resumes (both), and respects the reward model's quality gate."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lorahf import pipeline
from lorahf.errors import LorahfError
from lorahf.progress import Progress
from lorahf.recipe import DataSpec, PPOStage, validate
from lorahf.runs import RunFolder
from lorahf.stages import ppo as ppo_stage
from lorahf.training import CHECKPOINT_STATE

from tests.conftest import EXAMPLE_DATA

WORD = "beat"  # the hand-written reward: +1 per occurrence of this word in the response


def _recipe(tmp_path, model_dir, name="ppo-toy", stages=("sft", "ppo"), reward=None, sft_steps=100, lora=None, **ppo):
    """A toy PPO run against the word-count judge: gae (a value model) unless `ppo` names another advantage."""
    judge = tmp_path / "count_word.py"
    judge.write_text(f"def score(prompt, response):\n    return float(response.split().count({WORD!r}))\n")
    raw = {"name": name, "output_dir": str(tmp_path / "runs"), "seed": 0,
           "model": {"name": str(model_dir), "quantization": "8bit"},
           "prompt_template": "summarize: {prompt}", "max_prompt_tokens": 96, "max_response_tokens": 16,
           "judges": {"count": {"python": f"{judge}:score"}},
           "stages": list(stages),
           "sft": {"data": {"files": [str(EXAMPLE_DATA / "sft.jsonl")],
                            "columns": {"prompt": "document", "response": "summary"}, "max_rows": 800},
                   "learning_rate": 1e-3, "lr_schedule": "constant", "max_steps": sft_steps, "eval_every": sft_steps,
                   "eval_samples": 0},
           "ppo": {"data": {"files": [str(EXAMPLE_DATA / "prompts.jsonl")], "columns": {"prompt": "document"},
                            "eval_fraction": 0.02},
                   "reward_judge": "count", "advantage": "gae", "batch_size": 8, "minibatch_size": 4, "epochs": 2,
                   "policy_learning_rate": 1e-3, "value_learning_rate": 1e-3, "beta": 0.02,
                   "eval_every": 5, "eval_prompts": 8, "checkpoint_every": 2, **ppo}}
    if reward is not None:
        raw["reward"] = reward
    if lora is not None:
        raw["lora"] = lora
    return validate(raw)


def _ppo_rows(recipe) -> list[dict]:
    return [row for row in RunFolder(recipe.run_dir).read_metrics("ppo") if "score_mean" in row]


def test_ppo_learns_a_hand_written_reward_with_kl_near_zero_at_first(tmp_path, tiny_model_with_dropout_dir):
    # SFT with dropout: without it, 100 steps leave SFT answering "beat beat 2-0 in." to everything (2 words already)
    recipe = _recipe(tmp_path, tiny_model_with_dropout_dir, iterations=16, temperature=1.0,
                     lora={"sft": {"dropout": 0.05}})
    result = pipeline.run(recipe)
    rows = _ppo_rows(recipe)
    first, last = rows[:4], rows[-4:]
    assert sum(r["score_mean"] for r in last) / 4 > sum(r["score_mean"] for r in first) / 4 + 0.5, \
        [r["score_mean"] for r in rows]
    assert abs(rows[0]["kl"]) < 1e-4  # the first rollout: policy == reference
    assert sum(r["kl"] for r in rows) / len(rows) >= 0
    metrics = result.metrics["ppo"]
    assert metrics["count_win_rate_vs_sft"] > 0.5 and metrics["reward_policy"] > metrics["reward_sft"]
    samples = [json.loads(line) for line in RunFolder(recipe.run_dir).samples_path("ppo").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == {0, 5, 10, 15, 16}


def test_critic_free_ppo_learns_the_reward_with_no_value_model(tmp_path, tiny_model_with_dropout_dir):
    """grpo with the KL in the loss, 4 answers to each of 2 prompts per iteration: the score rises, and no value
    adapter, head, loss or check exists anywhere. (rloo, with the KL in the reward, runs end to end in the resume
    test below; the estimators' math is tested in test_ppo_math.py, both learn on the bundled example in
    BENCHMARKS.md.) SFT with dropout, as in the test above: measured, the score went 0.8 -> 2.6 (first and last
    4 iterations) with it, 0.4 -> 0.75 without."""
    advantage = "grpo"
    recipe = _recipe(tmp_path, tiny_model_with_dropout_dir, iterations=16, temperature=1.0, advantage=advantage,
                     answers_per_prompt=4, kl_penalty="loss", kl_estimator="k3", lora={"sft": {"dropout": 0.05}})
    result = pipeline.run(recipe)
    rows = _ppo_rows(recipe)
    first, last = rows[:4], rows[-4:]
    assert sum(r["score_mean"] for r in last) / 4 > sum(r["score_mean"] for r in first) / 4 + 0.5, \
        [r["score_mean"] for r in rows]
    assert abs(rows[0]["kl"]) < 1e-4
    assert not {"value_loss", "explained_variance", "value_clip_fraction"} & set().union(*rows)
    assert "kl_loss" in rows[0]
    metrics = result.metrics["ppo"]
    assert metrics["advantage"] == advantage and metrics["answers_per_prompt"] == 4 and "value_init" not in metrics
    assert metrics["count_win_rate_vs_sft"] > 0.5
    adapters = RunFolder(recipe.run_dir).root / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == ["policy", "policy-last", "sft"]


def test_critic_free_settings_that_cannot_work_are_one_line_each(tmp_path, tiny_model_dir):
    with pytest.raises(LorahfError) as error:
        _recipe(tmp_path, tiny_model_dir, advantage="rloo", answers_per_prompt=1, kl_penalty="loss",
                value_init="sft")
    problems = error.value.problems
    assert any("ppo.answers_per_prompt" in p and "rloo needs at least 2" in p for p in problems), problems
    assert any("ppo.kl_penalty" in p and "kl_estimator: k3" in p for p in problems), problems
    assert any("ppo.value_init" in p and "no value model" in p for p in problems), problems
    with pytest.raises(LorahfError, match=r"ppo.answers_per_prompt.*must divide ppo.batch_size \(8\), got 3"):
        _recipe(tmp_path, tiny_model_dir, advantage="grpo", answers_per_prompt=3)
    assert _recipe(tmp_path, tiny_model_dir, advantage="grpo").ppo.answers == 4  # the default for a critic-free one
    assert _recipe(tmp_path, tiny_model_dir).ppo.answers == 1
    default = PPOStage(data=DataSpec(files=["unused.jsonl"]))  # rloo, 4 answers a prompt, 2 epochs; gae's are 1 and 4
    assert (default.advantage, default.answers, default.passes, default.critic) == ("rloo", 4, 2, False)
    assert (PPOStage(data=DataSpec(files=["unused.jsonl"]), advantage="gae").passes, default.model_copy(
        update={"epochs": 3}).passes) == (4, 3)


def _fingerprint(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def family_backbone(family_model_dir):
    from lorahf.backbone import Backbone

    loaded = Backbone.load(str(family_model_dir), quantization="8bit")
    yield loaded
    loaded.close()


def test_ppo_trains_policy_and_value_only(tmp_path, family_model_dir, family_backbone):
    """With a reward model: policy and value change; sft, reward (adapter and head) and the base do not (on the tiny
    T5 and on the tiny Llama)."""
    backbone = family_backbone
    reward = {"data": {"files": [str(EXAMPLE_DATA / "preferences.jsonl")], "max_rows": 64,
                       "columns": {"prompt": "document", "chosen": "better", "rejected": "worse"}},
              "max_steps": 2, "eval_every": 2, "min_accuracy": 0.0}
    recipe = _recipe(tmp_path, family_model_dir, stages=("sft", "reward", "ppo"), reward=reward, reward_judge=None, sft_steps=10,
                     iterations=2, eval_every=2)
    folder = RunFolder(recipe.run_dir)
    for stage in ("sft", "reward"):
        from lorahf.stages import registry

        registry.get(stage).run(recipe, backbone, folder, Progress())
        folder.mark_done(stage, recipe.stage_hash(stage), {"gate": "pass"} if stage == "reward" else {}, 0.0)
    base = [p for n, p in backbone.transformer.named_parameters() if "lora_" not in n] + list(backbone.transformer.buffers())
    frozen = {"base": _fingerprint(base), "sft": _fingerprint(backbone.parameters("sft")),
              "reward": _fingerprint(backbone.parameters("reward") + list(backbone.head("reward").buffers()))}
    ppo_stage.run(recipe, backbone, folder, Progress())
    backbone.load_adapter("policy", folder.adapter_dir("policy-last"))
    assert _fingerprint(base) == frozen["base"]
    assert _fingerprint(backbone.parameters("sft")) == frozen["sft"]
    assert _fingerprint(backbone.parameters("reward") + list(backbone.head("reward").buffers())) == frozen["reward"]
    assert _fingerprint(backbone.parameters("policy")) != frozen["sft"]
    value = backbone.parameters("value")
    assert _fingerprint(value) != _fingerprint(backbone.parameters("reward"))


def test_killed_mid_ppo_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(
        tmp_path, family_model_dir, monkeypatch):
    _kill_and_resume(tmp_path, family_model_dir, monkeypatch, ("policy-last", "value"))


def test_a_critic_free_run_sampling_from_a_merged_copy_killed_mid_ppo_resumes_like_any_other(tmp_path, tiny_model_dir,
                                                                                               monkeypatch):
    """rloo (no value model) with rollout_weights: merged (the copy is rebuilt from the checkpoint's policy)."""
    broken = _kill_and_resume(tmp_path, tiny_model_dir, monkeypatch, ("policy-last",), advantage="rloo",
                              answers_per_prompt=2, rollout_weights="merged")
    assert all(abs(row["rollout_logprob_gap"]) < 0.05 for row in _ppo_rows(broken))


def _kill_and_resume(tmp_path, model_dir, monkeypatch, trained: tuple[str, ...], **ppo):
    """Killed before iteration 5 and rerun, the run ends with the adapters (`trained`) of a run never killed."""
    unbroken = _recipe(tmp_path, model_dir, name="unbroken", sft_steps=10, iterations=5, eval_every=5, **ppo)
    pipeline.run(unbroken)

    broken = _recipe(tmp_path, model_dir, name="broken", sft_steps=10, iterations=5, eval_every=5, **ppo)
    iterate = ppo_stage.iterate

    def killed_at_five(*args, **kwargs):
        if args[-1] == 5:
            raise KeyboardInterrupt
        return iterate(*args, **kwargs)

    monkeypatch.setattr(ppo_stage, "iterate", killed_at_five)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(broken)
    folder = RunFolder(broken.run_dir)
    assert (folder.checkpoint_dir("ppo") / CHECKPOINT_STATE).is_file() and not folder.is_done(
        "ppo", broken.stage_hash("ppo"))
    monkeypatch.setattr(ppo_stage, "iterate", iterate)
    progress = _Notes()
    pipeline.run(broken, progress=progress)
    assert any("resuming after iteration 4" in note for note in progress.notes), progress.notes
    assert folder.is_done("ppo", broken.stage_hash("ppo")) and not folder.checkpoint_dir("ppo").exists()
    assert [r["step"] for r in _ppo_rows(broken)] == [1, 2, 3, 4, 5]  # 5 once: the kill came before its log line
    from safetensors.torch import load_file

    assert not (folder.adapter_dir("value") / "adapter_model.safetensors").exists() or "value" in trained
    for role in trained:
        a = load_file(RunFolder(unbroken.run_dir).adapter_dir(role) / "adapter_model.safetensors")
        b = load_file(folder.adapter_dir(role) / "adapter_model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), role
    return broken


class _Notes(Progress):
    def __init__(self):
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_failed_reward_gate_blocks_ppo_unless_allowed(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, reward_judge=None)
    folder = RunFolder(recipe.run_dir)
    folder.mark_done("reward", "x", {"gate": "fail", "eval_accuracy": 0.55, "min_accuracy": 0.6}, 0.0)
    with pytest.raises(LorahfError, match=r"failed its quality gate \(held-out accuracy 0.550 < reward.min_accuracy "
                                          r"0.6\)") as error:
        ppo_stage.check_gate(folder, recipe.ppo)
    assert "ppo.allow_weak_reward: true" in error.value.hint
    ppo_stage.check_gate(folder, recipe.ppo.model_copy(update={"allow_weak_reward": True}))
    folder.mark_done("reward", "x", {"gate": "pass", "eval_accuracy": 0.7, "min_accuracy": 0.6}, 0.0)
    ppo_stage.check_gate(folder, recipe.ppo)


def test_ppo_recipe_checks_gather_every_problem(tmp_path, tiny_model_dir):
    with pytest.raises(LorahfError) as error:
        _recipe(tmp_path, tiny_model_dir, minibatch_size=3, reward_judge="nope", best_by="rouge",
                data={"files": ["prompts.jsonl"], "eval_fraction": 0})
    problems = error.value.problems
    assert any("ppo.minibatch_size" in p and "divide ppo.batch_size (8)" in p for p in problems)
    assert any("ppo.reward_judge" in p for p in problems)
    assert any("ppo.best_by" in p and "reward, rouge_l, count" in p for p in problems)
    assert any("ppo.data" in p and "held-out prompts" in p for p in problems)


@pytest.mark.parametrize("estimator", [{"advantage": "gae"},
                                       {"advantage": "grpo", "kl_penalty": "loss", "kl_estimator": "k3"}])
def test_micro_batches_accumulate_to_the_same_update_as_one_pass(backbone, estimator):
    """Gradient accumulation over micro-batches gives the minibatch's gradient, with responses of unequal length
    (each part divides by the whole minibatch's tokens, not its own): policy and value (gae), or the policy alone
    with the KL in its loss (grpo)."""
    from lorahf.data import collate
    from lorahf.ppo.rollout import Rollout
    from lorahf.ppo.update import _loss_and_backward
    from lorahf.recipe import LoraSpec

    for role in ("policy", "value"):
        backbone.add_adapter(role, LoraSpec(), head=role == "value")
    backbone.set_trainable("policy", "value")
    backbone.model.eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 100, (n,), generator=generator).tolist() + [1] for n in (5, 9, 7, 6)]
    responses = [torch.randint(3, 100, (n,), generator=generator).tolist() + [1] for n in (2, 6, 4, 1)]
    batch = collate(prompts, responses, 0)
    shape = batch.response_ids.shape
    rollout = Rollout(batch, torch.ones(4, dtype=torch.bool), torch.zeros(4), -torch.rand(shape, generator=generator),
                      -5 - torch.rand(shape, generator=generator), torch.randn(shape, generator=generator),
                      torch.zeros(shape))  # the reference's log-probs near the fresh policy's (about -log 100)
    advantages, returns = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    spec = PPOStage(data=DataSpec(files=["unused.jsonl"]), batch_size=4, minibatch_size=4, **estimator)
    trained = ("policy", "value") if spec.critic else ("policy",)
    backbone.set_trainable(*trained)

    def gradient(micro: int) -> list[torch.Tensor]:
        rows = torch.arange(4)
        for part in rows.split(micro):
            _loss_and_backward(backbone, rollout, advantages, returns, spec, part, batch.response_mask.sum().float(),
                               beta=0.1)
        found = [p.grad.clone() for role in trained for p in backbone.parameters(role, encoder=True)
                 if p.grad is not None]
        for role in ("policy", "value"):
            for p in backbone.parameters(role):
                p.grad = None
        return found

    whole, accumulated = gradient(4), gradient(2)
    assert len(whole) == len(accumulated) > 0
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-3) for a, b in zip(whole, accumulated)), \
        max((a - b).abs().max().item() for a, b in zip(whole, accumulated))
