"""The run report: what each stage was supposed to achieve, and whether it did.

    checks(metrics)      one row per claim (stage, claim, evidence, passed); the CLI renders them with rich
    write_report(folder) report.md in the run folder, a table per stage and the plots in plots/*.png
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lorahf.runs import atomic_path, write_text


@dataclass(frozen=True)
class Check:
    stage: str
    claim: str  # what should hold, in words
    evidence: str  # the numbers
    passed: bool | None  # None: informational
    hint: str = ""  # what to do when it does not hold


CLOSE_TO_REFERENCES = 0.5
"""The share of the gap between the untrained model's judged score and the references' that SFT must close."""
FAR_FROM_REFERENCES = ("train longer (raise sft.epochs or sft.patience), raise sft.learning_rate, or let "
                       "`lorahf init FILES --base BASE` pick settings for this base")


def checks(metrics: dict[str, dict]) -> list[Check]:
    """One line per claim the quickstart makes about each stage that ran (or was done already)."""
    found: list[Check] = []
    sft = metrics.get("sft")
    if sft:
        found.append(Check("sft", "training loss fell",
                           f"{sft['train_loss_first']:.3f} -> {sft['train_loss_last']:.3f}",
                           sft["train_loss_last"] < sft["train_loss_first"]))
        found.append(Check("sft", "held-out loss fell below the untrained model's",
                           f"{sft['eval_loss_untrained']:.3f} -> {sft['eval_loss']:.3f}",
                           sft["eval_loss"] < sft["eval_loss_untrained"]))
        if "rouge_l" in sft:
            found.append(Check("sft", "answers overlap the held-out references more than the untrained model's",
                               f"ROUGE-L {sft['rouge_l']:.3f} vs {sft['rouge_l_untrained']:.3f} on "
                               f"{sft['reference_prompts']} prompts", sft["rouge_l"] > sft["rouge_l_untrained"],
                               FAR_FROM_REFERENCES))
        for judge in _judges(sft, suffix="_win_rate_vs_untrained"):
            found.append(Check("sft", f"the {judge} judge prefers SFT answers to the untrained model's",
                               f"score {sft[judge + '_score']:.2f} vs {sft[judge + '_score_untrained']:.2f}, "
                               f"win rate {sft[judge + '_win_rate_vs_untrained']:.2f}",
                               sft[judge + "_win_rate_vs_untrained"] > 0.5, FAR_FROM_REFERENCES))
            if judge + "_score_references" in sft:
                found.append(_near_references(judge, sft))
    reward = metrics.get("reward")
    if reward:
        found.append(Check("reward", "beats chance on held-out preferences",
                           f"accuracy {reward['eval_accuracy']:.3f} on {reward['eval_pairs']} pairs "
                           f"(gate {reward['gate']} at {reward['min_accuracy']})",
                           reward["gate"] == "pass"))
    ppo = metrics.get("ppo")
    if ppo:
        found.append(Check("ppo", "raised the reward of held-out answers over SFT's",
                           f"{ppo['reward_sft']:.3f} -> {ppo['reward_policy']:.3f}, win rate {ppo['win_rate_by_reward']:.2f} "
                           f"on {ppo['eval_prompts']} prompts (iteration {ppo['best_iteration']} of {ppo['iterations']})",
                           ppo["reward_policy"] > ppo["reward_sft"]))
        for judge in _judges(ppo, suffix="_win_rate_vs_sft"):
            low, high = ppo[judge + "_win_rate_low"], ppo[judge + "_win_rate_high"]
            found.append(Check("ppo", f"the {judge} judge prefers PPO answers to SFT's",
                               f"score {ppo[judge + '_score_sft']:.2f} -> {ppo[judge + '_score_policy']:.2f}, win rate "
                               f"{ppo[judge + '_win_rate_vs_sft']:.2f} [{low:.2f}, {high:.2f}]",
                               _significant(low, high)))
        found.append(Check("ppo", "stayed close to SFT (bounded KL)",
                           f"KL {ppo['kl']:.2f} nats per answer (alarm above {ppo['kl_limit']:.1f})",
                           ppo["kl"] <= ppo["kl_limit"]))
        alarms = ppo.get("alarms") or {}
        found.append(Check("ppo", "no alarm fired",
                           ", ".join(f"{name} x{count}" for name, count in alarms.items()) or "none",
                           None if alarms else True))
    evaluate = metrics.get("evaluate")
    if evaluate:
        for judge, challenger, wins, (low, high) in win_rates(evaluate):
            found.append(Check("evaluate", f"the {judge} judge prefers {challenger} to {evaluate['baseline']}",
                               f"win rate {wins:.2f} [{low:.2f}, {high:.2f}] on {evaluate['eval_prompts']} prompts",
                               _significant(low, high)))
    return found


def _near_references(judge: str, sft: dict) -> Check:
    """SFT's judged score must close at least CLOSE_TO_REFERENCES of the gap from the untrained model's score to
    the references' (no verdict where the judge does not score the references above the untrained model)."""
    tuned, untrained, references = (sft[f"{judge}_score{suffix}"] for suffix in ("", "_untrained", "_references"))
    gap = references - untrained
    closed = (tuned - untrained) / gap if gap > 0 else None
    evidence = (f"score {tuned:.2f}, references {references:.2f}, untrained {untrained:.2f}"
                + (f": {closed:.0%} of the gap closed (at least {CLOSE_TO_REFERENCES:.0%} needed)"
                   if closed is not None else ": the judge does not prefer the references"))
    return Check("sft", f"the {judge} judge scores SFT answers close to the held-out references", evidence,
                 None if closed is None else closed >= CLOSE_TO_REFERENCES, FAR_FROM_REFERENCES)


