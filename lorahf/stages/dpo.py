"""DPO and its family: the policy learns from preference pairs directly, with `sft` as its frozen reference.

No reward model and no rollouts: each step reads a batch of (prompt, chosen, rejected) and makes the policy's
log-ratio of chosen over rejected grow past the reference's (Rafailov et al. 2023). The reference is the `sft`
adapter on the same base, so there is no second model. TRL's DPOTrainer (1.16) holds the reference as a second
model or as the base with adapters disabled (the untrained model, not SFT's), and pads for decoder-only
models; this loop runs on the shared Backbone instead.

    1. preference pairs: pairwise rows, or rankings expanded to every ordered pair; a held-out split
    2. the policy adapter starts as a copy of sft; the reference's log-probs of every pair, computed once under sft
    3. loop (training.train_adapter): the loss `dpo.loss` of the summed log-probs of chosen and rejected; every
       `eval_every` steps the held-out loss, accuracy, margin and log-probs; the adapter with the best held-out
       loss is kept, the loop stops after `patience` checks without a better one, and resumes from its checkpoint
    4. alarm when the held-out chosen answers' log-prob fell below sft's; the best policy and sft answer the
       held-out prompts from one seed, and the judges compare them
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorahf import distributed
from lorahf.compare import Prompts, Sampling, policy_against_sft
from lorahf.data import collate, encode_prompts, encode_responses, preference_format
from lorahf.errors import LorahfError
from lorahf.judge import scoring_judges
from lorahf.logprobs import token_logprobs
from lorahf.report import Check, judged_comparisons, scalar_table, series
from lorahf.reward_model import of_run
from lorahf.roles import POLICY, SFT
from lorahf.stages import registry
from lorahf.stages.reward import group_rows
from lorahf.training import (
    LOG_EVERY,
    describe_training,
    ensure_adapter,
    load_stage_data,
    mean,
    train_adapter,
)

REFERENCE_FREE = ("orpo", "simpo")  # losses that read only the policy's log-probs
FINAL_EVAL_PROMPTS = 200  # held-out prompts the final comparison answers
FINAL_TEMPERATURE = 1.0  # the final comparison samples the distribution DPO trained (log-probs at temperature 1)


@dataclass
class Pairs:
    """Tokenized preference pairs, and the reference's summed log-probs of each answer (once computed)."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    prompt_texts: list[str]
    reference_chosen: torch.Tensor | None = None
    reference_rejected: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.dpo
    role = spec.adapter
    uses_reference = spec.loss not in REFERENCE_FREE

    # 1. Data
    data = registry.get("dpo").data_spec(recipe)
    train_rows, eval_rows = load_stage_data(data, "preference", recipe.seed)
    registry.get("dpo").check_layout(preference_format(train_rows), data.files)
    train, held_out = (to_pairs(rows, backbone.tokenizer, recipe) for rows in (train_rows, eval_rows))
    if not len(held_out):
        raise LorahfError(f"dpo.data: {', '.join(data.files)}: no held-out pairs to check the policy on",
                          hint="set dpo.data.eval_fraction above 0, or eval_files")
    progress.note(f"dpo data: {len(train)} train, {len(held_out)} held-out pairs; loss {spec.loss}, beta {spec.beta:g}")

    # 2. Adapter: a copy of sft; the reference's log-probs, once
    ensure_adapter(backbone, folder, SFT, needed_by="dpo")
    if uses_reference:
        with progress.task("dpo: reference log-probs", total=len(train) + len(held_out)) as bar:
            for pairs in (train, held_out):
                pairs.reference_chosen, pairs.reference_rejected = reference_logprobs(backbone, pairs, spec.batch_size,
                                                                                      bar)
    torch.manual_seed(recipe.seed)
    backbone.copy_adapter(SFT, role)
    backbone.set_trainable(role)
    backbone.use(role)

    # 3. Loop: the held-out loss picks the adapter kept
    def loss(indices: list[int]) -> tuple[torch.Tensor, int, dict]:
        found = pair_losses(backbone, train, indices, spec)
        tokens = int(found["tokens"].sum()) + sum(len(train.prompts[i]) for i in indices) * 2
        numbers = {name: value for name, value in summary(found).items() if name != "loss"}  # logged by the loop
        return distributed.share_of_mean(found["losses"].mean(), len(indices)), tokens, numbers

    lengths = ([len(p) + len(c) + len(r) for p, c, r in zip(train.prompts, train.chosen, train.rejected)]
               if spec.group_by_length else None)
    state = train_adapter("dpo", spec, recipe, backbone, folder, progress, rows=len(train), lengths=lengths,
                          loss=loss, check=lambda step: evaluate(backbone, held_out, spec), criterion="loss", role=role,
                          dropout=spec.dropout)

    # 4. Alarm, and the best policy against sft
    fell = chosen_logprob_fell(folder.read_metrics("dpo"), state.start["logprob_chosen"], spec.chosen_logprob_alarm)
    if fell:
        progress.note(f"[yellow]dpo alarm chosen_logprob_fell[/yellow] at {len(fell)} held-out check(s), first at step "
                      f"{fell[0]}: the chosen answers' log-prob fell more than {spec.chosen_logprob_alarm} nats per "
                      "token below sft's")
    losses = state.losses
    metrics = {"loss_type": spec.loss, "beta": spec.beta, "adapter": role, "steps": state.step,
               "best_step": state.best_step, "stopped_early": state.stopped_early,
               "train_loss_first": mean(losses[:LOG_EVERY]), "train_loss_last": mean(losses[-LOG_EVERY:]),
               "eval_loss": state.best["loss"], "eval_loss_start": state.start["loss"],
               "eval_accuracy": state.best["accuracy"], "eval_margin": state.best["margin"],
               "eval_pairs": len(held_out), "logprob_chosen_sft": state.start["logprob_chosen"],
               "logprob_chosen": state.best["logprob_chosen"], "logprob_rejected_sft": state.start["logprob_rejected"],
               "logprob_rejected": state.best["logprob_rejected"], "chosen_logprob_alarm": spec.chosen_logprob_alarm,
               "alarms": {"chosen_logprob_fell": len(fell)} if fell else {}}
    metrics.update(compare_with_sft(backbone, recipe, folder, held_out, role, progress))
    return metrics


