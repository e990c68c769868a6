"""Every stage lorahf can run, one record each: the only place the rest of the package learns about a stage.

The pipeline runs `record.run`, the recipe checks names, order and hashes from `needs` and `creates`, the
planner adds up the roles a stage holds and calls `record.plan_memory`, the report calls `record.checks`,
`record.report` and `record.plot`, `lorahf plan` shows `record.describe`. A new stage is one file in
`lorahf/stages/` with those six functions, its recipe section in `lorahf/recipe.py`, and its record here
(tests/test_registry.py fails when a record or its module lacks any of them).

This module imports no torch: the CLI, the recipe and the planner read it before any model loads; a stage's
module (and torch with it) is imported only when one of its functions is called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from lorahf import roles
from lorahf.errors import LorahfError

FUNCTIONS = ("run", "describe", "plan_memory", "checks", "report", "plot")
"""What every stage's module defines:

    run(recipe, backbone, folder, progress) -> metrics      train or measure, write outputs, return the marker's metrics
    describe(recipe) -> str                                 what will run, one line (lorahf plan)
    plan_memory(shape, recipe, traced) -> {part: bytes}     its peak memory beyond the base and the adapters
    checks(metrics) -> [report.Check]                       what it claims, and the evidence (the check table)
    report(metrics) -> [markdown lines]                     its section of report.md
    plot(plt, folder, metrics) -> Figure | None             its figure in plots/
"""


@dataclass(frozen=True)
class Stage:
    name: str
    section: str
    """The recipe section that configures it: a class in lorahf.recipe, and the recipe key `name`."""
    needs: tuple[str, ...]
    """Stages whose outputs it starts from, when the recipe has them (their settings are part of its hash)."""
    creates: tuple[str, ...]
    """Roles it writes to the run folder's adapters/."""
    reads: tuple[str, ...]
    """Roles it reads, loaded from the run folder when this process did not train them."""
    data: str | None
    """The shape of its rows (lorahf.data.SHAPES); None: it reads none of its own."""
    data_from: tuple[str, ...]
    """Sections whose `data` it takes, in order, when its own `data` is null."""
    memory_hint: str
    """What to lower when it runs out of memory."""
    levers: tuple[tuple[str, str], ...]
    """The planner's levers, in the order worth trying: (recipe key, how to change it: on, halve, shorten, 4bit)."""
    policy_adapter: Callable | None = None
    """recipe -> the adapter it writes for evaluate, merge and generate to use; None: it writes no policy."""
    hashes_judges: bool = False
    """Its outputs depend on the recipe's `judges` (they are part of its hash)."""
    layouts: tuple[str, ...] = ()
    """The layouts of its data shape it can learn from (e.g. pairs, not scores); empty: every one."""
    created_by: Callable | None = None
    """recipe -> the roles of `creates` it writes under that recipe (e.g. ppo without a value model); None: all."""

    def creates_for(self, recipe) -> tuple[str, ...]:
        """The roles it writes under `recipe`."""
        return self.creates if self.created_by is None else self.created_by(recipe)

    @property
    def module(self) -> str:
        return f"lorahf.stages.{self.name}"

    def function(self, name: str) -> Callable:
        """One of FUNCTIONS of the stage's module (imported on first use)."""
        if name not in FUNCTIONS:
            raise ValueError(f"{name!r} is not a stage function ({', '.join(FUNCTIONS)})")
        return getattr(import_module(self.module), name)

    def check_layout(self, layout: str, files: list[str]) -> None:
        """Refuse data of a layout this stage cannot learn from, in one line."""
        if self.layouts and layout not in self.layouts:
            raise LorahfError(f"{self.name}.data: {', '.join(files)} holds {layout} rows; {self.name} learns from "
                              f"{' or '.join(self.layouts)} rows only",
                              hint=f"give {self.name}.data files with the columns of one of those layouts")

    @property
    def run(self) -> Callable:
        return self.function("run")

    @property
    def lora_roles(self) -> list[str]:
        """Whose `lora:` settings decide its outputs: those its new roles are made with."""
        return list(dict.fromkeys(roles.LORA_OF[role] for role in self.creates))

    def data_spec(self, recipe):
        """The DataSpec it reads: its section's own, else the first of `data_from` the recipe has; None if none."""
        own = getattr(getattr(recipe, self.name), "data", None)
        if own is not None:
            return own
        for source in self.data_from:
            section = getattr(recipe, source)
            if section is not None and section.data is not None:
                return section.data
        return None


