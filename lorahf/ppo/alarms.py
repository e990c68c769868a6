"""Alarms: signs that a PPO run is going wrong, checked every iteration and at every held-out check.

Each returns the names of the alarms that fire; the stage logs them in metrics.jsonl and shows them in
the progress line. They warn; non-finite numbers are not an alarm but an error that stops the stage
before it updates anything (see `stages.ppo.iterate` and `ppo.update`).
"""

from __future__ import annotations

NEGATIVE_KL = -0.1  # nats per response: k1 estimates are noisy, but a clearly negative mean is a masking bug
ROUGE_DROP = 0.05  # a held-out ROUGE-L fall this large while the reward rises looks like reward hacking


def iteration_alarms(kl: float, kl_limit: float, length: float, sft_length: float,
                     length_tolerance: float) -> list[str]:
    """Alarms of one iteration's rollout: a mean KL below 0 or past its limit, the length drifting from sft's."""
    found = []
    if kl < NEGATIVE_KL:
        found.append("negative_kl")
    if kl > kl_limit:
        found.append("kl_high")
    if sft_length > 0 and abs(length - sft_length) / sft_length > length_tolerance:
        found.append("length_drift")
    return found


def held_out_alarms(reward: float, rouge: float | None, start_reward: float, start_rouge: float | None) -> list[str]:
    """Reward hacking: the held-out reward rose since the start while ROUGE-L against references fell."""
    if rouge is None or start_rouge is None:
        return []
    return ["reward_hacking"] if reward > start_reward and rouge < start_rouge - ROUGE_DROP else []
