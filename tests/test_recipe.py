"""Recipes are strict: every problem at once, one line each, with its key path and line number."""

from __future__ import annotations

import os
import textwrap

import pytest

from lorahf import recipe as recipes
from lorahf.errors import RecipeError

GOOD = """\
name: demo
model:
  name: models/tiny-t5
stages: [sft]
sft:
  data:
    files: data/sft.jsonl
    columns: {prompt: document, response: summary}
  learning_rate: 1.0e-3
"""


def _write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_recipe_fills_defaults(tmp_path):
    recipe = recipes.load(_write(tmp_path, GOOD))
    assert recipe.model.quantization == "8bit"
    assert recipe.sft.data.files == ["data/sft.jsonl"]  # one file may be given as a string
    assert recipe.sft.learning_rate == 1e-3
    assert recipe.lora.sft.r == 16
    assert str(recipe.run_dir) == "runs/demo"


def test_three_mistakes_are_reported_together_with_lines(tmp_path):
    text = GOOD.replace("  name: models/tiny-t5", "  name: models/tiny-t5\n  quantisation: 8bit") \
               .replace("learning_rate: 1.0e-3", "learning_rate: fast") \
               .replace("stages: [sft]", "stages: [sft, ppo2]")
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    problems = error.value.problems
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "line 4: model.quantisation: unknown key (did you mean 'quantization'?)" in joined
    assert "stages[1]" in joined and "'ppo2'" in joined
    assert "sft.learning_rate" in joined and "'fast'" in joined
    assert all("\n" not in p for p in problems)


def test_overrides_are_applied_and_validated_the_same_way(tmp_path):
    path = _write(tmp_path, GOOD)
    recipe = recipes.load(path, ["sft.learning_rate=5e-4", "model.quantization=none", "seed=7"])
    assert recipe.sft.learning_rate == 5e-4 and recipe.model.quantization == "none" and recipe.seed == 7
    with pytest.raises(RecipeError) as error:
        recipes.load(path, ["sft.lr=1", "model.quantization=3bit", "nonsense"])
    joined = "\n".join(error.value.problems)
    assert "--set sft.lr: unknown key (did you mean 'learning_rate'?)" in joined
    assert "--set model.quantization: must be '8bit', '4bit' or 'none', not '3bit'" in joined
    assert "expected key.path=value" in joined


def test_cross_field_problems(tmp_path):
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, GOOD.replace("stages: [sft]", "stages: [reward, sft]")))
    joined = "\n".join(error.value.problems)
    assert "lists 'reward' but the recipe has no `reward:` section" in joined
    assert "must run in the order ['sft', 'reward']" in joined


def test_judge_and_evaluate_problems_are_gathered(tmp_path):
    text = GOOD.replace("stages: [sft]", "stages: [sft, evaluate]") + textwrap.dedent("""\
        judges:
          reward: {python: "gold.py:score"}
          two: {python: "gold.py:score", human: true}
          none: {}
          my.judge: {python: "gold.py:score"}
          me: {human: true}
        evaluate:
          adapters: [sft, runs/policy]
          judges: [me, nobody]
        """)
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    joined = "\n".join(error.value.problems)
    for expected in ("judges.reward: is the built-in reward-model judge's name",
                     "judges.two: needs exactly one of python, llm or human, got python, human",
                     "judges.none: needs exactly one of python, llm or human, got none",
                     "judges.my.judge: a judge's name may not contain '.'",
                     "evaluate.data: is needed when the recipe has no ppo section",
                     "evaluate.judges: names no judge in `judges`: nobody",
                     "evaluate.judges: me is a person",
                     "'runs/policy' is not an adapter name"):
        assert expected in joined, joined


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: demo\n", "model: is required"),
    ("name: 'bad name!'\nmodel: {name: x}\nstages: []\n", "name: string should match pattern"),
    ("name: d\nmodel: {name: x}\nstages: []\nprompt_template: 'no field'\n", "must contain {prompt}"),
])
def test_malformed_recipes_get_clear_lines(tmp_path, text, expected):
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    assert expected in str(error.value)


def test_a_second_section_is_an_error_naming_both_lines_not_a_missing_key(tmp_path):
    """YAML keeps the last of two `sft:` sections; the error names the duplicate, and a problem inside the
    section that was kept points at that one (line 10), not at the first."""
    text = GOOD + "sft:\n  batch_size: 8\n"
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    problems = error.value.problems
    assert problems[0] == "line 10: sft: given twice (first on line 5); keep one", problems
    assert "line 10: sft.data: is required" in problems, problems  # the file's other problems still reported


def test_a_second_top_level_value_is_an_error_naming_both_lines(tmp_path):
    text = GOOD.replace("name: demo\n", "name: demo\nseed: 1\n") + "seed: 2\n"
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    assert error.value.problems == ["line 11: seed: given twice (first on line 2); keep one"]


