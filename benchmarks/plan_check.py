"""How close `lorahf plan` comes to measured peaks: on this CPU (run here) and on a GPU (measured earlier).

    python benchmarks/plan_check.py            # everything
    python benchmarks/plan_check.py causal     # only the decoder-only CPU rows (likewise: t5, encoder, gpu)

CPU: the quickstart's tiny T5 and a flan-t5-small-shaped T5 (random, built here), and the decoder-only
counterparts: the tiny Llama (`make-tiny --family causal`) and a SmolLM2-135M-shaped Llama cut to 4 of its 30
layers (random, built here from `plan.CAUSAL`'s dimensions), are loaded as a run loads
them (`Backbone.load`, 8-bit, the bitsandbytes CPU path), and one SFT step, one reward step and one PPO
update pass run for real; the bytes of every tensor they create are counted while they live (the same
counter the planner runs on the meta device, here on real tensors and real bitsandbytes layers). The
planner predicts the same steps from the config alone (`plan.Shape(..., "cpu")`). Weights are compared
separately: `plan.base_bytes` against the loaded model's tensors.

The reward model on its own encoder (`reward.model`): the tiny BERT (`make-tiny --family encoder`) and a
distilroberta-base-shaped RoBERTa (random, built here) are loaded as the reward stage loads them
(`EncoderReward.load`: LoRA, full, and the tiny BERT in 8 bits), and one real training step runs: the stage's
`score_responses` and `group_loss`, then `training.update` (backward, clipping, AdamW's first step), on pairs of
one length (no padding) and with a shorter pair in each batch (padding); then PPO's scoring pass (`score_items`,
no gradients). The planner predicts them from the config alone (`plan.RewardEncoder(..., "cpu")`); weights:
`RewardEncoder.weight_bytes` against `EncoderReward.memory_bytes`.

GPU: benchmarks/results/gpu-h200-2026-11-26.jsonl holds peaks measured by benchmarks/gpu.py on an H200
(`torch.cuda.max_memory_allocated`, prompts 512 and responses 64 tokens, no padding, the base built tied).
The planner predicts the same setups: base (tied, as built), the four roles gpu.py creates before it
measures, and each phase's step or rollout.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GPU_RESULTS = REPO / "benchmarks" / "results" / "gpu-h200-2026-11-26.jsonl"
GIB, MIB = 2 ** 30, 2 ** 20


def recipe_for(model: str, prompt: int, response: int, quantization: str = "8bit", checkpointing: bool = False,
               sft: int = 8, reward: int = 4, ppo: int = 16, minibatch: int = 4):
    from lorahf import recipe as recipes

    return recipes.validate({
        "name": "check", "model": {"name": model, "quantization": quantization,
                                   "gradient_checkpointing": checkpointing},
        "max_prompt_tokens": prompt, "max_response_tokens": response, "stages": ["sft", "reward", "ppo"],
        "sft": {"data": {"files": ["unused.jsonl"]}, "batch_size": sft},
        "reward": {"data": {"files": ["unused.jsonl"]}, "batch_size": reward},
        "ppo": {"data": {"files": ["unused.jsonl"]}, "batch_size": ppo, "minibatch_size": minibatch}})


# ------------------------------------------------------------------------------------------------ GPU
def gpu_rows() -> list[tuple]:
    from lorahf import plan

    rows = []
    for line in GPU_RESULTS.read_text().splitlines():
        measured = json.loads(line)
        name = f"google/flan-t5-{measured['size']}"
        config = plan.model_config(name)
        base = plan.base_bytes(config, measured["quantization"], torch.bfloat16, tied=True)
        rows.append((f"{measured['size']} {measured['quantization']}", "base", base, measured["load"]["base_gib"] * GIB))
        for checkpointing in (False, True):
            recipe = recipe_for(name, 512, 64, measured["quantization"], checkpointing)
            shape = plan.Shape(config, torch.bfloat16, "cuda", padded=False)
            roles = sum(shape.lora_bytes(recipe.lora.sft) for _ in range(4))  # gpu.py made all four first
            suffix = "_checkpointing" if checkpointing else ""
            steps = {"sft": lambda: shape.trace_sft(recipe, 8), "reward": lambda: shape.trace_reward(recipe, 8)}
            if not checkpointing:
                steps["ppo"] = lambda: max(shape.rollout_bytes(16, 512, 64, True, True),
                                           shape.trace_ppo_update(recipe, 4, 16))
            for phase, predict in steps.items():
                if phase + suffix in measured and "peak_gib" in measured[phase + suffix]:
                    rows.append((f"{measured['size']} {measured['quantization']}", phase + (" + ckpt" * checkpointing),
                                 base + roles + predict(), measured[phase + suffix]["peak_gib"] * GIB))
    return rows


# ------------------------------------------------------------------------------------------------ CPU
def cpu_rows() -> list[tuple]:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from lorahf import plan
    from lorahf.tiny import make_tiny

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tiny = Path(folder) / "tiny"
        make_tiny(REPO / "examples" / "summaries" / "data", tiny)
        small = Path(folder) / "small"
        d_model, d_ff, layers, heads = plan.FLAN_T5["small"]
        torch.manual_seed(0)
        T5ForConditionalGeneration(T5Config(
            vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=64, num_heads=heads, num_layers=layers,
            num_decoder_layers=layers, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)).save_pretrained(small)
        AutoTokenizer.from_pretrained(tiny).save_pretrained(small)
        for model, (prompt, response, batch) in ((tiny, (96, 16, 16)), (small, (256, 32, 4))):
            rows += _cpu_model(str(model), prompt, response, batch)
        rows += _cpu_model(str(small), 256, 32, 4, checkpointing=True)
    return rows


def causal_cpu_rows() -> list[tuple]:
    from lorahf import plan
    from lorahf.families import family_of
    from lorahf.tiny import TinyCausalSpec, make_tiny

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tiny = Path(folder) / "tiny-llama"
        make_tiny(REPO / "examples" / "summaries" / "data", tiny, TinyCausalSpec())
        smol = Path(folder) / "smollm2-135m-4-layers"
        config = plan.with_depths(plan.model_config("HuggingFaceTB/SmolLM2-135M"), {"num_hidden_layers": 4})
        torch.manual_seed(0)
        family_of(config).auto_class().from_config(config, dtype=torch.float32).save_pretrained(smol)
        _tokenizer_for(tiny, config.vocab_size).save_pretrained(smol)
        for model, (prompt, response, batch) in ((tiny, (96, 16, 16)), (smol, (256, 32, 4))):
            rows += _cpu_model(str(model), prompt, response, batch)
        rows += _cpu_model(str(smol), 256, 32, 4, checkpointing=True)
    return rows


def _tokenizer_for(tiny: Path, vocabulary: int):
    """The tiny Llama's tokenizer, for a model with a larger vocabulary (the ids it writes are all in range)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert len(tokenizer) <= vocabulary
    return tokenizer