def win_rates(evaluate: dict) -> list[tuple[str, str, float, tuple[float, float]]]:
    """(judge, challenger, win rate, 95 % interval) of every comparison an evaluate marker holds."""
    found = []
    challengers = evaluate["adapters"][1:]
    for key, value in evaluate.items():
        if not key.startswith("win_rate.") or value is None:
            continue
        judge, _, challenger = key[len("win_rate."):].partition(".")
        found.append((judge, challenger or challengers[0], value, tuple(evaluate[f"win_rate_ci.{key[9:]}"])))
    return found


def _significant(low: float, high: float) -> bool | None:
    """A win rate's verdict from its 95 % interval: True above 0.5, False below, None (shown as -) across it."""
    return True if low > 0.5 else False if high < 0.5 else None


def _judges(metrics: dict, suffix: str) -> list[str]:
    return [key[: -len(suffix)] for key in metrics if key.endswith(suffix)]


# ------------------------------------------------------------------------------------------ report.md
def write_report(folder) -> Path:
    """report.md and plots/*.png for whatever stages of the run are done; returns the report's path."""
    metrics = {stage: folder.marker(stage).metrics for stage in STAGE_ORDER if folder.marker(stage)}
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
    for stage in STAGE_ORDER:
        if stage in metrics:
            lines += ["", f"## {stage}", ""] + SECTIONS[stage](metrics[stage])
            if stage in plots:
                lines += ["", f"![{stage}](plots/{plots[stage].name})"]
    path = folder.root / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


STAGE_ORDER = ("sft", "reward", "ppo", "evaluate")


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| metric | value |", "|---|---|"] + [f"| {name} | {_fmt(value)} |" for name, value in rows]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


def _scalar_rows(metrics: dict) -> list[tuple[str, object]]:
    return [(k, v) for k, v in metrics.items() if not isinstance(v, list)]