TRAINING_LEVERS = (("model.gradient_checkpointing", "on"), ("{stage}.batch_size", "halve"),
                   ("max_prompt_tokens", "shorten"), ("model.quantization", "4bit"))

STAGES: tuple[Stage, ...] = (
    Stage("sft", "SFTStage", needs=(), creates=(roles.SFT,), reads=(), data="sft", data_from=(),
          memory_hint="lower sft.batch_size, max_prompt_tokens or max_response_tokens, or set "
                      "model.gradient_checkpointing: true",
          levers=tuple((key.format(stage="sft"), how) for key, how in TRAINING_LEVERS)),
    Stage("reward", "RewardStage", needs=("sft",), creates=(roles.REWARD,), reads=(roles.SFT,), data="preference",
          data_from=(), memory_hint="lower reward.batch_size or max_response_tokens, or set "
                                    "model.gradient_checkpointing: true (a separate reward.model: "
                                    "reward.quantization 8bit, or LoRA instead of full_finetune)",
          levers=tuple((key.format(stage="reward"), how) for key, how in TRAINING_LEVERS)),
    Stage("ppo", "PPOStage", needs=("sft", "reward"), creates=(roles.POLICY, roles.VALUE),
          reads=(roles.SFT, roles.REWARD), data="prompts", data_from=(),
          memory_hint="set ppo.micro_batch_size (e.g. 2), or lower ppo.minibatch_size or ppo.batch_size",
          levers=(("ppo.micro_batch_size", "halve"), ("ppo.batch_size", "halve"), ("max_prompt_tokens", "shorten"),
                  ("model.quantization", "4bit")),
          policy_adapter=lambda recipe: roles.POLICY,
          created_by=lambda recipe: recipe.ppo.trained_roles),
    Stage("dpo", "DPOStage", needs=("sft",), creates=(roles.POLICY,), reads=(roles.SFT,), data="preference",
          data_from=("reward",),
          memory_hint="lower dpo.batch_size or max_response_tokens, or set model.gradient_checkpointing: true",
          levers=tuple((key.format(stage="dpo"), how) for key, how in TRAINING_LEVERS),
          policy_adapter=lambda recipe: recipe.dpo.adapter, layouts=("pairwise", "ranking")),
    Stage("evaluate", "EvaluateStage", needs=("sft", "reward", "ppo", "dpo"), creates=(),
          reads=(roles.SFT,), data="prompts", data_from=("ppo",),
          memory_hint="lower evaluate.batch_size",
          levers=(("evaluate.batch_size", "halve"), ("model.quantization", "4bit")), hashes_judges=True),
)
"""In the only order they can run."""

NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def get(name: str) -> Stage:
    return _BY_NAME[name]


def in_recipe(recipe) -> list[Stage]:
    """The records of the recipe's stages, in its order."""
    return [_BY_NAME[name] for name in recipe.stages]


def policy_adapters(recipe) -> list[str]:
    """The adapters the recipe's policy stages write, in stage order (e.g. ['policy'], or ['policy', 'dpo'])."""
    return [stage.policy_adapter(recipe) for stage in in_recipe(recipe) if stage.policy_adapter is not None]


def held_roles(recipe, name: str) -> list[str]:
    """The roles on the backbone while stage `name` runs: those every stage up to it created or read."""
    found: dict[str, None] = {}
    for stage in in_recipe(recipe):
        created = [stage.policy_adapter(recipe) if role == roles.POLICY and stage.policy_adapter else role
                   for role in stage.creates_for(recipe)]
        found.update(dict.fromkeys([*stage.reads, *created]))
        if stage.name == name:
            break
    return list(found)
