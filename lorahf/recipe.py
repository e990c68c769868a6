"""The recipe: one YAML file that describes a whole run.

The schema below *is* the documentation of every field: each one has a type, a default and a one-line
docstring saying what it does and why its default is what it is. Loading is strict: an unknown key is
an error (with a "did you mean"), and every problem in the file is reported at once, one line each,
with its key path and line number.

    recipe = load("recipes/quickstart.yaml", overrides=["sft.learning_rate=5e-4"])
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorahf import roles
from lorahf.errors import RecipeError

class Section(BaseModel):
    """A recipe section: unknown keys are errors, field docstrings are the docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


# --------------------------------------------------------------------------------------------- model
class ModelSpec(Section):
    name: str
    """Hub id (e.g. google/flan-t5-base) or a local folder written by save_pretrained."""
    quantization: Literal["8bit", "4bit", "none"] = "8bit"
    """How the one shared base is held: LLM.int8 (default), NF4 for the largest bases, or unquantized (bf16 on a GPU, fp32 on a CPU)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the base lives; auto picks the GPU when there is one."""
    make_tiny_from: str | None = None
    """Offline quickstart only: when `name` is a folder that does not exist yet, build a tiny base there from this data folder first."""
    make_tiny_family: Literal["seq2seq", "causal"] = "seq2seq"
    """Which tiny base `make_tiny_from` builds: a T5 (seq2seq) or a Llama-shaped decoder-only model (causal)."""
    gradient_checkpointing: bool = False
    """Recompute activations in SFT's and the reward stage's backward pass: on an H200, xl-shaped SFT at batch 8 x 512 tokens fell from 29 to 7 GiB for 2x the step time; generation and PPO (eval mode) are unaffected."""


class LoraSpec(Section):
    r: int = Field(16, ge=1)
    """Rank of the LoRA update; 16 learned the tiny task as well as full fine-tuning."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r); 2 x r is the common choice."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input during SFT and reward training (RL runs in eval mode, so none there). 0, as in peft:
    any other value makes every adapted layer keep a dropped copy of its input for the backward pass; measured on
    the quickstart's SFT, 0.05 cost a quarter of each step's time for the same held-out loss."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Linear layers that get an adapter: all-linear (every linear layer of the blocks, as peft finds them: T5's q, k,
    v, o, wi_0, wi_1, wo; Llama's q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; never the LM head) is
    the strongest choice at a few MB per role; or a list of their names."""


class LoraRoles(Section):
    sft: LoraSpec = Field(default_factory=LoraSpec)
    """The SFT adapter; the PPO policy starts as a copy of it, so it shares these settings."""
    reward: LoraSpec = Field(default_factory=LoraSpec)
    """The reward adapter; the PPO value model starts as a copy of it, so it shares these settings."""


# ---------------------------------------------------------------------------------------------- data
class DataSpec(Section):
    files: list[str] = Field(min_length=1)
    """JSONL, JSON, CSV or Parquet files, `save_to_disk` folders, or hub dataset names."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Map lorahf's column names to yours, e.g. {prompt: document, response: summary}."""
    eval_fraction: float = Field(0.05, ge=0, le=0.5)
    """Share of rows held out for evaluation (a deterministic split from the seed); ignored when eval_files is set."""
    eval_files: list[str] = Field(default_factory=list)
    """Held-out files to use instead of splitting `files`."""
    max_rows: int | None = Field(None, ge=1)
    """Use only the first N rows (handy for a dry run on a big file)."""

    @field_validator("files", "eval_files", mode="before")
    @classmethod
    def _one_file_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


# -------------------------------------------------------------------------------------------- stages
class OptimizerSpec(Section):
    learning_rate: float = Field(3e-4, gt=0)
    """AdamW learning rate for the adapter; 1e-4 to 5e-4 suits LoRA on Flan-T5, 1e-3 the tiny model."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on the adapter weights; LoRA rarely needs it."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 to the learning rate over this many optimizer steps."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """After warm-up: hold the rate, or decay it to 0 linearly or along a cosine by the last step."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm (None: no clipping); clipping kept the tiny model's LoRA stable."""
    group_by_length: bool = True
    """Batch rows of similar length together (less padding, faster steps); each epoch still sees every row."""


class TrainingSpec(OptimizerSpec):
    """What the adapter-training loop of sft and reward shares: stopping by itself, and resuming."""
    patience: int | None = Field(3, ge=1)
    """Stop after this many held-out checks in a row without a better adapter (`epochs` is then an upper bound);
    null: train every epoch. The best adapter is kept either way; its step is in the stage's marker."""
    checkpoint_every: int = Field(100, ge=1)
    """Steps between checkpoints (adapter, head, optimizer, schedule, random state, position in the data): a
    killed run resumes from the last with the same `lorahf run` and ends where an unbroken run ends."""


class SFTStage(TrainingSpec):
    data: DataSpec
    """Pairs of prompt and response (columns `prompt`, `response`)."""
    batch_size: int = Field(16, ge=1)
    """Pairs per optimizer step."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training pairs (fractions allowed); `max_steps` stops earlier."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, whatever `epochs` says."""
    eval_every: int = Field(100, ge=1)
    """Held-out loss every N steps; the best adapter by held-out loss is the one kept (and `patience` counts these checks)."""
    eval_samples: int = Field(16, ge=0)
    """Held-out prompts generated greedily at each evaluation, for ROUGE-L and samples/sft.jsonl."""


