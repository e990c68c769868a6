"""The bad-input corpus: every broken recipe, data file, model folder or command line in tests/bad_inputs/ gets
one readable error line (and at most one hint line) naming the file, key or row, a non-zero exit, no
traceback, and leaves the run folder that is already there exactly as it was.

Each case is one YAML file in tests/bad_inputs/:
  why          what is wrong, in words
  recipe       patches on the good recipe below: {dotted.key: value}; the value "<delete>" removes the key
  recipe_text  the whole recipe file instead (recipe_hex: its bytes, in hex)
  files        {path: text} written into the case's folder before the command (files_hex: bytes, in hex)
  setup        the name of a function below that builds what text cannot say (a model folder, a huge row)
  argv         the command line (default: run recipe.yaml); {model} is the tiny model's folder
  expect       texts that the error line must contain (the file, key or row it names)
  hint         a text that the hint line must contain (optional)
Commands run in-process through click's CliRunner, in a fresh folder holding a small good data set and a run
folder `runs/case` from an earlier run, whose every file is compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.conftest import EXAMPLE_DATA
from lorahf.cli import main

CASES = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))
DELETE = "<delete>"


def good_recipe(model: Path) -> dict:
    return {"name": "case", "output_dir": "runs", "seed": 0,
            "model": {"name": str(model), "quantization": "8bit"},
            "max_prompt_tokens": 64, "max_response_tokens": 16,
            "stages": ["sft", "reward", "ppo"],
            "sft": {"data": {"files": ["data/sft.jsonl"]}, "max_steps": 2},
            "reward": {"data": {"files": ["data/prefs.jsonl"]}, "max_steps": 2},
            "ppo": {"data": {"files": ["data/prompts.jsonl"]}, "iterations": 1, "batch_size": 4, "minibatch_size": 2}}


def write_good_data(root: Path) -> None:
    def rows(name: str) -> list[dict]:
        with open(EXAMPLE_DATA / name, encoding="utf-8") as handle:
            return [json.loads(line) for line, _ in zip(handle, range(12))]

    (root / "data").mkdir()
    sft = [{"prompt": r["document"], "response": r["summary"]} for r in rows("sft.jsonl")]
    prefs = [{"prompt": r["document"], "chosen": r["better"], "rejected": r["worse"]} for r in rows("preferences.jsonl")]
    prompts = [{"prompt": r["document"]} for r in rows("prompts.jsonl")]
    for name, table in (("sft", sft), ("prefs", prefs), ("prompts", prompts)):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table), encoding="utf-8")


def write_earlier_run(root: Path, recipe: dict) -> Path:
    """The run folder as an earlier run left it: nothing a bad input may change."""
    run = root / "runs" / "case"
    (run / "adapters" / "sft").mkdir(parents=True)
    (run / "samples").mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (run / "metrics.jsonl").write_text('{"stage": "sft", "step": 1, "loss": 5.0}\n', encoding="utf-8")
    (run / "samples" / "sft.jsonl").write_text('{"prompt": "p", "response": "r"}\n', encoding="utf-8")
    (run / "adapters" / "sft" / "adapter_config.json").write_text("{}", encoding="utf-8")
    return run


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its hash (the OS lock file aside: a lock leaves it by design)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".lock"}


def patched(recipe: dict, patches: dict) -> dict:
    recipe = json.loads(json.dumps(recipe))
    for dotted, value in patches.items():
        *parents, key = dotted.split(".")
        node = recipe
        for parent in parents:
            node = node.setdefault(parent, {})
        if value == DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return recipe


# ------------------------------------------------------------------------------ setups text cannot say
def huge_row(root: Path, model: Path) -> None:
    with open(root / "data" / "sft.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "word " * 100_000, "response": "a summary"}) + "\n")


def encoder_only_model(root: Path, model: Path) -> None:
    from transformers import BertConfig, BertModel

    folder = root / "bert"
    BertModel(BertConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8, intermediate_size=16,
                         vocab_size=600, max_position_embeddings=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, folder / name)


def causal_lm_model(root: Path, model: Path) -> None:
    """A tiny Llama (a decoder-only LM, no classifier) where a reward encoder belongs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, hidden_size=8,
                                 intermediate_size=16, vocab_size=600)).save_pretrained(root / "llama")


