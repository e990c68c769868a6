"""How much GPU memory each stage of a recipe will need, from the model's config alone (no weights read).

Per stage, the peak is the sum of what is held at that moment:
  base        the base's weights as quantized: int8 (+ fp32 row scales) or NF4 (+ block scales) for the
              linear layers bitsandbytes converts (those transformers does not keep out: the LM head, T5's `wo`);
              embeddings, lm_head, norms and the rest in the compute dtype. Read off the model itself, built
              from its config on the meta device, so any family (T5, Llama, Qwen2, GPT-2) plans by one path
  adapters    the LoRA roles that exist in that stage (fp32), and their scalar heads
  reward model  a reward model on its own encoder (`reward.model`), in the stages that hold the reward role:
              its weights as held (unquantized below 1B parameters unless reward.quantization says otherwise)
              and its LoRA adapter; the `reward` role is then no adapter on the base. Its training step is the
              reward stage's step; its scoring pass (no gradients) one of the rollout's frozen passes
  step        one training step of the stage, traced on PyTorch's meta device through lorahf's own code
              (`sft.response_loss`, the reward's scores and loss on the base or through `EncoderReward.forward`,
              PPO's policy + value minibatch pass): activations kept for backward, their gradients, the trained
              weights' gradients (adapters, or every weight of a fully fine-tuned encoder) and AdamW's two
              states. On a GPU, attention is modelled as PyTorch's memory-efficient kernel (it keeps q, k, v,
              the bias mask, the output and the log-sum-exp, never the full attention matrix).
  rollout     PPO and evaluation: generation's key/value caches (T5: self-attention over the response and
              cross-attention over the prompt; a decoder-only model: one cache over prompt + response, its
              key/value heads only), an encoder-decoder's encoder outputs kept for the update, the sampled
              tokens' logits, and the largest frozen forward pass (a role reading the whole batch of prompts and
              responses, without gradients).
Validated against measured peaks in BENCHMARKS.md ("Memory planner").
"""

from __future__ import annotations

import copy
import json
import weakref
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lorahf.errors import LorahfError
from lorahf.roles import REWARD, SCORING, lora_settings_of
from lorahf.stages import registry

GIB = 2 ** 30
FP32 = 4
REWARD_MODEL = "reward model"  # the part a reward model on its own encoder holds: its weights (and LoRA adapter)
MERGED_COPY = "merged copy"  # ppo.rollout_weights merged: the unquantized copy of the base rollouts are sampled from


@dataclass
class StageMemory:
    stage: str
    parts: dict[str, int] = field(default_factory=dict)  # what is held at the peak, in bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())


# --------------------------------------------------------------------------------------------- entry
def plan(recipe, device: str = "cuda", padded: bool = True, exact: bool = False) -> list[StageMemory]:
    """The peak memory of every stage of `recipe` on `device` ("cuda" or "cpu"). `padded`: batches hold
    prompts of several lengths, so attention needs a padding mask (real data; False: all the same length)."""
    from lorahf.backbone import quiet_libraries

    quiet_libraries()
    config = model_config(recipe.model.name, recipe.model.make_tiny_from, recipe.model.make_tiny_family)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    held = {stage: registry.held_roles(recipe, stage) for stage in recipe.stages}
    # The reward role, where a stage holds it, may be a reward model on its own encoder beside the base instead of an
    # adapter on it: loaded by the reward stage, or by the first later stage that reads the run's reward model.
    on_encoder = recipe.reward is not None and recipe.reward.model is not None and any(REWARD in roles
                                                                                      for roles in held.values())
    encoder = RewardEncoder(recipe, dtype, device, padded) if on_encoder else None
    shape = Shape(config, dtype, device, padded, encoder)
    base = base_bytes(config, recipe.model.quantization, dtype)

    def traced(measure) -> int:
        return by_layers(config, lambda layers: measure(Shape(layers, dtype, device, padded, encoder)), exact)

    plans = []
    for stage in recipe.stages:
        adapters = [role for role in held[stage] if not (encoder and role == REWARD)]
        parts = {"base": base,
                 "adapters": sum(shape.lora_bytes(getattr(recipe.lora, lora_settings_of(role))) for role in adapters)}
        if encoder and REWARD in held[stage]:
            parts[REWARD_MODEL] = encoder.weight_bytes()
        parts.update(registry.get(stage).function("plan_memory")(shape, recipe, traced))
        plans.append(StageMemory(stage, parts))
    return plans