class RewardStage(TrainingSpec):
    data: DataSpec
    """Preferences: (prompt, chosen, rejected), (prompt, responses, ranking) or (prompt, response, score)."""
    batch_size: int = Field(16, ge=1)
    """Preference pairs (or ranked groups, or scored responses) per optimizer step."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training preferences; a reward model overfits fast, one is usually enough."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, whatever `epochs` says."""
    eval_every: int = Field(100, ge=1)
    """Held-out accuracy every N steps; the best adapter by it is the one kept."""
    margin: float = Field(0.0, ge=0)
    """Pairwise loss margin: the chosen response must win by at least this much (0: plain Bradley-Terry)."""
    likelihood_term: bool = False
    """Add the response's mean token log-likelihood under the reward adapter's own LM head (a copy of
    sft's), times a learned weight, to the head's score, so that a small model checks a response against
    what SFT learned to expect (tiny quickstart: best held-out accuracy 0.75 with it, 0.61 without)."""
    init_from: Literal["sft", "random"] = "sft"
    """Start the reward adapter as a copy of sft (the standard choice: it already reads the task) or fresh."""
    min_accuracy: float = Field(0.6, ge=0, le=1)
    """Quality gate: PPO refuses to start when held-out accuracy is below this (unless ppo.allow_weak_reward)."""
    model: str | None = None
    """A reward model on its own encoder instead of the adapter on the shared base: a hub id or folder of an encoder
    (BERT, RoBERTa, DeBERTa...) or of a trained one-label classifier, which reads (prompt, response) as a text pair with
    its own tokenizer. Costs its own weights in memory; scores fast and does not share the policy's blind spots.
    Trained with lora.reward's settings; PPO's value model then starts from sft (see ppo.value_init)."""
    make_tiny_from: str | None = None
    """Offline quickstart only: when `model` is a folder that does not exist yet, build a tiny BERT-shaped encoder
    there from this data folder first."""
    train: bool = True
    """False: `model` is a trained reward model already; it is only evaluated on the held-out preferences, centred,
    gated and used."""
    full_finetune: bool = False
    """Train every weight of `model` rather than a LoRA adapter on it (small encoders; needs quantization none or auto)."""
    quantization: Literal["auto", "8bit", "4bit", "none"] = "auto"
    """How `model` is held: auto leaves an encoder under 1B parameters unquantized (fp32 on a CPU, bf16 on a GPU: int8
    saves little there) and gives a larger one model.quantization."""


