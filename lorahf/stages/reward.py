"""Reward model: the `reward` adapter plus a scalar head on the shared base, or a classifier on its own encoder
(`reward.model`), trained on preferences (lorahf.reward_model holds both behind one interface).

On the shared base the encoder reads the prompt, the decoder reads the response, and the score is the head at
the response's last (EOS) position; an encoder classifier reads (prompt, response) as a text pair. The loss
follows the data's shape:

    pairwise (prompt, chosen, rejected)    -log sigmoid(r_chosen - r_rejected - margin)
    ranking  (prompt, responses, ranking)  the same over all K(K-1)/2 pairs of a prompt, in one batch,
                                           each prompt weighted equally (InstructGPT)
    score    (prompt, response, score)     mean squared error on standardised scores

    1. load preferences (held-out split), group each prompt's responses and their ordered pairs
    2. the reward model: the `reward` adapter as a copy of `sft` (the standard choice) with a fresh head, or
       `reward.model` with a fresh LoRA adapter (or trainable in full, or as given with `reward.train: false`)
    3. loop (training.train_adapter); every `eval_every` steps the held-out accuracy; the best adapter is
       kept, the loop stops after `patience` checks without a better one, and resumes from its last checkpoint
       (`reward.train: false`: one held-out check, no training)
    4. centre: set the offset so that the SFT data's own responses score 0 on average; samples/reward.jsonl
       keeps every held-out pair's margin
    5. the quality gate: held-out accuracy against `min_accuracy`
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorahf import distributed, roles
from lorahf.data import preference_format
from lorahf.report import Check, read_jsonl, scalar_table, series
from lorahf.reward_model import EncoderReward, SharedReward, keep_beside
from lorahf.training import describe_training, ensure_adapter, load_stage_data, train_adapter

ROLE = roles.REWARD
CENTRING_ROWS = 512  # SFT responses scored to centre the reward
SCORE_BATCH = 64


@dataclass
class Groups:
    """Each prompt's responses, as the reward model reads them (its `tokenize` items), and what is known about
    their order. pairs[g]: (better, worse) indices into items[g]; targets[g]: standardised scores (score data)."""

    items: list[list]
    pairs: list[list[tuple[int, int]]]
    targets: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.items)


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.reward

    # 1. Data
    train_rows, eval_rows = load_stage_data(spec.data, "preference", recipe.seed)
    data_format = preference_format(train_rows)
    scale = _score_scale(train_rows) if data_format == "score" else None

    # 2. The reward model
    reward = start(recipe, backbone, folder)
    train = to_groups(train_rows, data_format, reward, scale)
    held_out = to_groups(eval_rows, data_format, reward, scale)
    progress.note(f"reward data ({data_format}): {len(train)} train, {len(held_out)} held-out prompts; "
                  f"{reward.describe()}")

    # 3. Loop: held-out accuracy picks the adapter kept (and stops the loop when it no longer rises)
    def loss(indices: list[int]) -> tuple[torch.Tensor, int]:
        scores = score_responses(reward, train, indices)
        mean_loss = group_loss(scores, [train.pairs[i] for i in indices], spec.margin,
                               [train.targets[i] for i in indices] if train.targets else None)
        share = distributed.share_of_mean(mean_loss, sum(len(train.targets[i]) for i in indices) if train.targets
                                          else len(indices))  # the mean is over responses, or over groups
        return share, sum(reward.tokens(item) for i in indices for item in train.items[i])

    if spec.train:
        lengths = [reward.group_length(group) for group in train.items] if spec.group_by_length else None
        state = train_adapter(ROLE, spec, recipe, reward.holder, folder, progress, rows=len(train), lengths=lengths,
                              loss=loss, check=lambda step: evaluate(reward, held_out, spec.batch_size),
                              criterion="accuracy", maximize=True)
        best, losses, trained = state.best, state.losses, {"best_step": state.best_step, "steps": state.step,
                                                           "stopped_early": state.stopped_early}
    else:
        best, losses, trained = evaluate(reward, held_out, spec.batch_size), [], {"steps": 0}
        folder.log_metrics("reward", 0, {f"eval_{k}": v for k, v in best.items()})

    # 4. Centre the best reward model on the SFT data's own responses
    offset = centre(reward, sft_responses(recipe, reward, train_rows, data_format))
    reward.save(folder)
    if reward.kind == "encoder":
        keep_beside(backbone, reward)  # ppo and evaluate in this process score with it, loaded once

    folder.write_samples(ROLE, held_out_samples(reward, held_out, eval_rows, data_format, spec.batch_size))

    # 5. The gate
    gate = "pass" if best["accuracy"] >= spec.min_accuracy else "fail"
    progress.note(f"reward: held-out accuracy {best['accuracy']:.3f} on {best['pairs']} pairs "
                  f"(gate {gate} at {spec.min_accuracy}); scores centred by {offset:+.3f}")
    metrics = {"format": data_format, "model": reward.kind, "eval_accuracy": best["accuracy"],
               "eval_pairs": best["pairs"], "eval_margin": best["margin"], "gate": gate,
               "min_accuracy": spec.min_accuracy, "offset": offset, **trained,
               "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None}
    if reward.kind == "encoder":
        metrics["memory_bytes"] = reward.memory_bytes()
    metrics.update({k: best[k] for k in ("pearson", "spearman") if k in best})
    return metrics


def start(recipe, backbone, folder):
    """Step 2: the reward model, ready to train (or, with `reward.train: false`, to be evaluated as it is)."""
    spec = recipe.reward
    torch.manual_seed(recipe.seed)
    if spec.model is not None:
        reward = EncoderReward.load(spec.model, spec, recipe.lora.reward, recipe.model.quantization, backbone.device)
    else:
        if spec.init_from == "sft":
            ensure_adapter(backbone, folder, roles.SFT, needed_by="reward")
            backbone.copy_adapter(roles.SFT, ROLE)
            backbone.add_head(ROLE, likelihood=spec.likelihood_term)
        else:
            backbone.add_adapter(ROLE, recipe.lora.reward, head=True, likelihood=spec.likelihood_term)
        reward = SharedReward(backbone, recipe)
    reward.holder.set_trainable(ROLE)
    reward.holder.use(ROLE)
    return reward


# ------------------------------------------------------------------------------------- the losses
def pairwise_loss(better: torch.Tensor, worse: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Per pair: -log sigmoid(r_better - r_worse - margin) (Bradley-Terry, with an optional margin)."""
    return -F.logsigmoid(better - worse - margin)


