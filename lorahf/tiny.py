"""The offline tiny bases: a Flan-T5-shaped T5 and a Llama-shaped decoder that learn a toy task on 2 CPU cores.

No model hub is reachable offline, so the quickstart and the tests build their own base: a BPE
tokenizer trained on a data folder's own text (T5 layout: <pad>=0, </s>=1, <unk>=2, EOS appended to
every input) and a randomly initialised T5 saved with `save_pretrained`. Everything downstream loads it
through the very same `from_pretrained` path a user takes with `google/flan-t5-base`.

The sizes come from measurement (shared/FACTS.md): about 1.3M parameters learned the bundled task in
minutes; 10M and 32M models were still at chance after 10 minutes on 2 cores.

A pretrained T5 attends by position (its relative-position biases span several nats); a random init
leaves them near 0.1, and LoRA does not train them, so a random base cannot tell "Falcons beat Tigers"
from "Tigers beat Falcons". The tiny base therefore gets the least of what pretraining gives: in the
first layer of each stack, one head looks at the previous token, one at the next token (in the decoder:
the token itself), one at a local window and one at everything (`position_heads`).

`make-tiny --family causal` builds the decoder-only counterpart (`TinyCausalSpec`): a Llama (RoPE, RMSNorm, SwiGLU,
grouped-query attention) loaded like `HuggingFaceTB/SmolLM2-135M`, with the same BPE but Llama-2's specials
(<unk>=0, <s>=1, </s>=2; BOS prepended, no EOS appended, no pad token) and a Zephyr-like chat template.
Measured (BENCHMARKS.md, "Tiny causal base"): with LoRA on a random base, hidden 128 x 4 layers (1.1M) learned the
bundled task best in minutes; 2 layers learned a little less, 256 x 4 (4.2M) and a tied head more slowly. It needs
no position trick: LoRA trains q_proj and k_proj, and RoPE puts position inside them, so greedy summaries named the
right winner about as often as the SFT data does (0.9). It does need a wider head init than Llama's (see
`build_causal_model`).

`make-tiny --family encoder` builds a BERT-shaped encoder (`TinyEncoderSpec`), the base of a reward model loaded
like `bert-base-cased`: `AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)` keeps the encoder
and its pooler and adds a fresh classifier. Its tokenizer is the same BPE with BERT's specials ([PAD]=0 [UNK]=1
[CLS]=2 [SEP]=3 [MASK]=4), "[CLS] A [SEP]" for one text and "[CLS] A [SEP] B [SEP]" for a pair, whose token type
ids mark B (a prompt and its response). The checkpoint is a masked LM, as a real BERT's is, with the pooler saved
beside it (see `build_encoder_model`).
"""

from __future__ import annotations

import math

import hashlib
import json
import string
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorahf.errors import LorahfError
from lorahf.runs import atomic_path

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: the T5 layout
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MARKER_FILE = "lorahf_tiny.json"
BUILD = 2  # raised whenever make_tiny builds another model from the same spec (2: digits, position heads)
CAUSAL_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: the Llama-2 layout (no pad token, as Llama)
CAUSAL_BUILD = 1  # BUILD's counterpart for the tiny Llama
ENCODER_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4: the BERT layout
ENCODER_BUILD = 2  # BUILD's counterpart for the tiny BERT (2: match heads)
# Zephyr-like: text markers (plain BPE pieces, no special tokens), each turn closed by </s>; BOS first, because
# apply_chat_template tokenizes without adding special tokens.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny T5 (Flan-T5 layout: gated-GELU, untied LM head, relative attention)."""

    vocab_size: int = 512
    d_model: int = 128
    d_ff: int = 512
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    d_kv: int = 32
    position_bias: float = 10.0  # strength of the first layer's position heads; 0 leaves T5's random init
    seed: int = 0


@dataclass(frozen=True)
class TinyCausalSpec:
    """Shape of the tiny Llama (SmolLM2 / Llama layout: RoPE, RMSNorm, SwiGLU, grouped-query attention)."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 512  # SwiGLU's inner width
    num_hidden_layers: int = 4  # 4 beat 2 from the second minute on; 256 wide was slower (BENCHMARKS.md)
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # fewer than the heads: grouped-query attention, as SmolLM2 and Llama 3
    tie_word_embeddings: bool = False  # untied (as Llama 2) learned faster than tied (as SmolLM2) here
    seed: int = 0


@dataclass(frozen=True)
class TinyEncoderSpec:
    """Shape of the tiny BERT (bert-base layout: learned absolute positions, two token types, GELU, post-LayerNorm)."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 512  # as BERT: the tokenizer's model_max_length
    type_vocab_size: int = 2  # token type 0: the prompt, 1: the response (a pair's second text)
    seed: int = 0