class PPOStage(Section):
    """PPO against the frozen reward model, each implementation detail named (cf. "The N+ implementation
    details of RLHF with PPO", Huang et al. 2024). `policy` starts as a copy of `sft` and trains; `sft` (the reference)
    and `reward` stay frozen. With `advantage: gae` a value model trains too, starting as a copy of `reward` (adapter
    and head; see value_init)."""

    data: DataSpec
    """Prompts for rollouts (column `prompt`; an optional `reference` answer is used by the held-out checks)."""
    reward_judge: str | None = None
    """Score rollouts with this judge (a name from `judges`) instead of the reward model: for rewards you can
    compute, such as tests passed or a known answer. The value model then starts from sft with a fresh head."""
    value_init: Literal["auto", "reward", "sft"] = "auto"
    """Where the value model starts: a copy of the reward adapter and its head (reward: it already scores answers), or
    a copy of sft with a fresh head (sft); auto takes reward when the reward model is the adapter on the shared base,
    sft when it is a separate encoder (reward.model) or a judge (reward_judge)."""
    advantage: Literal["gae", "rloo", "grpo"] = "rloo"
    """How an answer's tokens learn how much better than expected they did. rloo, the default: as good as gae on the
    bundled example (gold win rate over sft 0.81 [0.74, 0.85] against gae's 0.80 [0.74, 0.85]) with no value model and
    0.63x its PPO wall time (BENCHMARKS.md); gae is the paper's PPO, exactly. gae: a value model (an adapter and a scalar
    head, trained alongside the policy) estimates each token's expected return, and generalised advantage estimation
    (gamma, lam) compares. rloo (REINFORCE leave-one-out, Ahmadian et al. 2024): each prompt gets
    `answers_per_prompt` answers, and an answer's advantage is its reward minus the mean reward of the prompt's other
    answers. grpo (Shao et al. 2024): the rewards standardised within each prompt's answers. rloo and grpo need no
    value model: no value adapter, head, pass or loss (less memory, faster iterations); every token of an answer
    gets its answer's advantage."""
    answers_per_prompt: int | None = Field(None, ge=1)
    """Answers sampled per prompt in each rollout; an iteration answers batch_size / answers_per_prompt prompts.
    None: 1 for gae, 4 for rloo and grpo (which need at least 2: an answer's baseline is the other answers)."""
    kl_penalty: Literal["reward", "loss"] = "reward"
    """Where the KL to sft is paid. reward: -beta times each token's KL estimate is added to the reward (Stiennon et
    al.; rloo and grpo sum it into the answer's reward before comparing answers, as TRL's RLOO does). loss: the
    rewards are the scores alone and beta times the per-token KL of the current policy is added to the policy loss
    (GRPO's placement; needs kl_estimator k3: taken as a loss, its gradient is on average that of KL(sft || policy),
    which holds the policy near sft, where k1's is zero on average)."""
    rollout_weights: Literal["auto", "quantized", "merged"] = "auto"
    """What rollouts are sampled from. quantized: the 8- or 4-bit base with the policy adapter, the path the update
    trains. merged: an unquantized copy of the base (one more copy of its weights, in the compute dtype; `lorahf plan`
    counts it) with the policy adapter folded in, refreshed after every update: plain matmuls, no LoRA branch; the
    policy's log-probs of the sampled tokens are then read again through the quantized path, so PPO's ratio compares
    like with like (logged: rollout_logprob_gap, the samples' mean log-prob gap between the two). auto: merged on the
    devices where it was measured faster (BENCHMARKS.md), else quantized."""
    iterations: int = Field(100, ge=1)
    """PPO iterations: each samples `batch_size` answers, scores them and updates."""
    batch_size: int = Field(16, ge=1)
    """Answers per iteration: batch_size / answers_per_prompt prompts, each answered answers_per_prompt times."""
    epochs: int | None = Field(None, ge=1)
    """Passes over each iteration's responses. None: 4 for gae (the paper's and TRL's), 2 for rloo and grpo (measured
    on the bundled example: at 4 their best policy came early and the last drifted, at 2 it was the last)."""
    minibatch_size: int = Field(4, ge=1)
    """Responses per optimizer step within an epoch; batch_size / minibatch_size steps per epoch."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Split each minibatch into forward passes of this many responses and accumulate gradients (None: one pass)."""
    policy_learning_rate: float = Field(1e-4, gt=0)
    """AdamW learning rate of the policy adapter; RL wants a smaller step than SFT."""
    value_learning_rate: float = Field(1e-4, gt=0)
    """AdamW learning rate of the value adapter and head."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the policy's and the value's gradient norms, each on its own (None: no clipping)."""
    train_encoder: bool = False
    """Encoder-decoder bases: train the encoder's adapters of policy and value too. Off, their encoder outputs are
    computed once per rollout and reused by every epoch (TRL recomputes them), and only the decoder's adapters train.
    (A decoder-only base reads prompt and response in one pass: all its adapters train.)"""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of rollouts, applied again when log-probs are recomputed so both see the same distribution."""
    top_k: int = Field(0, ge=0)
    """Sample from the k likeliest tokens only (0: all); log-probs stay those of the full softmax, so keep 0 for exact PPO."""
    beta: float = Field(0.05, ge=0)
    """KL coefficient: each token's reward is -beta times its KL estimate to `sft` (the paper's 0.05)."""
    kl_target: float | None = Field(None, gt=0)
    """Adapt beta so that the mean KL per response tracks this (Ziegler et al. 2019); None keeps beta fixed."""
    kl_horizon: int = Field(10000, ge=1)
    """Responses over which the adaptive controller moves beta by its full (clipped) error."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimate: k1 = log p - log q (the paper's), or k3 (never negative per token, lower variance)."""
    whiten_rewards: bool = False
    """Normalise each batch's token rewards to unit variance; off: the reward model is already centred by its offset."""
    whiten_advantages: bool = True
    """Normalise each batch's advantages to mean 0, std 1 (standard PPO; keeps the policy step size steady)."""
    no_eos_score: float | None = -1.0
    """Score of a response that hits the length limit without EOS, instead of the reward model's (None: score it anyway)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Length limit of rollouts; None: the recipe's max_response_tokens."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount per token; 1, since the only real reward comes at the end."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda: 0.95 trades a little bias for much less variance than Monte-Carlo returns."""
    policy_clip: float = Field(0.2, gt=0)
    """PPO ratio clip range."""
    value_clip: float = Field(0.2, gt=0)
    """How far a value may move from its rollout-time estimate before its loss is clipped."""
    value_loss_coef: float = Field(0.1, ge=0)
    """Weight of the value loss in the summed loss (0.1 as in TRL and the N+ details; the adapters are separate,
    so it scales the value gradients before their own clipping)."""
    eval_every: int = Field(10, ge=1)
    """Iterations between held-out checks (reward, ROUGE-L, KL and length of the policy's answers)."""
    eval_greedy: bool = False
    """Answer held-out prompts greedily; off: sample at `temperature` (the distribution PPO optimises), the same
    seed for sft and policy. PPO mostly sharpens a policy, which greedy answers barely show."""
    eval_prompts: int = Field(64, ge=1)
    """Held-out prompts answered at each check."""
    best_by: str = "reward"
    """What picks the best policy kept beside the last: `reward` (held-out mean reward), `rouge_l` (needs references) or a judge's name."""
    checkpoint_every: int = Field(10, ge=1)
    """Iterations between checkpoints (adapters, heads, optimizers, RNG, KL state): `lorahf run` resumes from the last."""
    sample_prompts: int = Field(4, ge=0)
    """Held-out prompts whose answers are kept in samples/ppo.jsonl at every check."""
    kl_alarm: float = Field(3.0, gt=0)
    """Alarm when the mean KL exceeds this multiple of kl_target (of `kl_alarm_nats` when kl_target is unset)."""
    kl_alarm_nats: float = Field(10.0, gt=0)
    """KL per response (nats) that counts as far from sft when no kl_target is set."""
    length_alarm: float = Field(0.5, gt=0)
    """Alarm when the mean response length moves more than this fraction away from sft's."""
    allow_weak_reward: bool = False
    """Run even when the reward stage's quality gate failed (its held-out accuracy was below reward.min_accuracy)."""

    @property
    def answers(self) -> int:
        """Answers per prompt, `answers_per_prompt` resolved."""
        return self.answers_per_prompt or (1 if self.advantage == "gae" else 4)

    @property
    def passes(self) -> int:
        """Passes over each rollout, `epochs` resolved."""
        return self.epochs or (4 if self.advantage == "gae" else 2)

    @property
    def critic(self) -> bool:
        """Whether a value model trains beside the policy (gae)."""
        return self.advantage == "gae"

    @property
    def trained_roles(self) -> tuple[str, ...]:
        """The roles the stage trains and writes: the policy, and the value model where the advantage needs one."""
        return (roles.POLICY, roles.VALUE) if self.critic else (roles.POLICY,)