def test_duplicates_at_any_depth_are_reported_together_with_other_problems(tmp_path):
    text = GOOD.replace("response: summary}", "response: summary,\n               prompt: text}") \
               .replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-3\n  learning_rate: 2.0e-3\n  lr: 1") + \
        "judges:\n  gold: {python: a.py:f}\n  gold: {python: b.py:f}\n"
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, text))
    problems = error.value.problems
    assert problems[:3] == ["line 9: sft.data.columns.prompt: given twice (first on line 8); keep one",
                            "line 11: sft.learning_rate: given twice (first on line 10); keep one",
                            "line 15: judges.gold: given twice (first on line 14); keep one"], problems
    assert any(p.startswith("line 12: sft.lr: unknown key") for p in problems), problems


def test_the_same_key_in_two_sections_or_list_items_is_no_duplicate(tmp_path):
    text = GOOD.replace("stages: [sft]", "stages: [sft, reward]") + textwrap.dedent("""\
        reward:
          data:
            files: [data/prefs.jsonl]
            columns: {prompt: document}
          learning_rate: 1.0e-4
        """)
    recipe = recipes.load(_write(tmp_path, text))
    assert recipe.reward.learning_rate == 1e-4


def test_recipe_errors_point_to_the_reference_not_the_source(tmp_path):
    with pytest.raises(RecipeError) as error:
        recipes.load(_write(tmp_path, GOOD.replace("learning_rate", "lr")))
    assert "docs/recipe.md" in error.value.hint and "lorahf validate --explain" in error.value.hint
    assert "lorahf/recipe.py" not in error.value.hint
    assert (recipes.reference().splitlines()[0] in
            (recipes.Path(__file__).parents[1] / "docs" / "recipe.md").read_text())  # the page the hint names


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        recipes.load(tmp_path / "nope.yaml")


def test_stage_hash_tracks_what_the_stage_depends_on(tmp_path):
    text = GOOD.replace("stages: [sft]", "stages: [sft, reward]") + textwrap.dedent("""\
        reward:
          data: {files: data/prefs.jsonl}
        """)
    path = _write(tmp_path, text)
    base = recipes.load(path)
    assert base.stage_hash("sft") == recipes.load(path, ["name=other"]).stage_hash("sft")
    changed_reward = recipes.load(path, ["reward.learning_rate=1e-5"])
    assert changed_reward.stage_hash("sft") == base.stage_hash("sft")
    assert changed_reward.stage_hash("reward") != base.stage_hash("reward")
    changed_sft = recipes.load(path, ["sft.learning_rate=1e-5"])
    assert changed_sft.stage_hash("reward") != base.stage_hash("reward")  # reward starts from sft


def test_dump_round_trips(tmp_path):
    recipe = recipes.load(_write(tmp_path, GOOD))
    again = _write(tmp_path, recipes.dump(recipe))
    assert recipes.load(again) == recipe


def test_every_field_is_documented():
    """The schema is the documentation: each field carries a docstring."""
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            nested = recipes._section_type(field.annotation)
            if nested is not None:
                walk(nested)
    walk(recipes.Recipe)


# ------------------------------------------------------------------------------------ property tests
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(), st.text(max_size=12),
                     st.sampled_from(["sft", "reward", "ppo", "evaluate", "8bit", "pairwise", "k3", "", "1e-3"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=10)


def _full_recipe() -> dict:
    """The quickstart recipe with every default filled in and every section present: the keys to break."""
    raw = recipes.load("recipes/quickstart.yaml").model_dump(mode="json")
    raw["judges"]["critic"] = {"llm": {"base_url": "http://localhost:1/v1", "model": "m"}}
    return raw


def _paths(node, prefix=()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _paths(value, prefix + (key,))
    return paths


_FULL = _full_recipe()
_PATHS = _paths(_FULL)


def _set(raw: dict, path: tuple, value, delete: bool) -> None:
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            return
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@settings(max_examples=int(os.environ.get("LORAHF_EXAMPLES", 300)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), _VALUES, max_size=6))
def test_random_dictionaries_validate_or_raise_recipe_error(raw):
    try:
        recipes.validate(raw)
    except RecipeError as error:
        assert error.problems and all(isinstance(p, str) and "\n" not in p for p in error.problems)


@settings(max_examples=int(os.environ.get("LORAHF_EXAMPLES", 400)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _VALUES, st.booleans()), min_size=1, max_size=4))
def test_a_full_recipe_with_random_values_validates_or_raises_recipe_error(changes):
    import copy

    raw = copy.deepcopy(_FULL)
    for path, value, delete in changes:
        _set(raw, path, value, delete)
    try:
        recipe = recipes.validate(raw)
    except RecipeError as error:
        assert error.problems and all(isinstance(p, str) and "\n" not in p for p in error.problems)
    else:
        for stage in recipe.stages:  # what a run computes first from a valid recipe must not fail either
            recipe.stage_hash(stage)
        recipes.dump(recipe)
