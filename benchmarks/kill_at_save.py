"""`lorahf` with every rename of an atomic save counted, and a SIGKILL at one of them or at a training step:
kill_resume.py's way to land kills inside saves, or at chosen steps of sft and reward, rather than only where
random moments fall.

    LORAHF_KILL_AT=7:between python benchmarks/kill_at_save.py run recipe.yaml
    LORAHF_KILL_AT_STEP=reward:9 LORAHF_STEPS_LOG=steps.txt python benchmarks/kill_at_save.py run recipe.yaml

A save (`lorahf.runs.atomic_path`) writes a temporary file or folder and renames it into place; a folder that
already exists is first renamed aside, then replaced, then the old one deleted. Each rename from or to a
temporary path (`.tmp-...`) is an event. LORAHF_KILL_AT=K:before kills the process just before the K-th event
(the new version complete on disk, not yet in place); K:between kills it just after the K-th event (for a
folder replaced, the old version moved aside and the new one not yet in place: no version at the final
path). LORAHF_COUNT_SAVES=FILE writes the number of events to FILE when the process exits normally.

LORAHF_KILL_AT_STEP=STAGE:N kills the process just after optimizer step N of an adapter-training stage (sft,
reward, dpo: `lorahf.training.update`). LORAHF_STEPS_LOG=FILE appends "STAGE STEP" for the first step each such
stage takes in this process: a stage that resumed from a checkpoint at step C starts at C + 1, one that
started over at 1.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

TEMP = ".tmp-"
_count = 0
_kill = os.environ.get("LORAHF_KILL_AT")
_target, _when = (int(_kill.split(":")[0]), _kill.split(":")[1]) if _kill else (None, None)


def _temporary(path) -> bool:
    path = Path(path)
    return path.name.startswith(TEMP) or path.parent.name.startswith(TEMP)


def _counted(rename):
    def wrapper(source, target, *args, **kwargs):
        global _count
        if not (_temporary(source) or _temporary(target)):
            return rename(source, target, *args, **kwargs)
        _count += 1
        if _count == _target and _when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = rename(source, target, *args, **kwargs)
        if _count == _target and _when == "between":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper


def _stepped(update):
    kill_at = os.environ.get("LORAHF_KILL_AT_STEP", "")
    steps_log = os.environ.get("LORAHF_STEPS_LOG")
    first: set[str] = set()

    def wrapper(*args, **kwargs):
        stage, step = args[-2], args[-1]
        if steps_log and stage not in first:
            first.add(stage)
            with open(steps_log, "a", encoding="utf-8") as handle:
                handle.write(f"{stage} {step}\n")
        result = update(*args, **kwargs)
        if kill_at == f"{stage}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper


def main() -> None:
    os.rename, os.replace = _counted(os.rename), _counted(os.replace)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import lorahf.training

    lorahf.training.update = _stepped(lorahf.training.update)
    count_file = os.environ.get("LORAHF_COUNT_SAVES")
    if count_file:
        atexit.register(lambda: Path(count_file).write_text(str(_count)))
    from lorahf.cli import main as lorahf

    lorahf(args=sys.argv[1:], prog_name="lorahf")


if __name__ == "__main__":
    main()
