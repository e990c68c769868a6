"""`lorahf init`: look at a user's data files, guess which stage reads each and which column is which, and
write a commented recipe that validates.

    found = inspect_files(["data/train.csv", "data/prefs.jsonl"])  # one FileGuess per file
    text = recipe_text(found, base="google/flan-t5-base")          # the recipe, as YAML with comments

Guesses come from column names first (`better_summary` is a chosen response), then from the values (a
list of numbers is a ranking, the longest text column is the prompt). A guess that names could not settle is
marked `ambiguous`, with the other candidates, so that the command can ask, or say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorahf.data import NUMBER, RANKS, SHAPES, TEXT, TEXTS, _as_number, load_table
from lorahf.errors import LorahfError

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

# Per Flan-T5 size, the settings of recipes/flan-t5-*.yaml for a 12 GB card (xxl: 24 GB); other bases get base's.
# (quantization, gradient_checkpointing, sft batch, reward batch, ppo batch, ppo minibatch)
SIZES = {"small": ("8bit", False, 16, 8, 32, 8), "base": ("8bit", False, 8, 4, 16, 4),
         "large": ("8bit", True, 8, 4, 16, 4), "xl": ("8bit", True, 8, 4, 16, 4), "xxl": ("4bit", True, 4, 2, 8, 2)}


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
    guess = FileGuess(path, len(table), table.column_names, kinds, preview=sample[:3], lengths=lengths)
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
    stages = [name for name in ("sft", "reward", "ppo") if name in files] + ["evaluate"]
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


def recipe_text(found: list[FileGuess], base: str = "google/flan-t5-base", name: str = "my-run",
                out: Path | None = None) -> str:
    """A commented recipe for the files, to be saved at `out`."""
    shown = out.as_posix() if out is not None else "RECIPE"
    plan = plan_stages(found)

    def data(stage: str, note: str) -> list[str]:
        listed = [g.path for g in plan.files[stage]]  # as given: recipe paths are read from where lorahf runs
        lines = ["  data:", f"    files: {_flow(listed)}{' ' * max(1, 42 - len(_flow(listed)) - 11)}# {note}"]
        if _renamed(plan.columns[stage]):
            lines.append(f"    columns: {_flow(_renamed(plan.columns[stage]))}   # lorahf's column: yours")
        if stage == "ppo" and plan.eval_files:
            lines.append(f"    eval_files: {_flow([g.path for g in plan.eval_files])}   # held-out prompts")
        return lines

    size = base.rstrip("/").rsplit("-", 1)[-1]
    quantization, checkpointing, sft_batch, reward_batch, ppo_batch, minibatch = SIZES.get(size, SIZES["base"])
    card = "24 GB" if size == "xxl" else "12 GB"
    prompt_tokens = _tokens([g.lengths[g.roles["prompt"]] for g in plan.files["sft"]], 512)
    response_tokens = _tokens([g.lengths[g.roles["response"]] for g in plan.files["sft"]], 128)
    lines = [
        f"# Written by `lorahf init` from {len(found)} file(s); check the guesses marked below, then run:",
        f"#   lorahf validate {shown}    (reads every file)",
        f"#   lorahf plan {shown} --gpu-memory 12GiB    (will it fit the card?)",
        f"#   lorahf run {shown}",
        "# Every field not written here takes the default documented in lorahf/recipe.py (lorahf validate --explain).",
        f"name: {name}                                 # the run folder is runs/{name}",
        "seed: 0",
        "model:",
        f"  name: {base}{' ' * max(1, 38 - len(base))}# a hub id or a local folder",
        f"  quantization: {quantization}                          # 8bit | 4bit (the largest bases) | none",
        f"  gradient_checkpointing: {str(checkpointing).lower()}{' ' * (20 - len(str(checkpointing)))}"
        "# true: far less memory in sft and reward, about 2x their time",
        'prompt_template: "{prompt}"                   # how each prompt is shown to the model, e.g. "summarize: {prompt}"',
        f"max_prompt_tokens: {prompt_tokens}{' ' * 25}# longer prompts are cut (lorahf validate counts them)",
        f"max_response_tokens: {response_tokens}",
        "judges: {}                                    # add yours: {mine: {python: \"judge.py:score\"}}, an llm, or a human",
        f"stages: {_flow(plan.stages)}",
        "sft:",
        *data("sft", "prompt -> response pairs"),
        "  learning_rate: 3.0e-4",
        f"  batch_size: {sft_batch}{' ' * (32 - len(str(sft_batch)))}# sizes for a {card} card: see lorahf plan",
        "  epochs: 2",
    ]
    if "reward" in plan.files:
        lines += ["reward:", *data("reward", PURPOSES[plan.files["reward"][0].shape].split(": ", 1)[1]),
                  "  learning_rate: 1.0e-4", f"  batch_size: {reward_batch}"]
    if "ppo" in plan.files:
        note = "prompts only: the policy writes its own answers" if plan.files["ppo"] is not plan.files["sft"] \
            else "the SFT prompts (no prompts-only file was given)"
        lines += ["ppo:", *data("ppo", note), f"  batch_size: {ppo_batch}", f"  minibatch_size: {minibatch}"]
    lines += ["evaluate:"]
    if "ppo" not in plan.files:  # no ppo stage to take held-out prompts from: its own, with references
        source = plan.eval_files or plan.files["sft"]
        reference = (_columns(source[0], ("prompt", "reference")) if plan.eval_files
                     else {"prompt": plan.files["sft"][0].roles["prompt"],
                           "reference": plan.files["sft"][0].roles["response"]})
        note = "held-out prompts" if plan.eval_files else "the SFT file's held-out split (sft holds out the same rows)"
        lines += ["  data:", f"    files: {_flow([g.path for g in source])}   # {note}"]
        if _renamed(reference):
            lines.append(f"    columns: {_flow(_renamed(reference))}")
    lines += ["  batch_size: 16"]
    notes = [f"#   {g.path}: {role} is {g.roles[role]}, "
             + (f"a guess among {', '.join(options)}" if len(options) > 1 else "guessed from its values")
             for g in found for role, options in g.ambiguous.items() if role in g.roles]
    notes += [f"#   {file}: not used ({why})" for file, why in plan.unused]
    if notes:
        lines += ["", GUESSES, *notes]
    return "\n".join(lines) + "\n"


def _flow(value) -> str:
    """A YAML flow value on one line ([a, b] or {a: b}), quoting only what needs it."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def _tokens(mean_characters: list[float], limit: int) -> int:
    """A token limit from the texts' mean length (about 4 characters a token for English; three times the mean
    keeps the long tail), a multiple of 16, at most `limit`."""
    estimate = 3 * max(mean_characters, default=limit * 4) / 4
    return int(min(limit, max(16, -(-estimate // 16) * 16)))