Spec = TinySpec | TinyCausalSpec | TinyEncoderSpec


def make_tiny(data_dir: str | Path, out_dir: str | Path, spec: Spec = TinySpec()) -> Path:
    """Train the tokenizer on `data_dir`'s text and save a random tiny model to `out_dir`, deterministically:
    a T5 for a `TinySpec`, a Llama-shaped decoder for a `TinyCausalSpec`, a BERT for a `TinyEncoderSpec`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if out_dir.exists() and not (out_dir / MARKER_FILE).is_file() and any(out_dir.iterdir()):
        # The new model replaces out_dir whole: never swallow a folder that is not an earlier tiny model.
        raise LorahfError(f"{out_dir}: exists and is not a tiny T5, Llama or BERT built by lorahf; "
                          "give a new or empty folder")
    texts = list(_texts(data_dir))
    if not texts:
        raise LorahfError(f"{data_dir}: no text found in {', '.join(DATA_SUFFIXES)} files to train a tokenizer on")
    if isinstance(spec, TinyCausalSpec):
        tokenizer = train_causal_tokenizer(texts, spec.vocab_size)
        model = build_causal_model(spec, vocab_size=len(tokenizer))
        marker = {"family": "causal", "build": CAUSAL_BUILD}
    elif isinstance(spec, TinyEncoderSpec):
        tokenizer = train_encoder_tokenizer(texts, spec.vocab_size)
        model = build_encoder_model(spec, vocab_size=len(tokenizer))
        marker = {"family": "encoder", "build": ENCODER_BUILD}
    else:  # the T5's marker stays as it always was: readers take a missing family for seq2seq
        tokenizer = train_tokenizer(texts, spec.vocab_size)
        model = build_model(spec, vocab_size=len(tokenizer))
        marker = {"build": BUILD}
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        tokenizer.save_pretrained(temp)
        with _no_progress_bars():  # the library never prints; save_pretrained would draw a tqdm bar
            model.save_pretrained(temp)
        (temp / MARKER_FILE).write_text(json.dumps({"built_from": str(data_dir), "spec": asdict(spec), **marker,
                                                    "data_fingerprint": data_fingerprint(data_dir)},
                                                   indent=2, sort_keys=True) + "\n")
    return out_dir


def tiny_family(model_dir: str | Path) -> str | None:
    """"seq2seq", "causal" or "encoder" for a tiny model built by `make_tiny` (by its marker file); None for any
    other folder."""
    marker = Path(model_dir) / MARKER_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("family", "seq2seq")  # T5 markers predate the family key


def data_fingerprint(data_dir: str | Path) -> str:
    """A hash of the data files a tiny T5's tokenizer was trained on (names and bytes)."""
    digest = hashlib.sha256()
    for file in _data_files(Path(data_dir)):
        digest.update(str(file.relative_to(data_dir)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def why_stale(model_dir: str | Path, data_dir: str | Path) -> str | None:
    """Why `model_dir`, a tiny model, is not what `make_tiny(data_dir)` would build now; None when it is
    (or when it is not a tiny model at all)."""
    marker = Path(model_dir) / MARKER_FILE
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text())
    kind, build = {"causal": ("tiny Llama", CAUSAL_BUILD),
                   "encoder": ("tiny BERT", ENCODER_BUILD)}.get(recorded.get("family"), ("tiny T5", BUILD))
    if recorded.get("data_fingerprint") not in (None, data_fingerprint(data_dir)):
        return f"this {kind} was built from other data than {data_dir} holds now"
    if recorded.get("build") != build:
        return f"this {kind} was built by an older lorahf (another tokenizer or init)"
    return None


def train_tokenizer(texts: list[str], vocab_size: int):
    """A BPE tokenizer with a fixed ASCII alphabet (byte-identical run to run, unlike Unigram), digits apart."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = _trained_bpe(texts, vocab_size, SPECIAL_TOKENS, unk_token="<unk>")
    # Like Flan-T5's tokenizer: every encoded text ends with </s>.
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def _trained_bpe(texts: list[str], vocab_size: int, special_tokens: list[str], unk_token: str,
                 extra_alphabet: tuple[str, ...] = ()):
    """The tiny bases' BPE, trained on `texts`: NFKC, words marked by "▁" (so decoding gives the text back),
    every digit a piece of its own, and a fixed ASCII alphabet (plus `extra_alphabet`), which keeps it
    byte-identical run to run (the Unigram and WordPiece trainers were not)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    alphabet = list(string.ascii_letters + string.digits + string.punctuation) + ["▁", *extra_alphabet]
    backend = Tokenizer(models.BPE(unk_token=unk_token))
    backend.normalizer = normalizers.NFKC()
    # Each digit is its own piece (as in LLaMA's tokenizer): merged pieces like "3-1" would make the tiny
    # model compose a score from two digits read apart ("3 to 1"), which it learnt far slower than copying.
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return backend


def model_config(spec: TinySpec, vocab_size: int | None = None):
    """The T5Config of the tiny T5 of `spec` with `vocab_size` tokens (None: the spec's target): what
    `build_model` builds, and what `lorahf plan` plans from before the base is built. No dropout: LoRA on a random
    base underfits rather than overfits, and on the CPU dropout's random masks took half of each SFT step (measured:
    held-out loss 0.70 after 3 epochs without it, 1.60 with T5's usual 0.1)."""
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size or spec.vocab_size, d_model=spec.d_model, d_ff=spec.d_ff, d_kv=spec.d_kv,
                    num_layers=spec.num_layers, num_decoder_layers=spec.num_decoder_layers,
                    num_heads=spec.num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_model(spec: TinySpec, vocab_size: int):
    """A randomly initialised T5 with an untied LM head, as Flan-T5 has."""
    from transformers import T5ForConditionalGeneration

    config = model_config(spec, vocab_size)
    torch.manual_seed(spec.seed)
    model = T5ForConditionalGeneration(config)
    # transformers 5.x ties T5's head to the embeddings whatever the config says; Flan-T5 is untied.
    # A fresh untied head gets std d_model^-0.5: T5's default std 1 makes logits so wide that
    # sampling is nearly greedy.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, spec.d_model) * spec.d_model ** -0.5)
    if spec.position_bias:
        position_heads(model, spec.position_bias)
    return model


def position_heads(model, strength: float) -> None:
    """Give the heads of each stack's relative-position bias a preference for a position, as pretraining does.

    Measured on a probe (LoRA r16 on the 7 linears, lr 1e-3, batch 32, trained on the first summary token
    of the bundled reports): with T5's random init (std 0.08) the winner's logit beat the loser's on 0.61
    of the held-out reports after 600 steps; with these heads on 1.00 after 200 steps."""
    from transformers.models.t5.modeling_t5 import T5Attention

    config = model.config
    distance = config.relative_attention_max_distance
    all_offsets = torch.arange(-distance, distance + 1)
    for stack, bidirectional in ((model.encoder, True), (model.decoder, False)):
        # per head (they cycle), the bias of a key at offset o = key position - query position
        second = 1 if bidirectional else 0  # the encoder's second head looks at the next token, the decoder's at itself
        preferences = [lambda o: strength * (o == -1), lambda o: strength * (o == second),  # previous; next or itself
                       lambda o: -strength / 4 * o.abs(), lambda o: torch.zeros_like(o)]  # a local window; everything
        bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias
        offsets = all_offsets if bidirectional else all_offsets[all_offsets <= 0]  # the decoder sees no future
        buckets = T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional,
                                                        num_buckets=config.relative_attention_num_buckets,
                                                        max_distance=distance)
        table = torch.zeros_like(bias.weight)
        for head in range(config.num_heads):
            table[buckets, head] = preferences[head % 4](offsets).float()
        with torch.no_grad():
            bias.weight.copy_(table)


