"""Evaluation: every adapter answers the same held-out prompts; metrics and judges say which is better.

    1. held-out prompts: evaluate.data, or the ppo stage's held-out split (with references where given)
    2. each adapter answers (greedy, or sampled from one fixed seed for all of them); its answers' reward,
       length and exact KL to sft along them; ROUGE-1/2/L, BLEU and METEOR against the references
       (with data parallelism, each process answers its share of the prompts)
    3. each judge compares every other adapter's answers with the first's (ties count half), 95 % Wilson
       interval; its verdicts go to judgements/<judge>.jsonl, preference rows the next reward round reads
    4. samples/evaluate.jsonl keeps every prompt's answers side by side

`lorahf judge` reuses steps 1 and 2 to put the answers in front of any judge, a person included.
"""

from __future__ import annotations

from lorahf import distributed
from lorahf.compare import Comparison, Sampling, compare_adapters, describe_win, held_out_prompts
from lorahf.judge import REWARD, PreferenceFile, build_judges
from lorahf.metrics import bleu, meteor, rouge
from lorahf.recipe import EvaluateStage
from lorahf.report import Check, fmt, significant
from lorahf.reward_model import of_run
from lorahf.roles import SFT
from lorahf.stages import registry
from lorahf.training import ensure_adapter, mean

def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.evaluate
    adapters = adapters_of(recipe)

    # 1. Held-out prompts
    prompts = held_out_prompts(recipe, spec.max_prompts, backbone.tokenizer)
    progress.note(f"evaluate: {len(prompts.texts)} held-out prompts{' with references' if prompts.references else ''}"
                  f", adapters {', '.join(adapters)}")

    # 2-3. Answers and their metrics; every judge compares each challenger with the baseline (with data
    # parallelism, each process answers its share of the prompts, and the first process judges)
    for role in adapters:
        ensure_adapter(backbone, folder, role, needed_by="evaluate")
    reward = of_run(recipe, backbone, folder)  # the run's reward model, if it has one
    judges = build_judges(recipe, reward, names=spec.judges) if distributed.is_main() else {}
    metrics: dict = {"eval_prompts": len(prompts.texts), "adapters": adapters, "baseline": adapters[0],
                     "greedy": spec.greedy, "temperature": spec.temperature}
    with progress.task("evaluate", total=len(adapters) + len(judges) * (len(adapters) - 1)) as bar:
        def judged(found: Comparison, judge: str, role: str, verdicts: list) -> None:
            metrics.update(verdicts_to_file(folder, found, judge, role, verdicts))
            wins = found.win_rate(judge, role)
            progress.note(f"evaluate: {describe_win(judge, wins)} ({role} against {adapters[0]})")
            bar.advance(judge=judge)

        found = compare_adapters(backbone, prompts, adapters, judges, sampling(recipe), reward,
                                 on_answered=lambda role: bar.advance(adapter=role), on_judged=judged)
    for role in adapters:
        metrics.update(text_metrics(role, found.answers[role], prompts.references))

    # 4. Samples
    answered = found.answers
    folder.write_samples("evaluate", [
        {"prompt": prompts.texts[i], **({"reference": prompts.references[i]} if prompts.references else {}),
         **{role: answered[role]["texts"][i] for role in adapters},
         **({f"reward.{role}": answered[role]["rewards"][i] for role in adapters} if answered[adapters[0]]["rewards"]
            else {})}
        for i in range(len(prompts.texts))])
    return metrics


def verdicts_to_file(folder, found: Comparison, judge: str, role: str, verdicts: list) -> dict:
    """One judge's verdicts of one challenger, appended to judgements/<judge>.jsonl (preference rows the next
    reward round reads; the file holds this evaluation's verdicts only), and their marker metrics."""
    path = folder.root / "judgements" / f"{judge}.jsonl"
    if role == found.challengers[0]:
        path.unlink(missing_ok=True)
    out = PreferenceFile(path)
    texts, baseline = found.answers[role]["texts"], found.answers[found.baseline]["texts"]
    for prompt, mine, theirs, verdict in zip(found.prompts.texts, texts, baseline, verdicts):
        if verdict is not None:
            out.append({"prompt": prompt, "a": mine, "b": theirs, "a_by": role, "b_by": found.baseline}, verdict, judge)
    wins = found.win_rate(judge, role)
    suffix = judge if role == found.challengers[0] else f"{judge}.{role}"
    return {f"win_rate.{suffix}": wins["win_rate"], f"win_rate_ci.{suffix}": [wins["low"], wins["high"]],
            f"judged.{suffix}": {key: wins[key] for key in ("wins", "losses", "ties", "no_verdict")}}


