"""Properties of the PPO math: each would break under a plausible bug."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorahf.ppo.math import (AdaptiveKLController, gae, grpo_advantages, kl_estimate, policy_loss, rloo_advantages,
                             sequence_to_tokens, token_rewards, value_loss, whiten)


def _ragged(seed: int, batch: int = 4, width: int = 7):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=generator)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    return generator, lengths, mask


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([1.0, 0.9]))
def test_gae_with_lambda_one_is_discounted_return_minus_value(seed, gamma):
    generator, lengths, mask = _ragged(seed)
    rewards = torch.randn(mask.shape, generator=generator) * mask
    values = torch.randn(mask.shape, generator=generator)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    for row, length in enumerate(lengths.tolist()):
        for t in range(length):
            discounted = sum(gamma ** (k - t) * rewards[row, k] for k in range(t, length))
            assert torch.isclose(advantages[row, t], discounted - values[row, t], atol=1e-5)
            assert torch.isclose(returns[row, t], discounted, atol=1e-5)
    assert (advantages * (1 - mask)).abs().sum() == 0  # nothing leaks into padding


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    _, _, mask = _ragged(1)
    rewards, values = torch.randn(mask.shape) * mask, torch.randn(mask.shape) * mask
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1) * torch.cat(
        [mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    assert torch.allclose(advantages, (rewards + next_values - values) * mask, atol=1e-6)


def test_whitening_gives_mean_zero_and_unit_std_over_real_tokens():
    generator, _, mask = _ragged(2, batch=16, width=9)
    values = torch.randn(mask.shape, generator=generator) * 5 + 3
    white = whiten(values, mask)
    real = white[mask.bool()]
    assert abs(real.mean().item()) < 1e-5 and abs(real.std(unbiased=False).item() - 1) < 1e-4
    assert (white[~mask.bool()] == 0).all()
    kept = whiten(values, mask, shift_mean=False)[mask.bool()]
    assert abs(kept.mean().item() - values[mask.bool()].mean().item()) < 1e-4


def test_kl_estimators_are_zero_for_identical_policies_and_k3_is_never_negative():
    logprobs = torch.log_softmax(torch.randn(64, 10), -1).gather(1, torch.randint(0, 10, (64, 1))).squeeze(1)
    for estimator in ("k1", "k3"):
        assert (kl_estimate(logprobs, logprobs, estimator) == 0).all()
    other = logprobs + torch.randn(64)
    assert (kl_estimate(logprobs, other, "k3") >= 0).all()


def test_kl_estimators_are_nonnegative_in_expectation_on_policy_samples():
    torch.manual_seed(0)
    policy = torch.distributions.Categorical(logits=torch.randn(10))
    reference = torch.distributions.Categorical(logits=torch.randn(10))
    samples = policy.sample((200_000,))
    exact = torch.distributions.kl_divergence(policy, reference)
    for estimator in ("k1", "k3"):
        estimate = kl_estimate(policy.log_prob(samples), reference.log_prob(samples), estimator).mean()
        assert estimate > 0 and torch.isclose(estimate, exact, rtol=0.05)


def test_the_no_eos_score_applies_exactly_to_truncated_responses():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    lengths = torch.tensor([3, 4, 2])
    ended = torch.tensor([True, False, True])
    scores = torch.tensor([2.0, 5.0, -1.0])
    kl = torch.full(mask.shape, 0.5)
    rewards = token_rewards(scores, kl, mask, lengths, beta=0.1, ended=ended, no_eos_score=-3.0)
    assert torch.allclose(rewards[0], torch.tensor([-0.05, -0.05, 1.95, 0.0]))
    assert torch.allclose(rewards[1], torch.tensor([-0.05, -0.05, -0.05, -3.05]))  # the penalty, not 5.0
    assert torch.allclose(rewards[2], torch.tensor([-0.05, -1.05, 0.0, 0.0]))
    without = token_rewards(scores, kl, mask, lengths, beta=0.1, ended=ended, no_eos_score=None)
    assert torch.isclose(without[1, 3], torch.tensor(4.95))


def test_clipped_policy_loss_has_no_gradient_beyond_the_clip_on_the_clipped_side():
    old = torch.zeros(4)
    # ratio e^0.5 > 1.2 with A > 0, and e^-0.5 < 0.8 with A < 0: clipped, zero gradient.
    # ratio e^0.5 with A < 0, and e^-0.5 with A > 0: not clipped, gradient flows.
    logprobs = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = policy_loss(logprobs, old, advantages, torch.ones(4), clip=0.2)
    loss.backward()
    assert logprobs.grad[0] == 0 and logprobs.grad[1] == 0
    assert logprobs.grad[2] != 0 and logprobs.grad[3] != 0
    assert stats["clip_fraction"] == 1.0


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    advantages = torch.tensor([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), advantages, mask)
    assert loss.item() == -1.5 and stats["approx_kl"] == 0


def test_value_loss_clips_around_the_old_values():
    old, returns = torch.zeros(2), torch.tensor([1.0, 1.0])
    values = torch.tensor([0.5, 5.0], requires_grad=True)
    loss = value_loss(values, old, returns, torch.ones(2), clip=0.2)
    # per element: max((0.5-1)^2, (0.2-1)^2) = 0.64; max((5-1)^2, (0.2-1)^2) = 16
    assert torch.isclose(loss, torch.tensor(0.5 * (0.64 + 16) / 2))
    loss.backward()
    assert values.grad[0] == 0  # the clipped error is the larger one: no gradient
    assert values.grad[1] > 0


def test_adaptive_kl_controller_moves_beta_toward_the_target_and_is_bounded():
    controller = AdaptiveKLController(beta=0.1, target=6.0, horizon=100)
    assert controller.update(kl=12.0, samples=10) > 0.1  # too much KL: a stronger penalty
    high = controller.value
    assert controller.update(kl=1.0, samples=10) < high
    bounded = AdaptiveKLController(beta=1.0, target=1.0, horizon=10)
    assert abs(bounded.update(kl=1000.0, samples=10) - 1.2) < 1e-9  # error clipped at +20 %
    restored = AdaptiveKLController(0.0, 1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.state_dict() == controller.state_dict()


def test_iteration_alarms_fire_on_negative_kl_high_kl_and_length_drift_only():
    from lorahf.ppo.alarms import iteration_alarms

    assert iteration_alarms(kl=0.5, kl_limit=3.0, length=9.0, sft_length=8.0, length_tolerance=0.5) == []
    assert iteration_alarms(kl=-0.5, kl_limit=3.0, length=8.0, sft_length=8.0, length_tolerance=0.5) == ["negative_kl"]
    assert iteration_alarms(kl=-0.05, kl_limit=3.0, length=8.0, sft_length=8.0, length_tolerance=0.5) == []  # noise
    assert iteration_alarms(kl=4.0, kl_limit=3.0, length=8.0, sft_length=8.0, length_tolerance=0.5) == ["kl_high"]
    assert iteration_alarms(kl=1.0, kl_limit=3.0, length=13.0, sft_length=8.0, length_tolerance=0.5) == ["length_drift"]
    assert iteration_alarms(kl=1.0, kl_limit=3.0, length=3.0, sft_length=8.0, length_tolerance=0.5) == ["length_drift"]


def test_reward_hacking_alarm_needs_reward_up_and_rouge_down():
    from lorahf.ppo.alarms import held_out_alarms

    assert held_out_alarms(reward=1.0, rouge=0.60, start_reward=0.5, start_rouge=0.70) == ["reward_hacking"]
    assert held_out_alarms(reward=1.0, rouge=0.68, start_reward=0.5, start_rouge=0.70) == []  # within noise
    assert held_out_alarms(reward=0.4, rouge=0.60, start_reward=0.5, start_rouge=0.70) == []  # reward fell too
    assert held_out_alarms(reward=1.0, rouge=None, start_reward=0.5, start_rouge=None) == []  # no references


def test_losses_of_the_parts_of_a_minibatch_add_up_to_the_minibatch_loss():
    """Micro-batches and processes each divide by the whole minibatch's tokens: accumulating their losses gives
    the loss (and so the gradient) of the minibatch taken at once, whatever the rows' lengths."""
    torch.manual_seed(0)
    logprobs, old, advantages = torch.randn(3, 6, 5).unbind(0)
    values, old_values, returns = torch.randn(3, 6, 5).unbind(0)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 4, 2, 5])[:, None]).float()
    whole, whole_stats = policy_loss(logprobs, old, advantages, mask)
    tokens = mask.sum()
    parts = [policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], tokens=tokens)
             for rows in ([0, 3], [1, 2, 4], [5])]
    assert torch.allclose(sum(loss for loss, _ in parts), whole)
    for key in whole_stats:
        assert torch.allclose(sum(stats[key] for _, stats in parts), whole_stats[key])
    assert torch.allclose(sum(value_loss(values[r], old_values[r], returns[r], mask[r], tokens=tokens)
                              for r in ([0, 3], [1, 2, 4], [5])), value_loss(values, old_values, returns, mask))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), prompts=st.integers(1, 5))
