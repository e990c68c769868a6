"""The offline tiny bases (T5, Llama, BERT) load through plain `from_pretrained`, shaped like the real ones, and are
built deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorahf.errors import LorahfError
from lorahf.tiny import MARKER_FILE, make_tiny

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "summaries" / "data"


def test_building_twice_gives_identical_files(tmp_path, tiny_model_dir):
    again = make_tiny(EXAMPLE_DATA, tmp_path / "again")
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_another_seed_gives_other_weights(tmp_path, tiny_model_dir):
    from lorahf.tiny import TinySpec

    other = make_tiny(EXAMPLE_DATA, tmp_path / "seed1", TinySpec(seed=1))
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()


def test_tokenizer_has_the_t5_layout_and_appends_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    texts = ["Rangers beat Foxes 3-1 in Dundee.", "a", "The attendance was 16400."]
    for ids in tokenizer(texts).input_ids:
        assert ids[-1] == 1 and ids.count(1) == 1
        assert 0 not in ids and 2 not in ids  # no padding inside, no unknown pieces for the task's own text


def test_decoding_round_trips_the_example_text(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (EXAMPLE_DATA / "sft.jsonl").read_text().splitlines()[:50]]
    for row in rows:
        for text in (row["summary"], row["document"]):
            ids = tokenizer(text).input_ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
            assert tokenizer.decode(ids).endswith("</s>")


def test_model_loads_with_an_untied_head(tiny_model_dir):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    head, embeddings = model.lm_head.weight, model.shared.weight
    assert head is not embeddings
    assert head.data_ptr() != embeddings.data_ptr()
    assert head.shape == embeddings.shape
    assert not torch.equal(head, embeddings)
    # The head's init is std d_model^-0.5 (not T5's std 1), so that sampling is not nearly greedy.
    assert abs(head.std().item() - model.config.d_model ** -0.5) < 0.02
    # Like Flan-T5 (T5 v1.1): no d_model^-0.5 scaling of the decoder output before the untied head.
    assert model.config.scale_decoder_outputs is False


def test_config_is_flan_t5_shaped(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "t5" and config.is_encoder_decoder
    assert config.feed_forward_proj == "gated-gelu" and config.is_gated_act
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert (config.d_model, config.d_ff, config.num_layers, config.num_decoder_layers) == (128, 512, 2, 2)
    tokenizer_vocab = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert config.vocab_size == len(tokenizer_vocab)
    assert json.loads((tiny_model_dir / MARKER_FILE).read_text())["spec"]["seed"] == 0


def test_a_folder_without_data_files_is_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a data file\n")
    with pytest.raises(LorahfError) as error:
        make_tiny(tmp_path, tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "no text found" in message
    assert not (tmp_path / "out").exists()


def test_a_missing_data_folder_is_one_line_error(tmp_path):
    with pytest.raises(LorahfError, match="not a folder") as error:
        make_tiny(tmp_path / "nowhere", tmp_path / "out")
    assert "\n" not in str(error.value)


def test_rebuilding_replaces_a_tiny_model_but_never_a_foreign_folder(tmp_path, tiny_model_dir):
    out = make_tiny(EXAMPLE_DATA, tmp_path / "model")
    (out / "stale.txt").write_text("from an older build")
    make_tiny(EXAMPLE_DATA, out)  # an earlier tiny T5 is replaced whole
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(LorahfError, match="not a tiny T5"):
        make_tiny(EXAMPLE_DATA, foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_a_tiny_model_built_from_other_data_is_refused_by_run(tmp_path):
    import shutil

    from lorahf import pipeline
    from lorahf.progress import Progress
    from lorahf.recipe import validate

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(EXAMPLE_DATA / "test.jsonl", data / "test.jsonl")
    make_tiny(data, tmp_path / "tiny")
    recipe = validate({"name": "x", "output_dir": str(tmp_path / "runs"), "stages": [],
                       "model": {"name": str(tmp_path / "tiny"), "make_tiny_from": str(data)}})
    pipeline.ensure_base(recipe, Progress())  # same data: fine
    with open(data / "test.jsonl", "a") as handle:
        handle.write('{"document": "A new report.", "reference": "New."}\n')
    with pytest.raises(LorahfError, match="built from other data"):
        pipeline.ensure_base(recipe, Progress())


def test_an_older_tiny_model_is_refused_by_run(tmp_path):
    from lorahf import pipeline
    from lorahf.progress import Progress
    from lorahf.recipe import validate

    tiny = make_tiny(EXAMPLE_DATA, tmp_path / "tiny")
    recipe = validate({"name": "x", "output_dir": str(tmp_path / "runs"), "stages": [],
                       "model": {"name": str(tiny), "make_tiny_from": str(EXAMPLE_DATA)}})
    pipeline.ensure_base(recipe, Progress())
    marker = json.loads((tiny / MARKER_FILE).read_text())
    del marker["build"]  # as lorahf wrote it before the position heads and digit pieces
    (tiny / MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(LorahfError, match="older lorahf") as error:
        pipeline.ensure_base(recipe, Progress())
    assert "\n" not in str(error.value)


def test_each_head_of_the_first_layer_prefers_a_position(tiny_model_dir):
    """Encoder heads: previous token, next token, a local window, everything; decoder: previous, itself, ..."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    length = 12
    for stack, favourite in ((model.encoder, {0: -1, 1: +1, 2: 0}), (model.decoder, {0: -1, 1: 0, 2: 0})):
        attention = stack.block[0].layer[0].SelfAttention
        bias = attention.compute_bias(length, length)[0]  # heads x query x key
        query = length // 2
        for head, offset in favourite.items():
            weights = bias[head, query].softmax(-1) if stack is model.encoder else \
                bias[head, query, :query + 1].softmax(-1)
            assert weights.argmax().item() == query + offset, (head, weights)
            assert weights.max() > 0.9 if head < 2 else weights.max() > 0.5
        assert bias[3].abs().max() == 0  # the fourth head looks at everything alike