def by_layers(config, measure, exact: bool = False) -> int:
    """`measure(config)` of a training step for a deep model, from traces of shallow copies of it: every block
    after the first allocates the same, and a training step keeps every block's activations for the backward
    pass, so its peak grows by a fixed amount per block of each stack (T5: encoder and decoder; a decoder-only
    model: its one stack; tests/test_plan.py checks this against full traces). Not for passes without gradients:
    their peak is the largest of several moments, one growing with depth (the caches), others not (the logits).
    `exact`: trace the model itself (also when it is no deeper than the shallow copies together)."""
    stacks = depths(config)
    shallow_blocks = (len(stacks) + 1) * 2 * len(stacks) + len(stacks)  # T5: 14 blocks in 3 traces; a decoder: 5 in 2
    if exact or sum(stacks.values()) <= shallow_blocks:
        return measure(config)
    return extrapolated(config, measure)


def extrapolated(config, measure) -> int:
    """`measure` of the config's depth, from a copy with 2 blocks in every stack and, per stack, one with 3."""
    stacks = depths(config)
    two = measure(with_depths(config, {name: 2 for name in stacks}))
    total = two
    for name, depth in stacks.items():
        per_block = measure(with_depths(config, {**{other: 2 for other in stacks}, name: 3})) - two
        total += per_block * (depth - 2)
    return total


def depths(config) -> dict[str, int]:
    """The depth of each stack of blocks, by the config field that sets it."""
    if getattr(config, "is_encoder_decoder", False):
        return {"num_layers": config.num_layers, "num_decoder_layers": config.num_decoder_layers}
    return {"num_hidden_layers": config.num_hidden_layers}  # GPT-2's n_layer too (transformers maps the name)


def with_depths(config, stacks: dict[str, int]):
    """A copy of `config` with other depths; a per-layer list (Qwen2's `layer_types`) is cut to match."""
    shallow = copy.deepcopy(config)
    for name, depth in stacks.items():
        setattr(shallow, name, depth)
    if isinstance(getattr(shallow, "layer_types", None), list) and "num_hidden_layers" in stacks:
        shallow.layer_types = (shallow.layer_types * stacks["num_hidden_layers"])[:stacks["num_hidden_layers"]]
    return shallow


# The public dimensions of google/flan-t5-*, so that their recipes plan without a hub (config.json on the hub).
FLAN_T5 = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
           "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}
# The same for the decoder-only bases of the shipped recipes (their config.json on the hub; an -Instruct model has
# its base's): model type, hidden size, SwiGLU width, layers, attention heads, key/value heads, vocabulary, tied head.
CAUSAL = {"HuggingFaceTB/SmolLM2-135M": ("llama", 576, 1536, 30, 9, 3, 49152, True),
          "HuggingFaceTB/SmolLM2-360M": ("llama", 960, 2560, 32, 15, 5, 49152, True),
          "HuggingFaceTB/SmolLM2-1.7B": ("llama", 2048, 8192, 24, 32, 32, 49152, True),
          "Qwen/Qwen2.5-0.5B": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
          "Qwen/Qwen2.5-1.5B": ("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
          "Qwen/Qwen2.5-7B": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False)}


