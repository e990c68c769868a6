"""SFT: train the `sft` adapter to answer like the demonstrations (teacher-forced seq2seq loss).

TRL's SFTTrainer (1.16) is built around decoder-only causal LMs (its collators pack prompt and
completion into one sequence), so this is a plain PyTorch loop over the shared Backbone.

    1. load and tokenize (prompt, response) pairs; hold out a split
    2. add the `sft` adapter; only it trains
    3. loop (training.train_adapter): masked cross-entropy on response tokens; every `eval_every` steps the
       held-out loss and ROUGE-L of a few greedy samples; the adapter with the best held-out loss is kept, the
       loop stops after `patience` checks without a better one, and resumes from its last checkpoint
    4. the best adapter's greedy answers to held-out prompts beside their references and the untrained model's
       answers: ROUGE-L against the references, each judge's score of all three
"""

from __future__ import annotations

import torch

from lorahf import distributed, roles
from lorahf.backbone import respond
from lorahf.data import collate, encode_pairs
from lorahf.judge import scoring_judges
from lorahf.logprobs import token_logprobs
from lorahf.compare import Prompts, Sampling, compare_adapters, describe_win
from lorahf.metrics import rouge_l
from lorahf.report import Check, judges_in, scalar_table, series
from lorahf.training import LOG_EVERY, describe_training, load_stage_data, mean, train_adapter

ROLE = roles.SFT
FINAL_EVAL_PROMPTS = 200  # held-out prompts answered at the end for the judges


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.sft
    tokenizer = backbone.tokenizer

    # 1. Data
    train_rows, eval_rows = load_stage_data(spec.data, "sft", recipe.seed)
    train = encode_pairs(tokenizer, train_rows["prompt"], train_rows["response"], recipe.max_prompt_tokens,
                         recipe.max_response_tokens, recipe.prompt_format)
    held_out = encode_pairs(tokenizer, eval_rows["prompt"], eval_rows["response"], recipe.max_prompt_tokens,
                            recipe.max_response_tokens, recipe.prompt_format)
    progress.note(f"sft data: {len(train_rows)} train, {len(eval_rows)} held out; {train[2].summary()}")

    # 2. Adapter
    torch.manual_seed(recipe.seed)
    backbone.add_adapter(ROLE, recipe.lora.sft)
    backbone.set_trainable(ROLE)
    backbone.use(ROLE)

    # 3. Loop: the held-out loss picks the adapter kept (and stops the loop when it no longer falls)
    def loss(indices: list[int]) -> tuple[torch.Tensor, int]:
        batch = collate([train[0][i] for i in indices], [train[1][i] for i in indices],
                        tokenizer.pad_token_id).to(backbone.device)
        tokens = int(batch.attention_mask.sum() + batch.response_mask.sum())
        return response_loss(backbone, batch, distributed.total(batch.response_mask.sum())), tokens

    def check(step: int) -> dict:
        found = evaluate(backbone, held_out, eval_rows, spec, recipe)
        if step:
            folder.write_samples(ROLE, found.pop("samples"))
        return {"loss": found["eval_loss"], "rougeL": found["rougeL"]}

    lengths = [len(p) + 2 * len(r) for p, r in zip(train[0], train[1])] if spec.group_by_length else None
    state = train_adapter(ROLE, spec, recipe, backbone, folder, progress, rows=len(train_rows), lengths=lengths,
                          loss=loss, check=check, criterion="loss")

    # 4. The best adapter, judged
    losses = state.losses
    metrics = {"train_loss_first": mean(losses[:LOG_EVERY]), "train_loss_last": mean(losses[-LOG_EVERY:]),
               "eval_loss": state.best["loss"], "eval_loss_untrained": state.start["loss"], "steps": state.step,
               "best_step": state.best_step, "stopped_early": state.stopped_early}
    metrics.update(compare_with_references(backbone, held_out[0], eval_rows["prompt"], eval_rows["response"], recipe,
                                           progress))
    return metrics