def test_rloo_baseline_is_the_mean_of_the_other_answers_to_the_same_prompt(seed, k, prompts):
    scores = torch.randn(prompts * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    advantages = rloo_advantages(scores, k)
    for i in range(prompts * k):
        group = range(i // k * k, i // k * k + k)
        others = [scores[j] for j in group if j != i]
        assert torch.isclose(advantages[i], scores[i] - sum(others) / len(others))
    # the answer's own score never enters its baseline: raising it raises its advantage one for one
    bumped = scores.clone()
    bumped[0] += 1.0
    assert torch.isclose(rloo_advantages(bumped, k)[0] - advantages[0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(advantages.view(-1, k).sum(1), torch.zeros(prompts, dtype=torch.float64), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), prompts=st.integers(1, 5))
def test_grpo_advantages_have_mean_zero_and_unit_spread_per_group(seed, k, prompts):
    scores = torch.randn(prompts * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 1
    groups = grpo_advantages(scores, k, eps=0.0).view(-1, k)
    assert torch.allclose(groups.mean(1), torch.zeros(prompts, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(groups.std(1), torch.ones(prompts, dtype=torch.float64), atol=1e-6)
    assert torch.equal(grpo_advantages(torch.full((2 * k,), 3.0), k), torch.zeros(2 * k))  # alike: no signal


def test_critic_free_estimators_refuse_one_answer_per_prompt_in_one_line():
    for estimator in (rloo_advantages, grpo_advantages):
        try:
            estimator(torch.zeros(4), 1)
        except ValueError as error:
            assert "at least 2 answers per prompt" in str(error) and "\n" not in str(error)
        else:
            raise AssertionError(f"{estimator.__name__} took k = 1")
        try:
            estimator(torch.zeros(5), 2)
        except ValueError as error:
            assert "do not split into groups of 2" in str(error)


def test_a_sequence_advantage_goes_to_every_real_token_and_none_to_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(sequence_to_tokens(torch.tensor([2.0, -1.0]), mask), torch.tensor([[2.0, 2.0, 0.0],
                                                                                         [-1.0, 0.0, 0.0]]))
