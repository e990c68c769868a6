"""Answer the same held-out prompts with several adapters, from one seed, and judge each against the first.

    prompts = held_out_prompts(recipe, 200, backbone.tokenizer)
    found = compare_adapters(backbone, prompts, ["sft", "policy"], judges, Sampling(recipe.max_response_tokens))
    found.win_rate("gold", "policy")     # {"win_rate", "low", "high", "n", "wins", "losses", "ties"}

Every adapter answers from the same random stream (greedy, or sampled from `seed`), so two adapters differ only
where their distributions do. Used by sft's final check (against the untrained base), ppo's and dpo's final
comparison with sft, the evaluate stage and `lorahf judge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorahf import distributed
from lorahf.data import Seq2SeqBatch, collate
from lorahf.errors import LorahfError
from lorahf.logprobs import exact_kl, log_distribution
from lorahf.metrics import win_rate_of
from lorahf.roles import SFT
from lorahf.training import mean

EVAL_SEED = 1234  # held-out answers are sampled from this seed, the same for every adapter and check


@dataclass
class Prompts:
    """Held-out prompts, tokenized, with their reference answers where the data has them."""

    ids: list[list[int]]
    texts: list[str]
    references: list[str] | None = None

    def first(self, n: int) -> Prompts:
        return Prompts(self.ids[:n], self.texts[:n], self.references[:n] if self.references else None)


@dataclass(frozen=True)
class Sampling:
    """How the adapters answer: greedy, or sampled at `temperature` (top-k) from `seed`."""

    max_new_tokens: int
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    seed: int = EVAL_SEED


@dataclass
class Comparison:
    """Each adapter's answers (texts, rewards, lengths, KL to sft) and each judge's verdicts of every other
    adapter against the first (`baseline`)."""

    prompts: Prompts
    adapters: list  # the first is the baseline (None: the untrained base)
    answers: dict = field(default_factory=dict)  # adapter -> {"texts", "rewards", "lengths", "kl"}
    verdicts: dict = field(default_factory=dict)  # (judge, adapter) -> [Judgement | None] per prompt

    @property
    def baseline(self) -> str | None:
        return self.adapters[0]

    @property
    def challengers(self) -> list[str]:
        return self.adapters[1:]

    def win_rate(self, judge: str, adapter: str) -> dict:
        """The adapter's win rate over the baseline by this judge (ties count half), its 95 % Wilson interval,
        and the counts (no_verdict: items the judge gave no verdict on)."""
        verdicts = self.verdicts[judge, adapter]
        found = win_rate_of(v.outcome for v in verdicts if v is not None)
        return {**found, "no_verdict": sum(v is None for v in verdicts)}

    def scores(self, judge: str, adapter: str) -> list[float] | None:
        """The judge's score of each of the adapter's answers, where the judge scores single answers."""
        verdicts = self.verdicts[judge, adapter if adapter != self.baseline else self.challengers[0]]
        side = "score_b" if adapter == self.baseline else "score_a"
        values = [getattr(v, side) for v in verdicts if v is not None]
        return values if values and all(value is not None for value in values) else None


@torch.no_grad()
def answer(backbone, role: str | None, prompts: Prompts, sampling: Sampling, scorer=None) -> dict:
    """`role`'s answers (None: the untrained base) to the prompts, with their score (under `scorer`, if any), length
    and the exact KL(role || sft) of the next-token distributions along them at the sampling temperature, summed
    over their tokens (0 for sft itself). Sampled from `sampling.seed`, so every role answers from the same random
    stream; the caller's random state is left as it was. With data parallelism each process answers its share."""
    out = {"texts": [], "rewards": [], "lengths": [], "kl": []}
    everyone = len(prompts.ids)
    mine = distributed.share(list(range(everyone)))
    prompt_ids, texts = [prompts.ids[i] for i in mine], [prompts.texts[i] for i in mine]
    backbone.model.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(sampling.seed)
    for start in range(0, len(prompt_ids), sampling.batch_size):
        encoded = collate(prompt_ids[start:start + sampling.batch_size], None, backbone.tokenizer.pad_token_id)
        encoded = encoded.to(backbone.device)
        responses, lengths = backbone.use(role).generate(encoded, sampling.max_new_tokens,
                                                         do_sample=not sampling.greedy,
                                                         temperature=sampling.temperature, top_k=sampling.top_k)
        mask = (torch.arange(responses.shape[1], device=responses.device)[None, :] < lengths[:, None]).long()
        batch = Seq2SeqBatch(encoded.input_ids, encoded.attention_mask, responses, mask, lengths)
        if role == SFT or not backbone.has_adapter(SFT):
            kl = torch.zeros(len(lengths))
        else:
            log_p = log_distribution(backbone.use(role).response_logits(batch), sampling.temperature)
            log_q = log_distribution(backbone.use(SFT).response_logits(batch), sampling.temperature)
            kl = exact_kl(log_p, log_q, mask).sum(1)
        if scorer is not None:
            out["rewards"] += scorer(backbone, texts[start:start + sampling.batch_size], batch).tolist()
        out["texts"] += [text.strip() for text in backbone.tokenizer.batch_decode(responses, skip_special_tokens=True)]
        out["lengths"] += lengths.tolist()
        out["kl"] += kl.cpu().tolist()
    torch.set_rng_state(generator_state)
    return distributed.merge_shares(out, everyone)