def response_loss(backbone, batch, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (padding masked by length); `tokens`: divide by
    the whole batch's response tokens instead of this part's (data parallelism)."""
    logits = backbone.response_logits(batch)
    logprobs = token_logprobs(logits, batch.response_ids, batch.response_mask)
    return -logprobs.sum() / (batch.response_mask.sum() if tokens is None else tokens)


@torch.no_grad()
def evaluate(backbone, held_out, eval_rows, spec, recipe) -> dict:
    """Held-out loss over every held-out pair, and ROUGE-L of greedy answers to the first few."""
    prompt_ids, response_ids, _ = held_out
    backbone.model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(prompt_ids), spec.batch_size):
        batch = collate(prompt_ids[start:start + spec.batch_size], response_ids[start:start + spec.batch_size],
                        backbone.tokenizer.pad_token_id).to(backbone.device)
        count = int(batch.response_mask.sum())
        total += response_loss(backbone, batch).item() * count
        tokens += count
    shown = min(spec.eval_samples, len(prompt_ids))
    answers = respond(backbone, prompt_ids[:shown], recipe.max_response_tokens)
    references = eval_rows["response"][:shown]
    samples = [{"prompt": p, "response": a, "reference": r}
               for p, a, r in zip(eval_rows["prompt"][:shown], answers, references)]
    return {"eval_loss": total / max(tokens, 1), "rougeL": rouge_l(answers, references) if shown else None,
            "samples": samples}


def compare_with_references(backbone, prompt_ids, prompts, references, recipe, progress) -> dict:
    """How far the SFT answers to held-out prompts are from their references, beside the untrained model's
    answers: ROUGE-L against the references, and each judge's mean score of the SFT answers, the untrained
    model's and the references themselves (with SFT's win rate over the untrained model)."""
    shown = min(FINAL_EVAL_PROMPTS, len(prompt_ids))
    held_out = Prompts(prompt_ids[:shown], list(prompts[:shown]), list(references[:shown]))
    judges = scoring_judges(recipe)
    found = compare_adapters(backbone, held_out, [None, ROLE], judges, Sampling(recipe.max_response_tokens, greedy=True))
    backbone.use(ROLE)
    answers = {role: found.answers[role]["texts"] for role in (None, ROLE)}
    metrics = {"rouge_l": rouge_l(answers[ROLE], held_out.references),
               "rouge_l_untrained": rouge_l(answers[None], held_out.references), "reference_prompts": shown}
    progress.note(f"sft: ROUGE-L against the held-out references {metrics['rouge_l']:.3f} "
                  f"(untrained {metrics['rouge_l_untrained']:.3f}) on {shown} prompts")
    for name, judge in judges.items():
        tuned, base = mean(found.scores(name, ROLE)), mean(found.scores(name, None))
        wins = found.win_rate(name, ROLE)
        metrics.update({f"{name}_score": tuned, f"{name}_score_untrained": base,
                        f"{name}_score_references": mean(judge.score(held_out.texts, held_out.references)),
                        f"{name}_win_rate_vs_untrained": wins["win_rate"]})
        progress.note(f"sft: {name} judge {tuned:.2f} vs untrained {base:.2f} (references "
                      f"{metrics[name + '_score_references']:.2f}), {describe_win(name, wins)}")
    return metrics


# ------------------------------------------------------------------------------- plan and report
CLOSE_TO_REFERENCES = 0.5
"""The share of the gap between the untrained model's judged score and the references' that SFT must close."""
FAR_FROM_REFERENCES = ("train longer (raise sft.epochs or sft.patience), raise sft.learning_rate, or let "
                       "`lorahf init FILES --base BASE` pick settings for this base")


def describe(recipe) -> str:
    return describe_training(recipe.sft)


def plan_memory(shape, recipe, traced) -> dict[str, int]:
    return {"step": traced(lambda s: s.trace_sft(recipe, recipe.sft.batch_size))}


def checks(sft: dict) -> list[Check]:
    found = [Check("sft", "training loss fell", f"{sft['train_loss_first']:.3f} -> {sft['train_loss_last']:.3f}",
                   sft["train_loss_last"] < sft["train_loss_first"]),
             Check("sft", "held-out loss fell below the untrained model's",
                   f"{sft['eval_loss_untrained']:.3f} -> {sft['eval_loss']:.3f}",
                   sft["eval_loss"] < sft["eval_loss_untrained"])]
    if "rouge_l" in sft:
        found.append(Check("sft", "answers overlap the held-out references more than the untrained model's",
                           f"ROUGE-L {sft['rouge_l']:.3f} vs {sft['rouge_l_untrained']:.3f} on "
                           f"{sft['reference_prompts']} prompts", sft["rouge_l"] > sft["rouge_l_untrained"],
                           FAR_FROM_REFERENCES))
    for judge in judges_in(sft, suffix="_win_rate_vs_untrained"):
        found.append(Check("sft", f"the {judge} judge prefers SFT answers to the untrained model's",
                           f"score {sft[judge + '_score']:.2f} vs {sft[judge + '_score_untrained']:.2f}, "
                           f"win rate {sft[judge + '_win_rate_vs_untrained']:.2f}",
                           sft[judge + "_win_rate_vs_untrained"] > 0.5, FAR_FROM_REFERENCES))
        if judge + "_score_references" in sft:
            found.append(_near_references(judge, sft))
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


def report(metrics: dict) -> list[str]:
    return scalar_table(metrics)


def plot(plt, folder, metrics):
    rows = folder.read_metrics("sft")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(*series(rows, "loss"), label="training loss")
    axis.plot(*series(rows, "eval_loss"), "o-", label="held-out loss")
    if metrics.get("eval_loss_untrained") is not None:
        axis.axhline(metrics["eval_loss_untrained"], color="grey", linestyle=":", label="untrained, held out")
    axis.set(xlabel="step", ylabel="loss (nats per token)", title="SFT")
    axis.legend()
    return figure
