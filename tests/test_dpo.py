"""DPO and its family: the losses' properties on hand-made log-probs, and the stage on the tiny T5."""

from __future__ import annotations

import math

import pytest
import torch

from lorahf.stages.dpo import preference_losses

LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")


def _pairs(requires_grad: bool = False):
    """Summed log-probs of 4 pairs (chosen, rejected), the reference's, and the answers' token counts."""
    chosen = torch.tensor([-12.0, -8.0, -20.0, -5.0], requires_grad=requires_grad)
    rejected = torch.tensor([-10.0, -9.0, -25.0, -6.0], requires_grad=requires_grad)
    reference_chosen = torch.tensor([-11.0, -8.5, -21.0, -5.5])
    reference_rejected = torch.tensor([-10.5, -8.0, -24.0, -6.5])
    tokens = torch.tensor([6.0, 4.0, 10.0, 5.0]), torch.tensor([5.0, 4.0, 12.0, 6.0])
    return chosen, rejected, reference_chosen, reference_rejected, tokens


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    chosen, rejected, _, _, (chosen_tokens, rejected_tokens) = _pairs()
    for smoothing in (0.0, 0.2):
        losses, chosen_rewards, rejected_rewards = preference_losses(
            "sigmoid", chosen, rejected, chosen.clone(), rejected.clone(), chosen_tokens, rejected_tokens, beta=0.1,
            label_smoothing=smoothing)
        assert torch.allclose(losses, torch.full((4,), math.log(2)))
        assert torch.equal(chosen_rewards, torch.zeros(4)) and torch.equal(rejected_rewards, torch.zeros(4))


@pytest.mark.parametrize("loss", LOSSES)
def test_the_gradient_pushes_chosen_up_and_rejected_down(loss):
    chosen, rejected, reference_chosen, reference_rejected, tokens = _pairs(requires_grad=True)
    losses, _, _ = preference_losses(loss, chosen, rejected, reference_chosen, reference_rejected, *tokens,
                                     beta=0.1)
    losses.sum().backward()
    assert (chosen.grad < 0).all(), chosen.grad  # descending the loss raises the chosen answers' log-probs
    if loss != "orpo":  # ORPO's odds term pushes rejected down too, but its likelihood term only reads chosen
        assert (rejected.grad > 0).all(), rejected.grad
    else:
        assert (rejected.grad > 0).all() and rejected.grad.abs().sum() < chosen.grad.abs().sum()


def _direct(loss: str, c: float, r: float, rc: float, rr: float, nc: float, nr: float, beta: float,
            smoothing: float, gamma: float) -> tuple[float, float, float]:
    """The same losses, from their papers' formulas, one pair at a time in plain floats."""
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    h = (c - rc) - (r - rr)
    if loss == "sigmoid":
        return -(1 - smoothing) * math.log(sigmoid(beta * h)) - smoothing * math.log(sigmoid(-beta * h)), \
            beta * (c - rc), beta * (r - rr)
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2, beta * (c - rc), beta * (r - rr)
    if loss == "hinge":
        return max(0.0, 1 - beta * h), beta * (c - rc), beta * (r - rr)
    mc, mr = c / nc, r / nr
    if loss == "simpo":
        x = beta * (mc - mr) - gamma
        return -(1 - smoothing) * math.log(sigmoid(x)) - smoothing * math.log(sigmoid(-x)), beta * mc, beta * mr
    odds = lambda m: math.exp(m) / (1 - math.exp(m))
    return -mc - beta * math.log(sigmoid(math.log(odds(mc)) - math.log(odds(mr)))), beta * mc, beta * mr


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_matches_its_formula(loss):
    chosen, rejected, reference_chosen, reference_rejected, (nc, nr) = _pairs()
    beta, smoothing, gamma = 0.3, (0.1 if loss in ("sigmoid", "simpo") else 0.0), 0.4
    losses, chosen_rewards, rejected_rewards = preference_losses(
        loss, chosen, rejected, reference_chosen, reference_rejected, nc, nr, beta, smoothing, gamma)
    for i in range(4):
        expected = _direct(loss, chosen[i].item(), rejected[i].item(), reference_chosen[i].item(),
                           reference_rejected[i].item(), nc[i].item(), nr[i].item(), beta, smoothing, gamma)
        found = (losses[i].item(), chosen_rewards[i].item(), rejected_rewards[i].item())
        assert found == pytest.approx(expected, rel=1e-5, abs=1e-6), (i, found, expected)


def test_reference_free_losses_ignore_the_reference():
    chosen, rejected, reference_chosen, reference_rejected, tokens = _pairs()
    for loss in ("orpo", "simpo"):
        with_reference = preference_losses(loss, chosen, rejected, reference_chosen, reference_rejected, *tokens, 0.1)
        without = preference_losses(loss, chosen, rejected, None, None, *tokens, 0.1)
        assert all(torch.equal(a, b) for a, b in zip(with_reference, without))


