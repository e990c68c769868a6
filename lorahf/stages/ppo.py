"""PPO: train `policy` (a copy of `sft`) against the frozen `reward`, with a KL penalty to `sft`.

No maintained library does PPO for encoder-decoders (TRL removed its PPOTrainer), so the loop is ours,
written as the numbered steps of Stiennon et al. (2020); the formulas live in lorahf/ppo/math.py.

    0. refuse to start on a reward model that failed its quality gate (unless ppo.allow_weak_reward)
    1. prompts for rollouts; held-out prompts (with references where given) for the checks
    2. adapters: policy <- sft; with advantage gae also value <- reward (adapter and head; or sft and a fresh head,
       see value_init; rloo, the default, and grpo have no value model); or all of it from the last checkpoint
    3. per iteration:
       a. sample prompts (each answers_per_prompt times), generate with policy; score with reward; log-probs under
          sft and policy, values under value (ppo/rollout.py)
       b. per-token rewards = -beta * KL + the score at the last token; advantages by GAE, or per answer against the
          prompt's other answers (rloo, grpo) (ppo/math.py)
       c. K epochs of the clipped policy loss (and the value loss) over minibatches (ppo/update.py)
       d. adapt beta; metrics and alarms; every eval_every a held-out check that keeps the best policy;
          every checkpoint_every a checkpoint `lorahf run` resumes from
    4. adapters/policy is the best policy by `best_by`, adapters/policy-last the last; the reward model
       and the judges compare the best with sft on the held-out prompts
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch

from lorahf import distributed
from lorahf.backbone import describe_bytes
from lorahf.compare import Prompts, Sampling, answer, policy_against_sft
from lorahf.data import encode_prompts
from lorahf.errors import LorahfError
from lorahf.judge import scoring_judges
from lorahf.metrics import rouge_l, win_rate
from lorahf.ppo.alarms import held_out_alarms, iteration_alarms
from lorahf.ppo.math import (AdaptiveKLController, FixedKLController, explained_variance, gae, grpo_advantages,
                             kl_estimate, masked_mean, rloo_advantages, sequence_to_tokens, token_rewards, whiten)
from lorahf.ppo.rollout import POLICY, REFERENCE, REWARD, VALUE, JudgeScorer, collect, gathered
from lorahf.ppo.rollout_weights import MergedPolicy
from lorahf.ppo.update import make_optimizer, train_on
from lorahf.report import Check, judged_comparisons, scalar_table, series
from lorahf.reward_model import of_run
from lorahf.roles import POLICY_LAST
from lorahf.training import (ensure_adapter, index_batches, load_stage_data, mean, read_checkpoint,
                             save_checkpoint)

LAST = POLICY_LAST  # the adapter of the last iteration; `policy` holds the best
FINAL_EVAL_PROMPTS = 200  # held-out prompts the final comparison answers
MERGED_BY_DEFAULT_ON: tuple[str, ...] = ()  # devices where rollout_weights auto samples from a merged copy: where
# it was measured faster (BENCHMARKS.md); none yet
ANSWER_BATCH = 64


@dataclass
class State:
    """What a checkpoint needs besides the adapters and the optimizer."""

    iteration: int = 0
    kl_controller: dict = field(default_factory=dict)
    best: float = float("-inf")  # the best held-out criterion so far
    best_iteration: int = 0
    start: dict = field(default_factory=dict)  # the held-out check at iteration 0 (policy == sft)
    sft_length: float = 0.0  # mean response length of the first rollout (policy == sft)
    alarms: dict = field(default_factory=dict)  # alarm name -> iterations it fired
    samples: list = field(default_factory=list)
    seconds: list = field(default_factory=list)  # per iteration
    scores: list = field(default_factory=list)  # mean rollout score per iteration
    kls: list = field(default_factory=list)  # mean rollout KL per iteration


def run(recipe, backbone, folder, progress) -> dict:
    spec = recipe.ppo

    # 0. The reward model's quality gate
    if spec.reward_judge is None:
        check_gate(folder, spec)

    # 1. Prompts for rollouts, held-out prompts for the checks, and what scores answers
    rollout_prompts, held_out = prompts(recipe, backbone.tokenizer, progress)
    judges = scoring_judges(recipe)
    reward = None if spec.reward_judge else of_run(recipe, backbone, folder)
    if reward is None and not spec.reward_judge:
        ensure_adapter(backbone, folder, REWARD, needed_by="ppo")  # there is none yet: says which stage writes it
    scorer = pick_scorer(spec, judges, reward)

    # 2. Adapters, optimizer and KL controller: fresh, or from the last checkpoint; what samples rollouts
    state, optimizer, controller = start(recipe, backbone, folder, progress, reward)
    sampler = MergedPolicy(backbone) if merged_rollouts(spec, backbone.quantization, backbone.device.type) else None
    if sampler is not None:
        progress.note(f"ppo: rollouts sampled from a merged copy of the base ({describe_bytes(sampler.bytes)})")
    if state.iteration == 0:
        state.start = held_out_check(backbone, recipe, held_out, scorer, judges)
        keep_if_best(backbone, folder, state, state.start, spec, iteration=0)
        state.samples += samples(state.start, held_out, spec, iteration=0)
        folder.write_samples("ppo", state.samples)
        folder.log_metrics("ppo", 0, {f"eval_{k}": v for k, v in state.start.items() if k in LOGGED_CHECKS})

    # 3. Loop
    kl_limit = spec.kl_alarm * (spec.kl_target or spec.kl_alarm_nats)
    with progress.task("ppo", total=spec.iterations) as bar:
        bar.advance(state.iteration)
        for iteration, indices in index_batches(len(rollout_prompts.ids), spec.batch_size // spec.answers,
                                                spec.iterations, recipe.seed):
            if iteration > state.iteration:  # else done before the checkpoint this run resumed from
                numbers = one_iteration(backbone, recipe, folder, state, optimizer, controller, rollout_prompts,
                                        held_out, scorer, judges, iteration, indices, kl_limit, sampler)
                bar.advance(score=numbers["score_mean"], kl=numbers["kl"], len=numbers["response_length"],
                            alarms=",".join(numbers["alarms"]) or "-")

    # 4. Last and best; the best compared with sft
    backbone.save_adapter(POLICY, folder.adapter_dir(LAST))
    if spec.critic:
        backbone.save_adapter(VALUE, folder.adapter_dir(VALUE))
    backbone.load_adapter(POLICY, folder.adapter_dir(POLICY))
    backbone.set_trainable()
    metrics = {"iterations": state.iteration, "advantage": spec.advantage, "answers_per_prompt": spec.answers,
               "epochs": spec.passes, **({"value_init": value_init(spec, reward)} if spec.critic else {}),
               "best_by": spec.best_by,
               "best_iteration": state.best_iteration,
               "best": state.best, "kl_limit": kl_limit, "beta_last": controller.value,
               "seconds_per_iteration": statistics.median(state.seconds) if state.seconds else None,
               "alarms": {name: len(found) for name, found in state.alarms.items()},
               "score_first": state.scores[0], "score_last": mean(state.scores[-spec.eval_every:]),
               "kl_last": mean(state.kls[-spec.eval_every:])}
    metrics.update(compare_with_sft(backbone, recipe, held_out, scorer, judges, progress))
    for name, iterations in state.alarms.items():
        progress.note(f"[yellow]ppo alarm {name}[/yellow] at {len(iterations)} iteration(s), first at {iterations[0]}")
    return metrics


def prompts(recipe, tokenizer, progress) -> tuple[Prompts, Prompts]:
    """Step 1: the prompts for rollouts, and the held-out ones (with references where the data has them)."""
    spec = recipe.ppo
    train_rows, eval_rows = load_stage_data(spec.data, "prompts", recipe.seed)
    train_ids, cut = encode_prompts(tokenizer, train_rows["prompt"], recipe.max_prompt_tokens, recipe.prompt_format)
    eval_rows = eval_rows.select(range(min(FINAL_EVAL_PROMPTS, len(eval_rows))))
    held_out = Prompts(encode_prompts(tokenizer, eval_rows["prompt"], recipe.max_prompt_tokens,
                                      recipe.prompt_format)[0], list(eval_rows["prompt"]),
                       list(eval_rows["reference"]) if "reference" in eval_rows.column_names else None)
    progress.note(f"ppo prompts: {len(train_ids)} for rollouts ({cut} truncated), {len(held_out.texts)} "
                  f"held out{' with references' if held_out.references else ''}")
    if spec.best_by == "rouge_l" and not held_out.references:
        raise LorahfError("ppo.best_by is rouge_l, but the held-out prompts have no `reference` column",
                          hint="map one with ppo.data.columns, or pick best_by: reward")
    return Prompts(train_ids, list(train_rows["prompt"])), held_out


def pick_scorer(spec, judges: dict, reward):
    """The reward model (`reward`: either form, see lorahf.reward_model), or the judge named by `reward_judge` (a
    reward you can compute)."""
    for field_name in ("reward_judge", "best_by"):
        name = getattr(spec, field_name)
        if name in judges or name in ("reward", "rouge_l", None):
            continue
        raise LorahfError(f"ppo.{field_name}: judge '{name}' does not score single responses",
                          hint="name a python judge f(prompt, response) -> float")
    return JudgeScorer(judges[spec.reward_judge]) if spec.reward_judge else reward


def start(recipe, backbone, folder, progress, reward):
    """Step 2: policy <- sft, value <- reward's adapter and head, or sft and a fresh head (`value_init`; no value
    model with a critic-free advantage), or all of it from the last checkpoint; the optimizer and the KL controller.
    Returns (state, optimizer, controller)."""
    spec = recipe.ppo
    ensure_adapter(backbone, folder, REFERENCE, needed_by="ppo")
    trained = spec.trained_roles
    saved = read_checkpoint("ppo", backbone, folder, recipe.stage_hash("ppo"), progress, trained, "iteration")
    state = State(**saved["state"]) if saved else None
    if state is None:
        backbone.copy_adapter(REFERENCE, POLICY)
        if spec.critic:
            if value_init(spec, reward) == "reward":
                backbone.copy_adapter(REWARD, VALUE)
                backbone.head(VALUE).likelihood.fill_(False)  # per-token values read the head alone
            else:
                backbone.copy_adapter(REFERENCE, VALUE)
                backbone.add_head(VALUE)
        state = State()
    backbone.set_trainable(*trained)
    optimizer = make_optimizer(backbone, spec)
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
    controller = (AdaptiveKLController(spec.beta, spec.kl_target, spec.kl_horizon) if spec.kl_target
                  else FixedKLController(spec.beta))
    if state.kl_controller:
        controller.load_state_dict(state.kl_controller)
    return state, optimizer, controller


def merged_rollouts(spec, quantization: str, device_type: str) -> bool:
    """`ppo.rollout_weights` resolved: sample from a MergedPolicy (True) or from the quantized policy (False)."""
    if spec.rollout_weights != "auto":
        return spec.rollout_weights == "merged"
    return quantization in ("8bit", "4bit") and device_type in MERGED_BY_DEFAULT_ON


def value_init(spec, reward) -> str:
    """Where the value model starts: `ppo.value_init`, auto resolved (reward when the reward model is the adapter on
    the shared base, else sft)."""
    if spec.value_init != "auto":
        if spec.value_init == "reward" and getattr(reward, "kind", None) != "adapter":
            raise LorahfError("ppo.value_init is reward, but this run's reward model is not an adapter on the shared "
                              "base (a separate encoder or a reward_judge)", hint="use value_init: sft or auto")
        return spec.value_init
    return "reward" if getattr(reward, "kind", None) == "adapter" else "sft"


def one_iteration(backbone, recipe, folder, state: State, optimizer, controller, rollout_prompts: Prompts,
                  held_out: Prompts, scorer, judges: dict, iteration: int, indices: list[int], kl_limit: float,
                  sampler=None) -> dict:
    """Step 3: a-c (see `iterate`), then d: adapt beta, log, alarms, a held-out check every eval_every that
    keeps the best policy, a checkpoint every checkpoint_every. Returns the iteration's logged numbers."""
    spec = recipe.ppo
    seed = recipe.seed * 1_000_003 + iteration  # a resumed run samples what this one would
    torch.manual_seed(seed * distributed.world() + distributed.rank())  # each process its own samples
    generator = torch.Generator().manual_seed(seed)

    # a-c. rollout, rewards and advantages, K epochs of minibatch updates (each process: its share of the prompts,
    # each prompt's answers consecutive rows, so that a prompt's group stays whole when the shares are gathered)
    mine = [i for i in distributed.share(indices) for _ in range(spec.answers)]
    numbers = iterate(backbone, [rollout_prompts.ids[i] for i in mine], [rollout_prompts.texts[i] for i in mine],
                      scorer, spec, controller.value, optimizer, generator,
                      spec.max_new_tokens or recipe.max_response_tokens, iteration, sampler=sampler)
    if iteration == 1:
        state.sft_length = numbers["response_length"]  # policy == sft in the first rollout
    found = iteration_alarms(numbers["kl"], kl_limit, numbers["response_length"], state.sft_length, spec.length_alarm)
    numbers["peak_memory_mb"] = peak_memory_mb(backbone.device)

    # d. beta, log, check, checkpoint
    controller.update(numbers["kl"], len(indices) * spec.answers)
    state.iteration = iteration
    state.kl_controller = controller.state_dict()
    state.seconds.append(numbers["seconds"])
    state.scores.append(numbers["score_mean"])
    state.kls.append(numbers["kl"])
    if iteration % spec.eval_every == 0 or iteration == spec.iterations:
        check = held_out_check(backbone, recipe, held_out, scorer, judges)
        found += held_out_alarms(check["reward"], check.get("rouge_l"), state.start["reward"],
                                 state.start.get("rouge_l"))
        keep_if_best(backbone, folder, state, check, spec, iteration)
        state.samples += samples(check, held_out, spec, iteration)
        folder.write_samples("ppo", state.samples)
        numbers.update({f"eval_{k}": v for k, v in check.items() if k in LOGGED_CHECKS})
    for name in found:
        state.alarms.setdefault(name, []).append(iteration)
    numbers["alarms"] = found
    folder.log_metrics("ppo", iteration, numbers)
    if iteration % spec.checkpoint_every == 0 and iteration < spec.iterations:
        save_checkpoint("ppo", backbone, folder, recipe.stage_hash("ppo"), spec.trained_roles, state, optimizer)
    return numbers


