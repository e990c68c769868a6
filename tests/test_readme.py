"""The README's commands are the ones that run: CI executes its test command, the quickstart runs the quickstart."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"


def command_after(marker: str) -> str:
    """The one line inside the fenced block that directly follows `<!-- marker -->` in the README."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines.count(f"<!-- {marker} -->") == 1, f"README.md needs exactly one <!-- {marker} --> marker"
    at = lines.index(f"<!-- {marker} -->")
    assert lines[at + 1].startswith("```"), f"a fenced block must follow <!-- {marker} -->"
    assert lines[at + 3] == "```", f"the block after <!-- {marker} --> must hold exactly one line"
    return lines[at + 2]


def steps(command: str) -> list[list[str]]:
    """`a && b && c` as the argument lists of a, b and c."""
    return [shlex.split(step) for step in command.split("&&")]


def test_ci_runs_exactly_the_readme_test_command(tmp_path):
    script = CI_RUN.read_text()
    assert 'exec bash -c "$command"' in script
    assert script.index("apt-get install") < script.index("exec bash"), "the page's tests need Chromium installed first"
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"
    # The same script in a copy of the repo, echoing what it would execute instead of executing it.
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(script.replace('exec bash -c "$command"', 'echo "$command"'))
    (tmp_path / "README.md").write_text(README.read_text(encoding="utf-8"), encoding="utf-8")
    browsers = tmp_path / "bin"  # as if Chromium were installed: the copy installs nothing
    browsers.mkdir()
    for name in ("chromium", "chromedriver"):
        (browsers / name).write_text("#!/bin/sh\n")
        (browsers / name).chmod(0o755)
    environment = {**os.environ, "PATH": f"{browsers}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env=environment)
    assert done.returncode == 0, done.stderr
    expected = command_after("test-command")
    assert done.stdout.splitlines() == [f"+ {expected}", expected]


def test_ci_fails_when_the_readme_has_no_test_command(tmp_path):
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(CI_RUN.read_text())
    (tmp_path / "README.md").write_text("# no commands here\n")
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no test command" in done.stderr


def test_the_test_command_installs_the_test_extra_and_runs_every_test():
    command = steps(command_after("test-command"))
    installs = [step for step in command if step[:2] == ["pip", "install"]]
    assert len(installs) == 1 and "-e" in installs[0]
    assert installs[0][installs[0].index("-e") + 1] == ".[test]"
    assert command[-1][:3] == ["python", "-m", "pytest"]
    assert not [arg for arg in command[-1][3:] if not arg.startswith("-")], "the tests run whole, not a subset"


def test_the_quickstart_command_installs_then_runs_the_quickstart_recipe():
    command = steps(command_after("quickstart-command"))
    installs = [index for index, step in enumerate(command) if step[:2] == ["pip", "install"]]
    assert len(installs) == 1
    install = command[installs[0]]
    assert install[install.index("-e") + 1] == "."
    assert command[-1] == ["lorahf", "run", "recipes/quickstart.yaml"]
    assert installs[0] < len(command) - 1
    assert (REPO / "recipes" / "quickstart.yaml").is_file()


def test_both_commands_install_the_same_torch():
    def torch_pin(marker: str) -> list[str]:
        return [arg for step in steps(command_after(marker)) for arg in step if arg.startswith("torch")]

    assert torch_pin("quickstart-command") == torch_pin("test-command") == ["torch==2.13.0"]


def runnable_blocks() -> list[str]:
    """Every fenced shell block the README marks `<!-- runnable -->` (the deploy commands run in the quickstart test)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks = []
    for at, line in enumerate(lines):
        if line == "<!-- runnable -->":
            assert lines[at + 1] == "```bash", "a ```bash block must follow <!-- runnable -->"
            end = lines.index("```", at + 2)
            blocks.append("\n".join(lines[at + 2:end]))
    return blocks


def test_the_readmes_runnable_commands_run_on_the_tiny_model(tmp_path, tiny_model_dir):
    """As a new user after the quickstart: the repository's examples and recipes, and the tiny T5 it built."""
    import shutil
    import sys

    blocks = runnable_blocks()
    assert blocks, "README.md marks no block <!-- runnable -->"
    for folder in ("examples", "recipes"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny-t5")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in blocks:
        for line in block.splitlines():
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=environment, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