def train_causal_tokenizer(texts: list[str], vocab_size: int):
    """The T5 tokenizer's BPE (fixed ASCII alphabet, digits apart) with Llama-2's specials: <unk>=0, <s>=1, </s>=2,
    BOS prepended and no EOS appended, no pad token, and a chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    # "\n" too, which the T5's alphabet lacks: the chat template puts one after each role marker.
    backend = _trained_bpe(texts, vocab_size, CAUSAL_SPECIAL_TOKENS, unk_token="<unk>", extra_alphabet=("\n",))
    # Like Llama's tokenizer: every encoded text starts with <s>; the caller appends </s> to a response.
    # (transformers 5 drops add_bos_token from the saved config, so a loaded tokenizer's add_bos_token reads
    # False: this post-processor, saved in tokenizer.json, is what prepends BOS.)
    backend.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                           special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=2048, chat_template=CHAT_TEMPLATE)


def causal_model_config(spec: TinyCausalSpec, vocab_size: int | None = None):
    """The LlamaConfig of the tiny Llama of `spec` with `vocab_size` tokens (None: the spec's target)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size or spec.vocab_size, hidden_size=spec.hidden_size,
                       intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
                       num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
                       max_position_embeddings=2048, tie_word_embeddings=spec.tie_word_embeddings,
                       bos_token_id=1, eos_token_id=2, pad_token_id=None)