def iterate(backbone, prompt_ids: list[list[int]], prompts: list[str], scorer, spec, beta: float, optimizer,
            generator: torch.Generator, max_new_tokens: int, iteration: int, sampler=None) -> dict[str, float]:
    """One PPO iteration, steps a-c: rollout, per-token rewards and advantages, the epochs of updates. `sampler`: the
    MergedPolicy that samples rollouts (refreshed after the update), or None: the quantized policy samples.

    With data parallelism, each process generates and trains on its share of the batch; rewards, advantages,
    their whitening and the numbers logged are those of the whole batch (every process computes the same).
    Refuses to update on non-finite rollout numbers (the adapters stay as the last good iteration left them)."""
    # a. rollout
    rollout = collect(backbone, prompt_ids, prompts, scorer, spec.temperature, spec.top_k, max_new_tokens,
                      keep_encoder_states=not spec.train_encoder, critic=spec.critic, sampler=sampler)
    everyone = gathered(rollout)
    mask = everyone.batch.response_mask.float()
    lengths = everyone.batch.response_lengths

    # b. rewards and advantages
    kl = kl_estimate(everyone.logprobs, everyone.reference_logprobs, spec.kl_estimator) * mask
    advantages, returns = advantages_of(everyone, kl, mask, spec, beta)
    numbers = {"score_mean": everyone.scores.mean().item(), "score_std": everyone.scores.std().item(),
               "kl": kl.sum(1).mean().item(), "beta": beta,
               "non_score_reward": (-beta * kl).sum(1).mean().item(),
               "entropy": masked_mean(everyone.entropy, mask).item(),
               "response_length": lengths.float().mean().item(),
               "truncated": (~everyone.ended).float().mean().item(),
               "seconds_generate": rollout.seconds["generate"], "seconds_score": rollout.seconds["score"]}
    if spec.critic:
        numbers["explained_variance"] = explained_variance(everyone.values, returns, mask).item()
    if rollout.logprob_gap is not None:
        numbers["rollout_logprob_gap"] = rollout.logprob_gap
    bad = [name for name, value in numbers.items() if not math.isfinite(value)]
    if bad:
        raise LorahfError(f"ppo: {', '.join(bad)} not finite at iteration {iteration}; the adapters are kept as "
                          "the last checkpoint left them", hint="lower the learning rates")

    # c. K epochs of minibatch updates
    mine = distributed.my_rows(len(rollout))
    numbers.update(train_on(backbone, rollout, advantages[mine], None if returns is None else returns[mine], spec,
                            optimizer, generator, iteration, beta))
    if sampler is not None:
        started = time.perf_counter()
        sampler.refresh(backbone)
        numbers["seconds_update"] += time.perf_counter() - started
    numbers["seconds"] = numbers["seconds_generate"] + numbers["seconds_score"] + numbers["seconds_update"]
    return numbers


