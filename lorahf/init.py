"""`lorahf init`: look at a user's data files, guess which stage reads each and which column is which, and
write a commented recipe that validates.

    found = inspect_files(["data/train.csv", "data/prefs.jsonl"])  # one FileGuess per file
    text = recipe_text(found, base="google/flan-t5-base")          # the recipe, as YAML with comments

Guesses come from column names first (`better_summary` is a chosen response), then from the values (a
list of numbers is a ranking, the longest text column is the prompt). A guess that names could not settle is
marked `ambiguous`, with the other candidates, so that the command can ask, or say so.

The training settings fit the base (`settings_for`): lorahf's tiny T5 gets recipes/quickstart.yaml's (its tiny
Llama recipes/quickstart-causal.yaml's), a Flan-T5 its recipes/flan-t5-SIZE.yaml's, a SmolLM2 or Qwen2.5 its own
recipe's, any other base those of the shipped size of its family (encoder-decoder or decoder-only) nearest its
parameter count; the recipe says which and why. A decoder-only base gets a prompt template that marks where the
answer starts, or its chat template when its tokenizer has one. Token limits are counted with the base's tokenizer
where it is a local folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorahf.data import NUMBER, RANKS, SHAPES, TEXT, TEXTS, _as_number, load_table
from lorahf.errors import LorahfError
from lorahf.stages import registry

# The names people give each of lorahf's columns (lower case; a column matches by its whole name or one word).
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "chosen": ("chosen", "better", "preferred", "winner", "accepted", "good", "positive", "win"),
    "rejected": ("rejected", "worse", "dispreferred", "loser", "bad", "negative", "lose"),
    "reference": ("reference", "references", "gold", "ideal", "ref"),
    "prompt": ("prompt", "document", "article", "text", "input", "question", "instruction", "source", "post",
               "context", "query", "dialogue", "passage", "content", "report", "story", "email"),
    "response": ("response", "summary", "output", "answer", "completion", "target", "reply", "abstract",
                 "highlights", "tldr"),
    "responses": ("responses", "candidates", "completions", "outputs", "answers", "summaries", "generations"),
    "ranking": ("ranking", "ranks", "rank", "order", "ranked"),
    "score": ("score", "rating", "reward", "quality", "grade", "stars", "preference"),
}
HELD_OUT_WORDS = ("test", "eval", "valid", "validation", "dev", "heldout", "holdout")
"""A file whose name has one of these words holds held-out prompts (its answers become references)."""
SAMPLE_ROWS = 200  # rows read to tell a column's kind
GUESSES = "# Guesses to check:"  # the recipe's last lines, after this one, say what names could not settle

# What each shape of file is for: (stage, lorahf's data shape, layout)
PURPOSES = {"sft": "sft: prompt -> response pairs", "pairwise": "reward: prompt, chosen, rejected",
            "ranking": "reward: prompt, responses, ranking", "score": "reward: prompt, response, score",
            "prompts": "ppo: prompts for rollouts", "held_out": "ppo and evaluate: held-out prompts"}

@dataclass
class FileGuess:
    path: str
    rows: int
    columns: list[str]  # the file's own columns
    kinds: dict[str, str]  # column -> text | texts | ranks | number | other
    roles: dict[str, str] = field(default_factory=dict)  # lorahf's column -> the file's
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # role -> candidate columns, when names could not tell
    shape: str = ""  # a key of PURPOSES, or "" when the file fits none
    preview: list[dict] = field(default_factory=list)  # the first rows
    sample: list[dict] = field(default_factory=list, repr=False)  # the rows read (SAMPLE_ROWS), to count tokens in
    lengths: dict[str, float] = field(default_factory=dict)  # text column -> mean characters in the sample

    def choose(self, role: str, column: str) -> None:
        """Settle an ambiguous role (e.g. after asking); the column leaves any other role it had."""
        previous = self.roles.get(role)
        for other, name in list(self.roles.items()):
            if name == column and other != role:  # the two swap (or the other loses its column)
                if previous is None:
                    del self.roles[other]
                else:
                    self.roles[other] = previous
        self.roles[role] = column
        self.ambiguous.pop(role, None)
        settle(self)


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def data_files(paths: list[str]) -> list[str]:
    """The files given, with each folder replaced by the data files in it (sorted)."""
    files = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            inside = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
            if not inside:
                raise LorahfError(f"{path}: no {', '.join(DATA_SUFFIXES)} files in this folder")
            files += inside
        else:
            files.append(path)
    return files


def inspect_files(paths: list[str]) -> list[FileGuess]:
    """A guess for each file; a file that is unreadable, or fits no shape, is a one-line error naming it."""
    if not paths:
        raise LorahfError("give at least one data file", hint="lorahf init data/train.jsonl data/preferences.jsonl")
    return [inspect_file(path) for path in paths]


def inspect_file(path: str) -> FileGuess:
    table = load_table(path)
    sample = table.select(range(min(SAMPLE_ROWS, len(table)))).to_list()
    kinds = {column: _kind([row[column] for row in sample]) for column in table.column_names}
    lengths = {column: _mean_length([row[column] for row in sample]) for column in kinds if kinds[column] == TEXT}
    guess = FileGuess(path, len(table), table.column_names, kinds, preview=sample[:3], sample=sample, lengths=lengths)
    _assign_roles(guess)
    settle(guess)
    if not guess.shape:
        described = ", ".join(f"{c} ({k})" for c, k in kinds.items())
        raise LorahfError(f"{path}: no column looks like a prompt (columns: {described})",
                          hint="lorahf needs a text column of prompts; rename it `prompt`, or map it in the recipe")
    return guess


def _kind(values: list) -> str:
    """The kind of lorahf column (data.TEXT, TEXTS, RANKS, NUMBER) a file's column looks like, or "other".
    Lenient where the loader is strict (a duplicate in one ranking, an overlong cell): the recipe is still
    written, and `lorahf validate` names the row."""
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return "other"
    if all(_as_number(v) is not None for v in present):  # numbers, or CSV cells holding them
        return NUMBER
    if all(isinstance(v, str) for v in present):
        return TEXT
    if all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in present):
        return TEXTS
    if all(isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
           for v in present):
        return RANKS
    return "other"


def _words(column: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", column)  # camelCase -> camel Case
    return [word for word in re.split(r"[^a-z0-9]+", spaced.lower()) if word]


def _name_match(column: str, role: str) -> int:
    """2: the column's whole name is one of the role's names; 1: one of its words is; 0: neither."""
    words = _words(column)
    names = ROLE_NAMES[role]
    if "".join(words) in names or "_".join(words) in names:
        return 2
    return 1 if any(word in names for word in words) else 0


# lorahf's columns and their kinds, and the columns of each preference layout, as lorahf.data defines them
ROLE_KINDS = {column: kind for layouts in SHAPES.values() for layout in layouts
              for column, kind in layout.columns.items()}
LAYOUT_ROLES = {layout.name: tuple(layout.columns) for layout in SHAPES["preference"]}  # pairwise, ranking, score


def _assign_roles(guess: FileGuess) -> None:
    """Each role takes the unclaimed column of its kind whose name matches best, roles in the order of ROLE_NAMES
    (so `better_summary` is `chosen` before it could be a `response`). Then the values decide what names
    could not: the longest text is the prompt, another text the response, a lone number the score."""
    free = [c for c in guess.columns if guess.kinds[c] != "other" and not _is_identifier(c)]
    for role in ROLE_NAMES:
        candidates = [c for c in free if guess.kinds[c] == ROLE_KINDS[role]]
        scored = {c: _name_match(c, role) for c in candidates}
        best = max(scored.values(), default=0)
        if best == 0:
            continue
        top = [c for c in candidates if scored[c] == best]
        guess.roles[role] = top[0]
        free.remove(top[0])
        if len(top) > 1:
            guess.ambiguous[role] = top
    texts = [c for c in free if guess.kinds[c] == TEXT]
    if "prompt" not in guess.roles and texts:
        texts.sort(key=lambda c: -guess.lengths[c])  # documents are longer than what is written about them
        guess.roles["prompt"] = texts.pop(0)
        guess.ambiguous["prompt"] = [guess.roles["prompt"], *texts]
    pair = {"chosen", "rejected"} <= set(guess.roles) or {"responses", "ranking"} <= set(guess.roles)
    if "response" not in guess.roles and "reference" not in guess.roles and texts and not pair:
        guess.roles["response"] = texts[0]
        if len(texts) > 1:
            guess.ambiguous["response"] = texts
    numbers = [c for c in free if guess.kinds[c] == NUMBER]
    if "score" not in guess.roles and "response" in guess.roles and len(numbers) == 1:
        guess.roles["score"] = numbers[0]
        guess.ambiguous["score"] = numbers


def _is_identifier(column: str) -> bool:
    words = _words(column)
    return bool(words) and words[-1] in ("id", "idx", "index", "key", "uuid")


def _mean_length(values: list) -> float:
    texts = [v for v in values if isinstance(v, str)]
    return sum(map(len, texts)) / max(len(texts), 1)


def settle(guess: FileGuess) -> None:
    """Decide the file's shape from its roles (again after a role was chosen by hand)."""
    guess.shape = _shape(guess)


