"""The `lorahf` command: user mistakes are readable lines and a non-zero exit, never a traceback (unless --debug)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from lorahf import __version__, cli
from lorahf.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"

BAD_RECIPE = """\
name: demo
model:
  name: models/tiny-t5
  quantisation: 8bit
stages: [sft, ppo2]
sft:
  data:
    files: data/sft.jsonl
  learning_rate: fast
"""


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """Fresh consoles (they resolve sys.stdout/stderr when printing, so CliRunner captures them), wide enough
    that no table cell or error line wraps whatever the terminal running the tests is."""
    monkeypatch.setattr(cli, "console", Console(width=200, color_system=None))
    monkeypatch.setattr(cli, "errors", Console(stderr=True, width=200, color_system=None))


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lorahf, version {__version__}"


def test_validate_lists_every_mistake_with_its_key_path_and_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BAD_RECIPE)
    result = invoke("validate", str(recipe))
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {recipe}: 3 problems"
    problems = [line.strip() for line in lines[1:4]]
    assert "line 4: model.quantisation: unknown key (did you mean 'quantization'?)" in problems
    assert any(p.startswith("line 5: stages[1]: must be ") and "'ppo2'" in p for p in problems), problems
    assert any(p.startswith("line 9: sft.learning_rate: ") and "'fast'" in p for p in problems), problems
    assert lines[4].startswith("hint: ")
    assert result.stdout == ""  # no table for an invalid recipe


def test_validate_quickstart_prints_what_will_run(monkeypatch):
    from lorahf import recipe as recipes

    monkeypatch.chdir(REPO)  # the quickstart's paths are relative to the repository root
    result = invoke("validate", "recipes/quickstart.yaml")
    assert result.exit_code == 0, result.output
    assert "recipes/quickstart.yaml: valid" in result.stdout
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 3}
    quickstart = recipes.load("recipes/quickstart.yaml")
    assert list(rows) == ["model", *quickstart.stages], result.stdout
    assert "models/tiny-t5" in rows["model"] and "8bit" in rows["model"]
    assert "ppo stage's held-out prompts" in rows["evaluate"] and "gold" in rows["evaluate"]
    for stage in ("sft", "reward", "ppo"):
        files = getattr(quickstart, stage).data.files
        count = sum(len(Path(file).read_text().splitlines()) for file in files)  # JSONL: one row a line
        assert f"{count} rows from {', '.join(files)}" in rows[stage], rows[stage]
    assert "lr 0.001" in rows["sft"] and "batch 16" in rows["sft"]


def test_validate_reports_set_typos(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "recipes/quickstart.yaml", "--set", "sft.lr=5e-4", "--set", "sft.batch_sise=4",
                    "--set", "seed")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert "recipes/quickstart.yaml: 3 problems" in result.stderr
    assert "--set sft.lr: unknown key (did you mean 'learning_rate'?)" in result.stderr
    assert "--set sft.batch_sise: unknown key (did you mean 'batch_size'?)" in result.stderr
    assert "--set 'seed': expected key.path=value" in result.stderr


def test_validate_reports_a_set_typo_in_a_section_name(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "recipes/quickstart.yaml", "--set", "modle.name=x")
    assert result.exit_code == 1
    assert "--set modle: unknown key (did you mean 'model'?)" in result.stderr


def test_validate_applies_good_overrides(monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke("validate", "recipes/quickstart.yaml", "--no-data", "--set", "model.quantization=none",
                    "--set", "sft.batch_size=4")
    assert result.exit_code == 0, result.output
    assert "models/tiny-t5, none" in result.stdout and "batch 4" in result.stdout


def test_make_tiny_writes_the_same_model_as_the_library(tmp_path, tiny_model_dir):
    out = tmp_path / "tiny"
    result = invoke("make-tiny", "--data", str(EXAMPLE_DATA), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert result.stderr == ""  # no progress bars from transformers
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_make_tiny_from_a_folder_without_data_is_one_error_line(tmp_path):
    result = invoke("make-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {tmp_path}: no text found in .jsonl, .json, .csv, .parquet "
                                          "files to train a tokenizer on"]


def test_run_on_a_missing_recipe_is_a_clear_error(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = invoke("run", str(missing))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {missing}: ")
    assert "file not found" in result.stderr
    assert result.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", "run", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert isinstance(result.exception, RecipeError)  # raised, not caught and printed
    assert "error:" not in result.stderr
    with pytest.raises(RecipeError, match="file not found"):
        CliRunner().invoke(cli.main, ["--debug", "run", str(tmp_path / "missing.yaml")], catch_exceptions=False)


def test_the_installed_command_exits_cleanly(tmp_path):
    """The real console script: a version line, and an error that is a line and an exit code, no traceback."""
    lorahf = Path(sys.executable).with_name("lorahf")
    assert lorahf.is_file(), "the lorahf console script is not installed beside this Python"
    version = subprocess.run([str(lorahf), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"lorahf, version {__version__}"

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BAD_RECIPE)
    for args in (["run", str(tmp_path / "missing.yaml")], ["validate", str(recipe)]):
        failed = subprocess.run([str(lorahf), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert failed.returncode == 1, (args, failed.stderr)
        assert "Traceback" not in failed.stderr + failed.stdout
        assert failed.stderr.startswith("error: "), failed.stderr


def test_every_commands_help_shows_an_example_that_names_the_command():
    for name in cli.main.commands:
        result = CliRunner().invoke(cli.main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output and f"lorahf {name} " in result.output, (name, result.output)