def model_config(name: str, make_tiny_from: str | None = None, make_tiny_family: str = "seq2seq"):
    """The config of a local folder, a cached hub id, one of google/flan-t5-*'s or `CAUSAL`'s (known without a
    hub), or, when `make_tiny_from` is set and `name` does not exist yet, of the tiny base the first run will build
    there. Any other name fails at once, as `lorahf run` does, instead of after the hub client's retries."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    from lorahf.backbone import check_folder

    local = Path(name).exists()
    if make_tiny_from and not local:
        from lorahf import tiny

        # make_tiny sizes the model to its tokenizer, trained on make_tiny_from's text: BPE stops short of
        # the spec's vocab_size when that text holds fewer merges, and the plan is then a few kB too large.
        return tiny.config_of(tiny.spec_for(make_tiny_family))
    published = None if local else published_config(name)
    if published is None:
        check_folder(name)  # a folder without config.json, or a hub id neither cached nor reachable: one line
    # A hub id's config in the cache is read from there (asking the hub for a newer one costs its retries
    # offline); a published one not in the cache comes from FLAN_T5 or CAUSAL.
    from_cache = not local and (published is not None or isinstance(try_to_load_from_cache(name, "config.json"), str))
    try:
        return AutoConfig.from_pretrained(name, local_files_only=from_cache)
    except Exception as error:  # noqa: BLE001 - a missing or broken config, in one line
        if published is not None:
            return published
        raise LorahfError(f"{name}: cannot read the model's config ({str(error).splitlines()[0]})",
                          hint="give a local folder, or a hub id whose config is in the cache") from None


def published_config(name: str):
    """The config of google/flan-t5-SIZE or of a `CAUSAL` base (or its -Instruct), from the tables; None otherwise."""
    from transformers import AutoConfig, T5Config

    size = name.removeprefix("google/flan-t5-")
    if name.startswith("google/flan-t5-") and size in FLAN_T5:
        d_model, d_ff, layers, heads = FLAN_T5[size]
        return T5Config(vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=64, num_heads=heads, num_layers=layers,
                        num_decoder_layers=layers, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    dims = CAUSAL.get(name.removesuffix("-Instruct"))
    if dims is None:
        return None
    model_type, hidden, intermediate, layers, heads, kv_heads, vocabulary, tied = dims
    return AutoConfig.for_model(model_type, hidden_size=hidden, intermediate_size=intermediate,
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                head_dim=hidden // heads, vocab_size=vocabulary, tie_word_embeddings=tied)


# ----------------------------------------------------------------------------------------- weights
def base_bytes(config, quantization: str, dtype: torch.dtype, tied: bool | None = None) -> int:
    """The base's weights as `Backbone.load` holds them, read off the model built on the meta device (`held_bytes`).
    `tied`: count lm_head as sharing the embedding matrix or not, whatever the config says (None: as built;
    T5 ties it unless the config leaves decoder outputs unscaled, as Flan-T5 and T5 v1.1 do)."""
    model = meta_model(config, dtype)
    kept = held_bytes(model, quantization, quantized_linears(model) if quantization in ("8bit", "4bit") else {})
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if tied is None and getattr(config, "is_encoder_decoder", False):
        tied = getattr(config, "scale_decoder_outputs", True)
    built_tied = head is not None and head.weight is embeddings.weight
    if tied is not None and tied != built_tied:
        kept += _bytes(embeddings.weight) * (1 if not tied else -1)
    return kept


def held_bytes(model, quantization: str, quantized: dict[str, torch.nn.Module]) -> int:
    """A model's parameters and buffers as loaded: the linear layers bitsandbytes converts (`quantized`) as int8 + an
    fp32 scale per output row, or NF4 + its block scales; every other parameter and buffer (embeddings, lm_head,
    norms, T5's `wo`, biases, LoRA weights) as built."""
    converted = {id(module.weight) for module in quantized.values()}
    weights = sum(module.weight.numel() for module in quantized.values())
    rows = sum(_in_out(module)[1] for module in quantized.values())
    if quantization == "8bit":
        linear_bytes = weights + FP32 * rows  # int8 weights + one fp32 scale per output row
    elif quantization == "4bit":
        blocks = weights // 64  # NF4: 4 bits a weight, one 8-bit scale per block of 64 (double quantization)
        linear_bytes = weights // 2 + blocks + FP32 * (blocks // 256 + 1)
    else:
        linear_bytes = 0
    return linear_bytes + sum(_bytes(t) for t in list(model.parameters()) + list(model.buffers())
                              if id(t) not in converted)


def meta_model(config, dtype: torch.dtype):
    """The config's model, as its family's auto class builds it, on the meta device (no memory)."""
    from lorahf.families import family_of

    family = family_of(config)
    if family is None:
        raise LorahfError(f"{config.model_type}: lorahf plans encoder-decoder (T5) and decoder-only (Llama, Qwen, "
                          "GPT) language models")
    with torch.device("meta"):
        return family.auto_class().from_config(config, dtype=dtype)


def quantized_linears(model) -> dict[str, torch.nn.Module]:
    """The layers bitsandbytes converts when transformers loads `model` in 8 or 4 bits, as transformers picks them:
    every plain nn.Linear (and GPT-2's Conv1D) except the modules it keeps out (the output embeddings, tied
    weights, the last parameter's module, the model's `_keep_in_fp32_modules` such as T5's `wo`)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skipped = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    return {name: module for name, module in model.named_modules()
            if (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skipped)}


def _in_out(module) -> tuple[int, int]:
    from transformers.pytorch_utils import Conv1D

    return tuple(module.weight.shape) if isinstance(module, Conv1D) else (module.in_features, module.out_features)


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def cache_dims(config) -> tuple[int, int]:
    """(layers, width) of generation's key/value cache: each layer keeps a key and a value of `width` per token
    (T5: its heads over the response, and again over the prompt for cross-attention; a decoder-only model: its
    key/value heads, fewer than its query heads under grouped-query attention, over prompt + response)."""
    if getattr(config, "is_encoder_decoder", False):
        return config.num_decoder_layers, config.num_heads * config.d_kv
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads * head_dim


# ------------------------------------------------------------------------------------- meta tracing
class Shape:
    """The model's shape on the meta device, to trace what a step allocates."""

    def __init__(self, config, dtype: torch.dtype, device: str, padded: bool = True,
                 reward_model: RewardEncoder | None = None):
        self.config, self.dtype, self.device, self.padded = config, dtype, device, padded
        self.reward_model = reward_model  # `reward.model`: the reward stage trains it, PPO scores with it
        self.size = torch.tensor([], dtype=dtype).element_size()
        self.encoder_decoder = getattr(config, "is_encoder_decoder", False)  # else: no encoder states to keep
        self._lora_widths: dict[tuple, int] = {}

    def lora_bytes(self, lora) -> int:
        """An adapter's fp32 weights: r x (in + out) for every layer peft targets, found as `Backbone.add_adapter`
        finds them (names, or all-linear: every linear of the blocks, never the LM head), on the meta model."""
        targets = lora.target_modules if isinstance(lora.target_modules, str) else tuple(lora.target_modules)
        if targets not in self._lora_widths:
            from types import SimpleNamespace

            from lorahf.backbone import Backbone

            backbone = Backbone(meta_model(self.config, self.dtype), _Tokens(), "plan", "none", torch.device("meta"))
            with torch.device("meta"):
                backbone.add_adapter("plan", SimpleNamespace(r=1, alpha=1, dropout=0.0,
                                                             target_modules=lora.target_modules))
            self._lora_widths[targets] = backbone.memory_report().adapter_bytes["plan"] // FP32
        return lora.r * self._lora_widths[targets] * FP32

    @contextmanager
    def backbone(self, recipe, roles: tuple[str, ...], heads: tuple[str, ...] = ()):
        """A Backbone of the config's model on the meta device (no memory), with `roles` as adapters."""
        from lorahf.backbone import Backbone, ScalarHead

        model = meta_model(self.config, self.dtype)
        _use_planned_attention(model, self.device, self.padded)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if getattr(recipe.model, "quantization", "none") == "8bit":
            _as_int8(quantized_linears(model))
        if recipe.model.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        backbone = Backbone(model, _Tokens(), recipe.model.name, "none", torch.device("meta"))
        with torch.device("meta"):
            for role in roles:
                backbone.add_adapter(role, getattr(recipe.lora, lora_settings_of(role)))
        for role in heads:
            likelihood = role == REWARD and getattr(getattr(recipe, "reward", None), "likelihood_term", False)
            head = ScalarHead(self.config.hidden_size).to("meta")
            head._buffers.update(offset=torch.zeros(()), likelihood=torch.tensor(likelihood))  # read as numbers
            backbone.heads[role] = head
        with _kernels_of(self.device):
            yield backbone

    def trace_step(self, recipe, role: str, loss, head: bool = False) -> int:
        """One training step of `role`'s adapter (and head), in train mode: `loss(backbone)` is the stage's own
        loss function on a batch it builds, traced through its backward pass and AdamW's states."""
        with self.backbone(recipe, (role,), heads=(role,) if head else ()) as backbone:
            backbone.use(role).set_trainable(role)
            parameters = backbone.parameters(role)
            backbone.model.train()
            return _peak(lambda: _train_step(loss(backbone), parameters))

    def trace_sft(self, recipe, batch_size: int) -> int:
        """One SFT step: the stage's own loss (`sft.response_loss`)."""
        from lorahf.roles import SFT
        from lorahf.stages.sft import response_loss

        batch = self.batch(batch_size, recipe.max_prompt_tokens, recipe.max_response_tokens)
        return self.trace_step(recipe, SFT, lambda backbone: response_loss(backbone, batch))

    def trace_reward(self, recipe, sequences: int) -> int:
        """One reward step on `sequences` responses, two to a prompt (pairwise preferences): the stage's own
        scoring and loss (`reward.score_responses`, `reward.group_loss`), the batch collated inside as there; the
        reward adapter on this base, or the reward model on its own encoder (`RewardEncoder.trace_step`)."""
        from lorahf.reward_model import SharedReward
        from lorahf.stages.reward import group_loss, score_responses

        if self.reward_model is not None:
            return self.reward_model.trace_step(recipe, sequences)
        item = ([0] * recipe.max_prompt_tokens, [0] * recipe.max_response_tokens)
        groups, prompts = _pairs(item, sequences)
        return self.trace_step(recipe, REWARD, lambda backbone: group_loss(
            score_responses(SharedReward(backbone, recipe), groups, prompts), groups.pairs,
            recipe.reward.margin), head=True)

    def trace_ppo_update(self, recipe, rows: int, batch_size: int) -> int:
        """One micro-batch of the PPO update (policy and value rows in one pass, an encoder-decoder's encoder outputs
        reused: the update's own `policy_and_values`; the policy alone with a critic-free advantage), plus what the
        rollout keeps for the update (those encoder outputs; a decoder-only model keeps none). The losses on top are
        a few [B, R] tensors; `update._loss_and_backward` itself reads numbers (`.item()`), which meta tensors do
        not have."""
        from lorahf.ppo.update import policy_and_values

        trained = recipe.ppo.trained_roles
        heads = tuple(role for role in trained if role in SCORING)
        with self.backbone(recipe, trained, heads=heads) as backbone:
            backbone.set_trainable(*trained)
            parameters = [p for role in trained for p in backbone.parameters(role)]
            backbone.model.eval()
            batch = self.batch(rows, recipe.max_prompt_tokens, recipe.max_response_tokens)
            width = self.config.hidden_size * self.encoder_decoder
            kept = len(trained) * batch_size * recipe.max_prompt_tokens * width * self.size

            def step():
                states = torch.empty(len(trained) * rows, recipe.max_prompt_tokens, width, dtype=self.dtype,
                                     device="meta") if self.encoder_decoder else None
                logprobs, values = policy_and_values(backbone, batch, states, recipe.ppo.temperature,
                                                     recipe.ppo.critic)
                _train_step(logprobs.sum() + (0 if values is None else values.sum()), parameters)
            return kept + _peak(step)

    def rollout_bytes(self, batch: int, prompt: int, response: int, keep_encoder_states: bool,
                      keep_logits: bool, critic: bool = True) -> int:
        """Generation's caches and kept tensors, plus the largest frozen pass over the batch (traced). Kept encoder
        states: the policy's, and the value model's with a `critic`, besides the one being read."""
        config, size = self.config, self.size
        layers, width = cache_dims(config)
        cache = 2 * layers * batch * width * (response + prompt) * size  # a key and a value a token, every layer
        encoder = batch * prompt * config.hidden_size * size * (1 + (1 + critic) * keep_encoder_states) * self.encoder_decoder
        logits = batch * response * config.vocab_size * FP32 * (2 if keep_logits else 1)
        return cache + encoder + logits + self._frozen_pass(batch, prompt, response)

    def _frozen_pass(self, batch: int, prompt: int, response: int) -> int:
        """The largest pass without gradients over the batch: a role on the base reading it, or (it runs at another
        moment) the reward model on its own encoder scoring it, `SCORE_BATCH` answers at a time."""
        from types import SimpleNamespace

        from lorahf.reward_model import SCORE_BATCH

        recipe = SimpleNamespace(model=SimpleNamespace(name="plan", gradient_checkpointing=False),
                                 lora=SimpleNamespace(reward=_PlainLora(self.encoder_decoder)))
        with self.backbone(recipe, (REWARD,), heads=(REWARD,)) as backbone:
            backbone.use(REWARD).model.eval()
            data = self.batch(batch, prompt, response)

            def read():
                with torch.no_grad():
                    backbone.sequence_scores(data)
            on_base = _peak(read)
        if self.reward_model is None:
            return on_base
        return max(on_base, self.reward_model.trace_scoring(min(batch, SCORE_BATCH)))

    def batch(self, rows: int, prompt: int, response: int):
        from lorahf.data import Seq2SeqBatch

        ids = torch.zeros(rows, prompt, dtype=torch.long, device="meta")
        responses = torch.zeros(rows, response, dtype=torch.long, device="meta")
        return Seq2SeqBatch(ids, torch.ones_like(ids), responses, torch.ones_like(responses),
                            torch.full((rows,), response, dtype=torch.long, device="meta"))


class RewardEncoder:
    """The reward model on its own encoder (`reward.model`: lorahf.reward_model.EncoderReward, a one-label sequence
    classifier beside the base) on the meta device: its weights as held, and its passes traced through
    `EncoderReward.forward`, the reward stage's own scoring and loss."""

    def __init__(self, recipe, dtype: torch.dtype, device: str, padded: bool = True):
        from lorahf.reward_model import check_classifier, resolve_quantization

        spec = recipe.reward
        self.tuning = "none" if not spec.train else "full" if spec.full_finetune else "lora"  # as EncoderReward.load
        try:
            config = copy.deepcopy(model_config(spec.model, spec.make_tiny_from, "encoder"))
        except LorahfError as error:
            raise LorahfError(f"reward.model {error.message}", hint=error.hint) from None
        check_classifier(spec.model, config, trained=self.tuning == "none")
        config.num_labels = 1  # EncoderReward.load asks for one label
        self.config, self.dtype, self.device, self.padded = config, dtype, device, padded
        self.name, self.lora = spec.model, recipe.lora.reward
        self.quantization = resolve_quantization(spec.quantization, config, recipe.model.quantization)
        # The planning length of a (prompt, response) pair, in the encoder's tokens: the base's limits on both
        # and 3 special tokens ([CLS] prompt [SEP] response [SEP]), capped by the encoder's position table
        # (EncoderReward cuts pairs there). An estimate: the encoder tokenizes the texts itself, and nothing
        # cuts a prompt at max_prompt_tokens of its own tokens.
        positions = getattr(config, "max_position_embeddings", None) or 512
        self.length = min(recipe.max_prompt_tokens + recipe.max_response_tokens + 3, positions)
        self._peaks: dict = {}  # what was traced; a base's shallow copies all ask for the same step

    def weight_bytes(self) -> int:
        """Its weights as held (int8 or NF4 where quantized) with its LoRA adapter: `EncoderReward.memory_bytes`."""
        if "weights" not in self._peaks:
            model, quantized = self._model()
            self._peaks["weights"] = held_bytes(model, self.quantization, quantized)
        return self._peaks["weights"]

    def trace_step(self, recipe, sequences: int) -> int:
        """One training step on `sequences` answers, two to a prompt: `reward.score_responses` and `reward.group_loss`
        through `EncoderReward.forward`, its backward pass and AdamW's states (LoRA: the adapter's and the
        classifier's; full: every weight's). Used as given (`train: false`), the stage only scores: held-out pairs
        `sequences` at a time, its centring answers `reward.SCORE_BATCH` at a time."""
        from lorahf.stages.reward import SCORE_BATCH, group_loss, score_responses

        if self.tuning == "none":
            return self.trace_scoring(max(sequences, SCORE_BATCH))
        key = ("step", sequences)
        if key not in self._peaks:
            groups, prompts = _pairs(self._item(), sequences)
            with self.reward() as reward:
                reward.set_trainable(REWARD)
                reward.model.train()
                parameters = reward.parameters(REWARD)
                self._peaks[key] = _peak(lambda: _train_step(group_loss(
                    score_responses(reward, groups, prompts), groups.pairs, recipe.reward.margin), parameters))
        return self._peaks[key]

    def trace_scoring(self, rows: int) -> int:
        """`EncoderReward.score_items` over `rows` answers in one batch (eval mode, no gradients): PPO's scorer."""
        key = ("scoring", rows)
        if key not in self._peaks:
            with self.reward() as reward:
                self._peaks[key] = _peak(lambda: reward.score_items([self._item()] * rows, rows))
        return self._peaks[key]

    @contextmanager
    def reward(self):
        """An EncoderReward of the encoder on the meta device, built as `EncoderReward.load` builds it."""
        from lorahf.reward_model import EncoderReward

        model, quantized = self._model()
        if self.quantization == "8bit":
            _as_int8(quantized)
        with _kernels_of(self.device):
            yield EncoderReward(model, _PairTokens(), self.name, self.tuning, torch.device("meta"), self.quantization)

    def _model(self):
        """The classifier on the meta device as loaded (its attention as planned, LoRA added for tuning lora), and
        its layers bitsandbytes converts when quantized."""
        from transformers import AutoModelForSequenceClassification

        from lorahf.reward_model import CLASSIFIER_MODULES, with_lora

        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(self.config, dtype=self.dtype)
        _use_planned_attention(model, self.device, self.padded)
        quantized = {name: module for name, module in quantized_linears(model).items()  # the head stays unquantized
                     if name.split(".")[0] not in CLASSIFIER_MODULES} if self.quantization in ("8bit", "4bit") else {}
        for parameter in model.parameters():
            parameter.requires_grad_(self.tuning == "full")
        if self.tuning == "lora":
            with torch.device("meta"):
                model = with_lora(model, self.lora, None)
        return model, quantized

    def _item(self) -> dict[str, list[int]]:
        """One pair encoding of the planning length, as the encoder's tokenizer gives it (what `_PairTokens` pads)."""
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if getattr(self.config, "type_vocab_size", 0) > 1
                                                  else [])  # BERT marks the response with token type 1; RoBERTa not
        return {key: [0] * self.length for key in keys}


