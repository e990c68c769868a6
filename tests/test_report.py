"""The run report's checks: each claim passes, fails or stays open exactly as its numbers say."""

from __future__ import annotations

from lorahf.report import checks


def _ppo(**changes) -> dict:
    metrics = {"reward_sft": 0.27, "reward_policy": 0.41, "win_rate_by_reward": 0.74, "eval_prompts": 200,
               "best_iteration": 50, "iterations": 60, "kl": 0.69, "kl_limit": 30.0, "alarms": {},
               "gold_score_sft": -0.28, "gold_score_policy": -0.09, "gold_win_rate_vs_sft": 0.53,
               "gold_win_rate_low": 0.46, "gold_win_rate_high": 0.60}
    return {"ppo": {**metrics, **changes}}


def _verdicts(metrics: dict) -> dict[str, bool | None]:
    return {check.claim: check.passed for check in checks(metrics)}


def test_ppo_checks_pass_fail_or_stay_open_by_their_numbers():
    verdicts = _verdicts(_ppo())
    assert verdicts["raised the reward of held-out answers over SFT's"] is True
    assert verdicts["the gold judge prefers PPO answers to SFT's"] is None  # 0.53, but the interval holds 0.5
    assert verdicts["stayed close to SFT (bounded KL)"] is True
    assert verdicts["no alarm fired"] is True

    verdicts = _verdicts(_ppo(reward_policy=0.2, gold_win_rate_low=0.55, kl=31.0, alarms={"kl_high": 3}))
    assert verdicts["raised the reward of held-out answers over SFT's"] is False
    assert verdicts["the gold judge prefers PPO answers to SFT's"] is True
    assert verdicts["stayed close to SFT (bounded KL)"] is False
    assert verdicts["no alarm fired"] is None

    assert _verdicts(_ppo(gold_win_rate_high=0.48))["the gold judge prefers PPO answers to SFT's"] is False