def test_digits_are_pieces_of_their_own(tiny_model_dir):
    """A score reads the same digit pieces in a report ("3 to 1") as in a summary ("3-1")."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    summary = tokenizer.tokenize("Tigers beat Rangers 3-1 in Derby.")
    report = tokenizer.tokenize("Tigers beat Rangers 3 to 1 in a hard fought game.")
    assert summary[3:7] == ["▁", "3", "-", "1"] and report[3:7] == ["▁", "3", "▁to", "▁"]
    assert all(len(piece.strip("▁")) <= 1 for piece in tokenizer.tokenize("A crowd of 33200 and 2-0.")
               if any(c.isdigit() for c in piece))


# ------------------------------------------------------------------------------ the tiny Llama (--family causal)
# tiny_causal_dir: conftest.py's session fixture, make_tiny(EXAMPLE_DATA, ..., TinyCausalSpec()).


def test_causal_building_twice_gives_identical_files(tmp_path, tiny_causal_dir):
    from lorahf.tiny import TinyCausalSpec

    again = make_tiny(EXAMPLE_DATA, tmp_path / "again", TinyCausalSpec())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (tiny_causal_dir / name).read_bytes(), name
    other = make_tiny(EXAMPLE_DATA, tmp_path / "seed1", TinyCausalSpec(seed=1))
    assert (other / "model.safetensors").read_bytes() != (tiny_causal_dir / "model.safetensors").read_bytes()


def test_causal_tokenizer_has_llama_specials_prepends_bos_and_has_no_pad(tiny_causal_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token is None and tokenizer.pad_token_id is None  # as Llama: lorahf gives it one at load
    texts = ["Rangers beat Foxes 3-1 in Dundee.", "a", "The attendance was 16400."]
    for ids in tokenizer(texts).input_ids:
        assert ids[0] == 1 and ids.count(1) == 1  # BOS first, once
        assert 2 not in ids and 0 not in ids  # no EOS appended, no unknown pieces for the task's own text
    assert tokenizer("a", add_special_tokens=False).input_ids[0] != 1
    assert tokenizer.tokenize("Tigers beat Rangers 3-1.")[3:7] == ["▁", "3", "-", "1"]  # digits apart, as the T5's


def test_causal_decoding_round_trips_the_example_text(tiny_causal_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    rows = [json.loads(line) for line in (EXAMPLE_DATA / "sft.jsonl").read_text().splitlines()[:50]]
    for row in rows:
        for text in (row["summary"], row["document"]):
            ids = tokenizer(text).input_ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
            assert tokenizer.decode(ids).startswith("<s>")


def test_causal_model_is_a_llama_with_grouped_query_attention(tiny_causal_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lorahf.tiny import TinyCausalSpec, causal_model_config

    config = AutoConfig.from_pretrained(tiny_causal_dir)
    assert config.model_type == "llama" and not config.is_encoder_decoder
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.hidden_act == "silu" and config.rope_parameters["rope_type"] == "default"
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, None)
    tokenizer_vocab = json.loads((tiny_causal_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert config.vocab_size == len(tokenizer_vocab)
    planned = causal_model_config(TinyCausalSpec(), config.vocab_size)
    assert (planned.hidden_size, planned.num_hidden_layers) == (config.hidden_size, config.num_hidden_layers)

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    head, embeddings = model.lm_head.weight, model.model.embed_tokens.weight
    assert (head is embeddings) == config.tie_word_embeddings
    # The head's std is hidden_size^-0.5, not Llama's 0.02 (which capped the logits: see build_causal_model).
    assert abs(head.std().item() - config.hidden_size ** -0.5) < 0.01
    logits = model(**AutoTokenizer.from_pretrained(tiny_causal_dir)("Rangers beat Foxes", return_tensors="pt")).logits
    assert logits.shape[-1] == config.vocab_size and torch.isfinite(logits).all()


def test_causal_chat_template_renders_after_a_reload(tiny_causal_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)  # saved by make_tiny, read back here
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rangers beat Foxes 3-1."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nRangers beat Foxes 3-1.</s>\n<|assistant|>\n"
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without.endswith("<|assistant|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(2) == 2  # BOS once, each turn closed by EOS
    assert 0 not in ids  # the markers and the newlines are all known pieces
    assert ids == tokenizer(text, add_special_tokens=False).input_ids
    # Like Llama-2's legacy tokenizer, a text piece after a special token starts with "▁", read back as a space.
    assert tokenizer.decode(ids) == text.replace("</s>\n", "</s> \n").replace("<s><", "<s> <")


def test_marker_names_the_family(tmp_path, tiny_causal_dir, tiny_model_dir):
    from lorahf.tiny import CAUSAL_BUILD, tiny_family, why_stale

    marker = json.loads((tiny_causal_dir / MARKER_FILE).read_text())
    assert marker["family"] == "causal" and marker["build"] == CAUSAL_BUILD
    assert "family" not in json.loads((tiny_model_dir / MARKER_FILE).read_text())  # the T5's marker is unchanged
    assert (tiny_family(tiny_causal_dir), tiny_family(tiny_model_dir), tiny_family(tmp_path)) == \
        ("causal", "seq2seq", None)
    assert why_stale(tiny_causal_dir, EXAMPLE_DATA) is None
    older = tmp_path / MARKER_FILE
    older.write_text(json.dumps({**marker, "build": CAUSAL_BUILD - 1}))
    assert "older lorahf" in why_stale(tmp_path, EXAMPLE_DATA) and "tiny Llama" in why_stale(tmp_path, EXAMPLE_DATA)


@pytest.mark.parametrize("family, fixture, kind", [("causal", "tiny_causal_dir", "tiny Llama (causal)"),
                                                    ("encoder", "tiny_encoder_dir", "tiny BERT (encoder)")])
def test_make_tiny_cli_builds_the_family_asked_for(tmp_path, monkeypatch, request, family, fixture, kind):
    from click.testing import CliRunner
    from rich.console import Console

    from lorahf import cli

    monkeypatch.setattr(cli, "console", Console(width=200, color_system=None))
    out = tmp_path / family
    result = CliRunner().invoke(cli.main, ["make-tiny", "--data", str(EXAMPLE_DATA), "--out", str(out),
                                           "--family", family])
    assert result.exit_code == 0, result.output
    assert kind in result.stdout and str(out) in result.stdout
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (out / name).read_bytes() == (request.getfixturevalue(fixture) / name).read_bytes(), name


# ------------------------------------------------------------------------------ the tiny BERT (--family encoder)
# tiny_encoder_dir: conftest.py's session fixture, make_tiny(EXAMPLE_DATA, ..., TinyEncoderSpec()).


def test_encoder_building_twice_gives_identical_files(tmp_path, tiny_encoder_dir):
    from lorahf.tiny import TinyEncoderSpec

    again = make_tiny(EXAMPLE_DATA, tmp_path / "again", TinyEncoderSpec())
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (tiny_encoder_dir / name).read_bytes(), name
    other = make_tiny(EXAMPLE_DATA, tmp_path / "seed1", TinyEncoderSpec(seed=1))
    assert (other / "tokenizer.json").read_bytes() == (tiny_encoder_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_encoder_dir / "model.safetensors").read_bytes()


def test_encoder_tokenizer_has_the_bert_layout_and_keeps_case(tiny_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert tokenizer.model_max_length == 512
    rows = [json.loads(line) for line in (EXAMPLE_DATA / "sft.jsonl").read_text().splitlines()[:50]]
    for row in rows:
        for text in (row["summary"], row["document"]):
            ids = tokenizer(text).input_ids
            assert ids[0] == 2 and ids[-1] == 3 and ids.count(2) == ids.count(3) == 1  # [CLS] text [SEP]
            assert 1 not in ids  # no unknown pieces for the task's own text
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.tokenize("Rangers") != tokenizer.tokenize("rangers")  # cased, as bert-base-cased
    assert tokenizer.tokenize("Tigers beat Rangers 3-1.")[3:7] == ["▁", "3", "-", "1"]  # digits apart, as the T5's


def test_encoder_pairs_mark_the_response_with_token_type_one(tiny_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    prompts = ["Rangers beat Foxes 3-1 in Dundee on Monday.", "A quiet match."]
    responses = ["Rangers beat Foxes 3-1.", "Quiet."]
    batch = tokenizer(prompts, responses, padding=True, truncation=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        length = int(batch.attention_mask[row].sum())
        ids, types = batch.input_ids[row].tolist(), batch.token_type_ids[row].tolist()
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids
        assert ids[:length] == [2, *prompt_ids, 3, *response_ids, 3]  # [CLS] prompt [SEP] response [SEP]
        assert types[:length] == [0] * (len(prompt_ids) + 2) + [1] * (len(response_ids) + 1)
        assert set(ids[length:]) <= {0} and set(types[length:]) <= {0}  # padding: [PAD], type 0, on the right


def test_encoder_is_a_bert_masked_lm_checkpoint_with_its_pooler(tiny_encoder_dir):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForMaskedLM

    from lorahf.tiny import TinyEncoderSpec, config_of, spec_for

    config = AutoConfig.from_pretrained(tiny_encoder_dir)
    assert config.model_type == "bert" and config.architectures == ["BertForMaskedLM"]
    spec = TinyEncoderSpec()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.max_position_embeddings, config.type_vocab_size) == (128, 2, 4, 512, 512, 2) == \
        (spec.hidden_size, spec.num_hidden_layers, spec.num_attention_heads, spec.intermediate_size,
         spec.max_position_embeddings, spec.type_vocab_size)
    tokenizer_vocab = json.loads((tiny_encoder_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert config.vocab_size == len(tokenizer_vocab) and config.pad_token_id == 0
    planned = config_of(spec_for("encoder"))
    assert (planned.model_type, planned.hidden_size, planned.num_hidden_layers) == ("bert", 128, 2)

    weights = load_file(tiny_encoder_dir / "model.safetensors")
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.predictions.bias"} <= set(weights)
    assert abs(weights["bert.pooler.dense.weight"].std().item() - config.initializer_range) < 0.002  # BERT's init
    model, info = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir, output_loading_info=True)
    assert not info["missing_keys"]  # a masked LM loads whole (the pooler it does not use is left over)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied, as BERT


def test_encoder_loads_as_a_reward_model_with_only_a_fresh_classifier(tiny_encoder_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, info = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=1,
                                                                     output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}  # the pooler comes from the checkpoint
    saved = load_file(tiny_encoder_dir / "model.safetensors")
    assert torch.equal(model.bert.pooler.dense.weight, saved["bert.pooler.dense.weight"])
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"])

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    prompts = ["Rangers beat Foxes 3-1 in Dundee.", "A quiet match.", "Rain fell all day in York."]
    responses = ["Rangers beat Foxes 3-1.", "Quiet.", "Foxes beat Rangers."]
    batch = tokenizer(prompts, responses, padding=True, truncation=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        scores = model(**batch).logits
        swapped_types = model(**{**batch, "token_type_ids": 1 - batch.token_type_ids}).logits
    assert scores.shape == (3, 1) and torch.isfinite(scores).all()
    assert len(set(scores.flatten().tolist())) == 3  # one score per row, each its own
    assert not torch.allclose(scores, swapped_types)  # the model reads the token types


def test_encoder_marker_names_the_family(tmp_path, tiny_encoder_dir):
    from lorahf.tiny import ENCODER_BUILD, tiny_family, why_stale

    marker = json.loads((tiny_encoder_dir / MARKER_FILE).read_text())
    assert marker["family"] == "encoder" and marker["build"] == ENCODER_BUILD and marker["spec"]["seed"] == 0
    assert tiny_family(tiny_encoder_dir) == "encoder"
    assert why_stale(tiny_encoder_dir, EXAMPLE_DATA) is None
    (tmp_path / MARKER_FILE).write_text(json.dumps({**marker, "build": ENCODER_BUILD - 1}))
    reason = why_stale(tmp_path, EXAMPLE_DATA)
    assert "older lorahf" in reason and "tiny BERT" in reason


def test_encoder_match_head_marks_response_tokens_missing_from_the_prompt(tiny_encoder_dir):
    """Layer 0's match head writes on FOUND_DIM whether each response token is in the prompt: a city the report
    names reads negative, one it does not name positive; layer 1 gathers it into [CLS], so a response with an
    invented city moves [CLS] up."""
    from transformers import AutoTokenizer, BertModel

    from lorahf.tiny import FOUND_DIM

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = BertModel.from_pretrained(tiny_encoder_dir).eval()
    report = "Badgers won 5-1 against Eagles in Exeter on Thursday."
    encoded = tokenizer([report] * 2, ["Badgers beat Eagles 5-1 in Exeter.", "Badgers beat Eagles 5-1 in Leeds."],
                        padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**encoded, output_hidden_states=True).hidden_states
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in encoded["input_ids"]]
    found = {city: states[1][row, tokens[row].index(piece, tokens[row].index("[SEP]")), FOUND_DIM].item()
             for row, city in ((0, "Exeter"), (1, "Leeds"))
             for piece in [tokenizer.tokenize(city)[0]]}
    assert found["Exeter"] < 0 < found["Leeds"], found
    assert states[2][1, 0, FOUND_DIM] > states[2][0, 0, FOUND_DIM]  # [CLS] of the invented city is higher