def _shape(guess: FileGuess) -> str:
    roles = guess.roles
    if "prompt" not in roles:
        return ""
    if {"chosen", "rejected"} <= set(roles):
        return "pairwise"
    if {"responses", "ranking"} <= set(roles):
        return "ranking"
    if {"response", "score"} <= set(roles):
        return "score"
    held_out = any(word in HELD_OUT_WORDS for word in _words(Path(guess.path).stem))
    if "response" in roles and held_out:  # a held-out file's answers are references to compare with
        roles["reference"] = roles.pop("response")
        if "response" in guess.ambiguous:
            guess.ambiguous["reference"] = guess.ambiguous.pop("response")
    if "response" in roles:
        return "sft"
    return "held_out" if "reference" in roles else "prompts"


# ------------------------------------------------------------------------------------------ recipe
@dataclass
class Plan:
    """Which files each stage reads, with one column mapping per stage (the recipe's `columns:`)."""

    stages: list[str]
    files: dict[str, list[FileGuess]]  # stage -> files
    eval_files: list[FileGuess]  # ppo's held-out prompts
    columns: dict[str, dict[str, str]]  # stage -> lorahf's column -> the files'
    unused: list[tuple[str, str]]  # (file, why it is left out)


def plan_stages(found: list[FileGuess]) -> Plan:
    """Which stage reads which file. SFT needs pairs; the reward stage one layout of preferences (the one with
    the most rows when several are given); PPO prompts (its own files, else the SFT prompts)."""
    unused: list[tuple[str, str]] = []
    sft = _same_columns([g for g in found if g.shape == "sft"], ("prompt", "response"), unused)
    if not sft:
        shapes = ", ".join(f"{g.path}: {PURPOSES[g.shape]}" for g in found)
        raise LorahfError(f"no file has prompt -> response pairs for SFT, where every run starts ({shapes})",
                          hint="add a file with a prompt column and a response column")
    files = {"sft": sft}
    columns = {"sft": _columns(sft[0], ("prompt", "response"))}
    layouts = {g.shape for g in found if g.shape in LAYOUT_ROLES}
    if layouts:
        layout = max(layouts, key=lambda name: sum(g.rows for g in found if g.shape == name))
        for g in found:
            if g.shape in layouts - {layout}:
                unused.append((g.path, f"{PURPOSES[g.shape]}; the reward stage reads one layout, here {layout}"))
        roles = LAYOUT_ROLES[layout]
        files["reward"] = _same_columns([g for g in found if g.shape == layout], roles, unused)
        columns["reward"] = _columns(files["reward"][0], roles)
    eval_files = [g for g in found if g.shape == "held_out"]
    if "reward" in files:
        prompts = _same_columns([g for g in found if g.shape == "prompts"], ("prompt",), unused) or sft
        files["ppo"] = prompts
        columns["ppo"] = _columns(prompts[0], ("prompt",))
        if eval_files:
            eval_files = _same_columns(eval_files, ("prompt", "reference"), unused, like=columns["ppo"])
            columns["ppo"].update(_columns(eval_files[0], ("reference",)) if eval_files else {})
        elif prompts is sft:  # the held-out split of the SFT pairs: their responses are references
            columns["ppo"]["reference"] = sft[0].roles["response"]
    else:
        eval_files = _same_columns(eval_files, ("prompt", "reference"), unused)  # evaluate reads them
        unused += [(g.path, "prompts: PPO needs reward data") for g in found if g.shape == "prompts"]
    stages = [name for name in registry.NAMES if name in files] + ["evaluate"]  # files: sft, reward, ppo's
    return Plan(stages, files, eval_files, columns, unused)


