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


def _sft(**changes) -> dict:
    metrics = {"train_loss_first": 6.3, "train_loss_last": 0.6, "eval_loss_untrained": 6.9, "eval_loss": 0.66,
               "rouge_l": 0.71, "rouge_l_untrained": 0.02, "reference_prompts": 150,
               "gold_score": 6.0, "gold_score_untrained": -6.0, "gold_score_references": 4.1,
               "gold_win_rate_vs_untrained": 1.0}
    return {"sft": {**metrics, **changes}}


def test_an_sft_far_from_the_references_fails_its_check_with_a_hint():
    near = "the gold judge scores SFT answers close to the held-out references"
    assert _verdicts(_sft())[near] is True
    # Issue 19: a recipe made for another base; both adapters useless, yet "prefers SFT to the untrained model" held
    useless = _sft(gold_score=-1.33, gold_score_references=5.0, gold_win_rate_vs_untrained=0.9)
    assert _verdicts(useless)["the gold judge prefers SFT answers to the untrained model's"] is True
    assert _verdicts(useless)[near] is False
    failed = next(check for check in checks(useless) if check.claim == near)
    assert "42% of the gap closed" in failed.evidence and "sft.learning_rate" in failed.hint
    # a judge that does not score the references above the untrained model gives no verdict
    assert _verdicts(_sft(gold_score_references=-6.5))[near] is None
    overlap = "answers overlap the held-out references more than the untrained model's"
    assert _verdicts(_sft())[overlap] is True and _verdicts(_sft(rouge_l=0.01))[overlap] is False
    # a marker written before these numbers existed shows the checks it can
    old = _sft()["sft"]
    del old["rouge_l"], old["gold_score_references"]
    assert set(_verdicts({"sft": old})) == {"training loss fell", "held-out loss fell below the untrained model's",
                                           "the gold judge prefers SFT answers to the untrained model's"}


def test_the_report_says_what_to_do_about_each_failed_check(tmp_path):
    from lorahf.report import write_report
    from lorahf.runs import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.mark_done("sft", "hash", _sft(gold_score=-1.33, gold_score_references=5.0)["sft"], 1.0)
    report = write_report(folder).read_text()
    assert "| sft | ✗ | the gold judge scores SFT answers close to the held-out references |" in report
    assert "What to do about each ✗:" in report and "raise sft.learning_rate" in report
