"""The run folder: where every stage writes, laid out so that it explains itself.

    runs/<name>/
      recipe.yaml            the resolved recipe (every default filled in)
      adapters/<role>/       peft adapter files, plus head.safetensors for reward and value
      stages/<stage>.json    marker: done, recipe hash, final metrics, wall time
      checkpoints/<stage>/   mid-stage state for resuming an interrupted stage
      metrics.jsonl          one JSON object per logged step
      samples/<stage>.jsonl  generated responses with their scores
      tensorboard/           the same metrics for TensorBoard, with `report_to: [tensorboard]`
      .lock, .lock-owner.json  held while a lorahf process works in the folder

Every file is written atomically (to a temporary name in the same folder, then renamed), so a killed
run never leaves a half-written marker, adapter or recipe behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lorahf import distributed
from lorahf.errors import LorahfError

if TYPE_CHECKING:
    from lorahf.recipe import Recipe

TEMP_PREFIX = ".tmp-"
_OLD_NAME = re.compile(re.escape(TEMP_PREFIX) + r"old-(?P<name>.+)-\d+")  # a folder moved aside by atomic_path
LOCK_FILE = ".lock"
OWNER_FILE = ".lock-owner.json"  # who holds the lock; left behind only by a process that died
TENSORBOARD_DIR = "tensorboard"  # event files, with `report_to: [tensorboard]`


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it replaces `final` in one rename.

    Works for files and folders alike. On an exception the temporary is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + final.name + "-", dir=final.parent)) / final.name
    try:
        yield temp
        if temp.is_dir():
            _fsync_tree(temp)
        elif temp.exists():
            _fsync_file(temp)
        if final.is_dir() and not final.is_symlink():
            # A folder cannot be replaced in one rename; move the old one aside first, drop it after.
            old = final.parent / f"{TEMP_PREFIX}old-{final.name}-{os.getpid()}"
            final.rename(old)
            temp.rename(final)
            shutil.rmtree(old)
        else:
            os.replace(temp, final)
    finally:
        shutil.rmtree(temp.parent, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk, so a kill loses at most this line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            _fsync_file(file)


@dataclass(frozen=True)
class StageMarker:
    stage: str
    done: bool
    recipe_hash: str
    metrics: dict
    wall_s: float


class RunFolder:
    """Paths and bookkeeping of one run folder. It never decides what to run; the pipeline does."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._tensorboard = None  # a tensorboardX writer while `report_to: [tensorboard]`

    def report_to_tensorboard(self) -> None:
        """From now on, every logged metric also goes to RUN/tensorboard/ (tag `stage/name`, the step as step)."""
        if not distributed.is_main():
            return
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(logdir=str(self.root / TENSORBOARD_DIR), flush_secs=10)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ------------------------------------------------------------------------------------ lock
    @contextmanager
    def lock(self, command: str = "lorahf run") -> Iterator[str | None]:
        """Hold the folder for this process, or refuse in one line when a live process holds it.

        The lock is the operating system's (filelock: flock on Unix, msvcrt on Windows), so a process that
        dies releases it with no help; its owner file stays, and the next holder reports it as recovered.
        Yields that note, or None."""
        from filelock import FileLock, Timeout

        if not distributed.is_main():  # data parallelism: the first process holds the folder for all
            yield None
            return
        self.root.mkdir(parents=True, exist_ok=True)
        held = FileLock(str(self.root / LOCK_FILE), is_singleton=False)
        try:
            held.acquire(timeout=0)
        except Timeout:
            owner = self._owner()
            who = f" (pid {owner.get('pid')}, `{owner.get('command')}` since {owner.get('since')})" if owner else ""
            raise LorahfError(f"{self.root}: another lorahf process is using this run folder{who}",
                              hint="wait for it to finish, or give this run another `name:`") from None
        previous = self._owner()
        recovered = (f"{self.root}: recovered the lock of an earlier process (pid {previous.get('pid')}, "
                     f"`{previous.get('command')}`) that ended without releasing it" if previous else None)
        restored = self.finish_interrupted_saves()
        if restored:
            recovered = "; ".join(filter(None, [recovered, f"{self.root}: restored {', '.join(restored)} "
                                                           "as it was before a save that was interrupted"]))
        try:
            write_json(self.root / OWNER_FILE, {"pid": os.getpid(), "command": command,
                                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            yield recovered
        finally:
            (self.root / OWNER_FILE).unlink(missing_ok=True)
            held.release()

    def finish_interrupted_saves(self) -> list[str]:
        """Clean up after a process killed inside `atomic_path` (call with the lock held: no one else writes).

        A save killed before its rename leaves a temporary folder beside the untouched old version: removed.
        A folder save killed between its two renames has moved the old version aside and not yet put the new
        one in place: the old version goes back. Returns the paths put back."""
        restored = []
        if not self.root.is_dir():
            return restored
        for path in sorted(self.root.rglob(TEMP_PREFIX + "*"), key=lambda p: len(p.parts)):
            if not path.exists() and not path.is_symlink():
                continue  # inside a temporary folder removed a moment ago
            aside = _OLD_NAME.fullmatch(path.name)
            if aside and not (path.parent / aside["name"]).exists():
                path.rename(path.parent / aside["name"])
                restored.append(str((path.parent / aside["name"]).relative_to(self.root)))
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return restored

    def _owner(self) -> dict | None:
        try:
            return read_json(self.root / OWNER_FILE)
        except (OSError, ValueError):
            return None

    # ----------------------------------------------------------------------------------- paths
    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    def adapter_dir(self, role: str) -> Path:
        return self.root / "adapters" / role

    def marker_path(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def checkpoint_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def samples_path(self, stage: str) -> Path:
        return self.root / "samples" / f"{stage}.jsonl"

    # --------------------------------------------------------------------------------- markers
    def marker(self, stage: str) -> StageMarker | None:
        path = self.marker_path(stage)
        if not path.is_file():
            return None
        data = read_json(path)
        return StageMarker(stage=stage, done=bool(data.get("done")), recipe_hash=data.get("recipe_hash", ""),
                           metrics=data.get("metrics", {}), wall_s=float(data.get("wall_s", 0.0)))

    def is_done(self, stage: str, recipe_hash: str) -> bool:
        marker = self.marker(stage)
        return marker is not None and marker.done and marker.recipe_hash == recipe_hash

    def mark_done(self, stage: str, recipe_hash: str, metrics: dict, wall_s: float) -> None:
        if not distributed.is_main():
            return
        write_json(self.marker_path(stage), {"stage": stage, "done": True, "recipe_hash": recipe_hash,
                                             "metrics": _finite(metrics), "wall_s": round(wall_s, 3),
                                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # --------------------------------------------------------------------------------- metrics
    def log_metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Append one line to metrics.jsonl and flush it to disk, so a kill loses at most this line."""
        if not distributed.is_main():
            return
        append_line(self.metrics_path, json.dumps({"stage": stage, "step": step, **_finite(values)}, sort_keys=True))
        if self._tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"{stage}/{name}", value, step)
            self._tensorboard.flush()

    def read_metrics(self, stage: str | None = None) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if stage is None or row.get("stage") == stage:
                rows.append(row)
        return rows

    def drop_metrics(self, stage: str, after_step: int = -1) -> None:
        """Forget `stage`'s logged steps after `after_step` (all of them by default): a stage that starts over,
        or resumes from a checkpoint, logs those steps again, and metrics.jsonl keeps each step once."""
        if not distributed.is_main() or not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if not _logged_after(line, stage, after_step)]
        write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def write_samples(self, stage: str, rows: list[dict]) -> None:
        if not distributed.is_main():
            return
        write_text(self.samples_path(stage), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _logged_after(line: str, stage: str, after_step: int) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return True  # a line cut by a kill mid-write: drop it too
    return row.get("stage") == stage and row.get("step", 0) > after_step


def load_run(run_dir: str | Path) -> Recipe:
    """The resolved recipe a run folder was made with, pointed at that folder wherever it now is."""
    # imported here, not at the top: reading markers and metrics needs no pydantic
    from lorahf import recipe as recipes

    root = Path(run_dir)
    path = RunFolder(root).recipe_path
    if not path.is_file():
        raise LorahfError(f"{root}: not a run folder (no recipe.yaml)", hint="give the folder `lorahf run` printed")
    recipe = recipes.load(path)
    recipe.output_dir, recipe.name = str(root.parent), root.name
    return recipe


def verify(root: str | Path) -> list[str]:
    """Problems with a run folder's files, one line each (none: []): every JSON, JSONL, YAML and safetensors
    file parses, adapters have their config, no temporary file is left, metrics.jsonl logs each step once."""
    import yaml
    from safetensors import safe_open

    root = Path(root)
    problems = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.name.startswith(TEMP_PREFIX):
            problems.append(f"{name}: a temporary file or folder was left behind")
            continue
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    json.loads(line)
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as tensors:
                    for key in tensors.keys():
                        tensors.get_tensor(key)
        except Exception as error:  # noqa: BLE001 - any failure to parse is the finding
            problems.append(f"{name}: does not parse ({type(error).__name__}: {str(error).splitlines()[0][:80]})")
    for adapter in sorted((root / "adapters").glob("*")) if (root / "adapters").is_dir() else []:
        if adapter.is_dir() and not (adapter / "adapter_config.json").is_file():
            problems.append(f"adapters/{adapter.name}: no adapter_config.json")
    seen: dict[tuple[str, int, str], int] = {}
    for row in RunFolder(root).read_metrics():
        for key in [k for k in row if k not in ("stage", "step")]:
            seen[(row["stage"], row["step"], key)] = seen.get((row["stage"], row["step"], key), 0) + 1
    repeated = sorted({(stage, step) for (stage, step, _), count in seen.items() if count > 1})
    if repeated:
        problems.append(f"metrics.jsonl: {len(repeated)} step(s) logged twice, e.g. {repeated[0][0]} step {repeated[0][1]}")
    return problems


def _finite(values: dict) -> dict:
    """JSON has no NaN or infinity: write them as null rather than producing an unreadable file."""
    clean = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, dict):
            value = _finite(value)
        clean[key] = value
    return clean
