"""`lorahf init`: the bundled example's files and three differently-named variants (CSV, JSONL, Parquet) become
recipes that validate and run on the tiny model; a column names cannot settle is asked about in a terminal."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from lorahf import pipeline
from lorahf import recipe as recipes
from lorahf.cli import main
from tests.conftest import EXAMPLE_DATA

# A few steps of every stage, so that a written recipe is shown to run end to end on the tiny model
SHORT = ["sft.max_steps=3", "sft.eval_every=3", "reward.max_steps=2", "reward.eval_every=2", "reward.min_accuracy=0",
         "ppo.iterations=1", "ppo.batch_size=4", "ppo.eval_prompts=2", "evaluate.max_prompts=4"]


def rows(name: str, count: int = 48) -> list[dict]:
    with open(EXAMPLE_DATA / name, encoding="utf-8") as handle:
        return [json.loads(line) for line, _ in zip(handle, range(count))]


def init(folder, *args: str) -> tuple[str, dict]:
    result = CliRunner().invoke(main, ["init", *args, "--out", str(folder / "recipe.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, yaml.safe_load((folder / "recipe.yaml").read_text())


def run_short(folder, tiny_model_dir, *more: str) -> dict:
    recipe = recipes.load(folder / "recipe.yaml", SHORT + [f"model.name={tiny_model_dir}",
                                                           f"output_dir={folder / 'runs'}", *more])
    result = pipeline.run(recipe)
    assert result.ran == recipe.stages
    return result.metrics


def test_the_bundled_example_becomes_a_recipe(tmp_path):
    output, raw = init(tmp_path, str(EXAMPLE_DATA))
    assert raw["stages"] == ["sft", "reward", "ppo", "evaluate"]
    assert raw["sft"]["data"]["columns"] == {"prompt": "document", "response": "summary"}
    assert raw["reward"]["data"]["files"] == [str(EXAMPLE_DATA / "preferences.jsonl")]  # the most rows of 3 layouts
    assert raw["reward"]["data"]["columns"] == {"prompt": "document", "chosen": "better", "rejected": "worse"}
    assert raw["ppo"]["data"]["files"] == [str(EXAMPLE_DATA / "prompts.jsonl")]
    assert raw["ppo"]["data"]["eval_files"] == [str(EXAMPLE_DATA / "test.jsonl")]
    assert "rankings.jsonl: not used" in output and "scores.jsonl: not used" in output
    assert f"lorahf validate {tmp_path / 'recipe.yaml'}" in " ".join(output.split())
    # its run: tests/test_readme.py runs the README's lines, which make and run this same recipe


def test_three_differently_named_variants_become_recipes_that_run(tmp_path, tiny_model_dir):
    sft, pairs, prompts, test = rows("sft.jsonl"), rows("preferences.jsonl"), rows("prompts.jsonl"), rows("test.jsonl")
    scores = rows("scores.jsonl")

    csv = tmp_path / "csv"  # news-style names, CSV, a held-out file by its name
    csv.mkdir()
    pd.DataFrame({"article": [r["document"] for r in sft], "highlights": [r["summary"] for r in sft]}).to_csv(
        csv / "train.csv", index=False)
    pd.DataFrame({"article": [r["document"] for r in pairs], "good_summary": [r["better"] for r in pairs],
                  "bad_summary": [r["worse"] for r in pairs]}).to_csv(csv / "comparisons.csv", index=False)
    pd.DataFrame({"article": [r["document"] for r in prompts]}).to_csv(csv / "unlabelled.csv", index=False)
    pd.DataFrame({"article": [r["document"] for r in test], "highlights": [r["reference"] for r in test]}).to_csv(
        csv / "validation.csv", index=False)

    jsonl = tmp_path / "jsonl"  # instruction-style names, an id column, no prompts file: PPO takes the SFT prompts
    jsonl.mkdir()
    write_jsonl(jsonl / "demos.jsonl", [{"id": i, "instruction": r["document"], "output": r["summary"]}
                                        for i, r in enumerate(sft)])
    write_jsonl(jsonl / "prefs.jsonl", [{"id": i, "prompt": r["document"], "chosen": r["better"],
                                         "rejected": r["worse"]} for i, r in enumerate(pairs)])

    parquet = tmp_path / "parquet"  # camelCase names, ratings instead of pairs
    parquet.mkdir()
    pd.DataFrame({"postText": [r["document"] for r in sft], "tldr": [r["summary"] for r in sft]}).to_parquet(
        parquet / "sft.parquet")
    pd.DataFrame({"postText": [r["document"] for r in scores], "tldr": [r["summary"] for r in scores],
                  "humanRating": [r["rating"] for r in scores]}).to_parquet(parquet / "ratings.parquet")
    pd.DataFrame({"postText": [r["document"] for r in prompts]}).to_parquet(parquet / "queries.parquet")

    _, raw = init(csv, str(csv))
    assert raw["sft"]["data"]["columns"] == {"prompt": "article", "response": "highlights"}
    assert raw["reward"]["data"]["columns"] == {"prompt": "article", "chosen": "good_summary",
                                                "rejected": "bad_summary"}
    assert raw["ppo"]["data"]["files"] == [str(csv / "unlabelled.csv")]
    assert raw["ppo"]["data"]["eval_files"] == [str(csv / "validation.csv")]
    assert raw["ppo"]["data"]["columns"] == {"prompt": "article", "reference": "highlights"}

    _, raw = init(jsonl, str(jsonl / "demos.jsonl"), str(jsonl / "prefs.jsonl"))
    assert raw["sft"]["data"]["columns"] == {"prompt": "instruction", "response": "output"}
    assert "columns" not in raw["reward"]["data"]  # already lorahf's names
    assert raw["ppo"]["data"] == {"files": [str(jsonl / "demos.jsonl")],  # held-out SFT pairs give references
                                  "columns": {"prompt": "instruction", "reference": "output"}}

    _, raw = init(parquet, str(parquet))
    assert raw["reward"]["data"]["columns"] == {"prompt": "postText", "response": "tldr", "score": "humanRating"}
    assert raw["ppo"]["data"]["files"] == [str(parquet / "queries.parquet")]

    for folder in (csv, jsonl, parquet):
        validated = CliRunner().invoke(main, ["validate", str(folder / "recipe.yaml")])
        assert validated.exit_code == 0, validated.output
        metrics = run_short(folder, tiny_model_dir)
        assert metrics["reward"]["eval_pairs"] > 0 and metrics["ppo"]["iterations"] == 1


def write_jsonl(path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


def test_unnamed_columns_are_guessed_by_their_values_and_asked_about_in_a_terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    sft = rows("sft.jsonl", 20)
    pd.DataFrame({"left": [r["summary"] for r in sft], "right": [r["document"] for r in sft]}).to_csv(
        tmp_path / "pairs.csv", index=False)

    # no terminal: the longer texts are the prompts, and the output says it guessed
    output, raw = init(tmp_path, str(tmp_path / "pairs.csv"))
    assert raw["sft"]["data"]["columns"] == {"prompt": "right", "response": "left"}
    assert "prompt is right, a guess among right, left" in " ".join(output.split())

    # a terminal: asked, and the answer is what the recipe maps (the other column takes the other role)
    child = pexpect.spawn(sys.executable, ["-m", "lorahf", "init", "pairs.csv", "--out", "asked.yaml"], cwd=tmp_path,
                          encoding="utf-8", timeout=120, dimensions=(50, 200))
    child.expect("which column holds the")
    child.expect(r"column .*: ")
    child.sendline("left")
    child.expect(pexpect.EOF)
    assert "wrote" in child.before
    raw = yaml.safe_load((tmp_path / "asked.yaml").read_text())
    assert raw["sft"]["data"]["columns"] == {"prompt": "left", "response": "right"}


def test_init_refuses_to_replace_a_recipe_and_names_a_file_it_cannot_use(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: mine\n")
    result = CliRunner().invoke(main, ["init", str(EXAMPLE_DATA / "sft.jsonl"), "--out", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1 and "exists" in result.output
    assert (tmp_path / "recipe.yaml").read_text() == "name: mine\n"
    write_jsonl(tmp_path / "numbers.jsonl", [{"a": 1, "b": 2}])
    result = CliRunner().invoke(main, ["init", str(tmp_path / "numbers.jsonl"), "--out", str(tmp_path / "new.yaml")])
    assert result.exit_code == 1 and "numbers.jsonl: no column looks like a prompt" in " ".join(result.output.split())
    result = CliRunner().invoke(main, ["init", str(EXAMPLE_DATA / "prompts.jsonl"), "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1 and "no file has prompt -> response pairs" in " ".join(result.output.split())


# ------------------------------------------------------------------------------------- settings per base
def test_the_tiny_base_gets_the_quickstarts_measured_settings(tmp_path, tiny_model_dir):
    output, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", str(tiny_model_dir))
    text = (tmp_path / "recipe.yaml").read_text()
    assert "recipes/quickstart.yaml" in text and "lorahf_tiny.json" in text  # says where the settings came from
    assert raw["model"]["quantization"] == "8bit" and raw["model"]["gradient_checkpointing"] is False
    sft, reward, ppo = raw["sft"], raw["reward"], raw["ppo"]
    assert (sft["learning_rate"], sft["lr_schedule"], sft["batch_size"], sft["epochs"]) == (1e-3, "constant", 16, 3)
    assert (reward["learning_rate"], reward["lr_schedule"], reward["batch_size"], reward["epochs"]) == \
        (1e-4, "constant", 16, 1)
    assert reward["likelihood_term"] is True and reward["data"]["eval_fraction"] == 0.1
    assert (ppo["iterations"], ppo["batch_size"], ppo["minibatch_size"], ppo["temperature"]) == (60, 32, 8, 1.0)
    assert ppo["policy_learning_rate"] == 2e-4 and "value_learning_rate" not in ppo  # rloo: no value model
    assert raw["evaluate"]["temperature"] == 1.0
    # about 10 held-out checks over each stage's run: 2850 of 3000 SFT pairs train, 2250 of 2500 preference pairs
    assert 8 <= -(-2850 // 16) * 3 / sft["eval_every"] <= 15
    assert 8 <= -(-2250 // 16) * 1 / reward["eval_every"] <= 15
    # token limits counted by the tiny base's own tokenizer: the longest sampled prompt fits, within 16 tokens
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = max(len(tokenizer(row["document"]).input_ids) for row in rows("sft.jsonl", 200))
    assert longest <= raw["max_prompt_tokens"] < longest + 16 and "by this base's tokenizer" in text


def test_a_tiny_llama_folder_becomes_a_chat_recipe_with_the_causal_quickstarts_settings_that_runs(
        tmp_path, tiny_causal_dir):
    output, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", str(tiny_causal_dir))
    text = (tmp_path / "recipe.yaml").read_text()
    assert "recipes/quickstart-causal.yaml" in text and "tiny Llama" in text
    shipped = yaml.safe_load(open("recipes/quickstart-causal.yaml", encoding="utf-8"))
    for stage, keys in {"sft": ("learning_rate", "batch_size", "epochs", "lr_schedule"),
                        "reward": ("learning_rate", "batch_size", "epochs", "likelihood_term"),
                        "ppo": ("iterations", "batch_size", "minibatch_size", "temperature", "policy_learning_rate")}.items():
        assert {k: raw[stage][k] for k in keys} == {k: shipped[stage][k] for k in keys}, stage
    # its tokenizer has a chat template: prompts become user turns, and the recipe runs through it
    assert raw["chat_template"] is True and raw["prompt_template"] == "{prompt}"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    longest = max(len(tokenizer(row["document"]).input_ids) for row in rows("sft.jsonl", 200))
    assert longest <= raw["max_prompt_tokens"]
    validated = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml")])
    assert validated.exit_code == 0, validated.output
    metrics = run_short(tmp_path, tiny_causal_dir, "ppo.minibatch_size=4")
    assert metrics["reward"]["eval_pairs"] > 0 and metrics["ppo"]["iterations"] == 1


@pytest.mark.parametrize("shape, settings, said", [
    ({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
      "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}, "smollm2-135m",
     "the nearest size to this base's 135M parameters"),
    ({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
      "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}, "qwen2.5-1.5b",
     "the nearest size to this base's 1.2B parameters"),  # Llama-3.2-1B's shape
    ({"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "vocab_size": 1000}, "quickstart-causal", "tiny-like too"),
])
def test_a_decoder_only_base_gets_the_settings_of_the_nearest_shipped_decoder(tmp_path, shape, settings, said):
    from transformers import LlamaConfig

    base = tmp_path / "my-llama"
    LlamaConfig(**shape).save_pretrained(base)  # no weights: only the config is read
    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", str(base))
    text = " ".join(line.lstrip("# ") for line in (tmp_path / "recipe.yaml").read_text().splitlines())
    assert said in text and f"recipes/{settings}.yaml" in text
    assert raw["prompt_template"] == "{prompt}\nAnswer:" and "chat_template" not in raw  # no tokenizer there


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-360M",
                                    "HuggingFaceTB/SmolLM2-1.7B", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B",
                                    "Qwen/Qwen2.5-7B"])
def test_each_shipped_decoder_gets_the_settings_of_its_recipe(tmp_path, hub_id):
    from lorahf.init import DECODERS

    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", hub_id)
    source = DECODERS[hub_id][0].source
    shipped = yaml.safe_load(open(source, encoding="utf-8"))
    assert shipped["model"]["name"] == hub_id and source in (tmp_path / "recipe.yaml").read_text()
    for key in ("quantization", "gradient_checkpointing"):
        assert raw["model"][key] == shipped["model"][key], key
    for stage, keys in {"sft": ("learning_rate", "batch_size", "epochs"), "reward": ("learning_rate", "batch_size"),
                        "ppo": ("batch_size", "minibatch_size", "micro_batch_size")}.items():
        assert {k: raw[stage][k] for k in keys} == {k: shipped[stage][k] for k in keys}, stage
    card = open(source, encoding="utf-8").readline()
    assert f"--gpu-memory {DECODERS[hub_id][0].gpu_memory}" in (tmp_path / "recipe.yaml").read_text()
    assert f"{DECODERS[hub_id][0].gpu_memory.removesuffix('GiB')} GB GPU" in card
    assert raw["prompt_template"] == "{prompt}\nAnswer:"  # a hub id without -Instruct: a base model's template


def test_an_instruct_hub_id_gets_its_base_recipes_settings_and_the_chat_template(tmp_path):
    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", "Qwen/Qwen2.5-7B-Instruct")
    shipped = yaml.safe_load(open("recipes/qwen2.5-7b.yaml", encoding="utf-8"))
    assert raw["model"]["quantization"] == shipped["model"]["quantization"] == "4bit"
    assert raw["sft"]["learning_rate"] == shipped["sft"]["learning_rate"]
    assert raw["chat_template"] is True


@pytest.mark.parametrize("size", ["small", "base", "large", "xl", "xxl"])
def test_each_flan_t5_size_gets_the_settings_of_its_shipped_recipe(tmp_path, size):
    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", f"google/flan-t5-{size}")
    shipped = yaml.safe_load(open(f"recipes/flan-t5-{size}.yaml", encoding="utf-8"))
    assert raw["model"]["quantization"] == shipped["model"]["quantization"]
    assert raw["model"]["gradient_checkpointing"] == shipped["model"]["gradient_checkpointing"]
    for stage, keys in {"sft": ("learning_rate", "batch_size", "epochs"), "reward": ("learning_rate", "batch_size"),
                        "ppo": ("batch_size", "minibatch_size")}.items():
        assert {k: raw[stage][k] for k in keys} == {k: shipped[stage][k] for k in keys}, stage
    assert f"recipes/flan-t5-{size}.yaml" in (tmp_path / "recipe.yaml").read_text()
    if size == "xxl":
        assert raw["model"]["quantization"] == "4bit" and "--gpu-memory 24GiB" in (tmp_path / "recipe.yaml").read_text()


@pytest.mark.parametrize("shape, settings, said", [
    ({"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8}, "flan-t5-small",
     "the nearest size to this base's 61M parameters"),
    ({"d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16, "feed_forward_proj": "gated-gelu"},
     "flan-t5-large", "this base has flan-t5-large's dimensions"),
    ({"d_model": 64, "d_ff": 256, "num_layers": 2, "num_heads": 4, "d_kv": 16, "vocab_size": 1000}, "quickstart",
     "tiny-like too (0.3M parameters, under 10M)"),
])
def test_another_base_gets_the_settings_of_the_nearest_size_by_its_parameters(tmp_path, shape, settings, said):
    from transformers import T5Config

    base = tmp_path / "my-t5"
    T5Config(**{"vocab_size": 32128, "d_kv": 64, **shape}).save_pretrained(base)  # no weights: only the config is read
    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", str(base))
    text = " ".join(line.lstrip("# ") for line in (tmp_path / "recipe.yaml").read_text().splitlines())
    assert said in text and f"recipes/{settings}.yaml" in text
    expected = {"flan-t5-small": (3e-4, 16, 2), "flan-t5-large": (3e-4, 8, 2), "quickstart": (1e-3, 16, 3)}[settings]
    assert (raw["sft"]["learning_rate"], raw["sft"]["batch_size"], raw["sft"]["epochs"]) == expected
    assert raw["model"]["gradient_checkpointing"] is (settings == "flan-t5-large")


def test_a_hub_id_that_cannot_be_reached_gets_flan_t5_base_settings_at_once(tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # a name that never resolves
    started = time.monotonic()
    _, raw = init(tmp_path, str(EXAMPLE_DATA), "--base", "somebody/some-t5")
    assert time.monotonic() - started < 10  # the hub client's retries take about 20 s
    text = " ".join(line.lstrip("# ") for line in (tmp_path / "recipe.yaml").read_text().splitlines())
    assert "flan-t5-base's (recipes/flan-t5-base.yaml), a guess: this base's size is unknown" in text
    assert "hub.invalid cannot be reached" in text
    assert (raw["sft"]["learning_rate"], raw["sft"]["batch_size"], raw["model"]["quantization"]) == (3e-4, 8, "8bit")
