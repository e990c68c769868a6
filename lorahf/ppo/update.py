"""The PPO update: K epochs over minibatches of one rollout, policy and value trained in the same step (the
policy alone with a critic-free advantage: rloo, grpo).

Both adapters train at once, so the Backbone (not peft's `set_adapter`) owns `requires_grad`:
switching to `value` for its forward pass must not freeze `policy` before the backward pass
(shared/DESIGN.md, "Loading the base"). Dropout stays off: the model is in eval mode throughout, so
the first minibatch's ratio is 1 up to rounding (the rollout's log-probs come from generation).
"""

from __future__ import annotations

import time

import torch

from lorahf import distributed
from lorahf.errors import LorahfError
from lorahf.logprobs import token_logprobs
from lorahf.ppo.math import kl_estimate, masked_mean, policy_loss, value_loss
from lorahf.ppo.rollout import POLICY, VALUE, Rollout, repeat, take


def make_optimizer(backbone, spec) -> torch.optim.Optimizer:
    """One AdamW with a parameter group per trained role, each at its own learning rate (the encoders'
    adapters only with `spec.train_encoder`)."""
    rates = {POLICY: spec.policy_learning_rate, VALUE: spec.value_learning_rate}
    return torch.optim.AdamW([{"params": backbone.parameters(role, spec.train_encoder), "lr": rates[role], "name": role}
                              for role in spec.trained_roles],
                             weight_decay=0.0, fused=True)  # fused: one kernel per step, not a dozen per tensor


def train_on(backbone, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor | None, spec,
             optimizer: torch.optim.Optimizer, generator: torch.Generator, iteration: int,
             beta: float = 0.0) -> dict[str, float]:
    """`spec.passes` epochs of minibatch steps over the rollout; the mean of each statistic over the steps.

    Every loss is a mean over the minibatch's tokens, however the minibatch is split (micro-batches, processes),
    so gradient accumulation gives the gradient of the whole minibatch. With data parallelism the rollout is
    this process's share of the batch and each minibatch step takes `minibatch_size / processes` of its rows;
    the processes' gradients are added up before the step. `beta` weighs the KL term of the loss
    (`spec.kl_penalty` loss; else unused)."""
    started = time.perf_counter()
    backbone.set_trainable(*spec.trained_roles)
    backbone.model.eval()  # dropout off during RL
    size = len(rollout)
    minibatch_size = spec.minibatch_size // distributed.world()
    micro = spec.micro_batch_size or minibatch_size
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(spec.passes):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, minibatch_size):
            minibatch = order[start:start + minibatch_size]
            tokens = distributed.total(rollout.batch.response_mask[minibatch.to(advantages.device)].sum().float())
            for part in minibatch.split(micro):
                stats = _loss_and_backward(backbone, rollout, advantages, returns, spec, part.to(advantages.device),
                                           tokens, beta)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
            _step(optimizer, spec.max_grad_norm, iteration)
            steps += 1
    result = distributed.add_up({key: value / steps for key, value in totals.items()})
    result["seconds_update"] = time.perf_counter() - started
    return result


def _loss_and_backward(backbone, rollout: Rollout, advantages, returns, spec, rows, tokens: torch.Tensor,
                       beta: float) -> dict[str, float]:
    """The rows' policy loss (plus the value loss, or the KL term), one backward. Losses and statistics are these
    rows' shares of the minibatch's means (`tokens`: its real tokens)."""
    batch = take(rollout.batch, rows)
    width = batch.response_ids.shape[1]
    mask = batch.response_mask.float()
    encoder_states = None
    if rollout.encoder_states is not None:  # frozen encoders: their outputs from the rollout
        prompt_width = batch.input_ids.shape[1]
        encoder_states = torch.cat([rollout.encoder_states[role][rows, :prompt_width] for role in spec.trained_roles])
    logprobs, values = policy_and_values(backbone, batch, encoder_states, spec.temperature, spec.critic)
    policy, stats = policy_loss(logprobs, rollout.logprobs[rows, :width], advantages[rows, :width], mask,
                                spec.policy_clip, tokens)
    numbers = {"clip_fraction": stats["clip_fraction"].item(), "approx_kl": stats["approx_kl"].item()}
    loss = policy
    if values is not None:
        value = value_loss(values, rollout.values[rows, :width], returns[rows, :width], mask, spec.value_clip, tokens)
        loss = loss + spec.value_loss_coef * value
        numbers["value_loss"] = value.item()
        numbers["value_clip_fraction"] = masked_mean(((values - rollout.values[rows, :width]).abs() > spec.value_clip)
                                                     .float(), mask, tokens).item()
    if spec.kl_penalty == "loss":
        kl = masked_mean(kl_estimate(logprobs, rollout.reference_logprobs[rows, :width], spec.kl_estimator), mask,
                         tokens)
        loss = loss + beta * kl
        numbers["kl_loss"] = kl.item()
    if not torch.isfinite(loss):
        raise LorahfError(f"ppo: the loss is {loss.item()} ({', '.join(f'{k} {v:.4g}' for k, v in numbers.items())}, "
                          f"policy {policy.item()})", hint="lower the learning rates, or beta; the last checkpoint is kept")
    loss.backward()
    return {"policy_loss": policy.item(), **numbers}


def policy_and_values(backbone, batch, encoder_states: torch.Tensor | None, temperature: float,
                      critic: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The policy's log-probs of the responses (at the sampling temperature) and, with a `critic`, the value's
    estimate before each token, [B, R] each, from ONE forward pass: policy and value read their own copy of the
    rows (`Backbone.per_row`). `encoder_states`: the policy's then the value's encoder outputs, [2B, P, d] ([B, P, d]
    without a critic), or None to encode the prompts here. (`lorahf plan` traces this same function.)"""
    size = batch.response_ids.shape[0]
    if not critic:
        backbone.use(POLICY)
        states = backbone.decode(batch, backbone.encode(batch) if encoder_states is None else encoder_states)
        return token_logprobs(backbone.lm_logits(states[:, :-1]), batch.response_ids, batch.response_mask,
                              temperature), None
    with backbone.per_row([POLICY] * size + [VALUE] * size):
        stacked = repeat(batch, 2)
        if encoder_states is None:
            encoder_states = backbone.encode(stacked)
        policy_states, value_states = backbone.decode(stacked, encoder_states).split(size)
    logprobs = token_logprobs(backbone.lm_logits(policy_states[:, :-1]), batch.response_ids, batch.response_mask,
                              temperature)
    return logprobs, backbone.head(VALUE)(value_states[:, :-1]).float()


def _step(optimizer, max_grad_norm: float | None, iteration: int) -> None:
    """Clip the policy's and the value's gradients each on its own, refuse a non-finite one, step."""
    distributed.sum_gradients([p for group in optimizer.param_groups for p in group["params"]])
    for group in optimizer.param_groups:
        norm = torch.nn.utils.clip_grad_norm_(group["params"], max_grad_norm or float("inf"))
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            raise LorahfError(f"ppo: the {group['name']} gradient norm is {norm.item()} at iteration {iteration}",
                              hint="lower the learning rates; the last checkpoint is kept")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