def _pairs(item, sequences: int):
    """`sequences` answers as pairwise preferences, two to a prompt (the data's shape is known only once its files
    are read): the reward stage's Groups of `item`, and the indices of its prompts."""
    from lorahf.stages.reward import Groups

    prompts = sequences // 2
    return Groups([[item] * 2] * prompts, [[(0, 1)]] * prompts), list(range(prompts))


class _Tokens:
    """What a Backbone reads of its tokenizer while tracing."""

    pad_token_id, eos_token_id = 0, 1


class _PairTokens:
    """What an EncoderReward reads of its tokenizer while tracing: `pad` makes the batch's tensors on the meta device."""

    model_max_length = None

    @staticmethod
    def pad(items, return_tensors: str = "pt"):
        from transformers import BatchEncoding

        length = max(len(item["input_ids"]) for item in items)
        return BatchEncoding({key: torch.zeros(len(items), length, dtype=torch.long, device="meta")
                              for key in items[0]})


class _PlainLora:
    """LoRA settings for a frozen pass: its memory does not depend on them beyond a few MB (T5: q and v, as
    planned before the causal family; other models: all-linear)."""

    r, alpha, dropout = 16, 32, 0.0

    def __init__(self, encoder_decoder: bool):
        self.target_modules = ["q", "v"] if encoder_decoder else "all-linear"


