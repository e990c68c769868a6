"""Both model families read and write sequences as plain transformers does, padding or not.

Each test runs on the tiny T5 and on the tiny Llama (`family_model_dir`), and checks lorahf's batched, padded
passes against transformers' own forward of one unpadded row, the reference a user would trust: the same
response log-probs (so no loss, log-prob or KL is ever read on a prompt or padding token), the same scores at the
last real token, and greedy answers of a left-padded batch equal to each prompt answered alone.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lorahf.backbone import Backbone
from lorahf.data import collate, encode_prompts, encode_responses
from lorahf.logprobs import token_logprobs
from lorahf.recipe import LoraSpec

PROMPTS = ["The Falcons beat the Tigers 3-1 in Leeds on Saturday in front of 16400 fans.", "Attendance was low.",
           "Rain fell all day in York and the match was stopped twice.", "A quiet, cold match in Hull."]
RESPONSES = ["Falcons beat Tigers 3-1 in Leeds.", "Low attendance at the game today.", "Rain in York.", "Quiet."]


@pytest.fixture
def loaded(family_model_dir):
    """A Backbone of the family's tiny base (fp32: comparisons with the plain model are then exact to rounding),
    with an `sft` adapter of random, non-zero weights and a `reward` adapter with a head."""
    backbone = Backbone.load(str(family_model_dir), quantization="none")
    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec(dropout=0.0))
    backbone.add_adapter("reward", LoraSpec(dropout=0.0), head=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for role in ("sft", "reward"):
            for parameter in backbone.parameters(role):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    backbone.model.eval()
    yield backbone
    backbone.close()


def _batch(backbone, prompts=PROMPTS, responses=RESPONSES):
    prompt_ids, _ = encode_prompts(backbone.tokenizer, prompts, 64, "{prompt}")
    response_ids, _ = encode_responses(backbone.tokenizer, responses, 16) if responses else (None, 0)
    return prompt_ids, response_ids, collate(prompt_ids, response_ids, backbone.tokenizer.pad_token_id)


def _plain(backbone, prompt: list[int], response: list[int]):
    """transformers' own forward of one unpadded (prompt, response): the logits that predict each response token
    and the last layer's state at the response's last token, through the model's standard call."""
    model = backbone.transformer
    prompt_t, response_t = torch.tensor([prompt]), torch.tensor([response])
    if backbone.family.name == "seq2seq":
        start = torch.full((1, 1), model.config.decoder_start_token_id)
        out = model(input_ids=prompt_t, decoder_input_ids=torch.cat([start, response_t], 1), output_hidden_states=True)
        return out.logits[0, :-1], out.decoder_hidden_states[-1][0, -1]
    out = model(input_ids=torch.cat([prompt_t, response_t], 1), output_hidden_states=True)
    return out.logits[0, len(prompt) - 1:-1], out.hidden_states[-1][0, -1]


def test_response_logprobs_equal_plain_transformers_on_each_unpadded_row(loaded):
    prompts, responses, batch = _batch(loaded)
    assert len({len(p) for p in prompts}) == len(prompts) and len({len(r) for r in responses}) > 2  # real padding
    with torch.no_grad():
        logits = loaded.use("sft").response_logits(batch)
        ours = token_logprobs(logits, batch.response_ids, batch.response_mask)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            plain_logits, _ = _plain(loaded, prompt, response)
            theirs = plain_logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None])[:, 0]
            assert torch.allclose(ours[row, :len(response)], theirs, atol=1e-4), row
            assert (ours[row, len(response):] == 0).all()  # padding: no log-prob, so no loss and no KL


def test_padding_ids_are_never_read(loaded):
    """Whatever token ids sit on padding (prompt or response), no response log-prob and no score moves."""
    _, _, batch = _batch(loaded)
    generator = torch.Generator().manual_seed(2)

    def scrambled(ids, mask):  # random ids wherever the mask says padding
        return torch.where(mask.bool(), ids, torch.randint(3, len(loaded.tokenizer), ids.shape, generator=generator))

    noisy = dataclasses.replace(batch, input_ids=scrambled(batch.input_ids, batch.attention_mask),
                                response_ids=scrambled(batch.response_ids, batch.response_mask))
    assert not torch.equal(noisy.input_ids, batch.input_ids) and not torch.equal(noisy.response_ids, batch.response_ids)
    with torch.no_grad():
        for role in ("sft", "reward"):
            loaded.use(role)
            assert torch.allclose(token_logprobs(loaded.response_logits(batch), batch.response_ids, batch.response_mask),
                                  token_logprobs(loaded.response_logits(noisy), noisy.response_ids, noisy.response_mask),
                                  atol=1e-5)
        assert torch.allclose(loaded.sequence_scores(batch), loaded.sequence_scores(noisy), atol=1e-5)


def test_the_score_is_read_at_the_last_real_response_token(loaded):
    prompts, responses, batch = _batch(loaded)
    head = loaded.head("reward")
    with torch.no_grad():
        scores = loaded.use("reward").sequence_scores(batch)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            assert response[-1] == loaded.tokenizer.eos_token_id
            _, last_state = _plain(loaded, prompt, response)
            assert torch.allclose(scores[row], head(last_state), atol=1e-4), row
        shorter = collate(prompts, [r[:-1] for r in responses], loaded.tokenizer.pad_token_id)  # without the EOS
        assert not torch.allclose(loaded.sequence_scores(shorter), scores, atol=1e-3)


def test_greedy_answers_of_a_padded_batch_equal_each_prompt_answered_alone(loaded):
    prompts, _, batch = _batch(loaded, responses=None)
    loaded.use("sft")
    together, lengths = loaded.generate(batch, max_new_tokens=10)
    assert len({tuple(row[:n].tolist()) for row, n in zip(together, lengths)}) > 1  # not one fixed answer
    for row, prompt in enumerate(prompts):
        alone, length = loaded.generate(collate([prompt], None, loaded.tokenizer.pad_token_id), max_new_tokens=10)
        assert length.item() == lengths[row].item()
        assert torch.equal(alone[0, :length], together[row, :lengths[row]]), row


def test_a_missing_pad_token_is_the_eos_and_the_vocabulary_keeps_its_size(loaded, family_model_dir):
    from transformers import AutoTokenizer

    tokenizer = loaded.tokenizer
    assert tokenizer.pad_token_id is not None
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(family_model_dir))
    assert loaded.transformer.get_input_embeddings().weight.shape[0] == loaded.base.config.vocab_size
    if loaded.family.name == "causal":  # the tiny Llama, like Llama, ships without one
        assert AutoTokenizer.from_pretrained(family_model_dir).pad_token is None
        assert tokenizer.pad_token_id == tokenizer.eos_token_id
