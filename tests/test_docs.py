"""docs/recipe.md is the schema's own documentation (generated), and every recipe key has one."""

from __future__ import annotations

from click.testing import CliRunner

from lorahf import recipe as recipes
from lorahf.cli import main
from tests.conftest import REPO


def test_the_recipe_reference_is_generated_from_the_schema_and_current():
    generated = recipes.reference()
    assert (REPO / "docs" / "recipe.md").read_text() == generated, \
        "docs/recipe.md is stale: lorahf validate --explain > docs/recipe.md"
    assert CliRunner().invoke(main, ["validate", "--explain"]).output == generated


def test_every_recipe_key_has_a_documented_meaning():
    undocumented = []

    def walk(model, prefix):
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                undocumented.append(prefix + name)
            inner = recipes._section_type(info.annotation)
            if inner is not None:
                walk(inner, f"{prefix}{name}.")

    walk(recipes.Recipe, "")
    assert undocumented == []
    for key in ("ppo.whiten_advantages", "reward.margin", "model.quantization", "report_to"):
        assert f"`{key}`" in recipes.reference()
