"""How much GPU memory each stage of a recipe will need, from the model's config alone (no weights read).

Per stage, the peak is the sum of what is held at that moment:
  base        the base's weights as quantized: int8 (+ fp32 row scales) or NF4 (+ block scales) for the
              linear layers of the T5 blocks; embeddings, lm_head and norms in the compute dtype
  adapters    the LoRA roles that exist in that stage (fp32), and their scalar heads
  step        one training step of the stage, traced on PyTorch's meta device through lorahf's own code
              (`sft.response_loss`, the reward's scores and loss, PPO's policy + value minibatch pass):
              activations kept for backward, their gradients, the adapters' gradients and AdamW's two
              states. On a GPU, attention is modelled as PyTorch's memory-efficient kernel (it keeps q, k, v,
              the bias mask, the output and the log-sum-exp, never the full attention matrix).
  rollout     PPO and evaluation: generation's key/value caches (self-attention and cross-attention),
              the encoder outputs kept for the update, the sampled tokens' logits, and the largest frozen
              forward pass (a role reading the whole batch of prompts and responses, without gradients).
Validated against measured peaks in BENCHMARKS.md ("Memory planner").
"""

from __future__ import annotations

import json
import weakref
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lorahf.errors import LorahfError
from lorahf.roles import REWARD, lora_settings_of
from lorahf.stages import registry

GIB = 2 ** 30
INT8_LINEAR = ("q", "k", "v", "o", "wi", "wi_0", "wi_1")  # T5 block linears bitsandbytes quantizes (not wo)
FP32 = 4


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
    shape = Shape(config, dtype, device, padded)
    base = base_bytes(config, recipe.model.quantization, dtype)

    def traced(measure) -> int:
        return by_layers(config, lambda layers: measure(Shape(layers, dtype, device, padded)), exact)

    plans = []
    for stage in recipe.stages:
        parts = {"base": base,
                 "adapters": sum(shape.lora_bytes(getattr(recipe.lora, lora_settings_of(role)))
                                 for role in registry.held_roles(recipe, stage))}
        parts.update(registry.get(stage).function("plan_memory")(shape, recipe, traced))
        plans.append(StageMemory(stage, parts))
    return plans


def by_layers(config, measure, exact: bool = False) -> int:
    """`measure(config)` of a training step for a deep model, from three traces of shallow copies of it: every T5
    block after the first allocates the same, and a training step keeps every block's activations for the
    backward pass, so its peak grows by a fixed amount per encoder and per decoder block (tests/test_plan.py
    checks this against full traces). Not for passes without gradients: their peak is the largest of several
    moments, one growing with depth (the caches), others not (the logits). `exact`: trace the model itself."""
    if exact or config.num_layers + config.num_decoder_layers <= 14:  # three shallow traces hold 14 blocks
        return measure(config)
    return extrapolated(config, measure)


def extrapolated(config, measure) -> int:
    """`measure` of the config's depth, from copies with 2 and 3 encoder and decoder blocks."""
    encoder, decoder = config.num_layers, config.num_decoder_layers

    def shallow(encoder_layers: int, decoder_layers: int) -> int:
        return measure(type(config).from_dict({**config.to_dict(), "num_layers": encoder_layers,
                                               "num_decoder_layers": decoder_layers}))

    two = shallow(2, 2)
    per_encoder_block, per_decoder_block = shallow(3, 2) - two, shallow(2, 3) - two
    return two + per_encoder_block * (encoder - 2) + per_decoder_block * (decoder - 2)


# The public dimensions of google/flan-t5-*, so that their recipes plan without a hub (config.json on the hub).
FLAN_T5 = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
           "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}


