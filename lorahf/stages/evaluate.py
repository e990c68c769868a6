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

from dataclasses import dataclass

from lorahf import distributed
from lorahf.data import encode_prompts
from lorahf.errors import LorahfError
from lorahf.judge import REWARD, PreferenceFile, build_judges
from lorahf.metrics import bleu, meteor, rouge, win_rate_of
from lorahf.ppo.rollout import ModelScorer, answers
from lorahf.recipe import EvaluateStage
from lorahf.training import ensure_adapter, held_out_rows, mean

SEED = 1234  # every adapter samples its answers from this same seed


@dataclass
class Prompts:
    ids: list[list[int]]
    texts: list[str]
    references: list[str] | None


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.evaluate
    adapters = spec.adapters or (["sft", "policy"] if "ppo" in recipe.stages else ["sft"])
    baseline, challengers = adapters[0], adapters[1:]

    # 1. Held-out prompts
    prompts = held_out_prompts(recipe, spec.max_prompts, backbone.tokenizer)
    progress.note(f"evaluate: {len(prompts.texts)} held-out prompts{' with references' if prompts.references else ''}"
                  f", adapters {', '.join(adapters)}")

    # 2. Answers and their metrics
    for role in adapters:
        ensure_adapter(backbone, folder, role, needed_by="evaluate")
    if not backbone.has_adapter(REWARD) and folder.adapter_dir(REWARD).is_dir():
        backbone.load_adapter(REWARD, folder.adapter_dir(REWARD))
    judges = build_judges(recipe, backbone, names=spec.judges)
    metrics: dict = {"eval_prompts": len(prompts.texts), "adapters": adapters, "baseline": baseline,
                     "greedy": spec.greedy, "temperature": spec.temperature}
    with progress.task("evaluate", total=len(adapters) + len(judges) * len(challengers)) as bar:
        answered = {}
        for role in adapters:
            answered[role] = answer_prompts(backbone, recipe, role, prompts)
            metrics.update(text_metrics(role, answered[role], prompts.references))
            bar.advance(adapter=role)

        # 3. Judges: every challenger against the baseline (with data parallelism, the first process judges)
        for name, judge in judges.items() if distributed.is_main() else ():
            path = folder.root / "judgements" / f"{name}.jsonl"
            path.unlink(missing_ok=True)  # this evaluation's verdicts only
            out = PreferenceFile(path)
            for role in challengers:
                verdicts = judge.compare(prompts.texts, answered[role]["texts"], answered[baseline]["texts"])
                for prompt, mine, theirs, verdict in zip(prompts.texts, answered[role]["texts"],
                                                         answered[baseline]["texts"], verdicts):
                    if verdict is not None:
                        out.append({"prompt": prompt, "a": mine, "b": theirs, "a_by": role, "b_by": baseline},
                                   verdict, name)
                wins = win_rate_of(v.outcome for v in verdicts if v is not None)
                suffix = name if role == challengers[0] else f"{name}.{role}"
                metrics[f"win_rate.{suffix}"] = wins["win_rate"]
                metrics[f"win_rate_ci.{suffix}"] = [wins["low"], wins["high"]]
                metrics[f"judged.{suffix}"] = {"wins": wins["wins"], "losses": wins["losses"], "ties": wins["ties"],
                                               "no_verdict": sum(v is None for v in verdicts)}
                progress.note(f"evaluate: {name} judge, {role} vs {baseline}: win rate {wins['win_rate']:.2f} "
                              f"[{wins['low']:.2f}, {wins['high']:.2f}] on {wins['n']} prompts")
                bar.advance(judge=name)

    # 4. Samples
    folder.write_samples("evaluate", [
        {"prompt": prompts.texts[i], **({"reference": prompts.references[i]} if prompts.references else {}),
         **{role: answered[role]["texts"][i] for role in adapters},
         **({f"reward.{role}": answered[role]["rewards"][i] for role in adapters} if answered[baseline]["rewards"]
            else {})}
        for i in range(len(prompts.texts))])
    return metrics


def held_out_prompts(recipe, limit: int, tokenizer) -> Prompts:
    """The first `limit` held-out prompts: evaluate.data's, else the ppo stage's held-out split."""
    rows = held_out_rows(recipe)
    if rows is None:
        raise LorahfError("no held-out prompts: the recipe has neither evaluate.data nor a ppo section",
                          hint="set evaluate.data.files to a file with a prompt column")
    rows = rows.select(range(min(limit, len(rows))))
    ids, _ = encode_prompts(tokenizer, rows["prompt"], recipe.max_prompt_tokens, recipe.prompt_template)
    references = list(rows["reference"]) if "reference" in rows.column_names else None
    return Prompts(ids, list(rows["prompt"]), references)


def answer_prompts(backbone, recipe, role: str, prompts: Prompts) -> dict:
    """`role`'s answers with their reward (when there is a reward adapter), length and KL to sft."""
    spec = recipe.evaluate or EvaluateStage()
    scorer = ModelScorer() if backbone.has_adapter(REWARD) else None
    return answers(backbone, role, prompts.ids, prompts.texts, scorer, recipe.max_response_tokens,
                   greedy=spec.greedy, temperature=spec.temperature, batch_size=spec.batch_size, seed=SEED)


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