def _columns(guess: FileGuess, roles: tuple[str, ...]) -> dict[str, str]:
    return {role: guess.roles[role] for role in roles if role in guess.roles}


def _renamed(columns: dict[str, str]) -> dict[str, str]:
    """The mapping a recipe needs: columns already named as lorahf names them need no entry."""
    return {role: name for role, name in columns.items() if role != name}


def _same_columns(guesses: list[FileGuess], roles: tuple[str, ...], unused: list, like: dict | None = None):
    """The files whose columns for `roles` have the same names as the first's (one `columns:` per stage)."""
    if not guesses:
        return []
    first = like or _columns(guesses[0], roles)
    kept = []
    for guess in guesses:
        mine = _columns(guess, roles)
        if all(mine.get(role, name) == name for role, name in first.items()):
            kept.append(guess)
        else:
            unused.append((guess.path, f"its columns are named unlike {guesses[0].path}'s ({mine} vs {first})"))
    return kept


# ------------------------------------------------------------------------------------ settings per base
@dataclass(frozen=True)
class Settings:
    """The training settings init writes for one kind of base. The defaults are those every
    recipes/flan-t5-*.yaml shares; None leaves a field out of the recipe, so the recipe's own default applies."""

    source: str  # the shipped recipe they are taken from
    quantization: str = "8bit"
    gradient_checkpointing: bool = False
    sft_learning_rate: float = 3e-4
    sft_batch_size: int = 8
    sft_epochs: int = 2
    reward_learning_rate: float = 1e-4
    reward_batch_size: int = 4
    ppo_batch_size: int = 16
    ppo_minibatch_size: int = 4
    ppo_micro_batch_size: int | None = None  # rows per forward pass inside a minibatch (None: the whole minibatch)
    lr_schedule: str | None = None  # sft's and reward's
    reward_epochs: int | None = None
    reward_eval_fraction: float | None = None
    likelihood_term: bool | None = None
    ppo_iterations: int | None = None
    ppo_learning_rate: float | None = None  # the policy's (ppo.advantage rloo, the default, has no value model)
    temperature: float | None = None  # ppo's and evaluate's
    gpu_memory: str | None = "12GiB"  # the card the batch sizes were chosen to fit (None: chosen for learning)
    family: str = "seq2seq"  # the bases these settings were written for: seq2seq (T5) or causal (decoder-only)


