"""Per-token log-probs, entropy and KL (lorahf.logprobs, their one home): properties a plausible bug would break,
and batched reward scoring (lorahf.scoring) that does not depend on how the responses are batched."""

from __future__ import annotations

import math

import torch

from lorahf.logprobs import exact_kl, log_distribution, token_logprobs, token_logprobs_and_entropy


def _logits(seed: int, shape=(3, 5, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_every_tokens_logprob_makes_a_distribution_and_padding_is_zero():
    logits = _logits(0)
    rows, width, vocab = logits.shape
    mask = torch.ones(rows, width)
    mask[0, 3:] = 0
    each = torch.stack([token_logprobs(logits, torch.full((rows, width), token), mask, 0.7)
                        for token in range(vocab)], -1)
    real = mask.bool()
    assert torch.allclose(each.exp().sum(-1)[real], torch.ones(int(mask.sum())), atol=1e-5)
    assert torch.all(each[real] < 0) and torch.all(each[0, 3:] == 0)


def test_the_temperature_divides_the_logits_and_at_one_they_are_used_as_they_are():
    logits, targets, mask = _logits(1), torch.randint(0, 11, (3, 5)), torch.ones(3, 5)
    assert torch.allclose(token_logprobs(logits, targets, mask, 0.5), token_logprobs(2 * logits, targets, mask))
    plain = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.equal(token_logprobs(logits, targets, mask), plain)
    assert token_logprobs(logits.bfloat16(), targets, mask).dtype == torch.float32  # read in fp32


def test_entropy_is_log_vocab_when_every_token_is_as_likely_and_zero_when_one_is_certain():
    targets, mask = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4)
    logprobs, entropy = token_logprobs_and_entropy(torch.zeros(2, 4, 11), targets, mask, 0.7)
    assert torch.allclose(entropy, torch.full((2, 4), math.log(11)))
    assert torch.allclose(logprobs, torch.full((2, 4), -math.log(11)))
    certain = torch.full((2, 4, 11), -1e4)
    certain[..., 0] = 0
    logprobs, entropy = token_logprobs_and_entropy(certain, targets, mask)
    assert torch.allclose(entropy, torch.zeros(2, 4), atol=1e-4) and torch.allclose(logprobs, torch.zeros(2, 4))
    logits, targets = _logits(2), torch.randint(0, 11, (3, 5))
    assert torch.equal(token_logprobs_and_entropy(logits, targets, torch.ones(3, 5), 0.7)[0],
                       token_logprobs(logits, targets, torch.ones(3, 5), 0.7))


def test_exact_kl_is_zero_between_equals_and_matches_torch_distributions():
    p, q, mask = _logits(3), _logits(4), torch.ones(3, 5)
    mask[1, 2:] = 0
    log_p, log_q = log_distribution(p, 0.7), log_distribution(q, 0.7)
    assert torch.all(exact_kl(log_p, log_p, mask).abs() < 1e-6)
    kl = exact_kl(log_p, log_q, mask)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p / 0.7),
                                                 torch.distributions.Categorical(logits=q / 0.7)) * mask
    assert torch.allclose(kl, expected, atol=1e-5)
    assert torch.all(kl[mask.bool()] > 0) and torch.all(kl[1, 2:] == 0)


def test_batched_scores_do_not_depend_on_the_batch_size_nor_on_the_role_in_use(backbone):
    from lorahf.data import collate, encode_prompts, encode_responses
    from lorahf.recipe import LoraSpec
    from lorahf.scoring import score_batches

    backbone.add_adapter("sft", LoraSpec())
    backbone.add_adapter("reward", LoraSpec(), head=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in backbone.parameters("reward") + backbone.parameters("sft"):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    texts = ["The Falcons beat the Tigers 3-1 in Leeds on Saturday.", "Attendance was low.", "Rain fell in York.",
             "A quiet match.", "Rangers won at home."]
    prompt_ids, _ = encode_prompts(backbone.tokenizer, texts, max_tokens=64)
    response_ids, _ = encode_responses(backbone.tokenizer, [t.split()[0] for t in texts], max_tokens=16)
    backbone.use("reward").model.eval()
    with torch.no_grad():
        one_pass = backbone.sequence_scores(collate(prompt_ids, response_ids, backbone.tokenizer.pad_token_id))
    backbone.model.train()
    for batch_size in (1, 2, 64):
        backbone.use("sft")  # the scorer runs as the role it is given, whatever was in use
        scores = score_batches(backbone, "reward", prompt_ids, response_ids, batch_size)
        assert torch.allclose(scores, one_pass, atol=1e-5) and not scores.requires_grad
        assert backbone.active == "reward" and not backbone.model.training
    assert score_batches(backbone, "reward", [], [], 4).shape == (0,)
