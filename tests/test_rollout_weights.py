"""ppo.rollout_weights: merged. An unquantized copy of the base with the policy folded in samples the quantized
policy's distribution (on a CPU, where the int8 layers dequantize their weights, to float rounding; on a GPU up to
LLM.int8's rounding of activations), follows the policy after every update, and leaves PPO's old log-probs those of
the training path (the first ratio is 1)."""

from __future__ import annotations

import torch

from lorahf.backbone import Backbone
from lorahf.logprobs import exact_kl, log_distribution
from lorahf.ppo.rollout import collect
from lorahf.ppo.rollout_weights import MergedPolicy, dense_weight
from lorahf.ppo.update import policy_and_values
from lorahf.recipe import LoraSpec

PROMPTS = ["the storm moved north overnight and the river rose two metres", "sales fell in march after the strike",
           "the council approved the new bridge on tuesday", "a late goal won the final for the visitors"] * 2


def _policy(backbone, seed: int = 0) -> None:
    """sft and a policy that is not the base: its LoRA B filled with noise, so its delta is not zero."""
    backbone.add_adapter("sft", LoraSpec())
    backbone.copy_adapter("sft", "policy")
    _nudge(backbone, seed)


def _nudge(backbone, seed: int, scale: float = 0.02) -> None:
    """An update stand-in: noise added to the policy's LoRA weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backbone.parameters("policy"):
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter))


def _prompt_ids(backbone) -> list[list[int]]:
    return [backbone.tokenizer(f"summarize: {text}").input_ids for text in PROMPTS]


def _no_score(backbone, prompts, batch):
    return torch.zeros(batch.response_ids.shape[0])


def _rollout(backbone, sampler):
    torch.manual_seed(0)
    return collect(backbone, _prompt_ids(backbone), PROMPTS, _no_score, temperature=1.0, top_k=0, max_new_tokens=16,
                   critic=False, sampler=sampler)


def _copy_kl(backbone, sampler, batch) -> float:
    """Mean exact KL(copy || quantized policy) of the next-token distributions over the batch's response tokens."""
    copy = Backbone(sampler.model, backbone.tokenizer, "copy", "none", backbone.device, backbone.family)
    with torch.inference_mode():
        theirs = log_distribution(copy.response_logits(batch))
        ours = log_distribution(backbone.use("policy").response_logits(batch))
    mask = batch.response_mask.float()
    return (exact_kl(theirs, ours, mask).sum() / mask.sum()).item()


def test_an_unquantized_bases_merged_copy_answers_exactly_as_the_policy(tiny_model_dir):
    """Without quantization the copy's weights are the base's plus B·A·scale: greedy answers and their logits are the
    policy adapter's own, float rounding apart (KL measured 0 to 1.3e-8 a token, with the samples of other test
    orders)."""
    backbone = Backbone.load(str(tiny_model_dir), quantization="none")
    try:
        _policy(backbone)
        sampler = MergedPolicy(backbone)
        batch = _rollout(backbone, None).batch
        ours = backbone.use("policy").generate(batch, 16, return_logits=True)
        theirs = sampler.generate(batch, 16, return_logits=True)
        assert torch.equal(ours[0], theirs[0]) and torch.allclose(ours[2], theirs[2], atol=1e-4)
        assert _copy_kl(backbone, sampler, batch) < 1e-6
    finally:
        backbone.close()


def test_the_merged_copy_samples_the_quantized_policys_distribution_and_follows_its_updates(backbone):
    """8-bit: the copy's weights are the int8 weights dequantized plus the delta, exactly; on a CPU the quantized
    path multiplies by those same dequantized weights, so the next-token distributions agree to float rounding
    (measured here: mean KL 1e-8 nats a token, 7e-9 on the tiny Llama; the sampled tokens' mean log-prob gap 1e-7;
    before the int8 layers dequantized in eval mode, int8 inputs made them 8e-5 and 9e-4). After an update the
    stale copy is off by 0.05 (0.4 on the Llama); `refresh` brings it back to 1e-8. The rollout's old log-probs are
    the training path's, so the update's first ratio is 1."""
    _policy(backbone)
    sampler = MergedPolicy(backbone)
    layer = next(module for module in backbone.base.modules() if hasattr(module, "lora_A") and "policy" in module.lora_A)
    folded = dict(sampler.model.named_parameters())[_name_in_copy(backbone, layer)]
    assert torch.equal(folded, dense_weight(layer.base_layer) + layer.get_delta_weight("policy"))

    rollout = _rollout(backbone, sampler)
    fresh = _copy_kl(backbone, sampler, rollout.batch)
    assert fresh < 1e-6, fresh
    assert abs(rollout.logprob_gap) < 1e-5, rollout.logprob_gap
    with torch.inference_mode():
        training, _ = policy_and_values(backbone, rollout.batch, None, 1.0, critic=False)
    assert torch.allclose(rollout.logprobs, training, atol=1e-5)  # PPO's first ratio: exactly 1, as with quantized

    _nudge(backbone, seed=1)
    stale = _copy_kl(backbone, sampler, rollout.batch)
    sampler.refresh(backbone)
    refreshed = _copy_kl(backbone, sampler, rollout.batch)
    assert stale > 0.01 and refreshed < 1e-6, (stale, refreshed)


def _name_in_copy(backbone, layer) -> str:
    """The copy's name of a LoRA layer's weight (the base's module path, without peft's wrapping)."""
    name = next(name for name, module in backbone.base.named_modules() if module is layer)
    return f"{name}.weight"


def test_a_decoder_only_policy_folds_the_same_way(tiny_causal_dir):
    backbone = Backbone.load(str(tiny_causal_dir), quantization="8bit")
    try:
        _policy(backbone)
        sampler = MergedPolicy(backbone)
        rollout = _rollout(backbone, sampler)
        assert _copy_kl(backbone, sampler, rollout.batch) < 1e-6
        assert abs(rollout.logprob_gap) < 1e-5, rollout.logprob_gap
    finally:
        backbone.close()