# -------------------------------------------------------------------------------------------- the losses
def preference_losses(loss: str, chosen: torch.Tensor, rejected: torch.Tensor, reference_chosen: torch.Tensor | None,
                      reference_rejected: torch.Tensor | None, chosen_tokens: torch.Tensor,
                      rejected_tokens: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                      target_margin: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: (loss, implicit reward of the chosen answer, of the rejected one), from the answers' summed
    log-probs under the policy (`chosen`, `rejected`) and the reference, and their token counts.

        h = (chosen - reference_chosen) - (rejected - reference_rejected)
        sigmoid  -(1 - ε) log σ(β h) - ε log σ(-β h)                           DPO (ε: conservative DPO)
        ipo      (h - 1 / (2β))²                                              IPO (Azar et al. 2023)
        hinge    max(0, 1 - β h)                                              SLiC-HF (Zhao et al. 2023)
        orpo     -chosen/|chosen| - β log σ(log odds(chosen) - log odds(rejected)), with the mean log-prob per
                 token p̄ and odds = p̄ / (1 - p̄)                             ORPO (Hong et al. 2024)
        simpo    -(1 - ε) log σ(β (c̄ - r̄) - γ) - ε log σ(-(β (c̄ - r̄) - γ)), c̄ and r̄ mean log-probs per token
                                                                              SimPO (Meng et al. 2024)

    Implicit rewards: β (log-prob - reference log-prob); β times the mean log-prob per token for orpo and simpo."""
    if loss in REFERENCE_FREE:
        chosen_mean, rejected_mean = chosen / chosen_tokens, rejected / rejected_tokens
        chosen_reward, rejected_reward = beta * chosen_mean, beta * rejected_mean
        if loss == "simpo":
            logits = beta * (chosen_mean - rejected_mean) - target_margin
            return _smoothed(logits, label_smoothing), chosen_reward, rejected_reward
        log_odds = (chosen_mean - rejected_mean) - (torch.log1p(-torch.exp(chosen_mean).clamp(max=1 - 1e-6))
                                                    - torch.log1p(-torch.exp(rejected_mean).clamp(max=1 - 1e-6)))
        return -chosen_mean - beta * F.logsigmoid(log_odds), chosen_reward, rejected_reward
    chosen_ratio, rejected_ratio = chosen - reference_chosen, rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    rewards = beta * chosen_ratio, beta * rejected_ratio
    if loss == "sigmoid":
        return _smoothed(beta * h, label_smoothing), *rewards
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2, *rewards
    if loss == "hinge":
        return torch.relu(1 - beta * h), *rewards
    raise ValueError(f"unknown preference loss {loss!r}")


def _smoothed(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log σ(logits), with a share `label_smoothing` of the pairs taken to be the other way round."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


# ------------------------------------------------------------------------------------------------ data
def to_pairs(rows, tokenizer, recipe) -> Pairs:
    """Pairwise rows as they are; a ranking as every ordered pair of its answers (better, worse)."""
    responses, pairs_of, _ = group_rows(rows, preference_format(rows), None)
    prompt_ids, _ = encode_prompts(tokenizer, rows["prompt"], recipe.max_prompt_tokens, recipe.prompt_format)
    flat, _ = encode_responses(tokenizer, [r for group in responses for r in group], recipe.max_response_tokens)
    flat = iter(flat)
    answers_of = [[next(flat) for _ in group] for group in responses]
    prompts, chosen, rejected, texts = [], [], [], []
    for prompt, text, answers, pairs in zip(prompt_ids, rows["prompt"], answers_of, pairs_of):
        for better, worse in pairs:
            prompts.append(prompt)
            chosen.append(answers[better])
            rejected.append(answers[worse])
            texts.append(text)
    return Pairs(prompts, chosen, rejected, texts)


def answer_logprobs(backbone, pairs: Pairs, indices: list[int]) -> tuple[torch.Tensor, ...]:
    """The active role's summed log-probs of the chosen and the rejected answers of these pairs, in one forward
    pass, and the answers' token counts: (chosen, rejected, chosen_tokens, rejected_tokens), [B] each."""
    prompts = [pairs.prompts[i] for i in indices]
    answers = [pairs.chosen[i] for i in indices] + [pairs.rejected[i] for i in indices]
    batch = collate(prompts + prompts, answers, backbone.tokenizer.pad_token_id).to(backbone.device)
    logprobs = token_logprobs(backbone.response_logits(batch), batch.response_ids, batch.response_mask).sum(1)
    tokens = batch.response_mask.sum(1).float()
    return (*logprobs.split(len(indices)), *tokens.split(len(indices)))


@torch.no_grad()
def reference_logprobs(backbone, pairs: Pairs, batch_size: int, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """sft's summed log-probs of every pair's chosen and rejected answer, on the CPU: [N] each."""
    backbone.use(SFT).model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        found = answer_logprobs(backbone, pairs, list(range(start, min(start + batch_size, len(pairs)))))
        chosen.append(found[0].float().cpu())
        rejected.append(found[1].float().cpu())
        bar.advance(len(found[0]))
    return torch.cat(chosen), torch.cat(rejected)


def pair_losses(backbone, pairs: Pairs, indices: list[int], spec) -> dict[str, torch.Tensor]:
    """The loss of each pair under the active role, its implicit rewards and log-probs per token."""
    chosen, rejected, chosen_tokens, rejected_tokens = answer_logprobs(backbone, pairs, indices)
    reference = (None, None)
    if pairs.reference_chosen is not None:
        reference = tuple(r[indices].to(chosen.device) for r in (pairs.reference_chosen, pairs.reference_rejected))
    losses, chosen_rewards, rejected_rewards = preference_losses(
        spec.loss, chosen, rejected, *reference, chosen_tokens, rejected_tokens, spec.beta, spec.label_smoothing,
        spec.target_margin)
    return {"losses": losses, "reward_chosen": chosen_rewards.detach(), "reward_rejected": rejected_rewards.detach(),
            "logprob_chosen": (chosen / chosen_tokens).detach(), "logprob_rejected": (rejected / rejected_tokens).detach(),
            "tokens": (chosen_tokens + rejected_tokens).detach()}


def summary(found: dict[str, torch.Tensor]) -> dict[str, float]:
    """A batch's numbers: loss, accuracy (ties count half), margin, implicit rewards, log-probs per token."""
    margins = found["reward_chosen"] - found["reward_rejected"]
    return {"loss": found["losses"].mean().item(),
            "accuracy": ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item(),
            "margin": margins.mean().item(), "reward_chosen": found["reward_chosen"].mean().item(),
            "reward_rejected": found["reward_rejected"].mean().item(),
            "logprob_chosen": found["logprob_chosen"].mean().item(),
            "logprob_rejected": found["logprob_rejected"].mean().item()}


@torch.no_grad()
def evaluate(backbone, pairs: Pairs, spec) -> dict:
    """The held-out numbers of `summary`, over every held-out pair (`loss` is the held-out loss)."""
    backbone.model.eval()
    parts = [pair_losses(backbone, pairs, list(range(start, min(start + spec.batch_size, len(pairs)))), spec)
             for start in range(0, len(pairs), spec.batch_size)]
    return summary({name: torch.cat([part[name] for part in parts]) for name in parts[0]})


def chosen_logprob_fell(rows: list[dict], start: float, alarm: float) -> list[int]:
    """Steps whose held-out check found the chosen answers' log-prob per token more than `alarm` below sft's."""
    return [row["step"] for row in rows if row.get("eval_logprob_chosen") is not None
            and row["eval_logprob_chosen"] < start - alarm]


def compare_with_sft(backbone, recipe, folder, held_out: Pairs, role: str, progress) -> dict:
    """The policy's and sft's answers to the held-out prompts, sampled from one seed: their reward (when the run
    has a reward model), KL and length, and each scoring judge's win rate of the policy over sft."""
    texts = list(dict.fromkeys(held_out.prompt_texts))[:FINAL_EVAL_PROMPTS]
    ids, _ = encode_prompts(backbone.tokenizer, texts, recipe.max_prompt_tokens, recipe.prompt_format)
    scorer = of_run(recipe, backbone, folder)  # the run's reward model, if it has one
    sampling = Sampling(recipe.max_response_tokens, temperature=FINAL_TEMPERATURE)
    return policy_against_sft(backbone, Prompts(ids, texts), role, scoring_judges(recipe), sampling, scorer, "dpo",
                              progress)[1]


# ------------------------------------------------------------------------------- plan and report
def describe(recipe) -> str:
    spec = recipe.dpo
    return f"{spec.loss} loss, beta {spec.beta:g}, writes {spec.adapter}; " + describe_training(spec)


def plan_memory(shape, recipe, traced) -> dict[str, int]:
    """One step: the policy's forward and backward over both answers of a batch of pairs (`pair_losses`)."""
    spec, rows = recipe.dpo, recipe.dpo.batch_size
    pairs = Pairs([[0] * recipe.max_prompt_tokens] * rows, *[[[0] * recipe.max_response_tokens] * rows] * 2, [""] * rows,
                  torch.zeros(rows), torch.zeros(rows))
    return {"step": traced(lambda s: s.trace_step(
        recipe, POLICY, lambda backbone: pair_losses(backbone, pairs, list(range(rows)), spec)["losses"].mean()))}


def checks(dpo: dict) -> list[Check]:
    found = [Check("dpo", "prefers the chosen answers of held-out pairs",
                   f"accuracy {dpo['eval_accuracy']:.3f} on {dpo['eval_pairs']} pairs, loss {dpo['eval_loss_start']:.3f} "
                   f"-> {dpo['eval_loss']:.3f}", dpo["eval_accuracy"] > 0.5 and dpo["eval_loss"] < dpo["eval_loss_start"],
                   "raise dpo.epochs or dpo.learning_rate, or check that chosen and rejected are not swapped")]
    found += judged_comparisons("dpo", dpo, "policy", "sft", "DPO answers to SFT's")
    fell = dpo["logprob_chosen_sft"] - dpo["logprob_chosen"]
    found.append(Check("dpo", "kept the chosen answers likely (their log-prob did not fall far below sft's)",
                       f"{dpo['logprob_chosen_sft']:.3f} -> {dpo['logprob_chosen']:.3f} nats per token (rejected "
                       f"{dpo['logprob_rejected_sft']:.3f} -> {dpo['logprob_rejected']:.3f}); alarm at a fall of "
                       f"{dpo['chosen_logprob_alarm']}", fell <= dpo["chosen_logprob_alarm"],
                       "lower dpo.learning_rate or dpo.epochs, raise dpo.beta, or try dpo.loss: ipo"))
    return found


def report(metrics: dict) -> list[str]:
    return scalar_table(metrics)


def plot(plt, folder, metrics):
    rows = folder.read_metrics("dpo")
    if not rows:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for axis, (names, title) in zip(axes, ((("loss", "eval_loss"), "loss"), (("accuracy", "eval_accuracy"), "accuracy"),
                                           (("logprob_chosen", "logprob_rejected", "eval_logprob_chosen",
                                             "eval_logprob_rejected"), "log-prob per token"))):
        for name in names:
            axis.plot(*series(rows, name), "o-" if name.startswith("eval_") else "-",
                      label=name.replace("eval_", "held-out ").replace("_", " "))
        axis.set(xlabel="step", title=title)
        axis.legend(fontsize=7)
    return figure
