"""The shared Backbone: one 8-bit base, adapters per role, exact switching, isolated training, exact save/load.

Every test runs on both families, the tiny T5 and the tiny Llama (the `backbone` fixture below)."""

from __future__ import annotations

import pytest
import torch

from lorahf.backbone import Backbone
from lorahf.errors import LorahfError
from lorahf.recipe import LoraSpec


@pytest.fixture
def backbone(family_model_dir):
    """An 8-bit Backbone of each family's tiny base in turn, closed after the test."""
    loaded = Backbone.load(str(family_model_dir), quantization="8bit")
    yield loaded
    loaded.close()


def _randomize(backbone: Backbone, role: str, seed: int) -> None:
    """Give an adapter (and head) non-zero weights, as training would: a fresh lora_B is all zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backbone.parameters(role):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def _snapshot(module_params) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone().float() for name, tensor in module_params}


def test_8bit_base_has_bitsandbytes_int8_layers_on_cpu(backbone):
    import bitsandbytes as bnb

    int8_layers = [m for m in backbone.base.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert int8_layers, "8-bit loading produced no Linear8bitLt layers"
    assert any(p.dtype == torch.int8 for p in backbone.base.parameters())
    if backbone.family.name == "seq2seq":  # T5 computes in fp32 on the CPU; its wo layers stay unquantized and fp32
        assert backbone.base.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32


def test_8bit_layers_multiply_with_the_dequantized_weight_in_eval_mode_as_in_training(backbone, batch):
    """On a CPU every int8 layer runs bitsandbytes' training kernel (weight dequantized, input kept in float), in
    eval mode too: the layer is a plain matmul with its dequantized weight, and eval and train mode give the same
    logits (the tiny bases have no dropout), where int8 inputs would add their own rounding."""
    import bitsandbytes as bnb

    from lorahf.ppo.rollout_weights import dense_weight

    layer = next(m for m in backbone.base.modules() if isinstance(m, bnb.nn.Linear8bitLt))
    inputs = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        backbone.model.eval()
        evaluated = layer(inputs)
        assert torch.allclose(evaluated, torch.nn.functional.linear(inputs, dense_weight(layer)), atol=1e-5)
        backbone.add_adapter("sft", LoraSpec())
        _randomize(backbone, "sft", seed=1)
        backbone.model.eval()
        eval_logits = backbone.use("sft").response_logits(batch)
        backbone.model.train()
        train_logits = backbone.use("sft").response_logits(batch)
    assert torch.equal(eval_logits, train_logits)


def test_tiny_model_head_is_untied_after_from_pretrained(backbone):
    head, embeddings = backbone.base.get_output_embeddings().weight, backbone.base.get_input_embeddings().weight
    assert head.data_ptr() != embeddings.data_ptr()
    assert not torch.equal(head.float(), embeddings.float())


def test_a_second_base_in_one_process_is_refused(backbone, family_model_dir):
    with pytest.raises(LorahfError, match="already loaded"):
        Backbone.load(str(family_model_dir))


def test_two_adapters_differ_and_switching_back_restores_the_first_exactly(backbone, batch):
    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec())
    backbone.add_adapter("reward", LoraSpec(), head=True)
    _randomize(backbone, "sft", seed=1)
    _randomize(backbone, "reward", seed=2)
    backbone.model.eval()
    with torch.no_grad():
        first = backbone.use("sft").response_logits(batch)
        other = backbone.use("reward").response_logits(batch)
        again = backbone.use("sft").response_logits(batch)
        base = backbone.use(None).response_logits(batch)
    assert not torch.allclose(first, other, atol=1e-3)
    assert not torch.allclose(first, base, atol=1e-3)
    assert torch.equal(first, again)


def test_training_one_adapter_changes_only_that_adapter(backbone, batch):
    torch.manual_seed(0)
    for role in ("sft", "policy"):
        backbone.add_adapter(role, LoraSpec(dropout=0.0))
    backbone.add_adapter("reward", LoraSpec(), head=True)
    base_before = _snapshot(backbone.base.named_parameters())
    base_before = {k: v for k, v in base_before.items() if "lora_" not in k}
    others_before = {role: _snapshot(enumerate(backbone.parameters(role))) for role in ("sft", "reward")}
    policy_before = _snapshot(enumerate(backbone.parameters("policy")))

    backbone.set_trainable("policy")
    backbone.use("policy").model.train()
    optimizer = torch.optim.AdamW(backbone.parameters("policy"), lr=1e-2)
    for _ in range(3):
        logits = backbone.response_logits(batch)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.response_ids.flatten(),
                                                 reduction="none")[batch.response_mask.flatten().bool()].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    policy_after = _snapshot(enumerate(backbone.parameters("policy")))
    assert any(not torch.equal(policy_before[i], policy_after[i]) for i in policy_before)
    for role, before in others_before.items():
        after = _snapshot(enumerate(backbone.parameters(role)))
        assert all(torch.equal(before[i], after[i]) for i in before), f"{role} changed"
    base_after = {k: v.detach().float() for k, v in backbone.base.named_parameters() if "lora_" not in k}
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "the base changed"


def test_two_roles_trained_in_one_step_both_get_gradients(backbone, batch):
    """peft's set_adapter flips requires_grad; switching roles between forwards must not zero a gradient."""
    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec(dropout=0.0))
    backbone.add_adapter("policy", LoraSpec(dropout=0.0))
    backbone.add_adapter("value", LoraSpec(dropout=0.0), head=True)
    _randomize(backbone, "policy", seed=3)
    _randomize(backbone, "value", seed=4)
    backbone.set_trainable("policy", "value")
    policy_loss = backbone.use("policy").response_logits(batch).logsumexp(-1).mean()
    value_loss = backbone.use("value").token_values(batch).pow(2).mean()
    backbone.use("sft")  # a switch to a frozen role before backward, as PPO does for reference log-probs
    (policy_loss + value_loss).backward()
    for role in ("policy", "value"):
        grads = [p.grad for p in backbone.parameters(role)]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), role
    assert all(p.grad is None for p in backbone.parameters("sft"))


