"""`lorahf plan`: weights as loaded, training steps as they run (on the CPU, exactly), and every shipped recipe
fits the card its header names. Its GPU accuracy is in BENCHMARKS.md (benchmarks/plan_check.py)."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from click.testing import CliRunner

from lorahf import plan
from lorahf import recipe as recipes
from lorahf.backbone import Backbone
from lorahf.cli import main
from lorahf.errors import LorahfError
from tests.conftest import REPO

SHIPPED = sorted((REPO / "recipes").glob("flan-t5-*.yaml"))
SHIPPED_CAUSAL = [REPO / "recipes" / f"{name}.yaml" for name in
                  ("smollm2-135m", "smollm2-360m", "smollm2-1.7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b")]


def _recipe(model, quantization="8bit", checkpointing=False, batch=8):
    return recipes.validate({
        "name": "plan", "model": {"name": str(model), "quantization": quantization,
                                  "gradient_checkpointing": checkpointing},
        "max_prompt_tokens": 64, "max_response_tokens": 16, "stages": ["sft", "reward"],
        "sft": {"data": {"files": ["unused.jsonl"]}, "batch_size": batch},
        "reward": {"data": {"files": ["unused.jsonl"]}, "batch_size": batch // 2}})


@pytest.mark.parametrize("quantization", ["8bit", "none"])
def test_planned_weights_are_the_loaded_models_bytes(family_model_dir, quantization):
    """T5 and Llama alike: what bitsandbytes converts (the LM head and T5's wo stay out) and what stays fp32."""
    backbone = Backbone.load(str(family_model_dir), quantization=quantization, device="cpu")
    try:
        loaded = backbone.memory_report().base_bytes
    finally:
        backbone.close()
    config = plan.model_config(str(family_model_dir))
    assert plan.base_bytes(config, quantization, torch.float32) == loaded


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_planned_training_step_is_what_the_real_step_allocates_on_the_cpu(family_model_dir, checkpointing):
    """The planner traces lorahf's own SFT step on the meta device; the same step on the 8-bit tiny model, T5 or
    Llama (real bitsandbytes layers, real tensors), allocates exactly as much."""
    from lorahf.data import collate
    from lorahf.stages.sft import response_loss

    recipe = _recipe(family_model_dir, checkpointing=checkpointing)
    predicted = plan.Shape(plan.model_config(str(family_model_dir)), torch.float32, "cpu",
                           padded=False).trace_sft(recipe, 8)
    backbone = Backbone.load(str(family_model_dir), quantization="8bit", device="cpu",
                             gradient_checkpointing=checkpointing)
    try:
        backbone.add_adapter("sft", recipe.lora.sft)
        backbone.use("sft").set_trainable("sft")
        backbone.model.train()
        batch = collate([[5] * 63 + [1]] * 8, [[6] * 15 + [1]] * 8, 0)
        measured = plan._peak(lambda: plan._train_step(response_loss(backbone, batch), backbone.parameters("sft")))
    finally:
        backbone.close()
    assert predicted == pytest.approx(measured, rel=0.01)


def test_memory_sizes_parse_and_nonsense_is_one_line():
    assert plan.parse_memory("12GiB") == 12 * 2 ** 30
    assert plan.parse_memory("24 GB") == 24 * 10 ** 9
    assert plan.parse_memory("16") == 16 * 2 ** 30
    with pytest.raises(LorahfError, match="--gpu-memory 'lots'"):
        plan.parse_memory("lots")


def test_every_shipped_recipe_fits_the_card_it_names():
    """Each recipes/flan-t5-*.yaml and each decoder-only base's recipe names its card in its first line and another
    card's overrides in its third; `lorahf plan` (configs known without a hub) says every stage fits."""
    assert len(SHIPPED) == 5
    for path in SHIPPED + SHIPPED_CAUSAL:
        lines = path.read_text().splitlines()
        card = re.search(r"on one (\d+) GB GPU", lines[0])[1]
        result = CliRunner().invoke(main, ["plan", str(path), "--gpu-memory", f"{card}GiB"])
        assert result.exit_code == 0, result.output
        assert "needs about" not in result.output and result.output.count("yes") == 4, result.output
        other = lines[2].removeprefix("# ")
        sets = shlex.split(other.split(":", 1)[1]) if "--set" in other else []
        recipes.load(path, [value for flag, value in zip(sets[::2], sets[1::2]) if flag == "--set"])


def test_a_recipe_too_big_for_the_card_gets_the_setting_to_change(tiny_model_dir):
    result = CliRunner().invoke(main, ["plan", str(REPO / "recipes" / "flan-t5-base.yaml"), "--gpu-memory", "5GiB"])
    assert result.exit_code == 0, result.output
    assert "sft: needs about" in result.output and "set model.gradient_checkpointing: true" in result.output


def test_a_deep_models_training_steps_are_planned_from_shallow_copies_to_the_byte(tiny_model_dir):
    """`plan` traces a training step on 2- and 3-block copies of a deep model and extrapolates per block; the
    full trace must give the same bytes, for each stage's step, with and without gradient checkpointing."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_layers, config.num_decoder_layers = 6, 4
    for checkpointing in ("false", "true"):
        recipe = recipes.load(REPO / "recipes" / "flan-t5-small.yaml", [f"model.name={tiny_model_dir}",
                                                                       f"model.gradient_checkpointing={checkpointing}"])
        steps = [lambda shape: shape.trace_sft(recipe, 4)]
        if checkpointing == "true":  # the less regular case (each block's forward runs twice)
            steps += [lambda shape: shape.trace_reward(recipe, 4), lambda shape: shape.trace_ppo_update(recipe, 2, 4)]
        for step in steps:
            def measure(layers):
                return step(plan.Shape(layers, torch.bfloat16, "cuda"))
            assert plan.extrapolated(config, measure) == measure(config)


def test_a_deep_decoders_training_steps_are_planned_from_shallow_copies_to_the_byte(tiny_causal_dir):
    """The same for a decoder-only base: one stack of blocks, extrapolated over num_hidden_layers from 2 and 3."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_causal_dir)
    config.num_hidden_layers = 7
    for checkpointing in ("false", "true"):
        recipe = recipes.load(REPO / "recipes" / "smollm2-135m.yaml", [f"model.name={tiny_causal_dir}",
                                                                       f"model.gradient_checkpointing={checkpointing}"])
        steps = [lambda shape: shape.trace_sft(recipe, 4)]
        if checkpointing == "true":  # as for T5 (without checkpointing, PPO's update at 7 blocks traced 0.25 % above)
            steps += [lambda shape: shape.trace_reward(recipe, 4), lambda shape: shape.trace_ppo_update(recipe, 2, 4)]
        for step in steps:
            def measure(layers):
                return step(plan.Shape(layers, torch.bfloat16, "cuda"))
            assert plan.extrapolated(config, measure) == measure(config)
            assert plan.by_layers(config, measure) == measure(config)


@pytest.mark.parametrize("name, parameters", [
    ("HuggingFaceTB/SmolLM2-135M", 134.5e6), ("HuggingFaceTB/SmolLM2-360M-Instruct", 361.8e6),
    ("HuggingFaceTB/SmolLM2-1.7B", 1.711e9), ("Qwen/Qwen2.5-0.5B", 0.494e9), ("Qwen/Qwen2.5-1.5B-Instruct", 1.544e9),
    ("Qwen/Qwen2.5-7B", 7.616e9)])
def test_the_decoder_only_bases_plan_without_a_hub_at_their_published_size(name, parameters, monkeypatch):
    """`plan.CAUSAL`'s dimensions build models of the sizes their model cards give (Qwen2's q, k, v biases included)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = plan.model_config(name)
    model = plan.meta_model(config, torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(parameters, rel=0.002)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to look up or reach a host fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was used: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_recipe_that_builds_its_base_plans_before_the_base_exists_as_after(tiny_model_dir, tmp_path, monkeypatch,
                                                                            no_network):
    """The quickstart on a fresh checkout: models/tiny-t5 is built by the first run (`make_tiny_from`). `plan`
    knows the tiny base's config without building it or asking a hub, and plans to the byte what it plans once
    the base is built (tiny_model_dir: the same spec, the same data)."""
    monkeypatch.chdir(tmp_path)  # no models/tiny-t5 here
    quickstart = REPO / "recipes" / "quickstart.yaml"
    before = plan.plan(recipes.load(quickstart))
    after = plan.plan(recipes.load(quickstart, [f"model.name={tiny_model_dir}"]))
    assert [(s.stage, s.parts) for s in before] == [(s.stage, s.parts) for s in after]
    result = CliRunner().invoke(main, ["plan", str(quickstart)])
    assert result.exit_code == 0, result.output
    assert "models/tiny-t5" in result.output and "evaluate" in result.output
    assert not (tmp_path / "models").exists()  # planned, not built


@pytest.mark.parametrize("name, expected", [
    ("nobody-here/no-such-model-xyz", "nobody-here/no-such-model-xyz: not a local folder, not in the hub cache, "
                                      "and HF_HUB_OFFLINE is set"),
    ("{folder}", "{folder}: not a model folder (no config.json)")])
def test_a_base_that_is_not_there_fails_at_once_in_one_line(tmp_path, monkeypatch, name, expected):
    """As `lorahf run` refuses it (backbone.check_folder), not after the hub client's retries; the Flan-T5 sizes
    still plan without a hub."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    name, expected = name.format(folder=tmp_path), expected.format(folder=tmp_path)
    start = time.monotonic()
    with pytest.raises(LorahfError) as error:
        plan.plan(_recipe(name))
    assert time.monotonic() - start < 5
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert plan.model_config("google/flan-t5-large").d_model == 1024
