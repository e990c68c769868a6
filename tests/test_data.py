"""Tests for lorahf.data: every format, row checks and their messages, splits, tokenising, batching."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lorahf.data import (
    SHAPES,
    Seq2SeqBatch,
    TruncationReport,
    batches,
    collate,
    encode_pairs,
    encode_prompts,
    encode_responses,
    load_rows,
    load_table,
    preference_format,
    split,
)
from lorahf.errors import DataError

ROWS = [
    {"prompt": "the cat sat on the mat", "response": "a cat sat"},
    {"prompt": "the dog ran in the park", "response": "a dog ran"},
    {"prompt": "None", "response": "NA"},  # texts that CSV readers like to turn into missing values
]

# ---------------------------------------------------------------------------------------------------
# Writing small files
# ---------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json_array(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_saved_folder(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_saved_dict_folder(path: Path, rows: list[dict]) -> Path:
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


WRITERS = {
    "data.jsonl": write_jsonl,
    "data.json": write_json_array,
    "data.csv": write_csv,
    "data.parquet": write_parquet,
    "saved": write_saved_folder,
    "saved_dict": write_saved_dict_folder,
}


def load_error(sources, shape="sft", columns=None) -> DataError:
    """The DataError load_rows raises, checked to be one line."""
    with pytest.raises(DataError) as caught:
        load_rows(sources, shape, columns)
    message = str(caught.value)
    assert "\n" not in message, message
    return caught.value


# ---------------------------------------------------------------------------------------------------
# Formats and columns
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITERS)
def test_every_format_loads_the_same_rows(tmp_path, name):
    path = WRITERS[name](tmp_path / name, ROWS)
    dataset = load_rows(str(path), "sft")
    assert dataset.to_list() == ROWS
    text = datasets.Value("string")
    assert dataset.features == datasets.Features(prompt=text, response=text)


def test_load_table_keeps_the_files_own_columns(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "document": "x"}])
    table = load_table(str(path))
    assert isinstance(table, datasets.Dataset)
    assert table.column_names == ["id", "document"]


def test_sources_are_concatenated_in_order(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    second = write_csv(tmp_path / "b.csv", ROWS[1:])
    assert load_rows([str(first), str(second)], "sft").to_list() == ROWS


def test_column_mapping_renames_and_drops_other_columns(tmp_path):
    rows = [{"id": 7, "document": row["prompt"], "summary": row["response"]} for row in ROWS]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    dataset = load_rows(str(path), "sft", columns={"prompt": "document", "response": "summary"})
    assert dataset.column_names == ["prompt", "response"]
    assert dataset.to_list() == ROWS


def test_column_mapping_can_swap_names(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "an answer", "response": "a question"}])
    dataset = load_rows(str(path), "sft", columns={"prompt": "response", "response": "prompt"})
    assert dataset.to_list() == [{"prompt": "a question", "response": "an answer"}]


def test_missing_column_lists_the_files_columns_and_suggests_one(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "responses": "r"}])
    error = load_error(str(path))
    assert str(error).startswith(f"{path}: no column 'response'")
    assert "the file has columns: prompt, responses" in str(error)
    assert "did you mean 'responses'?" in str(error)
    assert "columns:" in error.hint


def test_missing_mapped_column_says_it_was_mapped(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"document": "p", "response": "r"}])
    error = load_error(str(path), columns={"prompt": "documents"})
    assert "no column 'documents' (mapped to 'prompt' by columns:)" in str(error)
    assert "did you mean 'document'?" in str(error)


def test_unknown_canonical_name_in_mapping_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    error = load_error(str(path), columns={"promt": "document"})
    assert "columns: 'promt' is not a column of sft data" in str(error)
    assert "did you mean 'prompt'?" in str(error)


def test_prompts_shape_keeps_an_optional_reference(tmp_path):
    with_reference = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "reference": "r", "other": 1}])
    without = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "response": "r"}])
    assert load_rows(str(with_reference), "prompts").column_names == ["prompt", "reference"]
    assert load_rows(str(without), "prompts").column_names == ["prompt"]
    error = load_error([str(with_reference), str(without)], "prompts")
    assert str(error).startswith(f"{without}: has columns prompt")


# ---------------------------------------------------------------------------------------------------
# Preference formats
# ---------------------------------------------------------------------------------------------------

PAIRWISE = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
RANKING = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 1, 2]}]
SCORE = [{"prompt": "p", "response": "r", "score": 0.5}, {"prompt": "p", "response": "s", "score": -2}]


@pytest.mark.parametrize(
    ("rows", "expected"), [(PAIRWISE, "pairwise"), (RANKING, "ranking"), (SCORE, "score")]
)
def test_preference_format_is_detected_from_columns(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    dataset = load_rows(str(path), "preference")
    assert preference_format(dataset) == expected
    layout = next(layout for layout in SHAPES["preference"] if layout.name == expected)
    assert set(dataset.column_names) == set(layout.columns)


def test_score_is_a_float_column_and_ranking_keeps_ties(tmp_path):
    scores = load_rows(str(write_jsonl(tmp_path / "s.jsonl", SCORE)), "preference")
    assert scores.to_dict()["score"] == [0.5, -2.0]
    ranking = load_rows(str(write_parquet(tmp_path / "r.parquet", RANKING)), "preference")
    assert ranking.to_list() == RANKING


def test_preference_format_follows_the_column_mapping(tmp_path):
    rows = [{"prompt": "p", "good": "a", "bad": "b", "response": "r", "score": 1}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    dataset = load_rows(str(path), "preference", columns={"chosen": "good", "rejected": "bad"})
    assert preference_format(dataset) == "pairwise"


def test_columns_of_two_preference_formats_are_ambiguous(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "response": "r", "score": 1}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    error = load_error(str(path), "preference")
    assert str(error).startswith(f"{path}: the columns fit more than one preference format (pairwise, score)")


def test_preference_without_any_format_names_the_closest_and_all_formats(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "chosen": "a", "rejectd": "b"}])
    error = load_error(str(path), "preference")
    assert str(error).startswith(f"{path}: no column 'rejected' for pairwise data")
    assert "did you mean 'rejectd'?" in str(error)
    assert "prompt, responses, ranking (ranking)" in error.hint


def test_files_of_different_preference_formats_do_not_mix(tmp_path):
    pairwise = write_jsonl(tmp_path / "a.jsonl", PAIRWISE)
    score = write_jsonl(tmp_path / "b.jsonl", SCORE)
    error = load_error([str(pairwise), str(score)], "preference")
    assert str(error).startswith(f"{score}: has columns prompt, response, score (score) but {pairwise}")


# ---------------------------------------------------------------------------------------------------
# Bad rows: each message names the file and the row
# ---------------------------------------------------------------------------------------------------

GOOD_SFT = {"prompt": "p", "response": "r"}
GOOD_ROWS = [GOOD_SFT, PAIRWISE[0], RANKING[0], SCORE[0], {"prompt": "p", "reference": "r"}]

BAD_ROWS = {
    "empty text": ("sft", {"prompt": "", "response": "r"}, "'prompt' is empty"),
    "whitespace text": ("sft", {"prompt": "p", "response": " \n\t"}, "'response' is only whitespace"),
    "number as text": ("sft", {"prompt": 42, "response": "r"}, "'prompt' is a number (42), expected text"),
    "list as text": ("sft", {"prompt": "p", "response": ["r"]}, "'response' is a list, expected text"),
    "null text": ("sft", {"prompt": None, "response": "r"}, "'prompt' is missing (null), expected text"),
    "boolean text": ("sft", {"prompt": True, "response": "r"}, "'prompt' is a boolean (true), expected text"),
    "chosen equals rejected": (
        "preference",
        {"prompt": "p", "chosen": "same ", "rejected": " same"},
        "'chosen' and 'rejected' are the same text",
    ),
    "ranking length": (
        "preference",
        {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2]},
        "'ranking' has 2 ranks for 3 responses",
    ),
    "duplicate responses": (
        "preference",
        {"prompt": "p", "responses": ["a", "b", "a "], "ranking": [1, 2, 3]},
        "'responses' has the same response twice ('a')",
    ),
    "one response": (
        "preference",
        {"prompt": "p", "responses": ["a"], "ranking": [1]},
        "'responses' has 1 response, a ranking needs at least 2",
    ),
    "rank not an integer": (
        "preference",
        {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]},
        "'ranking' item 2 is a number (0), expected an integer rank >= 1",
    ),
    "all tied": (
        "preference",
        {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 1]},
        "'ranking' ranks every response the same, so the row prefers nothing",
    ),
    "text score": (
        "preference",
        {"prompt": "p", "response": "r", "score": "high"},
        "'score' is the text 'high', expected a number",
    ),
    "null reference": ("prompts", {"prompt": "p", "reference": None}, "'reference' is missing (null)"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_is_named_by_file_and_row(tmp_path, case):
    shape, bad_row, what = BAD_ROWS[case]
    good_row = next(row for row in GOOD_ROWS if row.keys() == bad_row.keys())
    path = write_jsonl(tmp_path / "data.jsonl", [good_row, bad_row])
    assert str(load_error(str(path), shape)).startswith(f"{path}: row 2: {what}")


@pytest.mark.parametrize("score", ["inf", "nan", "-inf"])
def test_a_non_finite_score_is_a_bad_row(tmp_path, score):
    path = tmp_path / "scores.csv"
    path.write_text(f"prompt,response,score\np,r,1\np,r,{score}\n", encoding="utf-8")
    error = load_error(str(path), "preference")
    assert str(error).startswith(f"{path}: row 2: 'score' is ")
    assert "expected a finite number" in str(error)


def test_a_blank_score_cell_blames_only_its_row(tmp_path):
    # One blank cell makes a CSV column text; the other cells must still read as numbers.
    path = tmp_path / "scores.csv"
    path.write_text("prompt,response,score\np,r,1.5\np,r,\n", encoding="utf-8")
    error = load_error(str(path), "preference")
    assert str(error) == f"{path}: row 2: 'score' is the text '', expected a number"


def test_the_first_problem_is_reported_with_a_count_of_the_rest(tmp_path):
    rows = [GOOD_SFT, {"prompt": "", "response": "r"}, GOOD_SFT, {"prompt": 1, "response": "r"}]
    rows.append({"prompt": "p"})  # the response key is missing: null in that row
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    error = load_error(str(path))
    assert str(error) == f"{path}: row 2: 'prompt' is empty (and 2 more rows with problems)"


def test_row_numbers_count_within_each_file(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD_SFT] * 5)
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD_SFT, {"prompt": "p", "response": ""}])
    assert str(load_error([str(good), str(bad)])) == f"{bad}: row 2: 'response' is empty"


def test_a_mapped_column_is_named_as_in_the_users_file(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"document": "p", "summary": ""}])
    error = load_error(str(path), columns={"prompt": "document", "response": "summary"})
    assert str(error) == f"{path}: row 1: 'summary' is empty"


# ---------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------

BAD_FILES = {
    # name: (file name, content as bytes, expected message after "{path}: ")
    "empty file": ("data.jsonl", b"", "the file is empty"),
    "blank lines only": ("data.jsonl", b"\n\n", "has no rows"),
    "empty JSON array": ("data.json", b"[]", "has no rows"),
    "CSV header only": ("data.csv", b"prompt,response\n", "has no rows"),
    "invalid JSON line": (
        "data.jsonl",
        b'{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": oops}\n',
        "line 3: not valid JSON",
    ),
    "JSON line not an object": (
        "data.jsonl",
        b'{"prompt": "a", "response": "b"}\n[1, 2]\n',
        "line 2: a list, not a JSON object",
    ),
    "JSON array of strings": (
        "data.json",
        b'["a", "b"]',
        "item 1 of the JSON array is the text 'a', not an object",
    ),
    "JSON array with a number": (
        "data.json",
        b'[{"prompt": "a", "response": "b"}, 3]',
        "item 2 of the JSON array is a number (3), not an object",
    ),
    "not UTF-8 JSON": (
        "data.jsonl",
        b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n',
        "line 2 is not UTF-8",
    ),
    "not UTF-8 CSV": ("data.csv", b"prompt,response\na,b\ncaf\xe9,b\n", "line 3 is not UTF-8"),
    "ragged CSV": ("data.csv", b"prompt,response\na,b\nc,d,e\n", "line 3 has 3 fields but the header has 2"),
    "not Parquet": ("data.parquet", b"this is not parquet", "could not be read as Parquet"),
    "unknown extension": (
        "data.txt",
        b"prompt\tresponse\n",
        "unsupported file type '.txt'; supported: .jsonl, .json, .csv, .parquet",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_named_with_the_reason(tmp_path, case):
    name, content, what = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    error = load_error(str(path))
    assert str(error).startswith(f"{path}: {what}"), str(error)


def test_a_short_csv_row_reads_as_an_empty_cell(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,response\na,b\nc\n", encoding="utf-8")
    assert str(load_error(str(path))) == f"{path}: row 2: 'response' is empty"


def test_a_missing_file_or_folder_is_named(tmp_path):
    for missing in (tmp_path / "missing.jsonl", tmp_path / "missing_folder"):
        assert str(load_error(str(missing))) == f"{missing}: no such file or folder"


def test_a_relative_path_that_does_not_exist_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("data/missing.jsonl", "missing.txt", "./data"):
        assert str(load_error(missing)) == f"{missing}: no such file or folder"


def test_a_bad_file_prints_nothing(tmp_path, capfd):
    # datasets logs parser failures to stderr; lorahf's library never prints, the CLI shows the DataError.
    path = tmp_path / "data.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n", encoding="utf-8")
    load_error(str(path))
    assert capfd.readouterr() == ("", "")


def test_a_folder_not_written_by_save_to_disk_is_an_error(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.jsonl").write_text(json.dumps(GOOD_SFT))
    message = str(load_error(str(folder)))
    assert message.startswith(f"{folder}: is a folder but not one written by Dataset.save_to_disk")


def test_loading_writes_nothing_to_the_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    load_rows(str(write_jsonl(tmp_path / "data.jsonl", ROWS)), "sft")
    assert not cache.exists() or not any(cache.iterdir())


# ---------------------------------------------------------------------------------------------------
# Any random JSONL either loads or raises DataError
# ---------------------------------------------------------------------------------------------------

# "type" and "message" are there because datasets 5 reads rows with them as agent traces unless told not to.
KEYS = ["prompt", "response", "chosen", "rejected", "responses", "ranking", "score", "reference"]
KEYS += ["type", "message"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("ab"), inner, max_size=2),
    max_leaves=4,
)
RANDOM_ROWS = st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)), max_size=4)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=RANDOM_ROWS, shape=st.sampled_from(sorted(SHAPES)))
def test_random_jsonl_loads_or_raises_data_error(tmp_path, rows, shape):
    path = tmp_path / "random.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    try:
        dataset = load_rows(str(path), shape)
    except DataError as error:
        assert "\n" not in str(error) and str(error).startswith(str(path))
    else:
        assert len(dataset) == len(rows) > 0


# ---------------------------------------------------------------------------------------------------
# Splitting and batching
# ---------------------------------------------------------------------------------------------------


def numbered(rows: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(rows)]})


def prompts_of(parts) -> tuple[list[str], ...]:
    return tuple(part.to_dict()["prompt"] for part in parts)


def test_split_is_deterministic_disjoint_and_complete():
    dataset = numbered(100)
    train, held_out = prompts_of(split(dataset, eval_fraction=0.1, seed=3))
    assert (train, held_out) == prompts_of(split(dataset, eval_fraction=0.1, seed=3))
    assert len(held_out) == 10
    assert set(train).isdisjoint(held_out)
    assert sorted(train + held_out) == sorted(prompts_of([dataset])[0])
    assert held_out != prompts_of(split(dataset, eval_fraction=0.1, seed=4))[1]


def test_split_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import datasets; from lorahf.data import split;"
        "d = datasets.Dataset.from_dict({'prompt': [str(i) for i in range(50)]});"
        "print(split(d, 0.2, seed=11)[1].to_dict()['prompt'])"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1])}
    other = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    here = split(datasets.Dataset.from_dict({"prompt": [str(i) for i in range(50)]}), 0.2, seed=11)
    assert other.stdout == f"{here[1].to_dict()['prompt']}\n"


@pytest.mark.parametrize(
    ("rows", "eval_fraction", "cap", "eval_rows"),
    [(2, 0.01, None, 1), (1, 0.5, None, 0), (100, 0.0, None, 0), (100, 0.5, 7, 7), (3, 0.99, None, 2)],
)
def test_split_sizes(rows, eval_fraction, cap, eval_rows):
    train, held_out = split(numbered(rows), eval_fraction, seed=0, eval_size_cap=cap)
    assert (len(train), len(held_out)) == (rows - eval_rows, eval_rows)


def test_batches_are_deterministic_complete_and_keep_the_last_partial_batch():
    first = list(batches(10, 4, seed=1, epoch=0))
    assert first == list(batches(10, 4, seed=1, epoch=0))
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert sorted(index for batch in first for index in batch) == list(range(10))
    assert first != list(batches(10, 4, seed=1, epoch=1))
    assert list(batches(5, 2, seed=None)) == [[0, 1], [2, 3], [4]]
    assert all(isinstance(index, int) for batch in first for index in batch)


# ---------------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------------

PAD, EOS, UNK = 0, 1, 2


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that behaves like Flan-T5's: <pad>=0, </s>=1 appended to every text, <unk>=2."""
    words = "summarize : the cat sat on a mat dog ran in park".split()
    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": UNK} | {word: i + 3 for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def test_prompts_keep_eos_when_truncated(tokenizer):
    ids, truncated = encode_prompts(tokenizer, ["the cat sat on a mat", "a dog"], max_tokens=4)
    assert truncated == 1
    assert ids[0] == tokenizer("the cat sat")["input_ids"][:3] + [EOS]
    assert ids[1] == tokenizer("a dog")["input_ids"]
    assert all(sequence[-1] == EOS and len(sequence) <= 4 for sequence in ids)


