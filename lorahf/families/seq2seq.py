"""Encoder-decoder bases (T5, Flan-T5): the encoder reads the prompt, the decoder reads [start] + response."""

from __future__ import annotations

import torch


class Seq2Seq:
    name = "seq2seq"
    peft_task = "SEQ_2_SEQ_LM"

    @staticmethod
    def auto_class():
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def encode(self, model, batch) -> torch.Tensor:
        """Encoder states of the prompts [B, P, d]: computed once, they serve every decoder pass of that role."""
        return model.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

    def response_states(self, model, batch, prompt_states: torch.Tensor | None) -> torch.Tensor:
        """Decoder states for [start] + response, teacher-forced: [B, R + 1, d]."""
        if prompt_states is None:
            prompt_states = self.encode(model, batch)
        start = torch.full_like(batch.response_ids[:, :1], model.config.decoder_start_token_id)
        decoder_ids = torch.cat([start, batch.response_ids], dim=1)
        positions = torch.arange(decoder_ids.shape[1], device=decoder_ids.device)
        decoder_mask = (positions[None, :] <= batch.response_lengths[:, None]).long()  # from lengths, never ids
        return model.decoder(input_ids=decoder_ids, attention_mask=decoder_mask, encoder_hidden_states=prompt_states,
                             encoder_attention_mask=batch.attention_mask).last_hidden_state

    def lm_logits(self, model, states: torch.Tensor) -> torch.Tensor:
        """Next-token logits from decoder states, exactly as T5ForConditionalGeneration computes them."""
        if getattr(model.config, "scale_decoder_outputs", False):
            states = states * (model.config.d_model ** -0.5)
        return model.lm_head(states)

    def generation_inputs(self, batch, prompt_states: torch.Tensor | None = None) -> dict:
        from transformers.modeling_outputs import BaseModelOutput

        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if prompt_states is not None:
            inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=prompt_states)
        return inputs

    def generated_responses(self, sequences: torch.Tensor, batch) -> torch.Tensor:
        """The response tokens of `generate`'s output: all but the decoder start token."""
        return sequences[:, 1:]