def _evaluate_section(m: dict) -> list[str]:
    adapters = m["adapters"]
    meteor = "METEOR" if m.get("meteor_synonyms") else "METEOR (exact + stem, no synonyms: WordNet data missing)"
    columns = [("ROUGE-1", "rouge_1"), ("ROUGE-2", "rouge_2"), ("ROUGE-L", "rouge_l"), ("BLEU", "bleu"),
               (meteor, "meteor"), ("reward", "reward_mean"), ("KL to sft", "kl"), ("length", "length")]
    columns = [(title, key) for title, key in columns if f"{key}.{adapters[0]}" in m]
    how = "greedy" if m.get("greedy") else f"sampled at temperature {m.get('temperature')} from one seed"
    lines = [f"{m['eval_prompts']} held-out prompts, answers {how}.", "",
             "| adapter | " + " | ".join(title for title, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for adapter in adapters:
        lines.append(f"| {adapter} | " + " | ".join(_fmt(m.get(f"{key}.{adapter}")) for _, key in columns) + " |")
    comparisons = win_rates(m)
    if comparisons:
        lines += ["", f"Win rates against `{m['baseline']}` (ties count half; 95 % Wilson interval):", "",
                  "| judge | adapter | win rate | 95 % interval | wins / losses / ties / no verdict |",
                  "|---|---|---|---|---|"]
        for judge, challenger, wins, (low, high) in comparisons:
            suffix = judge if challenger == adapters[1] else f"{judge}.{challenger}"
            counts = m.get(f"judged.{suffix}", {})
            lines.append(f"| {judge} | {challenger} | {wins:.3f} | [{low:.3f}, {high:.3f}] | "
                         + " / ".join(str(counts.get(k, "?")) for k in ("wins", "losses", "ties", "no_verdict"))
                         + " |")
    return lines


SECTIONS = {"sft": lambda m: _table(_scalar_rows(m)), "reward": lambda m: _table(_scalar_rows(m)),
            "ppo": lambda m: _table(_scalar_rows(m)), "evaluate": _evaluate_section}


# ---------------------------------------------------------------------------------------------- plots
def _plots(folder, metrics: dict) -> dict[str, Path]:
    """One PNG per stage that has something to draw; returns stage -> path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    drawn = {}
    for stage, draw in (("sft", _plot_sft), ("reward", _plot_reward), ("ppo", _plot_ppo),
                        ("evaluate", _plot_evaluate)):
        if stage not in metrics:
            continue
        figure = draw(plt, folder, metrics[stage])
        if figure is None:
            continue
        path = folder.root / "plots" / f"{stage}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            figure.savefig(temp, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        drawn[stage] = path
    return drawn


def _series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_sft(plt, folder, metrics):
    rows = folder.read_metrics("sft")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(*_series(rows, "loss"), label="training loss")
    axis.plot(*_series(rows, "eval_loss"), "o-", label="held-out loss")
    if metrics.get("eval_loss_untrained") is not None:
        axis.axhline(metrics["eval_loss_untrained"], color="grey", linestyle=":", label="untrained, held out")
    axis.set(xlabel="step", ylabel="loss (nats per token)", title="SFT")
    axis.legend()
    return figure


def _plot_reward(plt, folder, metrics):
    rows = folder.read_metrics("reward")
    margins = [r["margin"] for r in _read_jsonl(folder.samples_path("reward")) if r.get("margin") is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(*_series(rows, "eval_accuracy"), "o-", label="held-out accuracy")
    left.axhline(0.5, color="grey", linestyle=":", label="chance")
    left.axhline(metrics.get("min_accuracy", 0.6), color="red", linestyle="--", label="gate")
    left.set(xlabel="step", ylabel="accuracy", title="reward model", ylim=(0, 1))
    left.legend()
    if margins:
        right.hist(margins, bins=30, color="tab:blue")
        right.axvline(0, color="black")
        right.set(xlabel="r(chosen) - r(rejected)", ylabel="held-out pairs", title="margins (right of 0: correct)")
    return figure


def _plot_ppo(plt, folder, metrics):
    rows = folder.read_metrics("ppo")
    if not rows:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for axis, (name, held_out, title) in zip(axes, (("score_mean", "eval_reward", "reward"), ("kl", "eval_kl", "KL to sft"),
                                                    ("response_length", "eval_length", "response length"))):
        axis.plot(*_series(rows, name), label="rollouts")
        axis.plot(*_series(rows, held_out), "o-", label="held out")
        alarms = [r["step"] for r in rows if r.get("alarms")]
        for step in alarms:
            axis.axvline(step, color="red", alpha=0.3)
        axis.set(xlabel="iteration", title=title + (" (red: alarms)" if alarms else ""))
        axis.legend()
    return figure


def _plot_evaluate(plt, folder, metrics):
    comparisons = win_rates(metrics)
    if not comparisons:
        return None
    figure, axis = plt.subplots(figsize=(6, 0.6 * len(comparisons) + 1.5))
    labels = [f"{judge}: {challenger}" for judge, challenger, _, _ in comparisons]
    rates = [wins for _, _, wins, _ in comparisons]
    errors = [[wins - low for _, _, wins, (low, _) in comparisons], [high - wins for _, _, wins, (_, high) in comparisons]]
    axis.errorbar(rates, range(len(rates)), xerr=errors, fmt="o", capsize=4)
    axis.axvline(0.5, color="grey", linestyle=":")
    axis.set_yticks(range(len(rates)), labels)
    axis.set(xlim=(0, 1), xlabel=f"win rate against {metrics['baseline']} (95 % interval)", title="evaluation")
    return figure


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
