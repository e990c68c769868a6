"""The run report: what each stage was supposed to achieve, and whether it did.

Returns rows; the CLI renders them with rich, a notebook can print them as it likes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    stage: str
    claim: str  # what should hold, in words
    evidence: str  # the numbers
    passed: bool | None  # None: informational


def checks(metrics: dict[str, dict]) -> list[Check]:
    """One line per claim the quickstart makes about each stage that ran (or was done already)."""
    found: list[Check] = []
    sft = metrics.get("sft")
    if sft:
        found.append(Check("sft", "training loss fell",
                           f"{sft['train_loss_first']:.3f} -> {sft['train_loss_last']:.3f}",
                           sft["train_loss_last"] < sft["train_loss_first"]))
        found.append(Check("sft", "held-out loss fell below the untrained model's",
                           f"{sft['eval_loss_untrained']:.3f} -> {sft['eval_loss']:.3f}",
                           sft["eval_loss"] < sft["eval_loss_untrained"]))
        for judge in _judges(sft, suffix="_win_rate_vs_untrained"):
            found.append(Check("sft", f"the {judge} judge prefers SFT answers to the untrained model's",
                               f"score {sft[judge + '_score']:.2f} vs {sft[judge + '_score_untrained']:.2f}, "
                               f"win rate {sft[judge + '_win_rate_vs_untrained']:.2f}",
                               sft[judge + "_win_rate_vs_untrained"] > 0.5))
    reward = metrics.get("reward")
    if reward:
        found.append(Check("reward", "beats chance on held-out preferences",
                           f"accuracy {reward['eval_accuracy']:.3f} on {reward['eval_pairs']} pairs "
                           f"(gate {reward['gate']} at {reward['min_accuracy']})",
                           reward["gate"] == "pass"))
    ppo = metrics.get("ppo")
    if ppo:
        found.append(Check("ppo", "raised the reward of held-out answers over SFT's",
                           f"{ppo['reward_sft']:.3f} -> {ppo['reward_policy']:.3f}, win rate {ppo['win_rate_by_reward']:.2f} "
                           f"on {ppo['eval_prompts']} prompts (iteration {ppo['best_iteration']} of {ppo['iterations']})",
                           ppo["reward_policy"] > ppo["reward_sft"]))
        for judge in _judges(ppo, suffix="_win_rate_vs_sft"):
            low, high = ppo[judge + "_win_rate_low"], ppo[judge + "_win_rate_high"]
            found.append(Check("ppo", f"the {judge} judge prefers PPO answers to SFT's",
                               f"score {ppo[judge + '_score_sft']:.2f} -> {ppo[judge + '_score_policy']:.2f}, win rate "
                               f"{ppo[judge + '_win_rate_vs_sft']:.2f} [{low:.2f}, {high:.2f}]",
                               _significant(low, high)))
        found.append(Check("ppo", "stayed close to SFT (bounded KL)",
                           f"KL {ppo['kl']:.2f} nats per answer (alarm above {ppo['kl_limit']:.1f})",
                           ppo["kl"] <= ppo["kl_limit"]))
        alarms = ppo.get("alarms") or {}
        found.append(Check("ppo", "no alarm fired",
                           ", ".join(f"{name} x{count}" for name, count in alarms.items()) or "none",
                           None if alarms else True))
    return found


def _significant(low: float, high: float) -> bool | None:
    """A win rate's verdict from its 95 % interval: True above 0.5, False below, None (shown as -) across it."""
    return True if low > 0.5 else False if high < 0.5 else None


def _judges(metrics: dict, suffix: str) -> list[str]:
    return [key[: -len(suffix)] for key in metrics if key.endswith(suffix)]
