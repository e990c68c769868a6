"""Rollouts sampled from an unquantized copy of the base with the policy adapter folded into its weights.

    merged = MergedPolicy(backbone)        # once: one copy of the base in the compute dtype
    merged.refresh(backbone)               # after every update: W = dequantized base weight + the policy's LoRA delta
    responses, lengths, logits = merged.generate(batch, max_new_tokens, do_sample=True, ...)

Why: generation is a long chain of small sequential steps, and through bitsandbytes' int8 layers on a GPU each
matmul also quantizes its activations, checks for outliers and dequantizes its output (LLM.int8: several kernel
launches per layer and token); on a CPU lorahf's int8 layers dequantize their weight at every call instead
(`backbone._dequantize_int8_on_cpu`). The copy's layers are plain matmuls, with no LoRA branch either: the
policy's delta B·A·scale is added into the weight.

What it changes: the copy's weights are exactly the int8 weights the training path uses, dequantized (plus the
policy's delta). On a CPU the two paths then compute the same function, float rounding apart. On a GPU they differ
in how a layer's input is rounded: LLM.int8 rounds each activation row to 255 levels (keeping outlier columns in 16
bits), the copy does not. The sampled tokens' log-probs can therefore differ a little (`tests/test_rollout_weights.py`
measures it), and PPO's ratio must compare the updated policy with the very policy the update trains. So the
rollout reads the sampled tokens' log-probs again through the training path (one teacher-forced pass, as sft's
log-probs are read) and uses those as the old log-probs: the first minibatch's ratio is then 1, exactly as with
`quantized` sampling, and what remains is that the samples come from a distribution a hair away from the quantized
policy's (their per-token log-ratio is logged as `rollout_logprob_gap`). A base loaded unquantized gives a copy
whose weights equal the base's plus the delta.
"""

from __future__ import annotations

import torch

from lorahf.backbone import _compute_dtype, generate_with
from lorahf.roles import POLICY


class MergedPolicy:
    """An unquantized copy of the backbone's base, in its compute dtype, with `role`'s adapter folded in."""

    def __init__(self, backbone, role: str = POLICY):
        from lorahf.plan import meta_model

        self.role = role
        self.family, self.tokenizer = backbone.family, backbone.tokenizer
        self.model = meta_model(backbone.base.config, _compute_dtype(backbone.device)).to_empty(device=backbone.device)
        self.model.requires_grad_(False)
        self.model.eval()
        self._folded: list[tuple[torch.Tensor, torch.nn.Module]] = []  # (copy's weight, the backbone's LoRA layer)
        self._copy_base(backbone.base)
        self.refresh(backbone)

    def _copy_base(self, base) -> None:
        """Every parameter and buffer of the copy from the backbone's base: int8 and 4-bit weights dequantized, the
        layers wrapped by LoRA remembered for `refresh`."""
        with torch.no_grad():
            for name, module in self.model.named_modules():
                source = base.get_submodule(name)
                if hasattr(source, "base_layer") and hasattr(source, "lora_A"):  # a peft LoRA layer
                    self._folded.append((module.weight, source))
                    source = source.base_layer
                for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                    if key == "weight" and hasattr(source, "weight"):
                        tensor.copy_(dense_weight(source))
                    else:
                        tensor.copy_(getattr(source, key))

    def refresh(self, backbone) -> None:
        """Fold the role's current adapter into the copy: each wrapped layer's weight = base + B·A·scale."""
        with torch.no_grad():
            for weight, layer in self._folded:
                delta = layer.get_delta_weight(self.role) if self.role in layer.lora_A else 0
                weight.copy_(dense_weight(layer.base_layer) + delta)

    def generate(self, batch, max_new_tokens: int, **sampling):
        """`Backbone.generate`'s result, sampled from the copy (it reads the prompts with its own encoder)."""
        return generate_with(self.model, self.family, self.tokenizer, batch, max_new_tokens, **sampling)

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])


def dense_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a float tensor [out, in]: bitsandbytes' int8 (row-wise scales) and 4-bit weights
    dequantized, any other weight as it is."""
    weight = layer.weight
    if weight.dtype == torch.int8:  # the row scales sit on the weight until the first forward, then on the layer
        import bitsandbytes.functional as F

        scales = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
        return F.int8_vectorwise_dequant(weight.data, scales)
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as F

        return F.dequantize_4bit(weight.data, weight.quant_state)
    return weight