def ranking_pairs(ranking: list[int]) -> list[tuple[int, int]]:
    """Every (better, worse) pair of a ranking (1 = best); equal ranks give no pair."""
    return [(i, j) if ranking[i] < ranking[j] else (j, i)
            for i, j in itertools.combinations(range(len(ranking)), 2) if ranking[i] != ranking[j]]


def group_loss(scores: list[torch.Tensor], pairs: list[list[tuple[int, int]]], margin: float,
               targets: list[list[float]] | None = None) -> torch.Tensor:
    """The batch loss: each group (prompt) weighs the same, whatever its number of pairs."""
    if targets is not None:
        predicted = torch.cat(scores)
        return F.mse_loss(predicted, torch.tensor([t for ts in targets for t in ts], device=predicted.device))
    per_group = []
    for group_scores, group_pairs in zip(scores, pairs):
        better = group_scores[[b for b, _ in group_pairs]]
        worse = group_scores[[w for _, w in group_pairs]]
        per_group.append(pairwise_loss(better, worse, margin).mean())
    return torch.stack(per_group).mean()


# ------------------------------------------------------------------------------------------ data
def group_rows(rows, data_format: str, scale: tuple[float, float] | None):
    """Preference rows of any format as each prompt's response texts, their ordered pairs and (score data) their
    standardised scores: (responses, pairs, targets)."""
    if data_format == "pairwise":
        responses = [[c, r] for c, r in zip(rows["chosen"], rows["rejected"])]
        return responses, [[(0, 1)] for _ in responses], None
    if data_format == "ranking":
        return [list(r) for r in rows["responses"]], [ranking_pairs(list(ranks)) for ranks in rows["ranking"]], None
    mean, std = scale
    return [[r] for r in rows["response"]], [[] for _ in rows["response"]], [[(s - mean) / std] for s in rows["score"]]


