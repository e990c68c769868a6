"""Per-token log-probabilities, entropy and KL from next-token logits: the one place lorahf computes them.

    logprobs = token_logprobs(logits, batch.response_ids, batch.response_mask, temperature)

`logits[:, t]` scores token t of the responses ([B, R, vocab], e.g. `Backbone.response_logits`). Every
number is read from softmax(logits / temperature) in fp32 (`log_distribution`) and returned as [B, R], zero
where `mask` is 0 (padding). The temperature is the one the responses were sampled at (PPO), so rollout-time
and update-time log-probs describe the same distribution; at 1 (SFT's loss, the reward's likelihood term) the
logits are used as they are, with no extra [B, R, vocab] copy.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(targets[:, t]) under softmax(logits[:, t] / temperature): [B, R]."""
    return _picked(log_distribution(logits, temperature), targets) * mask


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs`, and the entropy of each position's next-token distribution: [B, R] each."""
    log_p = log_distribution(logits, temperature)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return _picked(log_p, targets) * mask, entropy * mask


def exact_kl(log_p: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two next-token distributions at each position (`log_distribution`s of the two roles' logits
    at one temperature), summed over the vocabulary: exact, not estimated from the sampled token. [B, R].

    It takes the log-distributions, not the logits, so a caller can drop the first role's logits before the
    second role's are computed (one [B, R, vocab] tensor less at the peak)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1) * mask


def log_distribution(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) over the vocabulary, in fp32: [B, R, vocab]."""
    logits = logits.float()
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def _picked(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