def model_config(name: str, make_tiny_from: str | None = None, make_tiny_family: str = "seq2seq"):
    """The config of a local folder, a cached hub id, one of google/flan-t5-*'s (known without a hub), or,
    when `make_tiny_from` is set and `name` does not exist yet, of the tiny T5 the first run will build there.
    Any other name fails at once, as `lorahf run` does, instead of after the hub client's retries."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig, T5Config

    from lorahf.backbone import check_folder

    local = Path(name).exists()
    if make_tiny_from and not local:
        from lorahf import tiny

        # make_tiny sizes the model to its tokenizer, trained on make_tiny_from's text: BPE stops short of
        # the spec's vocab_size when that text holds fewer merges, and the plan is then a few kB too large.
        return tiny.config_of(tiny.spec_for(make_tiny_family))
    size = name.removeprefix("google/flan-t5-")
    flan = name.startswith("google/flan-t5-") and size in FLAN_T5
    if not flan:
        check_folder(name)  # a folder without config.json, or a hub id neither cached nor reachable: one line
    # A hub id's config in the cache is read from there (asking the hub for a newer one costs its retries
    # offline); a Flan-T5 not in the cache comes from FLAN_T5.
    from_cache = not local and (flan or isinstance(try_to_load_from_cache(name, "config.json"), str))
    try:
        return AutoConfig.from_pretrained(name, local_files_only=from_cache)
    except Exception as error:  # noqa: BLE001 - a missing or broken config, in one line
        if flan:
            d_model, d_ff, layers, heads = FLAN_T5[size]
            return T5Config(vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=64, num_heads=heads, num_layers=layers,
                            num_decoder_layers=layers, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                            relative_attention_num_buckets=32, relative_attention_max_distance=128,
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        raise LorahfError(f"{name}: cannot read the model's config ({str(error).splitlines()[0]})",
                          hint="give a local folder, or a hub id whose config is in the cache") from None


# ----------------------------------------------------------------------------------------- weights
def base_bytes(config, quantization: str, dtype: torch.dtype, tied: bool | None = None) -> int:
    """The base's weights as `Backbone.load` holds them: bitsandbytes quantizes the T5 blocks' linear layers
    except `wo` (T5 keeps it out of quantization: `_keep_in_fp32_modules`); the embeddings, `wo`, lm_head
    and the norms stay in the compute dtype. `tied`: lm_head shares the embedding matrix (None: as T5
    v1.1 and Flan-T5 are, untied, when the config does not scale decoder outputs)."""
    size = torch.tensor([], dtype=dtype).element_size()
    d, ff, inner = config.d_model, config.d_ff, config.num_heads * config.d_kv
    gated = config.is_gated_act if hasattr(config, "is_gated_act") else "gated" in config.feed_forward_proj
    ffn_in = [(d, ff)] * (2 if gated else 1)
    attention = [(d, inner)] * 3 + [(inner, d)]
    quantized = (attention + ffn_in) * config.num_layers + (attention * 2 + ffn_in) * config.num_decoder_layers
    kept = ff * d * (config.num_layers + config.num_decoder_layers)  # every block's wo
    weights = sum(i * o for i, o in quantized)
    rows = sum(o for _, o in quantized)
    if quantization == "8bit":
        linear_bytes = weights + FP32 * rows  # int8 weights + one fp32 scale per output row
    elif quantization == "4bit":
        blocks = weights // 64  # NF4: 4 bits a weight, one 8-bit scale per block of 64 (double quantization)
        linear_bytes = weights // 2 + blocks + FP32 * (blocks // 256 + 1)
    else:
        linear_bytes = weights * size
    if tied is None:
        tied = getattr(config, "scale_decoder_outputs", True)
    embeddings = config.vocab_size * d * (1 if tied else 2)  # shared embedding (+ lm_head)
    norms = d * (2 * config.num_layers + 3 * config.num_decoder_layers + 2)
    bias = 2 * config.relative_attention_num_buckets * config.num_heads
    return linear_bytes + (kept + embeddings + norms + bias) * size


# ------------------------------------------------------------------------------------- meta tracing
class Shape:
    """The model's shape on the meta device, to trace what a step allocates."""

    def __init__(self, config, dtype: torch.dtype, device: str, padded: bool = True):
        self.config, self.dtype, self.device, self.padded = config, dtype, device, padded
        self.size = torch.tensor([], dtype=dtype).element_size()

    def lora_bytes(self, lora) -> int:
        config = self.config
        d, ff, inner = config.d_model, config.d_ff, config.num_heads * config.d_kv
        shapes = {"q": (d, inner), "k": (d, inner), "v": (d, inner), "o": (inner, d), "wi": (d, ff),
                  "wi_0": (d, ff), "wi_1": (d, ff), "wo": (ff, d)}
        targets = lora.target_modules
        if targets == "all-linear":  # peft's every linear of the blocks: T5 v1.1 gates its wi in two
            targets = ["q", "k", "v", "o", "wo", *(["wi_0", "wi_1"] if config.is_gated_act else ["wi"])]
        per_encoder = sum(sum(shapes[t]) for t in targets if t in shapes)
        attention = sum(sum(shapes[t]) for t in targets if t in ("q", "k", "v", "o"))
        per_decoder = per_encoder + attention  # cross-attention has its own q, k, v, o
        return lora.r * (per_encoder * config.num_layers + per_decoder * config.num_decoder_layers) * FP32

    @contextmanager
    def backbone(self, recipe, roles: tuple[str, ...], heads: tuple[str, ...] = ()):
        """A Backbone of the config's model on the meta device (no memory), with `roles` as adapters."""
        from transformers import T5ForConditionalGeneration

        from lorahf.backbone import Backbone, ScalarHead

        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device("meta"):
                model = T5ForConditionalGeneration(self.config)
        finally:
            torch.set_default_dtype(default)
        _register_planned_attention()
        # on a GPU, sdpa runs the memory-efficient kernel (modelled); on the CPU, PyTorch's own sdpa (traced)
        attention = ("lorahf_planned" if self.device == "cuda" else "lorahf_sdpa") + ("" if self.padded else "_full")
        for module in model.modules():  # the encoder and decoder stacks hold their own copies of the config
            if hasattr(module, "config"):
                module.config._attn_implementation = attention
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if getattr(recipe.model, "quantization", "none") == "8bit":
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in INT8_LINEAR:
                    module.forward = partial(_int8_linear, module)
        if recipe.model.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        backbone = Backbone(model, _Tokens(), recipe.model.name, "none", torch.device("meta"))
        with torch.device("meta"):
            for role in roles:
                backbone.add_adapter(role, getattr(recipe.lora, lora_settings_of(role)))
        for role in heads:
            likelihood = role == REWARD and getattr(getattr(recipe, "reward", None), "likelihood_term", False)
            head = ScalarHead(self.config.d_model).to("meta")
            head._buffers.update(offset=torch.zeros(()), likelihood=torch.tensor(likelihood))  # read as numbers
            backbone.heads[role] = head
        if self.device != "cuda":
            yield backbone
            return
        dropout = torch.nn.functional.dropout
        torch.nn.functional.dropout = _fused_dropout  # what dropout keeps on a GPU: a 1-byte mask
        try:
            yield backbone
        finally:
            torch.nn.functional.dropout = dropout

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
        scoring and loss (`reward.score_responses`, `reward.group_loss`), the batch collated inside as there."""
        from lorahf.stages.reward import Groups, group_loss, score_responses

        prompts = sequences // 2
        groups = Groups([[0] * recipe.max_prompt_tokens] * prompts,
                        [[[0] * recipe.max_response_tokens] * 2] * prompts, [[(0, 1)]] * prompts)
        return self.trace_step(recipe, REWARD, lambda backbone: group_loss(
            score_responses(backbone, groups, list(range(prompts))), groups.pairs, recipe.reward.margin), head=True)

    def trace_ppo_update(self, recipe, rows: int, batch_size: int) -> int:
        """One micro-batch of the PPO update (policy and value rows in one pass, encoder outputs reused: the
        update's own `policy_and_values`), plus what the rollout keeps for the update (encoder outputs, log-probs,
        values). The losses on top are a few [B, R] tensors; `update._loss_and_backward` itself reads numbers
        (`.item()`), which meta tensors do not have."""
        from lorahf.ppo.update import policy_and_values
        from lorahf.roles import POLICY, VALUE

        with self.backbone(recipe, (POLICY, VALUE), heads=(VALUE,)) as backbone:
            backbone.set_trainable(POLICY, VALUE)
            parameters = backbone.parameters(POLICY) + backbone.parameters(VALUE)
            backbone.model.eval()
            batch = self.batch(rows, recipe.max_prompt_tokens, recipe.max_response_tokens)
            kept = 2 * batch_size * recipe.max_prompt_tokens * self.config.d_model * self.size

            def step():
                states = torch.empty(2 * rows, recipe.max_prompt_tokens, self.config.d_model, dtype=self.dtype,
                                     device="meta")
                logprobs, values = policy_and_values(backbone, batch, states, recipe.ppo.temperature)
                _train_step(logprobs.sum() + values.sum(), parameters)
            return kept + _peak(step)

    def rollout_bytes(self, batch: int, prompt: int, response: int, keep_encoder_states: bool,
                      keep_logits: bool) -> int:
        """Generation's caches and kept tensors, plus the largest frozen pass over the batch (traced)."""
        config, size = self.config, self.size
        heads_dim = config.num_heads * config.d_kv
        cache = 2 * config.num_decoder_layers * batch * heads_dim * (response + prompt) * size
        encoder = batch * prompt * config.d_model * size * (3 if keep_encoder_states else 1)
        logits = batch * response * config.vocab_size * FP32 * (2 if keep_logits else 1)
        return cache + encoder + logits + self._frozen_pass(batch, prompt, response)

    def _frozen_pass(self, batch: int, prompt: int, response: int) -> int:
        from types import SimpleNamespace

        recipe = SimpleNamespace(model=SimpleNamespace(name="plan", gradient_checkpointing=False),
                                 lora=SimpleNamespace(reward=_PlainLora()))
        with self.backbone(recipe, (REWARD,), heads=(REWARD,)) as backbone:
            backbone.use(REWARD).model.eval()
            data = self.batch(batch, prompt, response)

            def read():
                with torch.no_grad():
                    backbone.sequence_scores(data)
            return _peak(read)

    def batch(self, rows: int, prompt: int, response: int):
        from lorahf.data import Seq2SeqBatch

        ids = torch.zeros(rows, prompt, dtype=torch.long, device="meta")
        responses = torch.zeros(rows, response, dtype=torch.long, device="meta")
        return Seq2SeqBatch(ids, torch.ones_like(ids), responses, torch.ones_like(responses),
                            torch.full((rows,), response, dtype=torch.long, device="meta"))