def build_causal_model(spec: TinyCausalSpec, vocab_size: int):
    """A randomly initialised LlamaForCausalLM: Llama's init (std 0.02), but the LM head's std is hidden_size^-0.5."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(causal_model_config(spec, vocab_size))
    # LoRA trains neither the head nor the final RMSNorm, so a head of std 0.02 caps every logit near
    # 0.02 * hidden_size (2.6 at 128): the summaries' loss could not fall below ~3.9 nats and sampling stayed
    # nearly uniform while greedy answers were right. Std hidden_size^-0.5 (the tiny T5's) lets a logit reach
    # ~sqrt(hidden_size). A tied head is the embedding matrix, so it gets the same std.
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.normal_(0.0, spec.hidden_size ** -0.5)
    return model


def train_encoder_tokenizer(texts: list[str], vocab_size: int):
    """The T5 tokenizer's BPE (fixed ASCII alphabet, digits apart, case kept) with BERT's specials: [PAD]=0 [UNK]=1
    [CLS]=2 [SEP]=3 [MASK]=4; "[CLS] A [SEP]" for one text, "[CLS] A [SEP] B [SEP]" with token type 1 on B's part
    for a pair. (BERT's own WordPiece trainer gave another vocabulary order on each run, and turns a whole word
    with a piece it lacks into [UNK].)"""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = _trained_bpe(texts, vocab_size, ENCODER_SPECIAL_TOKENS, unk_token="[UNK]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ENCODER_SPECIAL_TOKENS.index("[CLS]")),
                        ("[SEP]", ENCODER_SPECIAL_TOKENS.index("[SEP]"))])
    # token_type_ids among the model inputs (transformers' default leaves them out): BERT reads them.
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def encoder_model_config(spec: TinyEncoderSpec, vocab_size: int | None = None):
    """The BertConfig of the tiny BERT of `spec` with `vocab_size` tokens (None: the spec's target)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size or spec.vocab_size, hidden_size=spec.hidden_size,
                      intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
                      num_attention_heads=spec.num_attention_heads,
                      max_position_embeddings=spec.max_position_embeddings, type_vocab_size=spec.type_vocab_size,
                      pad_token_id=ENCODER_SPECIAL_TOKENS.index("[PAD]"))


def build_encoder_model(spec: TinyEncoderSpec, vocab_size: int):
    """A randomly initialised BertForMaskedLM (BERT's init, std 0.02, head tied to the embeddings) that carries
    BertModel's pooler too, as a real BERT checkpoint does.

    transformers' BertForMaskedLM has no pooler, but BertForSequenceClassification scores the pooler's output.
    Without one in the checkpoint every load would draw a fresh random pooler: a LoRA reward model keeps only
    its adapters and classifier, so it would score differently each time it is loaded. The pooler is saved
    beside the masked LM (bert-base-cased's checkpoint has one too; a masked-LM load ignores it)."""
    from transformers import BertForMaskedLM
    from transformers.models.bert.modeling_bert import BertPooler

    config = encoder_model_config(spec, vocab_size)
    torch.manual_seed(spec.seed)
    model = BertForMaskedLM(config)
    model.bert.pooler = BertPooler(config)
    with torch.no_grad():  # BERT's own init of a linear layer
        model.bert.pooler.dense.weight.normal_(0.0, config.initializer_range)
        model.bert.pooler.dense.bias.zero_()
    match_heads(model, spec.seed)
    return model


WORD_DIMS = 96  # the tiny BERT's hidden dimensions that carry a token's identity; then positions, type, "found"
POSITION_DIMS = slice(96, 126)
TYPE_DIM, FOUND_DIM = 126, 127