# lorahf's tiny T5 (`lorahf make-tiny`): recipes/quickstart.yaml's settings, measured there on the CPU
TINY = Settings("recipes/quickstart.yaml", sft_learning_rate=1e-3, sft_batch_size=16, sft_epochs=3,
                reward_learning_rate=1e-4, reward_batch_size=16, ppo_batch_size=32, ppo_minibatch_size=8,
                lr_schedule="constant", reward_epochs=1, reward_eval_fraction=0.1, likelihood_term=True,
                ppo_iterations=60, ppo_learning_rate=2e-4, temperature=1.0, gpu_memory=None)
TINY_PARAMETERS = 10e6  # under this, a base takes the tiny settings (the tiny T5 has 1.3M, flan-t5-small 77M)

# Per Flan-T5 size: its recipe's settings and its parameters as published (its config's dimensions are
# lorahf.plan.FLAN_T5's)
FLAN_T5 = {
    "small": (Settings("recipes/flan-t5-small.yaml", sft_batch_size=16, reward_batch_size=8, ppo_batch_size=32,
                       ppo_minibatch_size=8), 77e6),
    "base": (Settings("recipes/flan-t5-base.yaml"), 248e6),
    "large": (Settings("recipes/flan-t5-large.yaml", gradient_checkpointing=True), 783e6),
    "xl": (Settings("recipes/flan-t5-xl.yaml", gradient_checkpointing=True), 2.85e9),
    "xxl": (Settings("recipes/flan-t5-xxl.yaml", quantization="4bit", gradient_checkpointing=True, sft_batch_size=4,
                     reward_batch_size=2, ppo_batch_size=8, ppo_minibatch_size=2, gpu_memory="24GiB"), 11.1e9),
}


# lorahf's tiny Llama (`lorahf make-tiny --family causal`): recipes/quickstart-causal.yaml's, measured there on the CPU
TINY_CAUSAL = Settings("recipes/quickstart-causal.yaml", sft_learning_rate=1e-3, sft_batch_size=16, sft_epochs=6,
                       reward_learning_rate=1e-4, reward_batch_size=16, ppo_batch_size=32, ppo_minibatch_size=8,
                       lr_schedule="constant", reward_epochs=1, reward_eval_fraction=0.1, likelihood_term=True,
                       ppo_iterations=40, ppo_learning_rate=2e-4, temperature=1.0, gpu_memory=None, family="causal")

# Per decoder-only base: its recipe's settings and its parameters as published (its config's dimensions are
# lorahf.plan.CAUSAL's). A decoder's PPO update reads the whole prompt with gradients: micro-batches keep it in the card.
DECODERS = {
    "HuggingFaceTB/SmolLM2-135M": (Settings("recipes/smollm2-135m.yaml", sft_learning_rate=2e-4, ppo_batch_size=32,
                                            ppo_minibatch_size=8, ppo_micro_batch_size=4, gpu_memory="8GiB",
                                            family="causal"), 135e6),
    "HuggingFaceTB/SmolLM2-360M": (Settings("recipes/smollm2-360m.yaml", sft_learning_rate=2e-4,
                                            gradient_checkpointing=True, sft_batch_size=16, reward_batch_size=8,
                                            ppo_batch_size=32, ppo_minibatch_size=8, ppo_micro_batch_size=2,
                                            gpu_memory="8GiB", family="causal"), 362e6),
    "Qwen/Qwen2.5-0.5B": (Settings("recipes/qwen2.5-0.5b.yaml", sft_learning_rate=2e-4, gradient_checkpointing=True,
                                   sft_batch_size=16, reward_batch_size=8, ppo_batch_size=32, ppo_minibatch_size=8,
                                   ppo_micro_batch_size=2, gpu_memory="8GiB", family="causal"), 494e6),
    "Qwen/Qwen2.5-1.5B": (Settings("recipes/qwen2.5-1.5b.yaml", sft_learning_rate=1e-4, gradient_checkpointing=True,
                                   ppo_micro_batch_size=2, family="causal"), 1.54e9),
    "HuggingFaceTB/SmolLM2-1.7B": (Settings("recipes/smollm2-1.7b.yaml", sft_learning_rate=1e-4,
                                            gradient_checkpointing=True, ppo_micro_batch_size=2, family="causal"),
                                   1.71e9),
    "Qwen/Qwen2.5-7B": (Settings("recipes/qwen2.5-7b.yaml", sft_learning_rate=1e-4, quantization="4bit",
                                 gradient_checkpointing=True, ppo_micro_batch_size=2, gpu_memory="24GiB",
                                 family="causal"), 7.62e9),
}