def test_copy_adapter_is_exact_and_independent(backbone, batch):
    torch.manual_seed(0)
    backbone.add_adapter("reward", LoraSpec(), head=True)
    _randomize(backbone, "reward", seed=5)
    backbone.copy_adapter("reward", "value")
    backbone.model.eval()
    with torch.no_grad():
        reward = backbone.use("reward").sequence_scores(batch)
        value = backbone.use("value").sequence_scores(batch)
    assert torch.equal(reward, value)
    with torch.no_grad():
        backbone.head("value").linear.bias.add_(1.0)
        assert torch.equal(backbone.use("reward").sequence_scores(batch), reward)


def test_save_then_load_adapter_and_head_is_bit_exact(backbone, batch, family_model_dir, tmp_path):
    torch.manual_seed(0)
    backbone.add_adapter("reward", LoraSpec(), head=True)
    _randomize(backbone, "reward", seed=6)
    with torch.no_grad():
        backbone.head("reward").offset.fill_(0.25)
    before = [p.detach().clone() for p in backbone.parameters("reward")]
    backbone.model.eval()
    with torch.no_grad():
        scores = backbone.use("reward").sequence_scores(batch)
    backbone.save_adapter("reward", tmp_path / "reward")
    assert (tmp_path / "reward" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "reward" / "head.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    backbone.close()

    fresh = Backbone.load(str(family_model_dir), quantization="8bit")
    try:
        fresh.load_adapter("reward", tmp_path / "reward")
        after = fresh.parameters("reward")
        assert len(before) == len(after)
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        assert fresh.head("reward").offset.item() == 0.25
        fresh.model.eval()
        with torch.no_grad():
            assert torch.equal(fresh.use("reward").sequence_scores(batch), scores)
    finally:
        fresh.close()


def test_saved_adapter_loads_with_plain_peft(backbone, batch, family_model_dir, tmp_path):
    """A run's adapter is deployable without lorahf: PeftModel.from_pretrained on the base."""
    from peft import PeftModel

    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec())
    _randomize(backbone, "sft", seed=7)
    backbone.save_adapter("sft", tmp_path / "sft")
    backbone.model.eval()
    with torch.no_grad():
        ours = backbone.use("sft").response_logits(batch)
    family = backbone.family
    backbone.close()

    base = family.auto_class().from_pretrained(str(family_model_dir), quantization_config=None)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "sft")).eval()
    mask = batch.response_mask.bool()
    theirs = torch.zeros_like(ours)
    with torch.no_grad():
        for row, (prompt_length, response_length) in enumerate(zip(batch.attention_mask.sum(1),
                                                                     batch.response_lengths)):
            prompt = batch.input_ids[row:row + 1, :prompt_length]
            response = batch.response_ids[row:row + 1, :response_length]
            if family.name == "seq2seq":
                start = torch.zeros_like(response[:, :1])
                logits = plain(input_ids=prompt, decoder_input_ids=torch.cat([start, response[:, :-1]], 1)).logits[0]
            else:
                logits = plain(input_ids=torch.cat([prompt, response], 1)).logits[0, prompt_length - 1:-1]
            theirs[row, :response_length] = logits
    # ours ran on the int8 base, theirs on fp32 weights: close, not equal.
    assert torch.allclose(ours[mask].softmax(-1), theirs[mask].softmax(-1), atol=0.05)
    assert (ours[mask].argmax(-1) == theirs[mask].argmax(-1)).float().mean() > 0.9