def advantages_of(rollout, kl: torch.Tensor, mask: torch.Tensor, spec,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step b: each token's advantage, [B, R], and the value model's returns (None without one).

    The reward: the score at the last token (`no_eos_score` for an answer cut at the length limit), and -beta * KL
    on every token where the KL is paid in the reward. gae reads it per token with the rollout's values; rloo and
    grpo sum it per answer and compare each answer with the other answers to its prompt."""
    paid = beta if spec.kl_penalty == "reward" else 0.0
    rewards = token_rewards(rollout.scores, kl, mask, rollout.batch.response_lengths, paid, rollout.ended,
                            spec.no_eos_score)
    if spec.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    if spec.critic:
        advantages, returns = gae(rewards, rollout.values, mask, spec.gamma, spec.lam)
    else:
        estimate = rloo_advantages if spec.advantage == "rloo" else grpo_advantages
        advantages, returns = sequence_to_tokens(estimate(rewards.sum(1), spec.answers), mask), None
    if spec.whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns


LOGGED_CHECKS = ("reward", "rouge_l", "kl", "length", "judge")


# --------------------------------------------------------------------------------------------- gate
def check_gate(folder, spec) -> None:
    """Refuse to optimise against a reward model that failed its quality gate, unless told to."""
    marker = folder.marker("reward")
    if marker is None or marker.metrics.get("gate") != "fail" or spec.allow_weak_reward:
        return
    m = marker.metrics
    raise LorahfError(f"ppo: the reward model failed its quality gate (held-out accuracy {m['eval_accuracy']:.3f} "
                      f"< reward.min_accuracy {m['min_accuracy']}); PPO would learn its mistakes",
                      hint="improve the reward data or training, or set ppo.allow_weak_reward: true to go on anyway")


# ---------------------------------------------------------------------------------------- held out
def sampling(recipe) -> Sampling:
    """How held-out prompts are answered: greedy or at the rollouts' temperature, from one seed for every role."""
    spec = recipe.ppo
    return Sampling(spec.max_new_tokens or recipe.max_response_tokens, greedy=spec.eval_greedy,
                    temperature=spec.temperature, top_k=spec.top_k, batch_size=ANSWER_BATCH)


def held_out_check(backbone, recipe, held_out: Prompts, scorer, judges: dict) -> dict:
    """The policy's answers to the first `eval_prompts` held-out prompts, measured."""
    spec = recipe.ppo
    shown = held_out.first(spec.eval_prompts)
    answers = answer(backbone, POLICY, shown, sampling(recipe), scorer)
    check = {"reward": mean(answers["rewards"]), "kl": mean(answers["kl"]), "length": mean(answers["lengths"]),
             "answers": answers["texts"], "rewards": answers["rewards"]}
    if shown.references:
        check["rouge_l"] = rouge_l(answers["texts"], shown.references)
    if spec.best_by in judges:
        check["judge"] = mean(judges[spec.best_by].score(shown.texts, answers["texts"]))
    return check


def keep_if_best(backbone, folder, state: State, check: dict, spec, iteration: int) -> None:
    value = check["judge" if spec.best_by not in ("reward", "rouge_l") else spec.best_by]
    if value > state.best:
        state.best, state.best_iteration = value, iteration
        backbone.save_adapter(POLICY, folder.adapter_dir(POLICY))


def samples(check: dict, held_out: Prompts, spec, iteration: int) -> list[dict]:
    shown = min(spec.sample_prompts, len(check["answers"]))
    return [{"iteration": iteration, "prompt": held_out.texts[i], "response": check["answers"][i],
             "reward": check["rewards"][i], **({"reference": held_out.references[i]} if held_out.references else {})}
            for i in range(shown)]


def compare_with_sft(backbone, recipe, held_out: Prompts, scorer, judges: dict, progress) -> dict:
    """Reward, KL, ROUGE-L and every judge's score of the policy's answers vs sft's, with win rates."""
    found, metrics = policy_against_sft(backbone, held_out, POLICY, judges, sampling(recipe), scorer, "ppo", progress)
    sft, policy = found.answers[REFERENCE], found.answers[POLICY]
    metrics["win_rate_by_reward"] = win_rate(policy["rewards"], sft["rewards"])["win_rate"]
    if held_out.references:
        metrics["rouge_l_sft"] = rouge_l(sft["texts"], held_out.references)
        metrics["rouge_l_policy"] = rouge_l(policy["texts"], held_out.references)
    progress.note(f"ppo: held-out reward {metrics['reward_policy']:.3f} vs sft {metrics['reward_sft']:.3f}, "
                  f"KL {metrics['kl']:.2f} nats per answer")
    return metrics


# ------------------------------------------------------------------------------------------- memory
def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a GPU; the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------- plan and report
def describe(recipe) -> str:
    spec = recipe.ppo
    value = f" (value {spec.value_learning_rate:g})" if spec.critic else ""
    answers = f"{spec.batch_size} answers, {spec.answers} per prompt" if spec.answers > 1 else f"{spec.batch_size} prompts"
    return (f"{spec.advantage}, lr {spec.policy_learning_rate:g}{value}, {spec.iterations} iterations of {answers}, "
            f"beta {spec.beta:g}{' in the loss' if spec.kl_penalty == 'loss' else ''}")


def plan_memory(shape, recipe, traced) -> dict[str, int]:
    """The larger of the rollout (generation's caches and what it keeps) and one micro-batch of the update."""
    spec = recipe.ppo
    micro = spec.micro_batch_size or spec.minibatch_size
    rollout = shape.rollout_bytes(spec.batch_size, recipe.max_prompt_tokens, recipe.max_response_tokens,
                                  keep_encoder_states=not spec.train_encoder, keep_logits=True,
                                  critic=spec.critic)
    update = traced(lambda s: s.trace_ppo_update(recipe, micro, spec.batch_size))
    parts = {"rollout" if rollout >= update else "step": max(rollout, update)}
    if merged_rollouts(spec, recipe.model.quantization, shape.device):
        from lorahf.plan import MERGED_COPY, base_bytes

        parts[MERGED_COPY] = base_bytes(shape.config, "none", shape.dtype)
    return parts


def checks(ppo: dict) -> list[Check]:
    found = [Check("ppo", "raised the reward of held-out answers over SFT's",
                   f"{ppo['reward_sft']:.3f} -> {ppo['reward_policy']:.3f}, win rate {ppo['win_rate_by_reward']:.2f} "
                   f"on {ppo['eval_prompts']} prompts (iteration {ppo['best_iteration']} of {ppo['iterations']})",
                   ppo["reward_policy"] > ppo["reward_sft"])]
    found += judged_comparisons("ppo", ppo, POLICY, REFERENCE, "PPO answers to SFT's")
    found.append(Check("ppo", "stayed close to SFT (bounded KL)",
                       f"KL {ppo['kl']:.2f} nats per answer (alarm above {ppo['kl_limit']:.1f})",
                       ppo["kl"] <= ppo["kl_limit"]))
    alarms = ppo.get("alarms") or {}
    found.append(Check("ppo", "no alarm fired", ", ".join(f"{name} x{count}" for name, count in alarms.items()) or "none",
                       None if alarms else True))
    return found


def report(metrics: dict) -> list[str]:
    return scalar_table(metrics)


def plot(plt, folder, metrics):
    rows = folder.read_metrics("ppo")
    if not rows:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for axis, (name, held_out, title) in zip(axes, (("score_mean", "eval_reward", "reward"), ("kl", "eval_kl", "KL to sft"),
                                                    ("response_length", "eval_length", "response length"))):
        axis.plot(*series(rows, name), label="rollouts")
        axis.plot(*series(rows, held_out), "o-", label="held out")
        alarms = [r["step"] for r in rows if r.get("alarms")]
        for step in alarms:
            axis.axvline(step, color="red", alpha=0.3)
        axis.set(xlabel="iteration", title=title + (" (red: alarms)" if alarms else ""))
        axis.legend()
    return figure