class _Tokens:
    """What a Backbone reads of its tokenizer while tracing."""

    pad_token_id, eos_token_id = 0, 1


class _PlainLora:
    """LoRA settings for a frozen pass: its memory does not depend on them beyond a few MB."""

    r, alpha, dropout, target_modules = 16, 32, 0.0, ["q", "v"]


def _train_step(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> None:
    loss.backward()
    for parameter in parameters:  # AdamW's two fp32 states, made at the first step
        if parameter.grad is not None:
            parameter.exp_avg = torch.zeros_like(parameter, dtype=torch.float32)
            parameter.exp_avg_sq = torch.zeros_like(parameter, dtype=torch.float32)


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
    def forward(ctx, input, weight):
        ctx.kept = input
        return torch.nn.functional.linear(input, weight)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(ctx.kept), None


def _int8_linear(module, input):
    if not input.requires_grad:
        return torch.nn.functional.linear(input, module.weight, module.bias)
    return _KeepsInput.apply(input, module.weight)



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
    from transformers.integrations.sdpa_attention import create_position_bias_mask

    bias = create_position_bias_mask(position_bias, attention_mask, bool(is_causal), query, key) \
        if position_bias is not None else attention_mask
    output = _EfficientAttention.apply(query, key, value, bias)
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

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    for name, attention in (("lorahf_planned", _planned_attention), ("lorahf_sdpa", sdpa_attention_forward)):
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
    import copy

    changed = copy.deepcopy(raw)
    node = changed
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return changed