def test_memory_report_counts_int8_base_and_each_role(backbone):
    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec())
    backbone.copy_adapter("sft", "policy")
    backbone.add_adapter("reward", LoraSpec(), head=True)
    backbone.copy_adapter("reward", "value")
    report = backbone.memory_report()
    lora_params = sum(p.numel() for p in backbone.parameters("sft"))
    assert set(report.adapter_bytes) == {"sft", "policy", "reward", "value"}
    assert report.adapter_bytes["sft"] == lora_params * 4  # fp32 LoRA weights
    assert set(report.head_bytes) == {"reward", "value"}
    fp32_base = sum(p.numel() * 4 for n, p in backbone.base.named_parameters() if "lora_" not in n)
    assert report.base_bytes < fp32_base  # int8 weights are stored in one byte
    assert report.separate_models_bytes == 4 * report.base_bytes + sum(report.head_bytes.values())
    assert report.ratio < 1.0


def test_generate_returns_lengths_and_pads_after_eos(backbone, batch):
    torch.manual_seed(0)
    backbone.add_adapter("sft", LoraSpec())
    responses, lengths = backbone.use("sft").generate(batch, max_new_tokens=6)
    assert responses.shape[0] == lengths.shape[0] == batch.input_ids.shape[0]
    eos = backbone.tokenizer.eos_token_id
    for row, length in zip(responses, lengths):
        assert 1 <= length <= 6
        assert (row[length:] == backbone.tokenizer.pad_token_id).all()
        if length < 6 or row[length - 1] == eos:
            assert row[length - 1] == eos
            assert not (row[: length - 1] == eos).any()


def test_not_a_model_folder_is_one_clear_line(tmp_path):
    with pytest.raises(LorahfError, match="not a model folder") as error:
        Backbone.load(str(tmp_path))
    assert "\n" not in str(error.value)


def test_likelihood_term_adds_the_mean_token_logprob_and_survives_save_load(backbone, batch, tmp_path):
    from lorahf.logprobs import token_logprobs

    torch.manual_seed(0)
    backbone.add_adapter("reward", LoraSpec(), head=True, likelihood=True)
    _randomize(backbone, "reward", seed=8)
    head = backbone.head("reward")
    backbone.use("reward").model.eval()
    with torch.no_grad():
        head.likelihood_weight.fill_(0.5)
        states = backbone.decode(batch)
        rows = torch.arange(states.shape[0])
        expected = head(states[rows, batch.response_lengths]) + 0.5 * token_logprobs(
            backbone.lm_logits(states[:, :-1]), batch.response_ids, batch.response_mask).sum(1) / batch.response_lengths
        scores = backbone.sequence_scores(batch)
    assert torch.allclose(scores, expected, atol=1e-5)
    backbone.save_adapter("reward", tmp_path / "reward")
    backbone.load_adapter("reward", tmp_path / "reward")
    assert bool(backbone.head("reward").likelihood) and backbone.head("reward").likelihood_weight.item() == 0.5
    with torch.no_grad():
        assert torch.equal(backbone.use("reward").sequence_scores(batch), scores)


