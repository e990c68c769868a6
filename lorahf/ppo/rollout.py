"""One PPO rollout on the shared Backbone: generate with `policy`, then read every frozen quantity.

    rollout = collect(backbone, prompt_ids, prompts, scorer, temperature, top_k, max_new_tokens)

`scorer(backbone, prompts, batch)` -> [B] scores: the run's reward model (lorahf.reward_model) or a JudgeScorer.

Generation runs in eval mode (no dropout) with the KV cache. The frozen readings (the reward's score,
the reference's and the rollout policy's log-probs, the value's estimates where a value model trains) never
change during the epochs that follow, so they are taken once, under `torch.inference_mode`. (One `Backbone.per_row` pass
over all four roles was slower here than four passes: every row then computes every role's LoRA.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import torch

from lorahf import distributed, roles
from lorahf.data import Seq2SeqBatch, collate
from lorahf.logprobs import token_logprobs, token_logprobs_and_entropy

POLICY, REWARD, VALUE = roles.POLICY, roles.REWARD, roles.VALUE
REFERENCE = roles.SFT  # the frozen reference PPO's KL is measured against


@dataclass
class Rollout:
    """A batch of prompts, the policy's responses, and what the frozen roles said about them."""

    batch: Seq2SeqBatch  # prompts and responses; response_mask is 1 on generated tokens, EOS included
    ended: torch.Tensor  # [B] bool: the response ends with EOS (False: cut at the length limit)
    scores: torch.Tensor  # [B] the reward model's score (offset applied)
    logprobs: torch.Tensor  # [B, R] the policy's log-probs at rollout time (at the sampling temperature)
    reference_logprobs: torch.Tensor  # [B, R] the same under `sft`
    values: torch.Tensor | None  # [B, R] the value model's estimate before each token (None: no value model)
    entropy: torch.Tensor  # [B, R] the policy's entropy at each position
    encoder_states: dict[str, torch.Tensor] | None = None  # the trained roles', when their encoders are frozen
    seconds: dict[str, float] = field(default_factory=dict)  # generate, score
    logprob_gap: float | None = None  # sampled by another model: its mean log-prob of the tokens minus the policy's

    def __len__(self) -> int:
        return self.batch.response_lengths.shape[0]


class JudgeScorer:
    """Scores from a judge's function of (prompt, response text): a reward you can compute instead of a model."""

    def __init__(self, judge):
        self.judge = judge

    def __call__(self, backbone, prompts: list[str], batch: Seq2SeqBatch) -> torch.Tensor:
        texts = backbone.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        return torch.tensor(self.judge.score(prompts, texts), dtype=torch.float32, device=batch.response_ids.device)