def _train_step(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> None:
    loss.backward()
    for parameter in parameters:  # AdamW's two states, made at the first step (torch: of each parameter's dtype)
        if parameter.grad is not None:
            parameter.exp_avg = torch.zeros_like(parameter)
            parameter.exp_avg_sq = torch.zeros_like(parameter)


def _peak(step) -> int:
    """Peak bytes of the tensors `step` creates (meta tensors: no memory is used, their sizes are counted)."""
    with _LiveBytes() as tracker:
        step()
    return tracker.peak


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage created inside, until it is freed; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._seen and key not in inputs:  # a view or in-place result allocates nothing
                    size = storage.nbytes()
                    self._seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
        return out


# ------------------------------------------------------------------------------ kernels as they run
class _KeepsInput(torch.autograd.Function):
    """bitsandbytes' int8 matmul (MatMul8bitLt on a GPU, MatMul8bitFp on the CPU) keeps its input for
    backward in an attribute of its context, where gradient checkpointing cannot drop it."""

    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.kept = input
        return torch.nn.functional.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(ctx.kept), None, None


def _int8_linear(module, input):
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.t() if isinstance(module, Conv1D) else module.weight  # GPT-2's Conv1D holds [in, out]
    if not input.requires_grad:
        return torch.nn.functional.linear(input, weight, module.bias)
    return _KeepsInput.apply(input, weight, module.bias)



def _as_int8(quantized: dict[str, torch.nn.Module]) -> None:
    """The layers bitsandbytes converts to int8 run as `_int8_linear` (what its matmul keeps for backward)."""
    for module in quantized.values():
        module.forward = partial(_int8_linear, module)


def _use_planned_attention(model, device: str, padded: bool) -> None:
    """On a GPU, sdpa runs the memory-efficient kernel (modelled); on the CPU, PyTorch's own sdpa (traced, its flash
    kernel called by name where the CPU runs it). `padded`: batches need a padding mask."""
    _register_planned_attention()
    attention = ("lorahf_planned" if device == "cuda" else "lorahf_sdpa") + ("" if padded else "_full")
    for module in model.modules():  # T5's encoder and decoder stacks hold their own copies of the config
        if hasattr(module, "config"):
            module.config._attn_implementation = attention


@contextmanager
def _kernels_of(device: str):
    """Inside, dropout keeps what it keeps on `device`: on a GPU a fused kernel's 1-byte mask (`_fused_dropout`)."""
    if device != "cuda":
        yield
        return
    dropout = torch.nn.functional.dropout
    torch.nn.functional.dropout = _fused_dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = dropout


def _fused_dropout(input, p=0.5, training=True, inplace=False):
    """On a GPU, dropout is one fused kernel that keeps a boolean mask for backward; elsewhere (the meta
    device too) it multiplies by a mask of the input's dtype, 2 to 4 times larger."""
    if not training or p == 0 or p == 1:
        return input
    return torch.native_dropout(input, p, True)[0]



class _EfficientAttention(torch.autograd.Function):
    """What PyTorch's memory-efficient attention keeps for backward (q, k, v, bias, output, log-sum-exp),
    without computing attention: the output is only shaped."""

    @staticmethod
    def forward(ctx, query, key, value, bias):
        output = torch.empty_like(query)
        logsumexp = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
        ctx.save_for_backward(query, key, value, bias, output, logsumexp)
        return output

    @staticmethod
    def backward(ctx, grad):
        query, key, value, bias, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), None