def settings_for(base: str) -> tuple[Settings, str]:
    """The settings for `base`, and a sentence saying why they were chosen: lorahf's tiny bases by their marker file,
    a Flan-T5, SmolLM2 or Qwen2.5 by its hub id (an -Instruct variant as its base), a Flan-T5 also by its config's
    dimensions, any other base by its family and parameter count (the nearest shipped size's settings; the tiny ones
    under TINY_PARAMETERS). A base whose config cannot be read without waiting for the hub gets flan-t5-base's, and
    the sentence says so."""
    from lorahf.tiny import MARKER_FILE, tiny_family

    if (Path(base) / MARKER_FILE).is_file():
        tiny = TINY_CAUSAL if tiny_family(base) == "causal" else TINY
        return tiny, (f"{tiny.source}'s, measured there on lorahf's tiny {'Llama' if tiny is TINY_CAUSAL else 'T5'}; "
                      f"{base} is one (it holds {MARKER_FILE}, written by `lorahf make-tiny`)")
    named = re.fullmatch(r"google/flan-t5-(small|base|large|xl|xxl)", base.rstrip("/"))
    if named:
        return FLAN_T5[named[1]][0], f"{FLAN_T5[named[1]][0].source}'s, written for {named[0]}"
    for hub_id, (settings, _) in DECODERS.items():
        if re.fullmatch(re.escape(hub_id) + r"(-Instruct)?", base.rstrip("/"), flags=re.IGNORECASE):
            return settings, f"{settings.source}'s, written for {hub_id}"
    try:
        parameters, config, family = count_parameters(base)
    except LorahfError as error:
        fallback = FLAN_T5["base"][0]
        return fallback, (f"flan-t5-base's ({fallback.source}), a guess: this base's size is unknown, as its "
                          f"config could not be read ({error.message})")
    if family == "causal":
        return _nearest(parameters, TINY_CAUSAL, {hub_id.split("/")[1]: entry for hub_id, entry in DECODERS.items()})
    from lorahf.plan import FLAN_T5 as DIMENSIONS  # (d_model, d_ff, layers per stack, heads)

    shape = tuple(getattr(config, key, None) for key in ("d_model", "d_ff", "num_layers", "num_heads"))
    for size, (settings, _) in FLAN_T5.items():
        if shape == DIMENSIONS[size]:
            return settings, f"{settings.source}'s: this base has flan-t5-{size}'s dimensions"
    return _nearest(parameters, TINY, {f"flan-t5-{size}": entry for size, entry in FLAN_T5.items()})


def _nearest(parameters: float, tiny: Settings, sizes: dict[str, tuple[Settings, float]]) -> tuple[Settings, str]:
    """The tiny settings under TINY_PARAMETERS, else the settings of the size nearest `parameters` (on a log scale)."""
    if parameters < TINY_PARAMETERS:
        return tiny, (f"{tiny.source}'s, measured there on lorahf's tiny {'Llama' if tiny is TINY_CAUSAL else 'T5'}: "
                      f"this base is tiny-like too ({_count(parameters)} parameters, under {_count(TINY_PARAMETERS)})")
    size = min(sizes, key=lambda name: abs(math.log(parameters / sizes[name][1])))
    settings = sizes[size][0]
    return settings, (f"those of {size} ({settings.source}), the nearest size to this base's "
                      f"{_count(parameters)} parameters")