def response_texts(rows, data_format: str) -> tuple[list[str], list[str]]:
    """Every (prompt, response) of preference rows of any format, row after row: two aligned lists of texts."""
    responses, _, _ = group_rows(rows, data_format, (0.0, 1.0))
    pairs = [(prompt, response) for prompt, group in zip(rows["prompt"], responses) for response in group]
    return [p for p, _ in pairs], [r for _, r in pairs]


def to_groups(rows, data_format: str, reward, scale: tuple[float, float] | None) -> Groups:
    """Preference rows of any format as groups of one prompt's responses, tokenized for `reward`."""
    responses, pairs, targets = group_rows(rows, data_format, scale)
    flat = reward.tokenize([p for p, group in zip(rows["prompt"], responses) for _ in group],
                           [r for group in responses for r in group])
    grouped, start = [], 0
    for group in responses:
        grouped.append(flat[start:start + len(group)])
        start += len(group)
    return Groups(grouped, pairs, targets)


def _score_scale(rows) -> tuple[float, float]:
    scores = list(rows["score"])
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) or 1.0
    return mean, std


def score_responses(reward, groups: Groups, indices: list[int]) -> list[torch.Tensor]:
    """Scores of every response of the chosen groups, in one forward pass (with gradients), split back per group."""
    scores = reward.forward([item for i in indices for item in groups.items[i]])
    return list(torch.split(scores, [len(groups.items[i]) for i in indices]))


def score_groups(reward, groups: Groups, batch_size: int) -> list[torch.Tensor]:
    """Every response's score (no gradients, eval mode), split back per group: `batch_size` groups' worth of
    responses a forward pass (as many as the largest groups hold)."""
    sizes = [len(items) for items in groups.items]
    scores = reward.score_items([item for items in groups.items for item in items], batch_size * max(sizes, default=1))
    return list(torch.split(scores, sizes))


def evaluate(reward, groups: Groups, batch_size: int) -> dict:
    """Held-out pairwise accuracy (ties count half) and mean margin; Pearson/Spearman for score data."""
    scores = score_groups(reward, groups, batch_size)
    if groups.targets is not None:
        return _regression_metrics(torch.cat(scores).cpu(), torch.tensor([t for ts in groups.targets for t in ts]))
    margins = pair_margins(scores, groups)
    accuracy = ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item()
    return {"accuracy": accuracy, "margin": margins.mean().item(), "pairs": int(margins.numel())}


def pair_margins(scores: list[torch.Tensor], groups: Groups) -> torch.Tensor:
    """r_better - r_worse of every ordered pair, group after group."""
    return torch.cat([s[[b for b, _ in p]] - s[[w for _, w in p]] for s, p in zip(scores, groups.pairs) if p])


def held_out_samples(reward, groups: Groups, rows, data_format: str, batch_size: int) -> list[dict]:
    """One row per held-out pair with its margin (the report's histogram); the texts for pairwise data."""
    scores = score_groups(reward, groups, batch_size)
    if data_format == "score":
        return [{"prompt": p, "response": r, "score": t, "predicted": s.item()}
                for p, r, t, s in zip(rows["prompt"], rows["response"], rows["score"], torch.cat(scores))]
    margins = pair_margins(scores, groups).tolist()
    if data_format == "pairwise":
        return [{"prompt": p, "chosen": c, "rejected": r, "margin": m}
                for p, c, r, m in zip(rows["prompt"], rows["chosen"], rows["rejected"], margins)]
    return [{"margin": m} for m in margins]