def _planned_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       position_bias=None, **kwargs):
    """What transformers' sdpa path hands the kernel: T5's position bias merged into the mask; grouped-query
    key/value heads repeated unless sdpa can take them grouped (no mask); a boolean mask made additive in the
    query's dtype, as PyTorch's sdpa does before the memory-efficient kernel, which keeps it for backward."""
    from transformers.integrations.sdpa_attention import create_position_bias_mask, repeat_kv, use_gqa_in_sdpa

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not use_gqa_in_sdpa(attention_mask, key, value):
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if position_bias is not None:
        bias = create_position_bias_mask(position_bias, attention_mask, bool(is_causal), query, key)
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
    else:
        bias = attention_mask
    output = _EfficientAttention.apply(query, key, value, bias)
    return output.transpose(1, 2).contiguous(), None


def _cpu_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                   position_bias=None, **kwargs):
    """transformers' sdpa path as it runs on the CPU. Without dropout, PyTorch's CPU sdpa runs its flash kernel (it
    keeps the output and the log-sum-exp, and reads grouped key/value heads as they are), where the meta device
    would run the math kernel (the attention matrix, kept): called here by name; T5's position bias is its additive
    mask. With dropout, or a mask that needs a gradient (T5's bias under gradient checkpointing), the CPU runs the
    math kernel: transformers' own sdpa, traced as it is."""
    from transformers.integrations.sdpa_attention import (create_position_bias_mask, repeat_kv,
                                                          sdpa_attention_forward, use_gqa_in_sdpa)

    if dropout or (position_bias is not None and position_bias.requires_grad):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                      position_bias=position_bias, **kwargs)
    if position_bias is not None:
        attention_mask = create_position_bias_mask(position_bias, attention_mask, bool(is_causal), query, key)
        is_causal = False
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not use_gqa_in_sdpa(attention_mask, key, value):
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa makes a boolean mask additive
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
    output = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal,
                                                                        attn_mask=attention_mask, scale=scaling)[0]
    return output.transpose(1, 2).contiguous(), None