class DPOStage(TrainingSpec):
    """Direct preference optimisation and its family (Rafailov et al. 2023): the policy learns from preference
    pairs directly, with `sft` on the same base as its frozen reference: no reward model, no rollouts, no second
    model. The policy adapter starts as a copy of `sft`; the reference's log-probs of every pair are computed
    once, before the first step."""

    data: DataSpec | None = None
    """Preferences: (prompt, chosen, rejected), or (prompt, responses, ranking) expanded to every ordered pair
    (scores say how good an answer is, not which of two is better: not read). None: the reward section's data."""
    loss: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = "sigmoid"
    """With h = the policy's log-ratio of chosen over rejected minus the reference's: sigmoid is DPO, -log σ(β·h);
    ipo (β·h - 1/2)² / β², which stops pushing pairs it already gets right; hinge max(0, 1 - β·h) (SLiC). orpo and
    simpo read no reference: ORPO adds an odds-ratio term to the chosen answers' likelihood, SimPO compares the
    two answers' mean log-prob per token."""
    beta: float = Field(0.1, gt=0)
    """How strongly the policy is held to the reference (DPO's KL coefficient; 0.1 in its paper); ORPO: the weight
    of its odds-ratio term (0.1 in its paper); SimPO: the scale of its rewards (2 to 2.5 in its paper)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """The share of pairs taken to be mislabelled (conservative DPO; sigmoid and simpo): 0 trusts every label."""
    target_margin: float = Field(0.5, ge=0)
    """SimPO's gamma: the margin by which the chosen answer's reward must beat the rejected one's."""
    adapter: str = "policy"
    """The adapter written: `policy` (what evaluate, merge and generate use by default); another name, e.g. dpo,
    lets a recipe run ppo as well and evaluate compare the two."""
    batch_size: int = Field(16, ge=1)
    """Preference pairs per optimizer step."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training pairs; DPO fits preferences fast, one to three is usual."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, whatever `epochs` says."""
    eval_every: int = Field(100, ge=1)
    """Held-out loss, accuracy and log-probs every N steps; the adapter with the best held-out loss is kept."""
    dropout: bool = False
    """Dropout (the base's and LoRA's) in the training steps; off, as TRL's DPO does by default, so the policy's
    log-probs at the first step equal the reference's and the implicit rewards measure the adapter, not noise."""
    chosen_logprob_alarm: float = Field(0.5, gt=0)
    """Alarm when the held-out chosen answers' mean log-prob per token falls this far (nats) below sft's: DPO's
    known failure, pushing chosen and rejected answers down together while their margin grows."""


class EvaluateStage(Section):
    """Answers of each adapter on held-out prompts, measured against references and compared by judges."""
    data: DataSpec | None = None
    """Held-out prompts (column `prompt`, optional `reference`); None: the ppo stage's held-out prompts."""
    adapters: list[str] | None = Field(None, min_length=1)
    """Adapters that answer; every other one is compared with the first (e.g. [sft, policy, policy-last]).
    None: sft and policy, or sft alone when the recipe has no ppo stage."""
    judges: list[str] | None = None
    """Judges that compare the answers; None: `reward` and every judge in `judges` that needs no person."""
    max_prompts: int = Field(200, ge=1)
    """Held-out prompts answered (the first N)."""
    greedy: bool = False
    """Answer greedily; off: sample at `temperature` from a fixed seed, the distribution PPO optimised
    (greedy answers hide most of what PPO changed on the tiny quickstart)."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature when not greedy; also the temperature of the KL to sft (ppo.temperature's default)."""
    batch_size: int = Field(64, ge=1)
    """Prompts per generation batch."""


LLM_TEMPLATE = (
    "Which response answers the request better? Reply with exactly one word: A, B or TIE.\n\n"
    "Request:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n")


class LLMJudgeSpec(Section):
    base_url: str
    """An OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or a local vLLM's http://127.0.0.1:8000/v1."""
    model: str
    """The model name the endpoint serves."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the key (a key never goes into a recipe); null for an endpoint without keys."""
    template: str = LLM_TEMPLATE
    """The question, with {prompt}, {a} and {b}; the reply's first A, B or TIE is the verdict."""
    position_bias: Literal["both", "random"] = "both"
    """`both`: ask in both orders, a verdict only when they agree (else tie); `random`: one call, random order, recorded."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature of the judge model; 0 for repeatable verdicts."""
    max_tokens: int = Field(8, ge=1)
    """Reply length limit: the verdict is one word."""
    timeout: float = Field(60.0, gt=0)
    """Seconds per request before it counts as failed (then retried)."""
    max_retries: int = Field(3, ge=0)
    """Retries of a failed or timed-out request (with backoff, by the openai client); then the item gets no verdict."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight at once."""

    @field_validator("template")
    @classmethod
    def _template_has_fields(cls, value: str) -> str:
        missing = [f"{{{name}}}" for name in ("prompt", "a", "b") if f"{{{name}}}" not in value]
        if missing:
            raise ValueError(f"must contain {', '.join(missing)}")
        return value


