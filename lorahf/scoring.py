"""Scoring responses with a role's scalar head (the reward model): the one batched scorer.

    scores = score_batches(backbone, REWARD, prompt_ids, response_ids, batch_size)   # [N] on the device

Held-out accuracy, the reward's centring, the `reward` judge and PPO's rewards all read these numbers.
Training the reward model scores its batches itself (`stages.reward.score_responses`), with gradients.
"""

from __future__ import annotations

import torch

from lorahf.data import collate


@torch.no_grad()
def score_batches(backbone, role: str, prompt_ids: list[list[int]], response_ids: list[list[int]],
                  batch_size: int) -> torch.Tensor:
    """`role`'s score of every (prompt, response), `batch_size` sequences a forward pass, in eval mode (no
    dropout; the model is left in eval mode and running as `role`): [N] fp32."""
    backbone.model.eval()
    scores = [torch.zeros(0, device=backbone.device)]
    for start in range(0, len(prompt_ids), batch_size):
        batch = collate(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size],
                        backbone.tokenizer.pad_token_id).to(backbone.device)
        scores.append(scores_of(backbone, role, batch))
    return torch.cat(scores)


def scores_of(backbone, role: str, batch) -> torch.Tensor:
    """`role`'s score of each response of one collated batch (the caller chooses the mode and gradients): [B]
    fp32."""
    return backbone.use(role).sequence_scores(batch).float()