def test_prompt_template_is_applied_before_tokenising(tokenizer):
    ids, _ = encode_prompts(tokenizer, ["the cat"], max_tokens=10, template="summarize : {prompt}")
    assert ids == [tokenizer("summarize : the cat")["input_ids"]]


def test_a_bad_prompt_template_is_a_data_error(tokenizer):
    with pytest.raises(DataError, match="prompt template"):
        encode_prompts(tokenizer, ["the cat"], max_tokens=10, template="{document}")


def test_a_cut_response_has_no_eos(tokenizer):
    # "the cat sat" is 3 words + EOS = 4 tokens: it fits in 4, and is cut at 3.
    fits, fits_truncated = encode_responses(tokenizer, ["the cat sat"], max_tokens=4)
    cut, cut_truncated = encode_responses(tokenizer, ["the cat sat"], max_tokens=3)
    assert (fits_truncated, cut_truncated) == (0, 1)
    assert fits[0][-1] == EOS and len(fits[0]) == 4
    assert EOS not in cut[0] and cut[0] == fits[0][:3]


def test_truncation_report_counts_and_summarises(tokenizer):
    prompts = ["the cat sat on a mat", "a dog", "the dog ran in the park"]
    responses = ["a cat", "a dog ran in a park", "the dog"]
    prompt_ids, response_ids, report = encode_pairs(tokenizer, prompts, responses, 5, 4)
    assert report == TruncationReport(
        rows=3,
        prompts_truncated=2,
        responses_truncated=1,
        max_prompt_tokens_seen=7,
        max_response_tokens_seen=7,
        prompt_token_limit=5,
        response_token_limit=4,
    )
    assert report.summary() == (
        "2 of 3 prompts truncated to 5 tokens (longest 7); 1 of 3 responses truncated to 4 tokens (longest 7)"
    )
    assert [len(ids) for ids in prompt_ids] == [5, 3, 5] and [len(ids) for ids in response_ids] == [3, 4, 3]


