"""SFT: train the `sft` adapter to answer like the demonstrations (teacher-forced seq2seq loss).

TRL's SFTTrainer (1.16) is built around decoder-only causal LMs (its collators pack prompt and
completion into one sequence), so this is a plain PyTorch loop over the shared Backbone.

    1. load and tokenize (prompt, response) pairs; hold out a split
    2. add the `sft` adapter; only it trains
    3. loop: masked cross-entropy on response tokens; every `eval_every` steps the held-out loss and
       ROUGE-L of a few greedy samples; the adapter with the best held-out loss is saved
    4. reload the best adapter; score its held-out answers (and the untrained model's) with the judges
"""

from __future__ import annotations

import torch

from lorahf import distributed
from lorahf.backbone import respond
from lorahf.data import collate, encode_pairs
from lorahf.judge import scoring_judges
from lorahf.metrics import rouge_l, win_rate
from lorahf.training import (Throughput, index_batches, load_stage_data, make_optimizer, mean, sequence_logprobs,
                             step_plan, update)

ROLE = "sft"
LOG_EVERY = 10  # steps between lines in metrics.jsonl
FINAL_EVAL_PROMPTS = 200  # held-out prompts answered at the end for the judges


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.sft
    tokenizer = backbone.tokenizer

    # 1. Data
    train_rows, eval_rows = load_stage_data(spec.data, "sft", recipe.seed)
    train = encode_pairs(tokenizer, train_rows["prompt"], train_rows["response"], recipe.max_prompt_tokens,
                         recipe.max_response_tokens, recipe.prompt_template)
    held_out = encode_pairs(tokenizer, eval_rows["prompt"], eval_rows["response"], recipe.max_prompt_tokens,
                            recipe.max_response_tokens, recipe.prompt_template)
    progress.note(f"sft data: {len(train_rows)} train, {len(eval_rows)} held out; {train[2].summary()}")

    # 2. Adapter
    torch.manual_seed(recipe.seed)
    backbone.add_adapter(ROLE, recipe.lora.sft)
    backbone.set_trainable(ROLE)
    backbone.use(ROLE)
    parameters = backbone.parameters(ROLE)
    steps = step_plan(len(train_rows), spec.batch_size, spec.epochs, spec.max_steps)
    optimizer, scheduler = make_optimizer(parameters, spec, steps)

    # 3. Loop
    untrained = evaluate(backbone, held_out, eval_rows, spec, recipe)
    best = untrained["eval_loss"]
    backbone.save_adapter(ROLE, folder.adapter_dir(ROLE))
    losses: list[float] = []
    throughput = Throughput()
    tokens_per_s = 0.0
    with progress.task("sft", total=steps) as bar:
        lengths = [len(p) + 2 * len(r) for p, r in zip(train[0], train[1])] if spec.group_by_length else None
        for step, indices in index_batches(len(train_rows), spec.batch_size, steps, recipe.seed, lengths):
            indices = distributed.share(indices)  # this process's rows (all of them in one process)
            batch = collate([train[0][i] for i in indices], [train[1][i] for i in indices],
                            tokenizer.pad_token_id).to(backbone.device)
            backbone.model.train()
            loss = response_loss(backbone, batch, distributed.total(batch.response_mask.sum()))
            update(loss, optimizer, scheduler, parameters, spec.max_grad_norm, "sft", step)
            losses.append(distributed.total(loss.detach()).item())
            throughput.add(int(batch.attention_mask.sum() + batch.response_mask.sum()))
            if step % LOG_EVERY == 0 or step == steps:
                tokens_per_s = throughput.per_second()
                folder.log_metrics("sft", step, {"loss": mean(losses[-LOG_EVERY:]),
                                                 "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s})
            if step % spec.eval_every == 0 or step == steps:
                evaluation = evaluate(backbone, held_out, eval_rows, spec, recipe)
                folder.log_metrics("sft", step, {"eval_loss": evaluation["eval_loss"],
                                                 "eval_rougeL": evaluation["rougeL"]})
                if evaluation["eval_loss"] < best:
                    best = evaluation["eval_loss"]
                    backbone.save_adapter(ROLE, folder.adapter_dir(ROLE))
                folder.write_samples("sft", evaluation["samples"])
            bar.advance(loss=losses[-1], best_eval=best, tok_s=round(tokens_per_s))

    # 4. The best adapter, judged
    backbone.load_adapter(ROLE, folder.adapter_dir(ROLE))
    backbone.set_trainable()
    metrics = {"train_loss_first": mean(losses[:LOG_EVERY]), "train_loss_last": mean(losses[-LOG_EVERY:]),
               "eval_loss": best, "eval_loss_untrained": untrained["eval_loss"], "steps": steps}
    metrics.update(judge_against_base(backbone, held_out[0], eval_rows["prompt"], recipe, progress))
    return metrics


def response_loss(backbone, batch, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (padding masked by length); `tokens`: divide by
    the whole batch's response tokens instead of this part's (data parallelism)."""
    logits = backbone.response_logits(batch)
    logprobs = sequence_logprobs(logits, batch.response_ids, batch.response_mask)
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


def judge_against_base(backbone, prompt_ids, prompts, recipe, progress) -> dict:
    """Each judge's mean score of the SFT answers vs the untrained model's, and SFT's win rate."""
    judges = list(scoring_judges(recipe).values())
    if not judges:
        return {}
    prompt_ids, prompts = prompt_ids[:FINAL_EVAL_PROMPTS], list(prompts[:FINAL_EVAL_PROMPTS])
    answers = {role: respond(backbone.use(role), prompt_ids, recipe.max_response_tokens) for role in (ROLE, None)}
    backbone.use(ROLE)
    metrics = {}
    for judge in judges:
        tuned = judge.score(prompts, answers[ROLE])
        base = judge.score(prompts, answers[None])
        wins = win_rate(tuned, base)
        metrics.update({f"{judge.name}_score": mean(tuned), f"{judge.name}_score_untrained": mean(base),
                        f"{judge.name}_win_rate_vs_untrained": wins["win_rate"]})
        progress.note(f"sft: {judge.name} judge {mean(tuned):.2f} vs untrained {mean(base):.2f}, "
                      f"win rate {wins['win_rate']:.2f} [{wins['low']:.2f}, {wins['high']:.2f}] on {wins['n']} prompts")
    return metrics
