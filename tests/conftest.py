"""Shared fixtures: the tiny T5 is built once per test session from the bundled example's text."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lorahf.tiny import make_tiny

    return make_tiny(EXAMPLE_DATA, tmp_path_factory.mktemp("tiny") / "tiny-t5")


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
