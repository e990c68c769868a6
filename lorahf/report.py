"""The run report: what each stage was supposed to achieve, and whether it did.

    checks(metrics)      one row per claim (stage, claim, evidence, passed); the CLI renders them with rich
    write_report(folder) report.md in the run folder, a table per stage and the plots in plots/*.png

What a stage claims, its section and its figure are the stage's own (`checks`, `report` and `plot` in its
module, found through lorahf.stages.registry); this module puts them together and holds what they share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lorahf.runs import atomic_path, write_text
from lorahf.stages import registry


@dataclass(frozen=True)
class Check:
    stage: str
    claim: str  # what should hold, in words
    evidence: str  # the numbers
    passed: bool | None  # None: informational
    hint: str = ""  # what to do when it does not hold


def checks(metrics: dict[str, dict]) -> list[Check]:
    """One line per claim of each stage that ran (or was done already), in stage order."""
    return [check for stage in registry.STAGES if metrics.get(stage.name)
            for check in stage.function("checks")(metrics[stage.name])]


def write_report(folder) -> Path:
    """report.md and plots/*.png for whatever stages of the run are done; returns the report's path."""
    metrics = {stage.name: folder.marker(stage.name).metrics for stage in registry.STAGES if folder.marker(stage.name)}
    plots = _plots(folder, metrics)
    lines = [f"# lorahf run `{folder.root.name}`", "",
             "What each stage was meant to achieve, and the evidence. ✓ held, ✗ did not, - no verdict "
             "(e.g. a win rate whose 95 % interval contains 0.5).", "",
             "| stage | | check | evidence |", "|---|---|---|---|"]
    found = checks(metrics)
    for check in found:
        mark = "-" if check.passed is None else "✓" if check.passed else "✗"
        lines.append(f"| {check.stage} | {mark} | {check.claim} | {check.evidence} |")
    hints = dict.fromkeys(f"- {check.stage}: {check.hint}" for check in found if check.passed is False and check.hint)
    if hints:
        lines += ["", "What to do about each ✗:", "", *hints]
    for stage, stage_metrics in metrics.items():
        lines += ["", f"## {stage}", ""] + registry.get(stage).function("report")(stage_metrics)
        if stage in plots:
            lines += ["", f"![{stage}](plots/{plots[stage].name})"]
    path = folder.root / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------ what the stages' checks share
def significant(low: float, high: float) -> bool | None:
    """A win rate's verdict from its 95 % interval: True above 0.5, False below, None (shown as -) across it."""
    return True if low > 0.5 else False if high < 0.5 else None


def judges_in(metrics: dict, suffix: str) -> list[str]:
    """The judges a marker has numbers of, from its keys `<judge><suffix>`."""
    return [key[: -len(suffix)] for key in metrics if key.endswith(suffix)]


def judged_comparisons(stage: str, metrics: dict, challenger: str, baseline: str, what: str) -> list[Check]:
    """One check per judge of a comparison kept in a marker (see `compare.judged_metrics`): the judge prefers
    `challenger`'s answers to `baseline`'s (`what`, in words), by its 95 % interval."""
    found = []
    for judge in judges_in(metrics, "_win_rate_vs_" + baseline):
        low, high = metrics[f"{judge}_win_rate_low"], metrics[f"{judge}_win_rate_high"]
        scores = (f"score {metrics[f'{judge}_score_{baseline}']:.2f} -> {metrics[f'{judge}_score_{challenger}']:.2f}, "
                  if f"{judge}_score_{challenger}" in metrics else "")
        found.append(Check(stage, f"the {judge} judge prefers {what}",
                           f"{scores}win rate {metrics[f'{judge}_win_rate_vs_{baseline}']:.2f} [{low:.2f}, {high:.2f}]",
                           significant(low, high)))
    return found


# ------------------------------------------------------------------------ what the stages' sections share
def scalar_table(metrics: dict) -> list[str]:
    """A marker's numbers and words as a two-column table (lists left out)."""
    return table([(k, v) for k, v in metrics.items() if not isinstance(v, list)])


def table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| metric | value |", "|---|---|"] + [f"| {name} | {fmt(value)} |" for name, value in rows]


def fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- plots
def _plots(folder, metrics: dict) -> dict[str, Path]:
    """One PNG per stage that has something to draw; returns stage -> path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    drawn = {}
    for stage, stage_metrics in metrics.items():
        figure = registry.get(stage).function("plot")(plt, folder, stage_metrics)
        if figure is None:
            continue
        path = folder.root / "plots" / f"{stage}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            figure.savefig(temp, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        drawn[stage] = path
    return drawn


def series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, for a line plot."""
    points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
