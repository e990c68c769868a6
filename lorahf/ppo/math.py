"""PPO for RLHF as in Stiennon et al. (2020) and Ziegler et al. (2019), one function per formula."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """The mean over the real tokens; or their sum divided by `tokens`, the real tokens of a larger batch this one
    is a part of (so that the parts' means add up to the batch's)."""
    return (values * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else tokens)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale to unit variance over the real tokens (and to mean 0 unless `shift_mean` is False); padding stays 0."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    k1 = log p - log q: unbiased, can be negative per token. k3 = (q/p - 1) - log(q/p): unbiased and never
    negative (Schulman, "Approximating KL divergence"). Both are exactly 0 where the two agree."""
    log_ratio = logprobs - reference_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (use k1 or k3)")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                  beta: float, ended: torch.Tensor, no_eos_score: float | None) -> torch.Tensor:
    """-beta * KL on every response token, plus the sequence score on its last token.

    A response that hit the length limit without EOS (`ended` False) gets `no_eos_score` instead of its
    score when that is set (a fixed penalty, so that rambling past the limit never pays)."""
    rewards = -beta * kl * mask
    final = scores if no_eos_score is None else torch.where(ended, scores, torch.full_like(scores, no_eos_score))
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, lengths - 1] += final
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses: (advantages, returns).

    The value after a response's last token is 0 (the episode ends there)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < steps else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def grouped(scores: torch.Tensor, answers_per_prompt: int, estimator: str) -> torch.Tensor:
    """`scores` [B] as [prompts, k]: the k answers to one prompt are consecutive rows. One line for a k that cannot
    give a baseline (one answer has no others to compare with) or that does not divide the batch."""
    if answers_per_prompt < 2:
        raise ValueError(f"{estimator} needs at least 2 answers per prompt (answers_per_prompt is "
                         f"{answers_per_prompt}): an answer's baseline comes from the other answers to its prompt")
    if scores.shape[0] % answers_per_prompt:
        raise ValueError(f"{scores.shape[0]} answers do not split into groups of {answers_per_prompt}")
    return scores.view(-1, answers_per_prompt)


def rloo_advantages(scores: torch.Tensor, answers_per_prompt: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., 2024, "Back to Basics"): an answer's advantage is its score minus
    the mean score of the other k-1 answers to the same prompt. Unbiased (the baseline never sees the answer it
    judges), no value model. [B] -> [B]."""
    groups = grouped(scores, answers_per_prompt, "rloo")
    others = (groups.sum(1, keepdim=True) - groups) / (answers_per_prompt - 1)
    return (groups - others).reshape(-1)


def grpo_advantages(scores: torch.Tensor, answers_per_prompt: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (Shao et al., 2024, DeepSeekMath's GRPO): each answer's score standardised within
    its prompt's group, (s - mean) / (std + eps); a group whose answers all scored alike gets 0. [B] -> [B]."""
    groups = grouped(scores, answers_per_prompt, "grpo")
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def sequence_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A critic-free estimator's one advantage per answer, given to every token of that answer ([B] -> [B, T])."""
    return advantages[:, None] * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2,
                tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate objective (as a loss to minimise), with its clip fraction and approximate KL.

    Means over the real tokens, or over the `tokens` of the minibatch these rows are a part of (a micro-batch,
    or one process's share): the parts' losses then add up to the minibatch's, however it was split."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, tokens)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((torch.abs(ratio - 1) > clip).float(), mask, tokens),
                 "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask, tokens)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Half the larger of the squared errors of the new values and of the values clipped near the old ones
    (a mean as in `policy_loss`)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask, tokens)


class AdaptiveKLController:
    """Move beta so that the measured KL tracks a target (Ziegler et al., 2019): a proportional controller
    whose error is clipped to +-20 % and whose step is scaled by the samples seen over `horizon`."""

    def __init__(self, beta: float, target: float, horizon: int = 10000):
        self.value = beta
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, samples: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]


class FixedKLController:
    """A constant beta, with the same interface as the adaptive controller."""

    def __init__(self, beta: float):
        self.value = beta

    def update(self, kl: float, samples: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 a constant one."""
    def variance(x):
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return 1 - variance(returns - values) / variance(returns).clamp(min=1e-12)