def count_parameters(base: str):
    """(parameters, config, family) of `base`, from its config alone: the model is built on the meta device, so no
    weight is read or allocated. transformers 5 ties T5's LM head to the embeddings when it builds one, so a
    base with an untied head (Flan-T5's) has vocab x d_model parameters more than counted here.
    A hub id that is neither cached nor reachable fails at once (backbone's check), not after the hub's retries."""
    import torch
    from transformers import AutoConfig

    from lorahf.backbone import _first_line, check_folder
    from lorahf.families import family_of

    check_folder(base)
    try:
        config = AutoConfig.from_pretrained(base)
        family = family_of(config)
        if family is None:
            raise ValueError(f"a {config.model_type} is neither an encoder-decoder nor a decoder-only language model")
        with torch.device("meta"):
            model = family.auto_class().from_config(config)
    except Exception as error:  # OSError, ValueError, or a config no language model is built from
        raise LorahfError(f"{base}: cannot read its config ({_first_line(error)})") from None
    return sum(parameter.numel() for parameter in model.parameters()), config, family.name


def _count(parameters: float) -> str:
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f}B"
    return f"{parameters / 1e6:.0f}M" if parameters >= 10e6 else f"{parameters / 1e6:.1f}M"


CHECKS = 10  # held-out checks over a stage's run that eval_every aims at


def eval_every(rows: int, eval_fraction: float, batch_size: int, epochs: float) -> int:
    """Steps between held-out checks for about CHECKS of them over a stage's whole run (a multiple of 10 from
    50 steps up); `rows` before the held-out split."""
    training = rows - round(rows * eval_fraction)
    steps = math.ceil(training / batch_size) * epochs
    every = max(1, round(steps / CHECKS))
    return every if every < 50 else int(round(every, -1))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
"""A folder holds a tokenizer when it has one of these (transformers 5 makes an empty T5 tokenizer without them)."""


