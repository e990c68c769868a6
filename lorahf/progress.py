"""How the library reports progress without printing.

Library code calls `progress.task(...)` around every long loop and `progress.note(...)` for a status
line. The default `Progress` is silent (a notebook or a test sees nothing); the CLI passes a
`RichProgress`, which draws rich progress bars with the loop's live fields (loss, tokens/s, ...).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class Task:
    """One loop's progress: `advance` moves the bar, `fields` are shown beside it (e.g. loss=0.42)."""

    def advance(self, steps: int = 1, **fields) -> None:
        pass


class Progress:
    """The silent reporter; subclass it to render progress somewhere."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        yield Task()

    def note(self, message: str) -> None:
        pass


class RecordingProgress(Progress):
    """Keeps every note and each task's final fields: for tests, and for anyone who wants a log."""

    def __init__(self):
        self.notes: list[str] = []
        self.tasks: dict[str, dict] = {}

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        record = self.tasks.setdefault(description, {"steps": 0, "total": total})

        class _Recorded(Task):
            def advance(self, steps: int = 1, **fields) -> None:
                record["steps"] += steps
                record.update(fields)

        yield _Recorded()

    def note(self, message: str) -> None:
        self.notes.append(message)


class RichProgress(Progress):
    """Rich progress bars for the terminal (used by the CLI)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Task]:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Bars(*columns, console=self.console, transient=False) as bars:
            task_id = bars.add_task(description, total=total, info="")

            class _Bar(Task):
                def advance(self, steps: int = 1, **fields) -> None:
                    info = "  ".join(f"{k} {_short(v)}" for k, v in fields.items())
                    bars.update(task_id, advance=steps, **({"info": info} if fields else {}))

            yield _Bar()

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