def _register_planned_attention() -> None:
    """Two names for the same attention: batches with padding (a mask per batch, made in every layer) and
    batches without (no mask: sdpa skips it), each with the mask function transformers' sdpa path uses."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def padded_mask(**kwargs):
        return sdpa_mask(**{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})

    def full_mask(**kwargs):
        if kwargs.get("allow_is_bidirectional_skip") or kwargs.get("allow_is_causal_skip"):
            return None
        return padded_mask(**kwargs)

    for name, attention in (("lorahf_planned", _planned_attention), ("lorahf_sdpa", _cpu_attention)):
        for suffix, mask in (("", padded_mask), ("_full", full_mask)):
            AttentionInterface.register(name + suffix, attention)
            AttentionMaskInterface.register(name + suffix, mask)


# ------------------------------------------------------------------------------------------ advice
CUDA_CONTEXT = GIB // 2  # CUDA's own context and kernels: outside PyTorch's allocator, not in a prediction
MARGIN = 1.10  # predictions came within -14 % .. +12 % of measured peaks (BENCHMARKS.md): plan 10 % above them


def needed(stage: StageMemory) -> int:
    """What a card must have for `stage`: the prediction, its margin, and CUDA's context."""
    return int(stage.total * MARGIN) + CUDA_CONTEXT


