"""One small object per model family: how a base reads a prompt and a response, and how it writes one.

Every stage works on a `Seq2SeqBatch` (prompts and responses padded apart, masks from lengths) and asks the
Backbone for the same three things whatever the base: response states `[B, R + 1, d]` where state t predicts
response token t and state R_i has read row i's whole response (its EOS), logits from those states, and
generated responses. How a family gets there is its own business, and it lives here and nowhere else:

- `Seq2Seq` (T5, Flan-T5): the encoder reads the prompt, the decoder reads [start] + response.
- `Causal` (Llama, Qwen, SmolLM, GPT): prompt and response in one sequence, the prompt left-padded so that
  every response starts at the same column; states are read on the response only.
"""

from __future__ import annotations

from lorahf.families.causal import Causal
from lorahf.families.seq2seq import Seq2Seq

FAMILIES = (Seq2Seq(), Causal())


def family_of(config):
    """The family of a transformers config: encoder-decoder or decoder-only (None: neither, e.g. an encoder)."""
    if getattr(config, "is_encoder_decoder", False):
        return FAMILIES[0]
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    # BERT-like encoders also have a causal-LM class, but they were trained to read both ways: not decoders
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return FAMILIES[1]
    return None


def load_plain(name: str, dtype=None):
    """(model, tokenizer, family) of a model folder or hub id through plain transformers, without quantization or
    peft (merge and generate from a merged folder): its family's auto class, and a pad token where it has none."""
    from transformers import AutoConfig, AutoTokenizer

    from lorahf.backbone import give_pad_token
    from lorahf.errors import LorahfError

    family = family_of(AutoConfig.from_pretrained(name))
    if family is None:
        raise LorahfError(f"{name}: not a language model lorahf can load (neither encoder-decoder nor decoder-only)")
    tokenizer = AutoTokenizer.from_pretrained(name)
    give_pad_token(tokenizer)
    options = {"dtype": dtype} if dtype is not None else {}  # else transformers' own default, as a user loads it
    return family.auto_class().from_pretrained(name, **options), tokenizer, family


__all__ = ["FAMILIES", "Causal", "Seq2Seq", "family_of", "load_plain"]