def local_tokenizer(base: str):
    """The tokenizer in `base` when it is a local folder holding one, else None."""
    if not any((Path(base) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base)
    except Exception:  # a tokenizer that cannot load: the limits are estimated instead
        return None


def token_limit(texts: list[str], characters: list[float], tokenizer, limit: int, what: str) -> tuple[int, str]:
    """A token limit for `texts` and a note saying how it was found. With the base's own tokenizer: the longest
    text counted by it (EOS included), rounded up to a multiple of 16, at most `limit`. Without one: estimated
    from the files' mean lengths in characters (_tokens)."""
    if tokenizer is None or not texts:
        return _tokens(characters, limit), f"about 3x the mean {what} at 4 characters a token, at most {limit}"
    longest = max(len(tokenizer(text).input_ids) for text in texts)
    return (int(min(limit, max(16, -(-longest // 16) * 16))),
            f"the longest of {len(texts)} sampled {what}s is {longest} tokens by this base's tokenizer")


def recipe_text(found: list[FileGuess], base: str = "google/flan-t5-base", name: str = "my-run",
                out: Path | None = None) -> str:
    """A commented recipe for the files, to be saved at `out`, with settings chosen for `base` (settings_for):
    its head (how to run it, the model, the token limits, the stages), then one section per stage, then the
    guesses to check."""
    plan = plan_stages(found)
    settings, why = settings_for(base)
    lines = _head_lines(found, plan, settings, why, base, name, out)
    lines += _sft_lines(plan, settings)
    if "reward" in plan.files:
        lines += _reward_lines(plan, settings)
    if "ppo" in plan.files:
        lines += _ppo_lines(plan, settings)
    lines += _evaluate_lines(plan, settings)
    notes = _guess_notes(found, plan)
    if notes:
        lines += ["", GUESSES, *notes]
    return "\n".join(lines) + "\n"


def _head_lines(found: list[FileGuess], plan: Plan, settings: Settings, why: str, base: str, name: str,
                out: Path | None) -> list[str]:
    """The recipe's first lines: how to check and run it, why these settings, the model, the token limits
    (counted on the SFT pairs) and the stages."""
    shown = out.as_posix() if out is not None else "RECIPE"
    sft = plan.files["sft"]
    prompts = [row[g.roles["prompt"]] for g in sft for row in g.sample if isinstance(row.get(g.roles["prompt"]), str)]
    responses = [row[g.roles["response"]] for g in sft for row in g.sample
                 if isinstance(row.get(g.roles["response"]), str)]
    tokenizer = local_tokenizer(base)
    prompt_tokens, prompt_note = token_limit(prompts, [g.lengths[g.roles["prompt"]] for g in sft], tokenizer, 512,
                                             "prompt")
    response_tokens, response_note = token_limit(responses, [g.lengths[g.roles["response"]] for g in sft],
                                                 tokenizer, 128, "response")
    return [
        f"# Written by `lorahf init` from {len(found)} file(s); check the guesses marked below, then run:",
        f"#   lorahf validate {shown}    (reads every file)",
        f"#   lorahf plan {shown} --gpu-memory {settings.gpu_memory or '12GiB'}    (will it fit the card?)",
        f"#   lorahf run {shown}",
        "# Every field not written here takes the default documented in docs/recipe.md (lorahf validate --explain).",
        *_comment(f"Settings for this base (quantization, learning rates, batch sizes, epochs and the rest): {why}. "
                   f"eval_every: about {CHECKS} held-out checks over each stage's run, from its number of rows."),
        _line(f"name: {name}", f"the run folder is runs/{name}"),
        "seed: 0",
        "model:",
        _line(f"  name: {base}", "a hub id or a local folder"),
        _line(f"  quantization: {settings.quantization}", "8bit | 4bit (the largest bases) | none"),
        _line(f"  gradient_checkpointing: {str(settings.gradient_checkpointing).lower()}",
              "true: far less memory in sft and reward, about 2x their time"),
        *_prompt_lines(settings, tokenizer, base),
        _line(f"max_prompt_tokens: {prompt_tokens}",
              f"{prompt_note}; longer prompts are cut (lorahf validate counts them)"),
        _line(f"max_response_tokens: {response_tokens}", response_note),
        _line("judges: {}", 'add yours: {mine: {python: "judge.py:score"}}, an llm, or a human'),
        f"stages: {_flow(plan.stages)}",
    ]


def _prompt_lines(settings: Settings, tokenizer, base: str) -> list[str]:
    """How prompts are shown: as they are to an encoder; to a decoder-only base, as its chat template's user turn
    when its tokenizer has one (an -Instruct hub id is taken to), else followed by a line that marks the answer."""
    if settings.family != "causal":
        return [_line('prompt_template: "{prompt}"', 'how each prompt is shown to the model, e.g. "summarize: {prompt}"')]
    chat = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else \
        base.rstrip("/").lower().endswith("-instruct")
    if chat:
        return [_line('prompt_template: "{prompt}"', "the user's message"),
                _line("chat_template: true", "this base's tokenizer has a chat template: each prompt is a user turn"),
                _line("# system_prompt: You are a helpful assistant.", "a system turn before every prompt, if you want one")]
    return [_line('prompt_template: "{prompt}\\nAnswer:"', "a decoder reads prompt and answer as one text: the "
                  "template marks where the answer starts")]


def _sft_lines(plan: Plan, settings: Settings) -> list[str]:
    """The `sft:` section: its pairs, learning rate, batch size, epochs and eval_every."""
    from lorahf.recipe import DataSpec

    default_fraction = DataSpec.model_fields["eval_fraction"].default
    sft_rows = sum(g.rows for g in plan.files["sft"])
    sft_every = eval_every(sft_rows, default_fraction, settings.sft_batch_size, settings.sft_epochs)
    return [
        "sft:",
        *_data_lines(plan, "sft", "prompt -> response pairs"),
        _line(f"  learning_rate: {_rate(settings.sft_learning_rate)}",
              "the tiny base from scratch; a real base wants 1e-4 to 5e-4" if settings in (TINY, TINY_CAUSAL)
              else f"LoRA on {'a decoder-only LM' if settings.family == 'causal' else 'Flan-T5'}: 1e-4 to "
                   f"{'3e-4' if settings.family == 'causal' else '5e-4'} is the usual range"),
        *_optional("lr_schedule", settings.lr_schedule),
        _line(f"  batch_size: {settings.sft_batch_size}",
              f"sizes for {settings.gpu_memory} of GPU memory: see lorahf plan" if settings.gpu_memory else ""),
        _line(f"  epochs: {settings.sft_epochs}", "at most (patience stops it earlier); the adapter best on "
              "held-out loss is kept"),
        _line(f"  eval_every: {sft_every}", f"{sft_rows - round(sft_rows * default_fraction)} training pairs, "
              f"{settings.sft_batch_size} a step, {settings.sft_epochs} epochs"),
    ]


def _reward_lines(plan: Plan, settings: Settings) -> list[str]:
    """The `reward:` section: its preferences (and held-out share), learning rate, batch size, epochs, eval_every."""
    from lorahf.recipe import DataSpec, RewardStage

    fraction = settings.reward_eval_fraction or DataSpec.model_fields["eval_fraction"].default
    epochs = settings.reward_epochs or RewardStage.model_fields["epochs"].default
    rows = sum(g.rows for g in plan.files["reward"])
    data_lines = _data_lines(plan, "reward", PURPOSES[plan.files["reward"][0].shape].split(": ", 1)[1])
    if settings.reward_eval_fraction is not None:
        data_lines.append(_line(f"    eval_fraction: {settings.reward_eval_fraction}",
                                f"{round(rows * fraction)} held out for accuracy"))
    return ["reward:", *data_lines,
            *_optional("likelihood_term", settings.likelihood_term,
                       "the score adds the response's likelihood under a copy of SFT's LM head"),
            _line(f"  learning_rate: {_rate(settings.reward_learning_rate)}"),
            *_optional("lr_schedule", settings.lr_schedule),
            _line(f"  batch_size: {settings.reward_batch_size}"),
            *_optional("epochs", settings.reward_epochs, "at most (patience stops it earlier)"),
            _line(f"  eval_every: {eval_every(rows, fraction, settings.reward_batch_size, epochs)}",
                  f"{rows - round(rows * fraction)} training rows, {settings.reward_batch_size} a step, "
                  f"{epochs:g} epoch{'s' if epochs != 1 else ''}")]


def _ppo_lines(plan: Plan, settings: Settings) -> list[str]:
    """The `ppo:` section: its prompts, iterations, batch sizes, temperature and learning rates."""
    note = "prompts only: the policy writes its own answers" if plan.files["ppo"] is not plan.files["sft"] \
        else "the SFT prompts (no prompts-only file was given)"
    rate = _rate(settings.ppo_learning_rate) if settings.ppo_learning_rate else None
    return ["ppo:", *_data_lines(plan, "ppo", note),
            *_optional("iterations", settings.ppo_iterations),
            _line(f"  batch_size: {settings.ppo_batch_size}"),
            _line(f"  minibatch_size: {settings.ppo_minibatch_size}"),
            *_optional("micro_batch_size", settings.ppo_micro_batch_size, "rows per pass: the update's memory"),
            *_optional("temperature", settings.temperature, "sampling at SFT's own distribution"),
            *_optional("policy_learning_rate", rate)]


def _evaluate_lines(plan: Plan, settings: Settings) -> list[str]:
    """The `evaluate:` section: its own held-out prompts when there is no ppo stage to take them from."""
    lines = ["evaluate:"]
    if "ppo" not in plan.files:  # no ppo stage to take held-out prompts from: its own, with references
        source = plan.eval_files or plan.files["sft"]
        reference = (_columns(source[0], ("prompt", "reference")) if plan.eval_files
                     else {"prompt": plan.files["sft"][0].roles["prompt"],
                           "reference": plan.files["sft"][0].roles["response"]})
        note = "held-out prompts" if plan.eval_files else "the SFT file's held-out split (sft holds out the same rows)"
        lines += ["  data:", _line(f"    files: {_flow([g.path for g in source])}", note)]
        if _renamed(reference):
            lines.append(f"    columns: {_flow(_renamed(reference))}")
    return lines + [*_optional("temperature", settings.temperature, "answers sampled as PPO samples them"),
                    "  batch_size: 16"]


def _guess_notes(found: list[FileGuess], plan: Plan) -> list[str]:
    """The recipe's closing notes: each column names could not settle, and each file left out and why."""
    notes = [f"#   {g.path}: {role} is {g.roles[role]}, "
             + (f"a guess among {', '.join(options)}" if len(options) > 1 else "guessed from its values")
             for g in found for role, options in g.ambiguous.items() if role in g.roles]
    return notes + [f"#   {file}: not used ({why})" for file, why in plan.unused]


def _data_lines(plan: Plan, stage: str, note: str) -> list[str]:
    """A stage's `data:` block: its files, its columns where they are not lorahf's names, ppo's held-out prompts."""
    listed = [g.path for g in plan.files[stage]]  # as given: recipe paths are read from where lorahf runs
    lines = [_line("  data:"), _line(f"    files: {_flow(listed)}", note)]
    if _renamed(plan.columns[stage]):
        lines.append(_line(f"    columns: {_flow(_renamed(plan.columns[stage]))}", "lorahf's column: yours"))
    if stage == "ppo" and plan.eval_files:
        lines.append(_line(f"    eval_files: {_flow([g.path for g in plan.eval_files])}", "held-out prompts"))
    return lines


def _optional(key: str, value, note: str = "") -> list[str]:
    """A setting the recipe's default may stand for: its line, or none when `value` is None."""
    if isinstance(value, bool):
        value = str(value).lower()
    return [] if value is None else [_line(f"  {key}: {value}", note)]


def _comment(text: str, width: int = 110) -> list[str]:
    """`text` as comment lines of at most `width` characters."""
    import textwrap

    return textwrap.wrap(text, width, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def _line(text: str, note: str = "") -> str:
    """A recipe line with its comment, the comments lined up where the line leaves room."""
    return f"{text}{' ' * max(1, 45 - len(text))}# {note}" if note else text


def _rate(value: float) -> str:
    """A learning rate as recipes write it: 3.0e-4."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _flow(value) -> str:
    """A YAML flow value on one line ([a, b] or {a: b}), quoting only what needs it."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def _tokens(mean_characters: list[float], limit: int) -> int:
    """A token limit from the texts' mean length (about 4 characters a token for English; three times the mean
    keeps the long tail), a multiple of 16, at most `limit`."""
    estimate = 3 * max(mean_characters, default=limit * 4) / 4
    return int(min(limit, max(16, -(-estimate // 16) * 16)))