def parse_memory(text: str) -> int:
    """'12GiB', '24 GB', '12g' or '12' (GiB) -> bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m)?\s*", text.lower())
    if not match:
        raise LorahfError(f"--gpu-memory {text!r}: expected a size such as 12GiB, 24GB or 16")
    number, unit = float(match[1]), match[2] or "gib"
    scale = {"gib": GIB, "g": GIB, "gb": 10 ** 9, "mib": 2 ** 20, "m": 2 ** 20, "mb": 10 ** 6}[unit]
    return int(number * scale)


def advise(recipe, stage: StageMemory, budget: int, device: str = "cuda", padded: bool = True) -> str | None:
    """The first single setting that makes `stage` fit `budget` (see `needed`), as 'key: value (-> X GiB)'."""
    from lorahf import recipe as recipes

    raw = recipe.model_dump(mode="json")
    for key, how in registry.get(stage.stage).levers:
        for value in _candidates(raw, key, how):
            changed = _with(raw, key, value)
            if changed["stages"] != [stage.stage]:
                changed["stages"] = [s for s in changed["stages"] if s == stage.stage] or [stage.stage]
            try:
                trial = recipes.validate(changed)
            except LorahfError:
                continue
            planned = plan(trial, device, padded)[0]
            if needed(planned) <= budget:
                return f"{key}: {json.dumps(value)} (-> {planned.total / GIB:.1f} GiB)"
    return None


def _candidates(raw: dict, key: str, how: str) -> list:
    current = _get(raw, key)
    if how == "on":
        return [] if current else [True]
    if how == "4bit":
        return [] if current in ("4bit",) else ["4bit"]
    if key == "ppo.micro_batch_size" and current is None:
        current = _get(raw, "ppo.minibatch_size")
    if how == "halve":
        values, value = [], int(current)
        while value > 1:
            value //= 2
            values.append(value)
        return values
    if how == "shorten":
        return [length for length in (384, 256, 192, 128) if length < current]
    return []


def _get(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _with(raw: dict, key: str, value) -> dict:
    changed = copy.deepcopy(raw)
    node = changed
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return changed