class JudgeSpec(Section):
    """Exactly one of python, llm or human."""
    python: str | None = None
    """Your function, `module:function` or `path/to/file.py:function`: f(prompt, response) -> float scores a
    response (PPO can train on it); f(prompt, a, b) -> 'a' | 'b' | 'tie' compares two."""
    llm: LLMJudgeSpec | None = None
    """An LLM behind an OpenAI-compatible chat endpoint."""
    human: bool = False
    """A person at the terminal (`lorahf judge RUN --judge NAME`); never run unattended by `lorahf run`."""


# ------------------------------------------------------------------------------------------- recipe
def _known_stage(name: str) -> str:
    from lorahf.stages.registry import NAMES

    if name not in NAMES:
        guess = _did_you_mean(name, list(NAMES))
        raise ValueError(f"must be one of {', '.join(NAMES)}, not {name!r}"
                         + (f" (did you mean '{guess}'?)" if guess else ""))
    return name


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Name of the run; its folder is output_dir/name."""
    output_dir: str = "runs"
    """Folder that holds run folders."""
    seed: int = 0
    """Seeds data splits, shuffling, adapter init and sampling: on the same machine with the same library versions a
    run repeats exactly (a resumed one too); another processor or library version rounds differently, and its figures
    then differ within the run's noise."""
    model: ModelSpec
    """The one base model every role shares."""
    lora: LoraRoles = Field(default_factory=LoraRoles)
    """LoRA settings per trained role."""
    prompt_template: str = "{prompt}"
    """How a prompt becomes the model's input, e.g. 'summarize: {prompt}' for Flan-T5, '{prompt}\nTL;DR:' for a base
    decoder-only model; with `chat_template`, the user's message."""
    chat_template: bool = False
    """Wrap each prompt (after `prompt_template`) in the tokenizer's chat template as the user's turn, ready for the
    assistant's answer (`apply_chat_template`): for instruction-tuned chat models (SmolLM2-Instruct, Qwen2.5-Instruct)."""
    system_prompt: str | None = None
    """With `chat_template`: the system turn put before every prompt (None: none, or the template's own default)."""
    max_prompt_tokens: int = Field(512, ge=8)
    """Longer prompts are truncated (and counted in the data summary)."""
    max_response_tokens: int = Field(64, ge=2)
    """Longer responses are truncated (and counted); also the generation limit."""
    stages: list[Annotated[str, AfterValidator(_known_stage)]] = Field(
        default_factory=lambda: ["sft", "reward", "ppo", "evaluate"])
    """Stages to run, in the order sft, reward, ppo, dpo, evaluate (each needs its section below); ppo and dpo both
    optimise a policy: run one, or both with `dpo.adapter` set to compare them."""
    judges: dict[str, JudgeSpec] = Field(default_factory=dict)
    """Named judges (python, llm or human) that compare responses; `reward`, the trained reward model, is built in."""
    sft: SFTStage | None = None
    """Supervised fine-tuning of the `sft` adapter."""
    reward: RewardStage | None = None
    """Reward model: the `reward` adapter plus a scalar head."""
    ppo: PPOStage | None = None
    """PPO: the `policy` and `value` adapters, trained against the frozen `reward` with a KL penalty to `sft`."""
    dpo: DPOStage | None = None
    """DPO and its family: the `policy` adapter trained on preference pairs against `sft`, no reward model, no rollouts."""
    evaluate: EvaluateStage | None = None
    """Evaluation: ROUGE, BLEU, METEOR, reward, KL and judged win rates of the adapters on held-out prompts."""
    report_to: list[Literal["tensorboard"]] = Field(default_factory=list)
    """Also send every metric logged to metrics.jsonl to these tools (none by default): `tensorboard` writes
    RUN/tensorboard/, seen with `tensorboard --logdir runs` (needs `pip install 'lorahf[tensorboard]'`)."""

    @field_validator("prompt_template")
    @classmethod
    def _template_has_prompt(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain {prompt}")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def prompt_format(self):
        """How every stage turns a prompt into the model's input (`prompt_template`, `chat_template`, `system_prompt`)."""
        from lorahf.data import PromptFormat

        return PromptFormat(self.prompt_template, self.chat_template, self.system_prompt)

    def stage_hash(self, stage: str) -> str:
        """A hash of everything that decides what `stage` produces, its upstream stages included.

        A finished stage is skipped only when its marker holds this same hash."""
        from lorahf.stages.registry import get

        record = get(stage)
        shared = self.model_dump(mode="json", include=set(SHARED_KEYS))
        parts = {"shared": shared, "lora": [self.lora.model_dump(mode="json")[role] for role in record.lora_roles],
                 "stage": getattr(self, stage).model_dump(mode="json"),
                 **({"judges": self.model_dump(mode="json")["judges"]} if record.hashes_judges else {}),
                 "upstream": [self.stage_hash(up) for up in record.needs if up in self.stages]}
        if borrowed := self._borrowed_data(stage):
            parts["data"] = getattr(self, borrowed).data.model_dump(mode="json")
        return _hash(parts)

    def stage_inputs(self, stage: str) -> set[str]:
        """The recipe keys (dotted paths) that `stage_hash(stage)` reads, its upstream stages' included."""
        from lorahf.stages.registry import get

        record = get(stage)
        keys = {*SHARED_KEYS, *(f"lora.{role}" for role in record.lora_roles), stage,
                *(["judges"] if record.hashes_judges else [])}
        if borrowed := self._borrowed_data(stage):
            keys.add(f"{borrowed}.data")
        for up in record.needs:
            if up in self.stages:
                keys |= self.stage_inputs(up)
        return keys

    def _borrowed_data(self, stage: str) -> str | None:
        """The section whose data `stage` reads when that section's stage is not upstream of it (dpo reading the
        reward section's preferences): its data is then part of `stage`'s hash. None otherwise."""
        from lorahf.stages.registry import get

        record = get(stage)
        if getattr(getattr(self, stage), "data", None) is not None:
            return None
        for source in record.data_from:
            section = getattr(self, source)
            if section is not None and section.data is not None:
                return None if source in record.needs and source in self.stages else source
        return None

    @property
    def hash(self) -> str:
        """A hash of the whole resolved recipe except where it is written."""
        return _hash(self.model_dump(mode="json", exclude={"name", "output_dir"}))


SHARED_KEYS = ("seed", "model", "prompt_template", "chat_template", "system_prompt", "max_prompt_tokens",
               "max_response_tokens")
"""Recipe keys every stage's outputs depend on."""


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ loading
def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["file not found"], hint="check the path, or copy one from recipes/")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise RecipeError(str(path), [f"line {line}: not UTF-8 text (byte 0x{error.object[error.start]:02x})"],
                          hint="save the recipe as UTF-8") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise RecipeError(str(path), [f"{where}not valid YAML ({getattr(error, 'problem', error)})"]) from None
    if raw is None:
        raise RecipeError(str(path), ["the file is empty"])
    if not isinstance(raw, dict):
        raise RecipeError(str(path), ["the top level must be a mapping of keys to values"])
    lines = _key_lines(node)
    problems = _duplicate_keys(node)  # YAML keeps the last of a key given twice: say so, with both lines
    overridden: set[str] = set()
    for override in overrides:
        key, problem = _apply_override(raw, override)
        if problem:
            problems.append(problem)
        else:
            overridden.add(key)
    return validate(raw, source=str(path), lines=lines, overridden=overridden, problems=problems)


