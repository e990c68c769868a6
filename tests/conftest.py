"""Shared fixtures: the tiny T5 and the tiny Llama are built once per test session from the bundled example's text."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lorahf.tiny import make_tiny

    return make_tiny(EXAMPLE_DATA, tmp_path_factory.mktemp("tiny") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_model_with_dropout_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny T5 with T5's usual dropout (0.1), as `make_tiny` built it before 2026-12-02: the short toy runs of
    test_merge and of test_ppo's word reward were tuned on it (without dropout, 100 to 250 steps on a few hundred rows
    land where every greedy answer is the same sentence). The same weights; only training differs."""
    return with_dropout(tiny_model_dir, tmp_path_factory.mktemp("tiny") / "tiny-t5-dropout", 0.1)


def with_dropout(model_dir: Path, folder: Path, rate: float) -> Path:
    """A copy of the T5 in `model_dir` in `folder` whose config trains with dropout `rate` (the same weights)."""
    import json
    import shutil

    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout_rate": rate}))
    return folder


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    from lorahf.tiny import TinyCausalSpec, make_tiny

    return make_tiny(EXAMPLE_DATA, tmp_path_factory.mktemp("tiny") / "tiny-llama", TinyCausalSpec())


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    from lorahf.tiny import TinyEncoderSpec, make_tiny

    return make_tiny(EXAMPLE_DATA, tmp_path_factory.mktemp("tiny") / "tiny-bert", TinyEncoderSpec())


@pytest.fixture(params=["seq2seq", "causal"])
def family_model_dir(request) -> Path:
    """The tiny base of each family in turn: a test taking this runs on the T5 and on the Llama."""
    return request.getfixturevalue("tiny_model_dir" if request.param == "seq2seq" else "tiny_causal_dir")


@pytest.fixture
def backbone(tiny_model_dir):
    """An 8-bit Backbone of the tiny T5, closed after the test (only one may live per process)."""
    from lorahf.backbone import Backbone

    loaded = Backbone.load(str(tiny_model_dir), quantization="8bit")
    yield loaded
    loaded.close()


@pytest.fixture
def batch(backbone):
    """Four (prompt, response) pairs of different lengths, tokenized and collated."""
    from lorahf.data import collate, encode_prompts, encode_responses

    prompts = ["The Falcons beat the Tigers 3-1 in Leeds on Saturday.", "Attendance was low.",
               "Rain fell all day in York.", "A quiet match."]
    responses = ["Falcons beat Tigers 3-1 in Leeds.", "Low attendance.", "Rain in York.", "Quiet."]
    prompt_ids, _ = encode_prompts(backbone.tokenizer, prompts, max_tokens=64)
    response_ids, _ = encode_responses(backbone.tokenizer, responses, max_tokens=16)
    return collate(prompt_ids, response_ids, backbone.tokenizer.pad_token_id)


def tiny_run_recipe(root: Path, model_dir: Path, name: str, stages: list[str], sft_steps: int, **sections) -> dict:
    """A raw recipe for a short run of the tiny T5 on the bundled example: the gold judge, a few hundred SFT
    rows, short prompts and answers; `sections` adds or replaces top-level keys."""
    return {"name": name, "output_dir": str(root / "runs"), "seed": 0,
            "model": {"name": str(model_dir), "quantization": "8bit"},
            "prompt_template": "summarize: {prompt}", "max_prompt_tokens": 96, "max_response_tokens": 16,
            "judges": {"gold": {"python": f"{EXAMPLE_DATA.parent / 'gold.py'}:score"}},
            "stages": stages,
            "sft": {"data": {"files": [str(EXAMPLE_DATA / "sft.jsonl")], "max_rows": 400,
                             "columns": {"prompt": "document", "response": "summary"}},
                    "learning_rate": 1e-3, "lr_schedule": "constant", "max_steps": sft_steps,
                    "eval_every": sft_steps, "eval_samples": 0},
            **sections}


def tiny_reward_section(max_steps: int, eval_every: int) -> dict:
    """A short reward stage on the example's preferences, with the gate open (min_accuracy 0)."""
    return {"data": {"files": [str(EXAMPLE_DATA / "preferences.jsonl")], "max_rows": 200,
                     "columns": {"prompt": "document", "chosen": "better", "rejected": "worse"}},
            "max_steps": max_steps, "eval_every": eval_every, "min_accuracy": 0.0}


def tiny_ppo_section(**settings) -> dict:
    """A few PPO iterations of 8 prompts, checked against the example's test reports."""
    return {"data": {"files": [str(EXAMPLE_DATA / "prompts.jsonl")], "max_rows": 64,
                     "eval_files": [str(EXAMPLE_DATA / "test.jsonl")], "columns": {"prompt": "document"}},
            "batch_size": 8, "minibatch_size": 4, "epochs": 1, "eval_prompts": 4, **settings}