def match_heads(model, seed: int) -> None:
    """Give the tiny BERT what pretraining gives a real encoder's first layers, so that a reward model on it can
    compare a response with its prompt: one head that finds each response token in the prompt, one that gathers
    what it found into [CLS] (which the pooler and the classifier read).

    The embeddings keep their parts apart: a token's identity on the first WORD_DIMS dimensions, sinusoidal
    positions next, the token type (prompt -, response +) on TYPE_DIM; FOUND_DIM starts empty.
      layer 0, head 0: every query attends to the same token in the prompt (its word dimensions, projected
                       alike for query and key, match; a response query prefers prompt keys) and writes the
                       type of what it attended to onto FOUND_DIM: negative where the token was found in the
                       prompt, positive where it was not (it then attends to the response itself)
      layer 1, head 0: every query averages FOUND_DIM over the response's tokens, [CLS] included
    The other heads, the feed-forward layers and the pooler stay as BERT initialises them. Measured on the bundled
    preferences (LoRA r16, lr 1e-3, one epoch; BENCHMARKS.md "Reward model on its own encoder"): held-out accuracy
    0.68 (0.74 against the gold judge), 0.54-0.62 without these heads in every setting tried."""
    embeddings, layers = model.bert.embeddings, model.bert.encoder.layer
    hidden = model.config.hidden_size
    head = hidden // model.config.num_attention_heads  # head 0 uses rows [0, head) of q, k and v
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        words = torch.zeros_like(embeddings.word_embeddings.weight)
        words[:, :WORD_DIMS] = torch.randn(words.shape[0], WORD_DIMS, generator=generator) / math.sqrt(WORD_DIMS)
        embeddings.word_embeddings.weight.copy_(words)
        positions = torch.zeros_like(embeddings.position_embeddings.weight)
        index = torch.arange(positions.shape[0]).float()[:, None]
        half = (POSITION_DIMS.stop - POSITION_DIMS.start) // 2
        frequencies = 1.0 / 100 ** (torch.arange(half).float() / half)
        positions[:, POSITION_DIMS.start:POSITION_DIMS.start + half] = torch.sin(index * frequencies) / (2 * math.sqrt(half))
        positions[:, POSITION_DIMS.start + half:POSITION_DIMS.stop] = torch.cos(index * frequencies) / (2 * math.sqrt(half))
        embeddings.position_embeddings.weight.copy_(positions)
        types = torch.zeros_like(embeddings.token_type_embeddings.weight)
        types[0, TYPE_DIM], types[1, TYPE_DIM] = -0.3, 0.3
        embeddings.token_type_embeddings.weight.copy_(types)

        attention = layers[0].attention  # the match head
        query, key, value, out = attention.self.query, attention.self.key, attention.self.value, attention.output.dense
        projection = torch.linalg.qr(torch.randn(WORD_DIMS, head - 1, generator=generator))[0].T
        for linear in (query, key, value):
            linear.weight[:head] = 0
            linear.bias[:head] = 0
        query.weight[:head - 1, :WORD_DIMS] = key.weight[:head - 1, :WORD_DIMS] = 4.0 * projection
        query.weight[head - 1, TYPE_DIM], key.weight[head - 1, TYPE_DIM] = 2.0, -2.0  # a response query, prompt keys
        value.weight[0, TYPE_DIM] = 1.0
        out.weight[:, :head] = 0
        out.weight[FOUND_DIM, 0] = 3.0

        attention = layers[1].attention  # the gathering head
        query, key, value, out = attention.self.query, attention.self.key, attention.self.value, attention.output.dense
        for linear in (query, key, value):
            linear.weight[:head] = 0
            linear.bias[:head] = 0
        query.bias[0], key.weight[0, TYPE_DIM] = 1.0, 3.0  # every query prefers response keys
        value.weight[0, FOUND_DIM] = 1.0
        out.weight[:, :head] = 0
        out.weight[FOUND_DIM, 0] = 1.0


@contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _texts(data_dir: Path):
    """Every string value (and every string in a list value) of every data file in the folder."""
    from lorahf.data import load_table

    if not data_dir.is_dir():
        raise LorahfError(f"{data_dir}: not a folder")
    for file in _data_files(data_dir):
        for row in load_table(str(file)):
            for value in row.values():
                values = value if isinstance(value, list) else [value]
                yield from (v for v in values if isinstance(v, str))


def _data_files(data_dir: Path) -> list[Path]:
    """The folder's data files, in a fixed order (the tokenizer and the fingerprint both depend on it)."""
    return sorted(p for p in data_dir.rglob("*") if p.suffix in DATA_SUFFIXES)


def spec_for(family: str) -> Spec:
    """The default spec of a family's tiny base ("seq2seq": the T5, "causal": the Llama, "encoder": the BERT)."""
    return {"causal": TinyCausalSpec, "encoder": TinyEncoderSpec}.get(family, TinySpec)()


def config_of(spec: Spec):
    """The transformers config `make_tiny` builds for `spec` (what `lorahf plan` plans from before it is built)."""
    if isinstance(spec, TinyCausalSpec):
        return causal_model_config(spec)
    return encoder_model_config(spec) if isinstance(spec, TinyEncoderSpec) else model_config(spec)
