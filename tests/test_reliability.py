"""One process per run folder, finished work kept unless --force, and faults (a full disk, no memory) as one
line that leaves everything already written intact."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from lorahf import pipeline
from lorahf.cli import main
from lorahf.errors import LorahfError
from lorahf.recipe import validate
from lorahf.runs import OWNER_FILE, RunFolder

from tests.conftest import REPO, tiny_ppo_section, tiny_run_recipe

HOLD = """
import sys, time
from lorahf.runs import RunFolder
with RunFolder(sys.argv[1]).lock("lorahf run held.yaml"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_live_process_holds_the_folder_and_a_dead_ones_lock_is_recovered(tmp_path):
    folder = tmp_path / "runs" / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LorahfError, match=rf"another lorahf process is using this run folder \(pid {holder.pid}, "
                                              r"`lorahf run held.yaml`"):
            with RunFolder(folder).lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it, the owner file stays
        holder.wait()
    assert (folder / OWNER_FILE).is_file()
    with RunFolder(folder).lock() as recovered:
        assert f"pid {holder.pid}" in recovered and "ended without releasing it" in recovered
    assert not (folder / OWNER_FILE).exists()  # a clean exit leaves no owner behind
    with RunFolder(folder).lock() as recovered:
        assert recovered is None


def test_lorahf_run_refuses_a_busy_folder_in_one_line(tmp_path, tiny_model_dir):
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "busy", ["sft"], sft_steps=2)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    with RunFolder(tmp_path / "runs" / "busy").lock():
        result = CliRunner().invoke(main, ["run", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "another lorahf process is using this run folder" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("hint:")
    assert not (tmp_path / "runs" / "busy" / "recipe.yaml").exists()


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.startswith(".lock")}


@pytest.fixture
def finished(tmp_path, tiny_model_dir):
    """A finished sft stage (a few steps) and its raw recipe."""
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "kept", ["sft"], sft_steps=4)
    result = pipeline.run(validate(raw))
    return raw, result.folder.root


def test_a_changed_recipe_does_not_replace_finished_work_without_force(finished):
    raw, root = finished
    before = _snapshot(root)
    changed = {**raw, "sft": {**raw["sft"], "learning_rate": 2e-3}}
    with pytest.raises(LorahfError, match=r"sft would rerun because the recipe changed: sft.learning_rate 0.001 -> "
                                          r"0.002; their finished outputs would be replaced") as caught:
        pipeline.run(validate(changed))
    assert "--force" in caught.value.hint
    assert _snapshot(root) == before  # the recipe.yaml, the adapter, the marker: nothing touched

    notes = []

    class Notes(pipeline.Progress):
        def note(self, message):
            notes.append(message)

    result = pipeline.run(validate(changed), force=True, progress=Notes())
    assert result.ran == ["sft"] and any("sft would rerun" in note for note in notes)
    assert yaml.safe_load((root / "recipe.yaml").read_text())["sft"]["learning_rate"] == 2e-3
    assert pipeline.run(validate(changed)).skipped == ["sft"]  # the same recipe again: nothing to replace


def test_a_full_disk_is_one_line_and_the_files_already_written_stay(finished, monkeypatch):
    raw, root = finished
    before = _snapshot(root)

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    changed = {**raw, "sft": {**raw["sft"], "max_steps": 5}}
    with pytest.raises(LorahfError, match=r"cannot write .*adapter_model.safetensors: No space left on device; "
                                          r"everything written before in .* is intact"):
        pipeline.run(validate(changed), force=True)
    after = _snapshot(root)
    assert after.pop("recipe.yaml") != before.pop("recipe.yaml")  # the new recipe was written before the stage
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}  # adapter and marker as they were
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_running_out_of_memory_names_what_to_lower(finished, monkeypatch):
    raw, root = finished
    from lorahf.stages import sft

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(sft, "run", no_memory)
    with pytest.raises(LorahfError, match="sft: out of memory on the cpu; the last saved outputs are kept") as caught:
        pipeline.run(validate(raw), stage="sft")
    assert "sft.batch_size" in caught.value.hint
    assert (root / "adapters" / "sft" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------ numbers that are not finite
def _one_error_line(tmp_path, raw) -> str:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "recipe.yaml")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _loadable(tiny_model_dir, folder) -> None:
    from lorahf.backbone import Backbone

    backbone = Backbone.load(str(tiny_model_dir))
    try:
        backbone.load_adapter("check", folder)
        assert all(torch.isfinite(p).all() for p in backbone.parameters("check"))
    finally:
        backbone.close()


def test_a_nan_loss_stops_sft_naming_the_step_and_the_saved_adapter_still_loads(tmp_path, tiny_model_dir, monkeypatch):
    from lorahf.stages import sft

    calls = {"training": 0}
    honest = sft.response_loss

    def poisoned(backbone, batch, tokens=None):
        loss = honest(backbone, batch, tokens)
        if backbone.model.training:
            calls["training"] += 1
            if calls["training"] == 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(sft, "response_loss", poisoned)
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "nan", ["sft"], sft_steps=8)
    raw["sft"]["eval_every"] = 2
    line = _one_error_line(tmp_path, raw)
    assert "sft: the loss is nan at step 5" in line
    root = tmp_path / "runs" / "nan"
    assert not (root / "stages" / "sft.json").exists()
    assert pipeline_verify(root) == []
    _loadable(tiny_model_dir, root / "adapters" / "sft")  # the best adapter of steps 0-4


def test_a_nan_reward_stops_ppo_naming_the_iteration_and_the_checkpoint_still_loads(tmp_path, tiny_model_dir):
    judge = tmp_path / "flaky.py"
    judge.write_text("calls = 0\n\ndef score(prompt, response):\n    global calls\n    calls += 1\n"
                     "    return float('nan') if calls > 4 + 8 * 3 else len(response) / 10\n")
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "nanppo", ["sft", "ppo"], sft_steps=4,
                          ppo=tiny_ppo_section(iterations=6, eval_every=10, checkpoint_every=2,
                                               reward_judge="flaky"))
    raw["judges"]["flaky"] = {"python": f"{judge}:score"}
    line = _one_error_line(tmp_path, raw)  # 4 held-out answers scored first, then 8 per iteration
    assert "ppo: score_mean" in line and "not finite at iteration 4" in line
    root = tmp_path / "runs" / "nanppo"
    assert not (root / "stages" / "ppo.json").exists()
    assert pipeline_verify(root) == []
    _loadable(tiny_model_dir, root / "checkpoints" / "ppo" / "policy")


def pipeline_verify(root):
    from lorahf.runs import verify

    return verify(root)