def _cpu_model(model: str, prompt: int, response: int, batch: int, checkpointing: bool = False) -> list[tuple]:
    """Weights, then an SFT step, a reward step and a PPO update pass (with checkpointing: the SFT step only)."""
    from lorahf import plan
    from lorahf.backbone import Backbone
    from lorahf.data import collate
    from lorahf.ppo.update import policy_and_values
    from lorahf.reward_model import SharedReward
    from lorahf.stages.reward import Groups, group_loss, score_responses
    from lorahf.stages.sft import response_loss

    label = Path(model).name
    recipe = recipe_for(model, prompt, response, checkpointing=checkpointing, sft=batch, reward=batch // 2, ppo=batch,
                        minibatch=batch // 2)
    config = plan.model_config(model)
    shape = plan.Shape(config, torch.float32, "cpu", padded=False)
    width = config.hidden_size * shape.encoder_decoder  # the rollout keeps T5's encoder outputs of the prompts
    backbone = Backbone.load(model, quantization="8bit", device="cpu", gradient_checkpointing=checkpointing)
    rows = [] if checkpointing else [(label, "base", plan.base_bytes(config, "8bit", torch.float32),
                                      backbone.memory_report().base_bytes)]
    try:
        data = collate([[5] * (prompt - 1) + [1]] * batch, [[6] * (response - 1) + [1]] * batch, 0)
        backbone.add_adapter("sft", recipe.lora.sft)
        backbone.use("sft").set_trainable("sft")
        backbone.model.train()
        real = plan._peak(lambda: plan._train_step(response_loss(backbone, data), backbone.parameters("sft")))
        rows.append((label, "sft step" + " + ckpt" * checkpointing, shape.trace_sft(recipe, batch), real))
        if checkpointing:
            return rows

        backbone.add_adapter("reward", recipe.lora.reward, head=True)
        backbone.use("reward").set_trainable("reward")
        parameters = backbone.parameters("reward") + backbone.head("reward").trainable_parameters()
        pairs = batch // 2
        item = ([5] * (prompt - 1) + [1], [6] * (response - 1) + [1])
        groups = Groups([[item] * 2] * pairs, [[(0, 1)]] * pairs)
        scorer = SharedReward(backbone, recipe)
        real = plan._peak(lambda: plan._train_step(group_loss(score_responses(scorer, groups, list(range(pairs))),
                                                              groups.pairs, recipe.reward.margin), parameters))
        rows.append((label, "reward step", shape.trace_reward(recipe, batch), real))

        backbone.copy_adapter("sft", "policy")
        backbone.copy_adapter("reward", "value")
        backbone.set_trainable("policy", "value")
        backbone.model.eval()
        rows_ = batch // 2
        part = collate([[5] * (prompt - 1) + [1]] * rows_, [[6] * (response - 1) + [1]] * rows_, 0)
        states = torch.zeros(2 * rows_, prompt, width) if shape.encoder_decoder else None
        kept = 2 * batch * prompt * width * 4
        parameters = backbone.parameters("policy") + backbone.parameters("value")

        def update():
            logprobs, values = policy_and_values(backbone, part, states, recipe.ppo.temperature)
            plan._train_step(logprobs.sum() + values.sum(), parameters)
        rows.append((label, "ppo update", shape.trace_ppo_update(recipe, rows_, batch), kept + plan._peak(update)))
    finally:
        backbone.close()
    return rows


def encoder_cpu_rows() -> list[tuple]:
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    from lorahf.tiny import TinyEncoderSpec, make_tiny

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tiny = make_tiny(REPO / "examples" / "summaries" / "data", Path(folder) / "tiny-bert", TinyEncoderSpec())
        roberta = Path(folder) / "distilroberta-base-shaped"
        torch.manual_seed(0)  # distilroberta-base's dimensions (its config.json on the hub)
        RobertaForMaskedLM(RobertaConfig(vocab_size=50265, hidden_size=768, intermediate_size=3072,
                                         num_hidden_layers=6, num_attention_heads=12, max_position_embeddings=514,
                                         type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                         eos_token_id=2)).save_pretrained(roberta)
        AutoTokenizer.from_pretrained(tiny).save_pretrained(roberta)  # its ids are all in range; pairs are made here
        for tuning in ("lora", "full"):
            rows += _cpu_encoder(str(tiny), tuning, prompt=128, response=32, pairs=16)
        rows += _cpu_encoder(str(tiny), "lora", prompt=128, response=32, pairs=16, quantization="8bit", steps=False)
        for tuning in ("lora", "full"):
            rows += _cpu_encoder(str(roberta), tuning, prompt=256, response=64, pairs=4)
    return rows


def _cpu_encoder(model: str, tuning: str, prompt: int, response: int, pairs: int, quantization: str = "auto",
                 steps: bool = True) -> list[tuple]:
    """Weights, a reward step without and with padding, and (LoRA) PPO's scoring pass of 2 x `pairs` answers.
    `steps`: False for weights only (an 8-bit BERT's classifier is int8 too, and peft's trainable copy of it cannot
    run: weights are all an 8-bit encoder shows here)."""
    from lorahf import plan
    from lorahf import recipe as recipes
    from lorahf.reward_model import EncoderReward
    from lorahf.stages.reward import Groups, group_loss, score_responses
    from lorahf.training import make_optimizer, update

    recipe = recipes.validate({
        "name": "check", "model": {"name": "unused", "quantization": "8bit"},
        "max_prompt_tokens": prompt, "max_response_tokens": response, "stages": ["sft", "reward", "ppo"],
        "sft": {"data": {"files": ["unused.jsonl"]}},
        "reward": {"data": {"files": ["unused.jsonl"]}, "batch_size": pairs, "model": model,
                   "full_finetune": tuning == "full", "quantization": quantization},
        "ppo": {"data": {"files": ["unused.jsonl"]}}})
    label = f"{Path(model).name} {tuning}" + (f" {quantization}" if quantization != "auto" else "")
    reward = EncoderReward.load(model, recipe.reward, recipe.lora.reward, "8bit", torch.device("cpu"))
    rows = []
    for padded in (False, True):
        encoder = plan.RewardEncoder(recipe, torch.float32, "cpu", padded=padded)
        if not padded:
            rows.append((label, "weights", encoder.weight_bytes(), reward.memory_bytes()))
        if not steps:
            break
        length = encoder.length  # prompt + response + [CLS] [SEP] [SEP], as planned
        items = [_pair_item(reward, length, prompt), _pair_item(reward, length - 7 * padded, prompt)]
        groups = Groups([items] * pairs, [[(0, 1)]] * pairs)
        reward.set_trainable("reward")
        reward.model.train()
        parameters = reward.parameters("reward")
        optimizer, scheduler = make_optimizer(parameters, recipe.reward, 10)
        real = plan._peak(lambda: update(group_loss(score_responses(reward, groups, list(range(pairs))), groups.pairs,
                                                    recipe.reward.margin), optimizer, scheduler, parameters,
                                         recipe.reward.max_grad_norm, "reward", 1))
        optimizer.zero_grad(set_to_none=True)
        rows.append((label, "reward step" + " (padding)" * padded, encoder.trace_step(recipe, 2 * pairs), real))
        if tuning == "lora" and quantization == "auto":
            batch = [items[0]] * 2 * pairs if not padded else items * pairs
            real = plan._peak(lambda: reward.score_items(batch, len(batch)))
            rows.append((label, "scoring pass" + " (padding)" * padded, encoder.trace_scoring(len(batch)), real))
    return rows


def _pair_item(reward, length: int, prompt: int) -> dict:
    """One pair encoding of `length` tokens as the encoder's tokenizer frames a (prompt, response) pair."""
    response = length - prompt - 3
    tokenizer = reward.tokenizer
    ids = [tokenizer.cls_token_id] + [5] * prompt + [tokenizer.sep_token_id] + [6] * response + [tokenizer.sep_token_id]
    item = {"input_ids": ids, "attention_mask": [1] * length}
    if reward.model.config.type_vocab_size > 1:
        item["token_type_ids"] = [0] * (prompt + 2) + [1] * (response + 1)
    return item


def table(title: str, rows: list[tuple], unit: int, name: str) -> str:
    lines = [f"{title}", f"| model | what | planned {name} | measured {name} | error |", "|---|---|---|---|---|"]
    for model, what, planned, measured in rows:
        lines.append(f"| {model} | {what} | {planned / unit:.2f} | {measured / unit:.2f} | "
                     f"{(planned - measured) / measured:+.1%} |")
    return "\n".join(lines)


def main(parts: list[str]) -> None:
    parts = parts or ["t5", "causal", "encoder", "gpu"]
    if "t5" in parts:
        print(table("CPU, T5 (this machine; real steps, tensor bytes counted)", cpu_rows(), MIB, "MiB"))
        print()
    if "causal" in parts:
        print(table("CPU, decoder-only (this machine; real steps, tensor bytes counted)", causal_cpu_rows(), MIB,
                    "MiB"))
        print()
    if "encoder" in parts:
        print(table("CPU, the reward model on its own encoder (this machine; real steps, tensor bytes counted)",
                    encoder_cpu_rows(), MIB, "MiB"))
        print()
    if "gpu" in parts:
        print(table("GPU (H200, measured by benchmarks/gpu.py; peak of the whole process's tensors)", gpu_rows(), GIB,
                    "GiB"))


if __name__ == "__main__":
    main(sys.argv[1:])