def test_per_row_pass_matches_separate_passes_and_keeps_gradients_apart(backbone, batch):
    """One pass with rows as policy and rows as value gives each role's own outputs and gradients."""
    from lorahf.ppo.rollout import repeat

    for role, seed in (("policy", 1), ("value", 2)):
        backbone.add_adapter(role, LoraSpec(), head=role == "value")
        _randomize(backbone, role, seed)
    backbone.set_trainable("policy", "value")
    backbone.model.eval()
    n = batch.input_ids.shape[0]

    def loss_of(logits, values):
        return logits.float().pow(2).mean() + values.pow(2).mean()

    def gradients() -> dict[str, torch.Tensor]:
        found = {}
        for role in ("policy", "value"):
            for i, parameter in enumerate(backbone.parameters(role)):
                found[f"{role}.{i}"] = parameter.grad.clone() if parameter.grad is not None else None
                parameter.grad = None
        return found

    logits = backbone.use("policy").response_logits(batch)
    values = backbone.use("value").token_values(batch)
    loss_of(logits, values).backward()
    separate = gradients()
    with backbone.per_row(["policy"] * n + ["value"] * n):
        policy_states, value_states = backbone.decode(repeat(batch, 2)).split(n)
    mixed_logits, mixed_values = backbone.lm_logits(policy_states[:, :-1]), backbone.head("value")(value_states[:, :-1])
    assert backbone.active == "value"  # restored
    # int8 outlier handling depends on the whole batch, so the outputs agree closely, not bit for bit
    assert torch.allclose(mixed_logits, logits, atol=2e-2) and torch.allclose(mixed_values, values, atol=2e-2)
    loss_of(mixed_logits, mixed_values).backward()
    mixed = gradients()
    for name, gradient in separate.items():
        assert mixed[name] is not None and torch.allclose(mixed[name], gradient, atol=1e-3, rtol=0.05), name

    with backbone.per_row(["policy"] * n + ["value"] * n):  # a loss on the policy rows alone
        policy_states, _ = backbone.decode(repeat(batch, 2)).split(n)
    backbone.lm_logits(policy_states).float().pow(2).mean().backward()
    leaked = gradients()
    assert all(leaked[k] is None or not leaked[k].any() for k in leaked if k.startswith("value"))
    assert any(leaked[k] is not None and leaked[k].any() for k in leaked if k.startswith("policy"))


def test_gradient_checkpointing_gives_the_same_loss_gradients_and_answers(backbone, batch, family_model_dir):
    """model.gradient_checkpointing recomputes activations in training passes: same numbers, same answers."""
    from lorahf.stages.sft import response_loss

    def run(bb):
        bb.add_adapter("sft", LoraSpec())
        _randomize(bb, "sft", seed=3)
        bb.use("sft").set_trainable("sft")
        bb.model.train()
        torch.manual_seed(5)  # dropout draws the same masks: non-reentrant checkpointing replays the RNG
        loss = response_loss(bb, batch)
        loss.backward()
        grads = [p.grad.clone() for p in bb.parameters("sft")]
        answers, _ = bb.generate(batch, max_new_tokens=8)
        return loss.detach(), grads, answers

    plain = run(backbone)
    assert not backbone.model.is_activation_checkpointing
    backbone.close()
    checkpointed = Backbone.load(str(family_model_dir), quantization="8bit", gradient_checkpointing=True)
    try:
        assert checkpointed.model.is_activation_checkpointing
        again = run(checkpointed)
    finally:
        checkpointed.close()
    assert torch.allclose(plain[0], again[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], again[1]))
    assert torch.equal(plain[2], again[2])