HINT = "every key, its type, default and meaning: docs/recipe.md, or `lorahf validate --explain`"
"""The hint under every recipe error: the reference, not the source."""


def validate(raw: dict, source: str = "recipe", lines: dict[str, int] | None = None,
             overridden: set[str] = frozenset(), problems: list[str] | None = None) -> Recipe:
    """Validate a recipe dictionary, collecting every problem (schema and cross-field) into one error."""
    problems = list(problems or [])
    lines = lines or {}
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        for detail in error.errors():
            problems.append(_describe(detail, lines, overridden))
    if recipe is not None:
        problems += [_with_line(key, msg, lines, overridden) for key, msg in _cross_checks(recipe)]
    if problems:
        raise RecipeError(source, problems, hint=HINT)
    return recipe


def _cross_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """Problems no single field can see: a listed stage without its section, stages out of order."""
    from lorahf.stages.registry import NAMES, policy_adapters

    found = []
    for stage in recipe.stages:
        if getattr(recipe, stage) is None:
            found.append(("stages", f"lists '{stage}' but the recipe has no `{stage}:` section"))
    order = [s for s in NAMES if s in recipe.stages]
    if recipe.stages != order:
        found.append(("stages", f"must run in the order {order}, not {recipe.stages}"))
    if len(set(recipe.stages)) != len(recipe.stages):
        found.append(("stages", "lists a stage twice"))
    for name, judge in recipe.judges.items():
        if "." in name:
            found.append((f"judges.{name}", "a judge's name may not contain '.' (metric keys are judge.adapter)"))
        given = [kind for kind in ("python", "llm", "human") if getattr(judge, kind)]
        if len(given) != 1:
            found.append((f"judges.{name}", f"needs exactly one of python, llm or human, got {', '.join(given) or 'none'}"))
    if "reward" in recipe.judges:
        found.append(("judges.reward", "is the built-in reward-model judge's name; pick another"))
    if recipe.system_prompt is not None and not recipe.chat_template:
        found.append(("system_prompt", "is a chat turn: it needs `chat_template: true`"))
    evaluate = recipe.evaluate
    if evaluate is not None:
        for adapter in evaluate.adapters or []:
            if "." in adapter or "/" in adapter:
                found.append(("evaluate.adapters", f"{adapter!r} is not an adapter name (a folder in the run's adapters/)"))
        if evaluate.data is None and recipe.ppo is None:
            found.append(("evaluate.data", "is needed when the recipe has no ppo section to take held-out prompts from"))
        if evaluate.judges:
            unknown = [name for name in evaluate.judges if name != "reward" and name not in recipe.judges]
            if unknown:
                found.append(("evaluate.judges", f"names no judge in `judges`: {', '.join(unknown)}"))
            people = [name for name in evaluate.judges if name in recipe.judges and recipe.judges[name].human]
            if people:
                found.append(("evaluate.judges", f"{', '.join(people)} is a person: judge with `lorahf judge RUN` instead"))
    dpo = recipe.dpo
    if dpo is not None:
        if dpo.data is None and (recipe.reward is None or recipe.reward.data is None):
            found.append(("dpo.data", "is needed when the recipe has no reward section to take preferences from"))
        if dpo.adapter in (roles.SFT, *roles.SCORING, roles.POLICY_LAST) or "." in dpo.adapter or "/" in dpo.adapter:
            found.append(("dpo.adapter", f"{dpo.adapter!r} is taken or not an adapter name: use policy, or a new name "
                                         "such as dpo"))
    if all(getattr(recipe, name) is not None for name in recipe.stages):
        written = policy_adapters(recipe)
        for name in {a for a in written if written.count(a) > 1}:
            found.append(("dpo.adapter", f"ppo writes adapters/{name} too: set dpo.adapter to another name (e.g. "
                                         "dpo) to run both and compare them"))
    found += _reward_model_checks(recipe)
    return found + _ppo_checks(recipe)


