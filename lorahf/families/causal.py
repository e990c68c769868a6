"""Decoder-only bases (Llama, Qwen, SmolLM, GPT): prompt and response in one sequence.

The batch keeps prompts right-padded like any other; this family rolls each prompt to the right end of its
row (left padding), so every response starts at column P and the state at column P - 1 + t predicts response
token t. Positions count real tokens only (padding gets none), as `generate` counts them, so a left-padded
row computes what the same row computes alone. Loss, log-probs, KL and values are read on response states only:
the prompt is never a target.
"""

from __future__ import annotations

import torch


class Causal:
    name = "causal"
    peft_task = "CAUSAL_LM"

    @staticmethod
    def auto_class():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def encode(self, model, batch) -> None:
        """A decoder-only base has no separate prompt states: the prompt is read with the response."""
        return None

    def response_states(self, model, batch, prompt_states: None = None) -> torch.Tensor:
        """[B, R + 1, d]: the last prompt token's state, then one per response token."""
        prompt_ids, prompt_mask = left_padded(batch)
        width = prompt_ids.shape[1]
        columns = torch.arange(batch.response_ids.shape[1], device=prompt_ids.device)
        response_mask = (columns[None, :] < batch.response_lengths[:, None]).long()  # from lengths, never ids
        mask = torch.cat([prompt_mask, response_mask], dim=1)
        states = decoder_of(model)(input_ids=torch.cat([prompt_ids, batch.response_ids], dim=1), attention_mask=mask,
                                   position_ids=positions(mask)).last_hidden_state
        return states[:, width - 1:]

    def lm_logits(self, model, states: torch.Tensor) -> torch.Tensor:
        return model.get_output_embeddings()(states)

    def generation_inputs(self, batch, prompt_states: None = None) -> dict:
        prompt_ids, prompt_mask = left_padded(batch)
        return {"input_ids": prompt_ids, "attention_mask": prompt_mask}

    def generated_responses(self, sequences: torch.Tensor, batch) -> torch.Tensor:
        """The response tokens of `generate`'s output: all after the (left-padded) prompt."""
        return sequences[:, batch.input_ids.shape[1]:]


def left_padded(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's right-padded prompts rolled to the right end of their rows: (ids, mask), [B, P] each."""
    width = batch.input_ids.shape[1]
    lengths = batch.attention_mask.sum(1)
    source = (torch.arange(width, device=lengths.device)[None, :] - (width - lengths)[:, None]) % width
    return batch.input_ids.gather(1, source), batch.attention_mask.gather(1, source)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (0 on padding), as `generate` gives a left-padded prompt."""
    return (mask.long().cumsum(1) - 1).masked_fill(mask == 0, 0)


def decoder_of(model):
    """The transformer under a causal LM's head (LlamaModel under LlamaForCausalLM), LoRA layers included."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