def sampling(recipe) -> Sampling:
    """How the adapters answer: evaluate's settings (a recipe without an evaluate section: their defaults)."""
    spec = recipe.evaluate or EvaluateStage()
    return Sampling(recipe.max_response_tokens, greedy=spec.greedy, temperature=spec.temperature,
                    batch_size=spec.batch_size)


def text_metrics(role: str, answered: dict, references: list[str] | None) -> dict:
    """The marker's metrics of one adapter's answers."""
    found = {f"length.{role}": mean(answered["lengths"]), f"kl.{role}": mean(answered["kl"])}
    if answered["rewards"]:
        found[f"reward_mean.{role}"] = mean(answered["rewards"])
    if references:
        scores = rouge(answered["texts"], references)
        value, synonyms = meteor(answered["texts"], references)
        found.update({f"rouge_1.{role}": scores["rouge1"], f"rouge_2.{role}": scores["rouge2"],
                      f"rouge_l.{role}": scores["rougeL"], f"bleu.{role}": bleu(answered["texts"], references),
                      f"meteor.{role}": value, "meteor_synonyms": synonyms})
    return found


# ------------------------------------------------------------------------------- plan and report
def adapters_of(recipe) -> list[str]:
    """The adapters that answer: evaluate.adapters, else sft and the policy each policy stage writes."""
    spec = recipe.evaluate or EvaluateStage()
    return spec.adapters or [SFT, *registry.policy_adapters(recipe)]


def describe(recipe) -> str:
    spec = recipe.evaluate
    return (f"{', '.join(adapters_of(recipe))} on {spec.max_prompts} held-out prompts, "
            f"judges: {', '.join(spec.judges or [REWARD, *recipe.judges])}")


def plan_memory(shape, recipe, traced) -> dict[str, int]:
    batch = min(recipe.evaluate.batch_size, recipe.evaluate.max_prompts)
    return {"rollout": shape.rollout_bytes(batch, recipe.max_prompt_tokens, recipe.max_response_tokens,
                                           keep_encoder_states=False, keep_logits=True)}


def checks(evaluate: dict) -> list[Check]:
    return [Check("evaluate", f"the {judge} judge prefers {challenger} to {evaluate['baseline']}",
                  f"win rate {wins:.2f} [{low:.2f}, {high:.2f}] on {evaluate['eval_prompts']} prompts",
                  significant(low, high))
            for judge, challenger, wins, (low, high) in win_rates(evaluate)]


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


def report(m: dict) -> list[str]:
    adapters = m["adapters"]
    meteor_title = "METEOR" if m.get("meteor_synonyms") else "METEOR (exact + stem, no synonyms: WordNet data missing)"
    columns = [("ROUGE-1", "rouge_1"), ("ROUGE-2", "rouge_2"), ("ROUGE-L", "rouge_l"), ("BLEU", "bleu"),
               (meteor_title, "meteor"), ("reward", "reward_mean"), ("KL to sft", "kl"), ("length", "length")]
    columns = [(title, key) for title, key in columns if f"{key}.{adapters[0]}" in m]
    how = "greedy" if m.get("greedy") else f"sampled at temperature {m.get('temperature')} from one seed"
    lines = [f"{m['eval_prompts']} held-out prompts, answers {how}.", "",
             "| adapter | " + " | ".join(title for title, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for adapter in adapters:
        lines.append(f"| {adapter} | " + " | ".join(fmt(m.get(f"{key}.{adapter}")) for _, key in columns) + " |")
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


def plot(plt, folder, metrics):
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