def _ppo_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """Batch sizes that do not divide, held-out prompts, judges, and what the advantage estimator needs."""
    ppo, found = recipe.ppo, []
    if ppo is not None:
        if ppo.batch_size % ppo.minibatch_size:
            found.append(("ppo.minibatch_size", f"must divide ppo.batch_size ({ppo.batch_size}), got {ppo.minibatch_size}"))
        if ppo.micro_batch_size and ppo.minibatch_size % ppo.micro_batch_size:
            found.append(("ppo.micro_batch_size",
                          f"must divide ppo.minibatch_size ({ppo.minibatch_size}), got {ppo.micro_batch_size}"))
        if ppo.data.eval_fraction == 0 and not ppo.data.eval_files:
            found.append(("ppo.data", "needs held-out prompts for its checks: set eval_fraction > 0 or eval_files"))
        if ppo.reward_judge is not None and ppo.reward_judge not in recipe.judges:
            found.append(("ppo.reward_judge", f"names no judge in `judges` ({', '.join(recipe.judges) or 'none'})"))
        criteria = ["reward", "rouge_l", *recipe.judges]
        if ppo.best_by not in criteria:
            found.append(("ppo.best_by", f"must be one of {', '.join(criteria)}, got {ppo.best_by!r}"))
        if not ppo.critic and ppo.answers < 2:
            found.append(("ppo.answers_per_prompt", f"{ppo.advantage} needs at least 2 (an answer's baseline is the "
                                                    f"other answers to its prompt), got {ppo.answers}"))
        if ppo.batch_size % ppo.answers:
            found.append(("ppo.answers_per_prompt", f"must divide ppo.batch_size ({ppo.batch_size}), got {ppo.answers}"))
        if ppo.kl_penalty == "loss" and ppo.kl_estimator != "k3":
            found.append(("ppo.kl_penalty", "loss needs kl_estimator: k3 (taken as a loss, k1 = log p - log q has a "
                                            "gradient of zero on average: it would not hold the policy near sft)"))
        if not ppo.critic and ppo.value_init != "auto":
            found.append(("ppo.value_init", f"{ppo.advantage} trains no value model: leave value_init unset"))
    return found


def _reward_model_checks(recipe: Recipe) -> list[tuple[str, str]]:
    """The separate reward model's fields, and what needs the shared adapter instead."""
    reward, found = recipe.reward, []
    if reward is None:
        return found
    if reward.model is None:
        given = {"make_tiny_from": reward.make_tiny_from is not None, "full_finetune": reward.full_finetune,
                 "quantization": reward.quantization != "auto"}
        for name in (name for name, set_here in given.items() if set_here):
            found.append((f"reward.{name}", "applies to a separate reward model: set reward.model too"))
        if not reward.train:
            found.append(("reward.train", "false uses a trained reward model as it is: name it in reward.model"))
        return found
    if reward.likelihood_term:
        found.append(("reward.likelihood_term", "reads the shared base's LM head; a separate reward.model has none"))
    if reward.full_finetune and reward.quantization in ("8bit", "4bit"):
        found.append(("reward.full_finetune", f"cannot train {reward.quantization} weights: set reward.quantization "
                                              "none or auto"))
    if reward.full_finetune and not reward.train:
        found.append(("reward.full_finetune", "trains the model, but reward.train is false"))
    if recipe.ppo is not None and recipe.ppo.value_init == "reward" and recipe.ppo.reward_judge is None:
        found.append(("ppo.value_init", "reward copies the reward adapter, and reward.model is a separate encoder: "
                                        "use sft or auto"))
    return found


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML: every default filled in, exactly what ran."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=110)


# -------------------------------------------------------------------------------- error formatting
def _describe(detail: dict, lines: dict[str, int], overridden: set[str]) -> str:
    loc = [part for part in detail["loc"] if not _VALIDATOR_STEP.match(str(part))]
    key = _key_path(loc)
    kind = detail["type"]
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        guess = _did_you_mean(str(loc[-1]), known)
        message = "unknown key" + (f" (did you mean '{guess}'?)" if guess else
                                   f" (known keys: {', '.join(known)})" if known else "")
    elif kind == "missing":
        message = "is required"
    elif kind == "literal_error":
        message = f"must be {detail['ctx']['expected']}, not {detail['input']!r}"
    else:
        message = f"{detail['msg'][0].lower()}{detail['msg'][1:]}"
        if kind not in ("value_error",) and not isinstance(detail.get("input"), (dict, list)):
            message += f", got {detail['input']!r}"
        message = message.replace("Value error, ", "").replace("value error, ", "")
    return _with_line(key, message, lines, overridden)