def _regression_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Correlations, and the accuracy of ordering every held-out pair with different true scores."""
    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a @ b / (a.norm() * b.norm()).clamp(min=1e-12)).item()

    ranks = lambda values: values.argsort().argsort().float()  # noqa: E731
    i, j = torch.triu_indices(len(target), len(target), offset=1)
    differs = target[i] != target[j]
    agree = torch.sign(predicted[i] - predicted[j]) == torch.sign(target[i] - target[j])
    ties = predicted[i] == predicted[j]
    accuracy = ((agree.float() + 0.5 * ties.float())[differs]).mean().item()
    return {"accuracy": accuracy, "margin": float("nan"), "pairs": int(differs.sum()),
            "pearson": pearson(predicted, target), "spearman": pearson(ranks(predicted), ranks(target))}


# ------------------------------------------------------------------------------------ centring
def sft_responses(recipe, reward, train_rows, data_format: str) -> list:
    """The SFT data's own (prompt, response) pairs as `reward` reads them; the preference data's if no SFT."""
    if recipe.sft is not None:
        from lorahf.data import load_rows

        rows = load_rows(recipe.sft.data.files, "sft", recipe.sft.data.columns)
        rows = rows.select(range(min(CENTRING_ROWS, len(rows))))
        return reward.tokenize(list(rows["prompt"]), list(rows["response"]))
    prompts, responses = response_texts(train_rows, data_format)
    return reward.tokenize(prompts[:CENTRING_ROWS], responses[:CENTRING_ROWS])


@torch.no_grad()
def centre(reward, items: list) -> float:
    """Set the reward's offset so that these responses score 0 on average; return the offset."""
    reward.offset = 0.0
    reward.offset = reward.score_items(items, SCORE_BATCH).double().mean().item()
    return reward.offset


# ------------------------------------------------------------------------------- plan and report
def describe(recipe) -> str:
    spec = recipe.reward
    if spec.model is None:
        return describe_training(spec)
    how = "as given (not trained)" if not spec.train else ("fully" if spec.full_finetune else "LoRA") + \
        ", " + describe_training(spec)
    return f"own encoder {spec.model}, {how}"


def plan_memory(shape, recipe, traced) -> dict[str, int]:
    # a batch of pairwise preferences holds 2 sequences a row (the data's shape is known only once its files are
    # read: a K-way ranking holds K, a score 1)
    return {"step": traced(lambda s: s.trace_reward(recipe, recipe.reward.batch_size * 2))}


def checks(reward: dict) -> list[Check]:
    return [Check("reward", "beats chance on held-out preferences",
                  f"accuracy {reward['eval_accuracy']:.3f} on {reward['eval_pairs']} pairs "
                  f"(gate {reward['gate']} at {reward['min_accuracy']})", reward["gate"] == "pass")]


def report(metrics: dict) -> list[str]:
    return scalar_table(metrics)


def plot(plt, folder, metrics):
    rows = folder.read_metrics("reward")
    margins = [r["margin"] for r in read_jsonl(folder.samples_path("reward")) if r.get("margin") is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(*series(rows, "eval_accuracy"), "o-", label="held-out accuracy")
    left.axhline(0.5, color="grey", linestyle=":", label="chance")
    left.axhline(metrics.get("min_accuracy", 0.6), color="red", linestyle="--", label="gate")
    left.set(xlabel="step", ylabel="accuracy", title="reward model", ylim=(0, 1))
    left.legend()
    if margins:
        right.hist(margins, bins=30, color="tab:blue")
        right.axvline(0, color="black")
        right.set(xlabel="r(chosen) - r(rejected)", ylabel="held-out pairs", title="margins (right of 0: correct)")
    return figure