def test_ipo_stops_pushing_a_pair_at_its_target_and_hinge_past_its_margin():
    chosen, rejected = torch.tensor([-5.0], requires_grad=True), torch.tensor([-10.0], requires_grad=True)
    beta, tokens = 0.1, (torch.ones(1), torch.ones(1))
    # h = 5 = 1 / (2 beta): IPO's target reached, zero gradient; beta h = 0.5 < 1: the hinge still pushes
    ipo, _, _ = preference_losses("ipo", chosen, rejected, torch.zeros(1), torch.zeros(1), *tokens, beta)
    ipo.sum().backward()
    assert chosen.grad.abs().item() < 1e-6
    far = torch.tensor([10.0], requires_grad=True)  # h = 20: beta h = 2, past the hinge's margin of 1
    hinge, _, _ = preference_losses("hinge", far, rejected, torch.zeros(1), torch.zeros(1), *tokens, beta)
    hinge.sum().backward()
    assert hinge.item() == 0.0 and far.grad.item() == 0.0


# ------------------------------------------------------------------------------------------ the stage
def _dpo_recipe(tmp_path, tiny_model_dir, **dpo):
    from lorahf.recipe import validate
    from tests.conftest import EXAMPLE_DATA, tiny_run_recipe

    preferences = {"files": [str(EXAMPLE_DATA / "preferences.jsonl")], "max_rows": 96, "eval_fraction": 0.1,
                   "columns": {"prompt": "document", "chosen": "better", "rejected": "worse"}}
    return validate(tiny_run_recipe(tmp_path, tiny_model_dir, "dpo", ["sft", "dpo"], sft_steps=10,
                                    dpo={"data": preferences, "batch_size": 8, "epochs": 2, "eval_every": 5,
                                         "learning_rate": 1e-3, "patience": None, **dpo}))


def test_dpo_trains_the_policy_against_sft_with_the_reference_computed_once(tmp_path, family_model_dir, monkeypatch):
    from safetensors.torch import load_file

    from lorahf import pipeline
    from lorahf.runs import RunFolder
    from lorahf.stages import dpo

    calls = []
    reference_logprobs = dpo.reference_logprobs
    monkeypatch.setattr(dpo, "reference_logprobs", lambda *args: calls.append(len(args[1])) or reference_logprobs(*args))
    recipe = _dpo_recipe(tmp_path, family_model_dir)
    result = pipeline.run(recipe)
    metrics = result.metrics["dpo"]
    assert calls == [86, 10]  # train and held-out pairs, once each for two epochs (22 steps)
    assert metrics["steps"] == 22 and metrics["loss_type"] == "sigmoid"
    assert metrics["eval_loss_start"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert metrics["eval_loss"] < metrics["eval_loss_start"] and metrics["eval_accuracy"] > 0.5
    assert {"gold_score_sft", "gold_score_policy", "gold_win_rate_vs_sft", "kl"} <= set(metrics)
    folder = RunFolder(recipe.run_dir)
    logged = folder.read_metrics("dpo")
    steps = [row for row in logged if "loss" in row]
    assert [row["step"] for row in steps] == [10, 20, 22]
    assert {"accuracy", "margin", "reward_chosen", "reward_rejected", "logprob_chosen", "logprob_rejected"} <= set(steps[0])
    assert [row["step"] for row in logged if "eval_logprob_chosen" in row] == [0, 5, 10, 15, 20, 22]
    policy = load_file(folder.adapter_dir("policy") / "adapter_model.safetensors")
    sft = load_file(folder.adapter_dir("sft") / "adapter_model.safetensors")
    assert any(not torch.equal(policy[key], sft[key]) for key in sft)
    report = (folder.root / "report.md").read_text()
    assert "## dpo" in report and "prefers the chosen answers of held-out pairs" in report
    assert (folder.root / "plots" / "dpo.png").is_file()


def test_scored_answers_are_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    from lorahf import pipeline
    from lorahf.errors import LorahfError
    from tests.conftest import EXAMPLE_DATA

    scores = {"files": [str(EXAMPLE_DATA / "scores.jsonl")], "columns": {"prompt": "document", "response": "summary",
                                                                          "score": "rating"}}
    recipe = _dpo_recipe(tmp_path, tiny_model_dir, data=scores)
    with pytest.raises(LorahfError, match=r"dpo.data: .*scores.jsonl holds score rows; dpo learns from pairwise or "
                                          r"ranking rows only"):
        pipeline.run(recipe)
    assert not recipe.run_dir.exists()