def _did_you_mean(typo: str, known: list[str]) -> str | None:
    """The closest known key: by spelling, or by initials (lr -> learning_rate)."""
    close = difflib.get_close_matches(typo, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    by_initials = [k for k in known if "".join(w[0] for w in k.split("_") if w) == typo.lower()]
    return by_initials[0] if len(by_initials) == 1 else None


def _with_line(key: str, message: str, lines: dict[str, int], overridden: set[str]) -> str:
    # A problem belongs to --set when it is at, under or above an overridden key (a typo in a section name).
    if key in overridden or any(key.startswith(o + ".") or o.startswith(key + ".") for o in overridden):
        return f"--set {key}: {message}"
    line = lines.get(key) or lines.get(key.rsplit(".", 1)[0]) if key else None
    return f"{'line ' + str(line) + ': ' if line else ''}{key or '(top level)'}: {message}"


_VALIDATOR_STEP = re.compile(r"function-(after|before|wrap|plain)\[")  # pydantic's own entries in an error's loc
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def _key_path(loc: list) -> str:
    path = ""
    for part in loc:
        if not isinstance(part, int) and not _PLAIN_KEY.fullmatch(str(part)):
            part = repr(str(part))  # a key with spaces, dots or newlines, shown so that the line stays one line
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _fields_at(loc: list) -> list[str]:
    """Names of the fields of the section at `loc` (for "did you mean")."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _section_type(field.annotation)
    return list(model.model_fields) if model is not None else []


def _section_type(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found:
            return found
    return None


def reference() -> str:
    """The recipe reference in Markdown, made from the schema itself: every key, its type, its default and its
    docstring (docs/recipe.md is this text; `lorahf validate --explain` prints it)."""
    lines = ["# Recipe reference", "",
             "Every key a recipe can hold, generated from the schema in `lorahf/recipe.py` (`lorahf validate "
             "--explain` prints this page), so it cannot drift from the code. A key left out takes its default; "
             "an unknown key is an error.", ""]

    def section(model: type[Section], prefix: str, title: str, doc: str | None) -> None:
        rows, nested = [], []
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            inner = _section_type(info.annotation)
            if inner is not None:
                mapping = getattr(info.annotation, "__origin__", None) is dict
                nested.append((inner, f"{key}.<name>." if mapping else f"{key}.", info.description))
                if info.is_required() or mapping:
                    rows.append((key, _type_name(info.annotation), "required" if info.is_required() else "{}",
                                 info.description or ""))
                continue
            rows.append((key, _type_name(info.annotation), _default_text(info), info.description or ""))
        lines.extend([f"## {title}", ""] + ([" ".join((doc or "").split()), ""] if doc else []))
        if rows:
            lines.extend(["| key | type | default | what it does |", "|---|---|---|---|"])
            lines.extend(f"| `{k}` | {t} | {d} | {' '.join(text.split()).replace('|', chr(92) + '|')} |"
                         for k, t, d, text in rows)
            lines.append("")
        for inner, inner_prefix, inner_doc in nested:
            section(inner, inner_prefix, f"`{inner_prefix.rstrip('.')}`", inner_doc)

    section(Recipe, "", "Top level", None)
    return "\n".join(lines).rstrip() + "\n"


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"typing\.|lorahf\.recipe\.|<class '|'>", "", text)
    text = re.sub(r"Annotated\[(\w+), [^\]]*\]", r"\1", text)  # a validated str is a str to the reader
    text = text.replace("Literal[", "one of [").replace("NoneType", "null").replace("Optional[", "null | [")
    return text.replace("|", "\\|")


def _default_text(info) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    text = "null" if value is None else json.dumps(value) if not isinstance(value, str) else f"`{value}`" if value \
        else '""'
    return text.replace("|", "\\|").replace("\n", " ")


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Map each key path in the YAML document to its 1-based line number."""
    found: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            for earlier in [k for k in found if k.startswith((path + ".", path + "["))]:
                del found[earlier]  # a key given twice: YAML keeps the last, and so do its lines
            found[path] = key_node.start_mark.line + 1
            found.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}[{index}]"
            found[path] = item.start_mark.line + 1
            found.update(_key_lines(item, path))
    return found


def _duplicate_keys(node: yaml.Node | None, loc: tuple = (), seen: set[int] | None = None) -> list[str]:
    """A problem line for each key given again in the same mapping, at any depth (the first one named)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias is the node it names: look at it once
        return []
    seen.add(id(node))
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            path = (*loc, key_node.value) if isinstance(key_node, yaml.ScalarNode) else loc
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                key = (key_node.tag, key_node.value)  # 1 and "1" are different keys
                if key in first:
                    found.append(f"line {line}: {_key_path(list(path))}: given twice (first on line {first[key]}); "
                                 "keep one")
                else:
                    first[key] = line
            found += _duplicate_keys(value_node, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, index), seen)
    return found


def _apply_override(raw: dict, override: str) -> tuple[str, str | None]:
    """Apply `key.path=value` to the raw recipe; the value is parsed as YAML (so 5e-4, true, [a, b] work)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        return key, f"--set {override!r}: expected key.path=value"
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return key, f"--set {key}: '{part}' is not a section"
        node = child
    node[parts[-1]] = value
    return key, None
