"""`lorahf merge` and `lorahf generate` on a short 8-bit run of the tiny T5: the merged folder is a plain
transformers model (no peft, no lorahf) that answers exactly like the adapter on the unquantized base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from lorahf import pipeline
from lorahf.cli import main
from lorahf.recipe import validate

from tests.conftest import EXAMPLE_DATA, tiny_run_recipe

PROMPTS = [json.loads(line)["document"] for line in (EXAMPLE_DATA / "test.jsonl").read_text().splitlines()[:6]]

PLAIN_TRANSFORMERS = """
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
folder, prompts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSeq2SeqLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer(["summarize: " + p for p in prompts], return_tensors="pt", padding=True)
ids = model.generate(**inputs, max_new_tokens=16, do_sample=False)
assert not [m for m in sys.modules if m == "peft" or m.startswith(("peft.", "lorahf"))], "not plain transformers"
print(json.dumps(tokenizer.batch_decode(ids, skip_special_tokens=True)))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_with_dropout_dir):
    """An 8-bit sft run with an evaluation (so that the model card has metrics to list); trained with dropout, LoRA's
    included, so that 150 steps give different answers to different prompts (tiny_model_with_dropout_dir)."""
    root = tmp_path_factory.mktemp("merge")
    raw = tiny_run_recipe(root, tiny_model_with_dropout_dir, "merge-toy", ["sft", "evaluate"], sft_steps=150,
                          lora={"sft": {"dropout": 0.05}},
                          evaluate={"data": {"files": [str(EXAMPLE_DATA / "test.jsonl")], "eval_fraction": 0,
                                             "columns": {"prompt": "document"}},
                                    "adapters": ["sft"], "max_prompts": 8})
    return pipeline.run(validate(raw)).folder.root


def _adapter_answers(run_dir, tiny_model_dir) -> list[str]:
    """The sft adapter on the unquantized base, with peft: what the merged model must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapters" / "sft")).eval()
    inputs = tokenizer(["summarize: " + p for p in PROMPTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def test_merged_model_answers_like_the_adapter_with_plain_transformers(run, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["merge", str(run), "--adapter", "sft", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "16 of 16 held-out greedy answers identical" in " ".join(result.output.split())
    plain = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(out), json.dumps(PROMPTS)],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    expected = _adapter_answers(run, tiny_model_dir)
    assert json.loads(plain.stdout) == expected
    assert len(set(expected)) > 1  # real, different answers, not one empty string six times

    # The 8-bit run merged into the unquantized base: plain fp32 weights, no int8 state
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert {str(weights.get_tensor(name).dtype) for name in names} == {"torch.float32"}
    assert not [name for name in names if "SCB" in name or "weight_format" in name or "lora" in name]

    # lorahf generate: from the merged folder (greedy) equals plain transformers; from a file, into JSONL
    answers = CliRunner().invoke(main, ["generate", str(out), "--prompt", PROMPTS[0]])
    assert answers.exit_code == 0 and answers.stdout.strip() == expected[0].strip()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"document": p}) + "\n" for p in PROMPTS))
    written = tmp_path / "answers.jsonl"
    done = CliRunner().invoke(main, ["generate", str(out), "--file", str(prompts), "--column", "document",
                                     "--out", str(written), "--batch-size", "4"])
    assert done.exit_code == 0, done.output
    assert [json.loads(line)["response"] for line in written.read_text().splitlines()] == \
        [e.strip() for e in expected]


def test_merging_twice_writes_the_same_bytes_and_the_card_explains_the_model(run, tmp_path):
    for name in ("first", "second"):
        assert CliRunner().invoke(main, ["merge", str(run), "--adapter", "sft", "--out", str(tmp_path / name)]).exit_code == 0
    first = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert first == sorted(p.name for p in (tmp_path / "second").iterdir())
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "lorahf.json"} <= set(first)
    for name in first:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    card = (tmp_path / "first" / "README.md").read_text()
    assert "rouge_l.sft" in card and "eval_loss" in card  # evaluation and stage metrics
    assert "sft.jsonl` (sha256 " in card and "held it as 8bit" in card and "recipe hash" in card


def test_generate_from_a_run_uses_the_adapter_on_the_runs_base(run):
    done = CliRunner().invoke(main, ["generate", str(run), "--adapter", "sft", "--prompt", PROMPTS[0]])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["merge", "{run}", "--adapter", "nope", "--out", "{tmp}/x"], "has no 'nope' adapter (adapters there: sft)"),
    (["merge", "{tmp}/no-run", "--out", "{tmp}/x"], "not a run folder (no recipe.yaml)"),
    (["merge", "{run}", "--adapter", "reward", "--out", "{tmp}/x"], "scores answers and does not write them"),
    (["generate", "{run}", "--adapter", "nope", "--prompt", "hi"], "'nope' adapter"),
    (["generate", "{run}"], "give exactly one of --prompt TEXT or --file PROMPTS"),
])
def test_bad_merge_and_generate_calls_get_one_line(run, tmp_path, args, message):
    (tmp_path / "no-run").mkdir()
    result = CliRunner().invoke(main, [a.format(run=run, tmp=tmp_path) for a in args])
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