def test_a_prompts_only_report_says_nothing_about_responses():
    report = TruncationReport(
        rows=10, prompts_truncated=1, responses_truncated=0, max_prompt_tokens_seen=9, max_response_tokens_seen=0
    )
    assert report.summary() == "1 of 10 prompts truncated (longest 9)"


def test_encoding_accepts_a_dataset_column(tokenizer):
    # Stages pass `dataset["prompt"]`, which datasets 5 returns as a lazy Column, not a list.
    column = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog ran"]})["prompt"]
    assert encode_prompts(tokenizer, column, max_tokens=8) == encode_prompts(tokenizer, list(column), max_tokens=8)


def test_encoding_nothing_gives_nothing(tokenizer):
    assert encode_prompts(tokenizer, [], max_tokens=4) == ([], 0)
    assert encode_responses(tokenizer, [], max_tokens=4) == ([], 0)


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------


def test_collate_pads_right_and_builds_masks_from_lengths():
    # Token id 0 is also <pad> and T5's decoder start: a mask from `ids != pad` would drop these tokens.
    prompts = [[5, 0, EOS], [6, EOS]]
    responses = [[0, 7, EOS], [8, 9, 0, 4]]
    batch = collate(prompts, responses, pad_token_id=PAD)
    assert batch.input_ids.tolist() == [[5, 0, EOS], [6, EOS, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.response_ids.tolist() == [[0, 7, EOS, PAD], [8, 9, 0, 4]]
    assert batch.response_lengths.tolist() == [3, 4]
    assert torch.equal(batch.response_mask.sum(1), batch.response_lengths)
    assert torch.equal(batch.attention_mask.sum(1), torch.tensor([3, 2]))
    assert batch.response_lengths.dtype == torch.long


def test_collate_without_responses_gives_empty_response_tensors():
    batch = collate([[3, EOS], [4, 5, EOS]], None, pad_token_id=PAD)
    assert batch.input_ids.shape == (2, 3)
    assert batch.response_ids.shape == batch.response_mask.shape == (2, 0)
    assert batch.response_lengths.tolist() == [0, 0]


def test_batch_moves_every_tensor():
    batch = collate([[3, EOS]], [[4, EOS]], pad_token_id=PAD).to("cpu")
    assert isinstance(batch, Seq2SeqBatch)
    assert all(tensor.device.type == "cpu" for tensor in vars(batch).values())


def test_a_decoder_prompt_keeps_its_bos_and_its_end_when_cut(tiny_causal_dir):
    """A decoder-only tokenizer (Llama-style: BOS in front, no EOS) keeps the end of a long prompt, where the template
    hands over to the answer; its responses end with EOS and carry no BOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    text = "Falcons beat Tigers 3-1 in Leeds on a cold Saturday night in front of 16400 fans."
    full, _ = encode_prompts(tokenizer, [text], 200, "{prompt}\nTL;DR:")
    cut, truncated = encode_prompts(tokenizer, [text], 8, "{prompt}\nTL;DR:")
    assert full[0][0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in full[0]
    assert truncated == 1 and len(cut[0]) == 8 and cut[0][0] == tokenizer.bos_token_id and cut[0][1:] == full[0][-7:]
    responses, _ = encode_responses(tokenizer, ["Falcons beat Tigers."], 16)
    assert responses[0][-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in responses[0]


def test_a_chat_prompt_is_the_users_turn_after_the_system_turn(tiny_causal_dir):
    from transformers import AutoTokenizer

    from lorahf.data import PromptFormat

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    ids, _ = encode_prompts(tokenizer, ["Rain fell in York."], 200, PromptFormat("Report: {prompt}", True, "Be brief."))
    text = tokenizer.decode(ids[0])
    assert ids[0].count(tokenizer.bos_token_id) == 1  # the template's own BOS, not a second one from the tokenizer
    assert text.index("Be brief.") < text.index("Report: Rain fell in York.") < text.rindex("<|assistant|>")
    assert text.rstrip().endswith("<|assistant|>")
    with pytest.raises(DataError, match="no chat template"):
        encode_prompts(_without_chat_template(tokenizer), ["x"], 8, PromptFormat(chat=True))


def _without_chat_template(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    return bare