def collect(backbone, prompt_ids: list[list[int]], prompts: list[str], scorer, temperature: float, top_k: int,
            max_new_tokens: int, keep_encoder_states: bool = False, critic: bool = True, sampler=None) -> Rollout:
    """Sample responses from `policy`, then read every frozen quantity: sft's and the policy's log-probs,
    the value's estimates (with a `critic`), the reward's score.

    With `keep_encoder_states`, the policy's (and the value's) encoder outputs are kept for the update
    (valid while their encoder adapters do not train). `sampler`: a MergedPolicy (ppo.rollout_weights merged) that
    samples in the policy's place; the policy's log-probs are then read through the training path."""
    started = time.perf_counter()
    encoded = collate(prompt_ids, None, backbone.tokenizer.pad_token_id).to(backbone.device)
    backbone.model.eval()
    with torch.inference_mode():
        policy_encoder = backbone.use(POLICY).encode(encoded)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "return_logits": True}
    responses, lengths, logits = (sampler.generate(encoded, max_new_tokens, **sampling) if sampler is not None else
                                  backbone.generate(encoded, max_new_tokens, encoder_states=policy_encoder, **sampling))
    generated = time.perf_counter()
    width = max(int(lengths.max()), 1)
    responses, logits = responses[:, :width], logits[:, :width]
    mask = (torch.arange(width, device=responses.device)[None, :] < lengths[:, None]).long()
    batch = Seq2SeqBatch(encoded.input_ids, encoded.attention_mask, responses * mask, mask, lengths)
    rows = torch.arange(len(lengths), device=responses.device)
    ended = responses[rows, lengths - 1] == backbone.tokenizer.eos_token_id

    with torch.inference_mode():
        # the policy's log-probs come with generation (read again through the training path when another model
        # sampled); sft, value and reward read the responses
        logprobs, entropy = token_logprobs_and_entropy(logits, batch.response_ids, mask, temperature)
        gap = None
        if sampler is not None:
            sampled = logprobs
            logprobs, entropy = token_logprobs_and_entropy(
                backbone.use(POLICY).lm_logits(backbone.decode(batch, policy_encoder)[:, :-1]), batch.response_ids,
                mask, temperature)
            gap = (sampled - logprobs).sum() / mask.sum()
        encoders = {POLICY: policy_encoder}
        reference_logprobs = token_logprobs(backbone.use(REFERENCE).response_logits(batch), batch.response_ids, mask,
                                            temperature)
        values = None
        if critic:
            encoders[VALUE] = backbone.use(VALUE).encode(batch)
            values = backbone.head(VALUE)(backbone.use(VALUE).decode(batch, encoders[VALUE])[:, :-1]).float() * mask
        scores = scorer(backbone, prompts, batch)
    # inference tensors cannot take part in autograd later; clones are ordinary tensors
    kept = ({role: states.clone() for role, states in encoders.items()}
            if keep_encoder_states and policy_encoder is not None else None)  # a decoder-only base has none
    return Rollout(batch, ended, scores.clone(), logprobs.clone(), reference_logprobs.clone(),
                   None if values is None else values.clone(), entropy.clone(), encoder_states=kept,
                   seconds={"generate": generated - started, "score": time.perf_counter() - generated},
                   logprob_gap=None if gap is None else gap.item())


def gathered(rollout: Rollout) -> Rollout:
    """Every process's rollout rows stacked in rank order (data parallelism: each process generated its share of
    the batch), without the encoder states; in one process, the rollout itself. Rewards, advantages and their
    whitening then see the whole batch, exactly as one process would."""
    if distributed.world() == 1:
        return rollout
    batch = Seq2SeqBatch(**{f.name: distributed.gather(getattr(rollout.batch, f.name))  # padded with 0: T5's pad
                            for f in fields(rollout.batch)})
    numbers = {name: None if getattr(rollout, name) is None else distributed.gather(getattr(rollout, name))
               for name in ("scores", "logprobs", "reference_logprobs", "values", "entropy")}
    return Rollout(batch, distributed.gather(rollout.ended.long()).bool(), **numbers, seconds=rollout.seconds)


def repeat(batch: Seq2SeqBatch, times: int) -> Seq2SeqBatch:
    """The batch stacked `times` times along the rows (one copy per role of a `per_row` pass)."""
    return Seq2SeqBatch(**{f.name: getattr(batch, f.name).repeat(times, *([1] * (getattr(batch, f.name).dim() - 1)))
                           for f in fields(batch)})


def take(rollout_batch: Seq2SeqBatch, rows: torch.Tensor) -> Seq2SeqBatch:
    """The batch's `rows`, with padding columns no chosen row needs cut off (faster minibatches)."""
    prompt_width = int(rollout_batch.attention_mask[rows].sum(1).max())
    response_width = int(rollout_batch.response_lengths[rows].max())
    picked = {f.name: getattr(rollout_batch, f.name)[rows] for f in fields(rollout_batch)}
    for name, width in (("input_ids", prompt_width), ("attention_mask", prompt_width),
                        ("response_ids", response_width), ("response_mask", response_width)):
        picked[name] = picked[name][:, :width]
    return Seq2SeqBatch(**picked)
