"""One PPO rollout on the shared Backbone: generate with `policy`, then read every frozen quantity.

    rollout = collect(backbone, prompt_ids, spec, max_new_tokens)

Generation runs in eval mode (no dropout) with the KV cache. The frozen readings (the reward's score,
the reference's and the rollout policy's log-probs, the value's estimates) run under
`torch.inference_mode` and never change during the epochs that follow, so they are taken once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import torch

from lorahf.data import Seq2SeqBatch, collate

POLICY, REFERENCE, REWARD, VALUE = "policy", "sft", "reward", "value"


@dataclass
class Rollout:
    """A batch of prompts, the policy's responses, and what the frozen roles said about them."""

    batch: Seq2SeqBatch  # prompts and responses; response_mask is 1 on generated tokens, EOS included
    ended: torch.Tensor  # [B] bool: the response ends with EOS (False: cut at the length limit)
    scores: torch.Tensor  # [B] the reward model's score (offset applied)
    logprobs: torch.Tensor  # [B, R] the policy's log-probs at rollout time (at the sampling temperature)
    reference_logprobs: torch.Tensor  # [B, R] the same under `sft`
    values: torch.Tensor  # [B, R] the value model's estimate before each token
    entropy: torch.Tensor  # [B, R] the policy's entropy at each position
    seconds: dict[str, float] = field(default_factory=dict)  # generate, score

    def __len__(self) -> int:
        return self.batch.response_lengths.shape[0]


class ModelScorer:
    """Scores from the `reward` adapter and its head (offset applied)."""

    def __call__(self, backbone, prompts: list[str], batch: Seq2SeqBatch) -> torch.Tensor:
        return backbone.use(REWARD).sequence_scores(batch).float()


class JudgeScorer:
    """Scores from a judge's function of (prompt, response text): a reward you can compute instead of a model."""

    def __init__(self, judge):
        self.judge = judge

    def __call__(self, backbone, prompts: list[str], batch: Seq2SeqBatch) -> torch.Tensor:
        texts = backbone.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        return torch.tensor(self.judge.score(prompts, texts), dtype=torch.float32, device=batch.response_ids.device)


def collect(backbone, prompt_ids: list[list[int]], prompts: list[str], scorer, temperature: float, top_k: int,
            max_new_tokens: int) -> Rollout:
    """Sample responses from `policy` and read scores, reference log-probs and values for them."""
    started = time.perf_counter()
    encoded = collate(prompt_ids, None, backbone.tokenizer.pad_token_id).to(backbone.device)
    responses, lengths = backbone.use(POLICY).generate(encoded, max_new_tokens, do_sample=True,
                                                       temperature=temperature, top_k=top_k)
    generated = time.perf_counter()
    width = max(int(lengths.max()), 1)
    responses = responses[:, :width]
    mask = (torch.arange(width, device=responses.device)[None, :] < lengths[:, None]).long()
    batch = Seq2SeqBatch(encoded.input_ids, encoded.attention_mask, responses * mask, mask, lengths)
    rows = torch.arange(len(lengths), device=responses.device)
    ended = responses[rows, lengths - 1] == backbone.tokenizer.eos_token_id

    was_training = backbone.model.training
    backbone.model.eval()
    with torch.inference_mode():
        scores = scorer(backbone, prompts, batch)
        reference_logprobs, _ = response_logprobs(backbone.use(REFERENCE), batch, temperature)
        logprobs, entropy = response_logprobs(backbone.use(POLICY), batch, temperature)
        values = backbone.use(VALUE).token_values(batch).float() * mask
    backbone.model.train(was_training)
    # inference tensors cannot take part in autograd later; clones are ordinary tensors
    frozen = [t.clone() for t in (scores, logprobs, reference_logprobs, values, entropy)]
    return Rollout(batch, ended, *frozen[:4], entropy=frozen[4],
                   seconds={"generate": generated - started, "score": time.perf_counter() - generated})


def response_logprobs(backbone, batch: Seq2SeqBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the responses under the active role at `temperature`, and the entropy: [B, R] each.

    The temperature is the one the responses were sampled at, so rollout-time and update-time log-probs
    describe the same distribution (a detail TRL 0.11 got wrong for a while)."""
    logits = backbone.response_logits(batch).float() / temperature
    logprobs_all = torch.log_softmax(logits, dim=-1)
    logprobs = logprobs_all.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    mask = batch.response_mask
    return logprobs * mask, entropy * mask


def take(rollout_batch: Seq2SeqBatch, rows: torch.Tensor) -> Seq2SeqBatch:
    """The batch's `rows`, with padding columns no chosen row needs cut off (faster minibatches)."""
    prompt_width = int(rollout_batch.attention_mask[rows].sum(1).max())
    response_width = int(rollout_batch.response_lengths[rows].max())
    picked = {f.name: getattr(rollout_batch, f.name)[rows] for f in fields(rollout_batch)}
    for name, width in (("input_ids", prompt_width), ("attention_mask", prompt_width),
                        ("response_ids", response_width), ("response_mask", response_width)):
        picked[name] = picked[name][:, :width]
    return Seq2SeqBatch(**picked)