def compare_adapters(backbone, prompts: Prompts, adapters: list[str | None], judges: dict, sampling: Sampling,
                     scorer=None, on_answered=None, on_judged=None) -> Comparison:
    """Every adapter answers `prompts`; every judge compares each adapter after the first with the first.

    `on_answered(adapter)` and `on_judged(comparison, judge, adapter, verdicts)` are called as each step ends
    (progress bars, writing verdicts to a preference file)."""
    found = Comparison(prompts, list(adapters))
    for adapter in adapters:
        found.answers[adapter] = answer(backbone, adapter, prompts, sampling, scorer)
        if on_answered is not None:
            on_answered(adapter)
    baseline = found.answers[adapters[0]]["texts"]
    for name, judge in judges.items():
        for adapter in adapters[1:]:
            verdicts = judge.compare(prompts.texts, found.answers[adapter]["texts"], baseline)
            if len(verdicts) != len(prompts.texts):
                raise LorahfError(f"judge '{name}' gave {len(verdicts)} verdicts for {len(prompts.texts)} prompts")
            found.verdicts[name, adapter] = verdicts
            if on_judged is not None:
                on_judged(found, name, adapter, verdicts)
    return found


def judged_metrics(found: Comparison, adapter: str, baseline_name: str, adapter_name: str) -> dict:
    """A marker's numbers of one adapter against the baseline, per judge: `<judge>_score_<name>` of both (where the
    judge scores answers), `<judge>_win_rate_vs_<baseline>` and its interval `<judge>_win_rate_low/high`."""
    metrics: dict = {}
    for judge, challenger in found.verdicts:
        if challenger != adapter:
            continue
        wins = found.win_rate(judge, adapter)
        for who, name in ((found.baseline, baseline_name), (adapter, adapter_name)):
            scores = found.scores(judge, who)
            if scores is not None:
                metrics[f"{judge}_score_{name}"] = sum(scores) / len(scores)
        metrics.update({f"{judge}_win_rate_vs_{baseline_name}": wins["win_rate"], f"{judge}_win_rate_low": wins["low"],
                        f"{judge}_win_rate_high": wins["high"]})
    return metrics


def policy_against_sft(backbone, prompts: Prompts, policy: str, judges: dict, sampling: Sampling, scorer, stage: str,
                       progress) -> tuple[Comparison, dict]:
    """A policy stage's final comparison: sft and `policy` answer `prompts`; the marker's numbers (prompts, KL to
    sft, lengths, rewards where there is a scorer, every judge's scores and win rate; see `judged_metrics`)."""
    found = compare_adapters(backbone, prompts, [SFT, policy], judges, sampling, scorer)
    sft, mine = found.answers[SFT], found.answers[policy]
    metrics = {"eval_prompts": len(prompts.ids), "kl": mean(mine["kl"]), "length_sft": mean(sft["lengths"]),
               "length_policy": mean(mine["lengths"])}
    if scorer is not None:
        metrics.update(reward_sft=mean(sft["rewards"]), reward_policy=mean(mine["rewards"]))
    metrics.update(judged_metrics(found, policy, "sft", "policy"))
    for judge, _ in found.verdicts:
        progress.note(f"{stage}: {describe_win(judge, found.win_rate(judge, policy))} ({policy} against sft)")
    return found, metrics


def held_out_prompts(recipe, limit: int, tokenizer) -> Prompts:
    """The first `limit` held-out prompts: evaluate.data's, else the ppo stage's held-out split."""
    from lorahf.data import encode_prompts
    from lorahf.training import held_out_rows

    rows = held_out_rows(recipe)
    if rows is None:
        raise LorahfError("no held-out prompts: the recipe has neither evaluate.data nor a ppo section",
                          hint="set evaluate.data.files to a file with a prompt column")
    rows = rows.select(range(min(limit, len(rows))))
    ids, _ = encode_prompts(tokenizer, rows["prompt"], recipe.max_prompt_tokens, recipe.prompt_format)
    references = list(rows["reference"]) if "reference" in rows.column_names else None
    return Prompts(ids, list(rows["prompt"]), references)


def describe_win(judge: str, wins: dict) -> str:
    """'gold judge: win rate 0.62 [0.55, 0.69] on 200 prompts' (for progress notes)."""
    return (f"{judge} judge: win rate {wins['win_rate']:.2f} [{wins['low']:.2f}, {wins['high']:.2f}] "
            f"on {wins['n']} prompts")

