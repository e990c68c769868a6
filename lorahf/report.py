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
    return found


def _judges(metrics: dict, suffix: str) -> list[str]:
    return [key[: -len(suffix)] for key in metrics if key.endswith(suffix)]