def three_label_classifier(root: Path, model: Path) -> None:
    """A BERT classifier with 3 labels (`classifier`) and a bare masked-LM BERT (`bert-mlm`), with a tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    shape = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 8, "intermediate_size": 16,
             "vocab_size": 600, "max_position_embeddings": 64}
    BertForSequenceClassification(BertConfig(**shape, num_labels=3)).save_pretrained(root / "classifier")
    BertForMaskedLM(BertConfig(**shape)).save_pretrained(root / "bert-mlm")
    for folder in ("classifier", "bert-mlm"):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model / name, root / folder / name)


def tokenizer_of_another_model(root: Path, model: Path) -> None:
    """The tiny model with a vocabulary of 100 beside its tokenizer of several hundred tokens."""
    folder = root / "mismatched"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 100
    (folder / "config.json").write_text(json.dumps(config))


def no_bitsandbytes(root: Path, model: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError


def missing_api_key(root: Path, model: Path, monkeypatch) -> None:
    monkeypatch.delenv("LORAHF_TEST_NO_SUCH_KEY", raising=False)


SETUPS = {f.__name__: f for f in (huge_row, encoder_only_model, causal_lm_model, three_label_classifier,
                                   tokenizer_of_another_model, no_bitsandbytes, missing_api_key)}


# ------------------------------------------------------------------------------------------- the test
def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case_file", CASES, ids=[case.stem for case in CASES])
def test_a_bad_input_gets_one_clear_line_and_changes_nothing(case_file, tiny_model_dir, tmp_path, monkeypatch):
    case = yaml.safe_load(case_file.read_text(encoding="utf-8"))
    if case.get("needs_no_gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    write_good_data(tmp_path)
    recipe = good_recipe(tiny_model_dir)
    run = write_earlier_run(tmp_path, recipe)
    for path, text in (case.get("files") or {}).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text, encoding="utf-8")
    for path, hexed in (case.get("files_hex") or {}).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(bytes.fromhex(hexed))
    if "recipe_text" in case:
        (tmp_path / "recipe.yaml").write_text(case["recipe_text"], encoding="utf-8")
    elif "recipe_hex" in case:
        (tmp_path / "recipe.yaml").write_bytes(bytes.fromhex(case["recipe_hex"]))
    else:
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(patched(recipe, case.get("recipe") or {})),
                                              encoding="utf-8")
    if case.get("setup"):
        setup = SETUPS[case["setup"]]
        setup(tmp_path, tiny_model_dir, monkeypatch) if setup.__code__.co_argcount == 3 else setup(tmp_path,
                                                                                                     tiny_model_dir)
    before = snapshot(run)
    argv = [arg.replace("{model}", str(tiny_model_dir)) for arg in case.get("argv", ["run", "recipe.yaml"])]

    result = CliRunner().invoke(main, argv)

    output = result.stderr + result.stdout
    assert isinstance(result.exception, SystemExit), f"{case_file.name}: {result.exception!r}\n{output}"
    assert result.exit_code != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), f"{case_file.name}: not one line:\n{output}"
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), f"{case_file.name}: the second line is not a hint:\n{output}"
    for text in case["expect"]:
        assert text in lines[0], f"{case_file.name}: {text!r} not in the error line:\n{lines[0]}"
    if case.get("hint"):
        assert len(lines) == 2 and case["hint"] in lines[1], f"{case_file.name}: hint {case['hint']!r} missing:\n{output}"
    assert snapshot(run) == before, f"{case_file.name}: the run folder changed"
