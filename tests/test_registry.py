"""The stage registry: every stage is one record, and nothing else keeps a table keyed by stage name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lorahf import recipe as recipes
from lorahf.stages import registry

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", registry.STAGES, ids=lambda stage: stage.name)
def test_every_stage_has_a_whole_record_and_module(stage):
    section = getattr(recipes, stage.section)
    assert issubclass(section, recipes.Section)
    assert recipes.Recipe.model_fields[stage.name].annotation == (section | None)
    assert stage.memory_hint and stage.levers
    assert all(up in registry.NAMES and registry.NAMES.index(up) < registry.NAMES.index(stage.name)
               for up in stage.needs)
    assert stage.data is None or stage.data in ("sft", "preference", "prompts")
    for name in registry.FUNCTIONS:
        assert callable(stage.function(name)), f"lorahf/stages/{stage.name}.py has no {name}()"
    for key, how in stage.levers:
        assert how in ("on", "halve", "shorten", "4bit") and key.split(".")[0] in (
            "model", stage.name, "max_prompt_tokens"), key


def test_the_registry_imports_without_torch():
    code = ("import sys; import lorahf.stages.registry, lorahf.recipe; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


def test_no_module_keeps_a_table_keyed_by_stage_name():
    """A dict with two or more stage names as keys, or a tuple of three or more stage names, is a per-stage table
    (MEMORY_HINTS, STAGE_ORDER...) outside the registry; the one allowed is the recipe's default `stages:`."""
    import ast

    found = []
    for path in (REPO / "lorahf").rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [item.value for item in (node.keys if isinstance(node, ast.Dict) else
                                             node.elts if isinstance(node, (ast.Tuple, ast.List)) else [])
                     if isinstance(item, ast.Constant) and item.value in registry.NAMES]
            if len(names) >= (2 if isinstance(node, ast.Dict) else 3):
                found.append((str(path.relative_to(REPO)), names, node.lineno))
    assert [where[:2] for where in found] == [("lorahf/recipe.py", ["sft", "reward", "ppo", "evaluate"])], found


def test_no_function_in_the_package_is_longer_than_80_lines():
    import ast

    long = [f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in (REPO / "lorahf").rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long


def test_stage_hashes_follow_needs_and_borrowed_data(tmp_path):
    raw = yaml_recipe()
    recipe = recipes.validate(raw)
    dpo_before = recipe.stage_hash("dpo")
    raw["reward"]["learning_rate"] = 1e-5  # dpo does not need the reward model...
    assert recipes.validate(raw).stage_hash("dpo") == dpo_before
    raw["reward"]["data"]["max_rows"] = 10  # ...but reads its preferences
    assert recipes.validate(raw).stage_hash("dpo") != dpo_before
    assert "reward.data" in recipes.validate(raw).stage_inputs("dpo")


def test_ppo_and_dpo_writing_the_same_adapter_is_refused_and_a_name_lets_both_run():
    raw = yaml_recipe(stages=["sft", "reward", "ppo", "dpo", "evaluate"],
                      ppo={"data": {"files": ["p.jsonl"]}}, evaluate={})
    with pytest.raises(recipes.RecipeError, match="dpo.adapter: ppo writes adapters/policy too"):
        recipes.validate(raw)
    raw["dpo"]["adapter"] = "dpo"
    recipe = recipes.validate(raw)
    assert registry.policy_adapters(recipe) == ["policy", "dpo"]
    from lorahf.stages.evaluate import adapters_of

    assert adapters_of(recipe) == ["sft", "policy", "dpo"]


@pytest.mark.parametrize("change, problem", [
    ({"beta": 0}, "dpo.beta: input should be greater than 0"),
    ({"loss": "kto"}, "dpo.loss: must be 'sigmoid', 'ipo', 'hinge', 'orpo' or 'simpo'"),
    ({"label_smoothing": 0.5}, "dpo.label_smoothing: input should be less than 0.5"),
    ({"adapter": "reward"}, "dpo.adapter: 'reward' is taken"),
])
def test_bad_dpo_settings_get_one_line_each(change, problem):
    raw = yaml_recipe()
    raw["dpo"].update(change)
    with pytest.raises(recipes.RecipeError) as caught:
        recipes.validate(raw)
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0], caught.value.problems


def test_dpo_without_preferences_anywhere_is_one_line():
    raw = yaml_recipe(stages=["sft", "dpo"])
    del raw["reward"]
    with pytest.raises(recipes.RecipeError, match="dpo.data: is needed when the recipe has no reward section"):
        recipes.validate(raw)


def yaml_recipe(**top) -> dict:
    return {"name": "r", "model": {"name": "m"}, "stages": ["sft", "reward", "dpo"],
            "sft": {"data": {"files": ["s.jsonl"]}}, "reward": {"data": {"files": ["p.jsonl"]}}, "dpo": {}, **top}
