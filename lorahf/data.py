"""Data in, tensors out: load the user's files, check every row, split, tokenise and batch.

This is lorahf's edge for data. Every problem with a user's file is raised here, once, as a one-line
`DataError` naming the file and the row; past this module, code trusts its inputs.

    load_rows(["train.jsonl"], "sft", columns={"prompt": "document"})   # -> Dataset(prompt, response)
    train, held_out = split(dataset, eval_fraction=0.05, seed=0)
    prompt_ids, truncated = encode_prompts(tokenizer, train["prompt"], max_tokens=512)
    batch = collate(prompt_ids, response_ids, tokenizer.pad_token_id)

Files are read by the `datasets` library, never by hand. When `datasets` fails on a file, a small
diagnostic pass over that file finds the line to blame, because the parsers' own positions are often
relative to an internal block rather than to the file.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.packaged_modules.json.json import JsonConfig
from torch import Tensor

from lorahf.errors import DataError

# ---------------------------------------------------------------------------------------------------
# Canonical columns
# ---------------------------------------------------------------------------------------------------

# What a canonical column holds. Each kind has one Arrow type in the datasets load_rows returns.
TEXT = "text"  # a non-empty string
TEXTS = "texts"  # a list of at least two distinct non-empty strings
RANKS = "ranks"  # a list of integer ranks >= 1, 1 = best, equal ranks = a tie
NUMBER = "number"  # a finite number (a numeric string, as CSV cells are, is accepted)

_FEATURE_OF_KIND = {
    TEXT: datasets.Value("string"),
    TEXTS: datasets.List(datasets.Value("string")),
    RANKS: datasets.List(datasets.Value("int64")),
    NUMBER: datasets.Value("float64"),
}


@dataclass(frozen=True)
class Layout:
    """One accepted set of canonical columns: their kinds, and which of them a file may leave out."""

    name: str
    columns: Mapping[str, str]  # canonical column -> kind
    optional: frozenset[str] = frozenset()

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.columns) - self.optional


SHAPES: dict[str, tuple[Layout, ...]] = {
    # Supervised fine-tuning: the model learns to write `response` for `prompt`.
    "sft": (Layout("sft", {"prompt": TEXT, "response": TEXT}),),
    # Reward-model data, in exactly one of three layouts, told apart by its columns:
    "preference": (
        # one comparison per row: `chosen` is preferred to `rejected` for `prompt`.
        Layout("pairwise", {"prompt": TEXT, "chosen": TEXT, "rejected": TEXT}),
        # `ranking[i]` is the rank of `responses[i]`: 1 = best, equal ranks = a tie.
        Layout("ranking", {"prompt": TEXT, "responses": TEXTS, "ranking": RANKS}),
        # an absolute rating: higher `score` = better `response`.
        Layout("score", {"prompt": TEXT, "response": TEXT, "score": NUMBER}),
    ),
    # Prompts for PPO rollouts and evaluation; `reference` is a human answer to compare against.
    "prompts": (Layout("prompts", {"prompt": TEXT, "reference": TEXT}, optional=frozenset({"reference"})),),
}
TIE_COLUMN = "tie"  # judgement files (lorahf judge) mark a tie so; such rows are not trained on
_COLUMNS_HINT = (
    "map your file's column names to lorahf's with the recipe's `columns:` setting, "
    "e.g. `columns: {prompt: document, response: summary}`"
)

# ---------------------------------------------------------------------------------------------------
# Loading and checking rows
# ---------------------------------------------------------------------------------------------------


def load_rows(
    sources: list[str] | str, shape: str, columns: Mapping[str, str] | None = None, also: list[str] = ()
) -> datasets.Dataset:
    """Load every source, keep only the canonical columns of `shape`, and check every row.

    `columns` maps a canonical column to the user's column name ({"prompt": "document"}); a canonical
    column not in it, or not in a file under its mapped name, is looked up under its own name. An optional
    column (a prompt's `reference`) mapped in `columns:` is read where a file has it; a mapped name that no
    source has, nor any of the stage's other sources in `also` (e.g. its eval_files), is a typo. Pairwise
    rows whose `tie` column is true (a judge saw no difference) are left out. All sources must have the same layout (for
    preference data: the same one of pairwise, ranking, score). Returns one Dataset with the canonical
    columns only, typed as in `_FEATURE_OF_KIND`. Raises a one-line DataError for the first problem in
    a file, counting the other rows with problems in that file, so a user can fix it in one go.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown data shape {shape!r}; expected one of {sorted(SHAPES)}")
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise DataError(f"no data files given for {shape} data")
    columns = dict(columns or {})
    _check_mapping(shape, columns)

    loaded: list[tuple[str, Layout, dict[str, list]]] = []
    seen: set[str] = set()
    for source in sources:
        table = load_table(source)
        seen.update(table.column_names)
        layout = _choose_layout(source, shape, table.column_names, columns)
        if layout.name == "pairwise" and TIE_COLUMN in table.column_names:
            with _quiet_datasets():  # judged ties prefer neither response
                table = table.filter(lambda tie: not tie, input_columns=TIE_COLUMN, keep_in_memory=True)
        names = _map_columns(source, layout, table.column_names, columns)
        loaded.append((source, layout, _checked_columns(source, layout, table, names)))

    unused = [(canonical, name) for canonical, name in columns.items() if name != canonical and name not in seen]
    if unused and also:
        for source in also:
            seen.update(load_table(source).column_names)
        unused = [(canonical, name) for canonical, name in unused if name not in seen]
    if unused:  # a typo in `columns:` that the canonical-name fallback would otherwise hide
        canonical, name = unused[0]
        match = difflib.get_close_matches(name, sorted(seen), n=1)
        raise DataError(f"{', '.join(sources)}: no file has the column {name!r} that `columns:` maps to {canonical!r}"
                        + (f"; did you mean {match[0]!r}?" if match else ""), hint=_COLUMNS_HINT)

    first_source, layout, first_rows = loaded[0]
    for source, other_layout, rows in loaded[1:]:
        if (other_layout, rows.keys()) != (layout, first_rows.keys()):
            raise DataError(
                f"{source}: has columns {', '.join(rows)} ({other_layout.name}) but {first_source} has "
                f"{', '.join(first_rows)} ({layout.name}); all files of one dataset need the same columns"
            )
    merged = {column: [value for _, _, rows in loaded for value in rows[column]] for column in first_rows}
    features = datasets.Features({column: _FEATURE_OF_KIND[layout.columns[column]] for column in merged})
    return datasets.Dataset.from_dict(merged, features=features)


def preference_format(dataset: datasets.Dataset) -> str:
    """The layout of a dataset from `load_rows(..., "preference")`: "pairwise", "ranking" or "score"."""
    present = set(dataset.column_names)
    for layout in SHAPES["preference"]:
        if layout.required <= present:
            return layout.name
    raise ValueError(f"not preference data: columns {dataset.column_names}")


def _check_mapping(shape: str, columns: Mapping[str, str]) -> None:
    """An unknown canonical name in `columns:` is a typo that would otherwise silently do nothing."""
    known = sorted({column for layout in SHAPES[shape] for column in layout.columns})
    for canonical in columns:
        if canonical not in known:
            raise DataError(
                f"columns: {canonical!r} is not a column of {shape} data (expected one of: "
                f"{', '.join(known)}){_did_you_mean(canonical, known)}",
                hint="the keys of `columns:` are lorahf's names, the values are your file's names",
            )


def _choose_layout(source: str, shape: str, file_columns: list[str], columns: Mapping[str, str]) -> Layout:
    """Pick the layout of `shape` that a file's columns fit; `_map_columns` reports what is missing."""
    layouts = SHAPES[shape]
    if len(layouts) == 1:
        return layouts[0]
    # Naming a layout's own columns in `columns:` says which layout the user means.
    named = [layout for layout in layouts if (set(layout.columns) - {"prompt"}) & set(columns)]
    if len(named) == 1:
        return named[0]
    present = {
        canonical
        for layout in layouts
        for canonical in layout.columns
        if columns.get(canonical, canonical) in file_columns or canonical in file_columns
    }
    fitting = [layout for layout in layouts if layout.required <= present]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise DataError(
            f"{source}: the columns fit more than one {shape} format "
            f"({', '.join(layout.name for layout in fitting)}); "
            "keep the columns of one format",
            hint="or name the format's columns in the recipe's `columns:` setting",
        )
    return min(layouts, key=lambda layout: len(layout.required - present))


def _map_columns(
    source: str, layout: Layout, file_columns: list[str], columns: Mapping[str, str]
) -> dict[str, str]:
    """Canonical column -> the file's column name, for every required column and each optional one present."""
    names, missing = {}, []
    for canonical in layout.columns:
        name = columns.get(canonical, canonical)
        if name not in file_columns and canonical in file_columns:
            name = canonical  # a file lorahf wrote (judgements) beside the user's own, under one `columns:`
        if name in file_columns:
            names[canonical] = name
        elif canonical in layout.required:
            missing.append((canonical, name))
    if missing:
        raise _missing_columns_error(source, layout, missing, file_columns)
    return names


def _missing_columns_error(
    source: str, layout: Layout, missing: list[tuple[str, str]], file_columns: list[str]
) -> DataError:
    """One line naming the missing columns, the file's columns and the closest match for each."""
    described = ", ".join(
        repr(name) if name == canonical else f"{name!r} (mapped to {canonical!r} by columns:)"
        for canonical, name in missing
    )
    suggestions = []
    for _, name in missing:
        match = difflib.get_close_matches(name, file_columns, n=1)
        if match:
            suggestions.append(repr(match[0]) + (f" for {name!r}" if len(missing) > 1 else ""))
    did_you_mean = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    hint = _COLUMNS_HINT
    if layout in SHAPES["preference"]:
        hint += "; preference data needs one of: " + "; ".join(
            f"{', '.join(other.columns)} ({other.name})" for other in SHAPES["preference"]
        )
    return DataError(
        f"{source}: no column {described} for {layout.name} data; the file has columns: "
        f"{', '.join(file_columns) or '(none)'}{did_you_mean}",
        hint=hint,
    )


def _checked_columns(
    source: str, layout: Layout, table: datasets.Dataset, names: dict[str, str]
) -> dict[str, list]:
    """The canonical columns of a file as Python lists, after checking every row.

    Raises DataError for the first row with a problem (rows counted from 1, the CSV header is not a
    row), saying how many more rows have problems.
    """
    checked: dict[str, list] = {canonical: [] for canonical in names}
    first_problem, rows_with_problems = None, 0
    for number, values in enumerate(_canonical_rows(table, names), start=1):
        problem = _row_problem(layout, values, names)
        if problem:
            first_problem = first_problem or f"row {number}: {problem}"
            rows_with_problems += 1
            continue
        for canonical, value in values.items():
            checked[canonical].append(_canonical_value(layout.columns[canonical], value))
    if first_problem:
        more = rows_with_problems - 1
        tail = f" (and {more} more {'row' if more == 1 else 'rows'} with problems)" if more else ""
        raise DataError(f"{source}: {first_problem}{tail}")
    return checked


def _canonical_rows(table: datasets.Dataset, names: dict[str, str]) -> Iterator[dict[str, object]]:
    """Each row as {canonical column: value}, read in batches (~50x faster than row by row)."""
    table = table.select_columns(list(dict.fromkeys(names.values())))
    for batch in table.iter(batch_size=1024):
        for values in zip(*(batch[name] for name in names.values())):
            yield dict(zip(names, values))


def _row_problem(layout: Layout, values: dict[str, object], names: dict[str, str]) -> str | None:
    """What is wrong with one row, in words, or None. Column names are the user's, as in their file."""
    for canonical, value in values.items():
        problem = _VALUE_CHECKS[layout.columns[canonical]](value)
        if problem:
            return f"{names[canonical]!r} {problem}"
    if layout.name == "pairwise" and values["chosen"].strip() == values["rejected"].strip():
        return f"{names['chosen']!r} and {names['rejected']!r} are the same text"
    if layout.name == "ranking":
        responses, ranking = values["responses"], values["ranking"]
        if len(ranking) != len(responses):
            return f"{names['ranking']!r} has {len(ranking)} ranks for {len(responses)} responses"
        if len(set(ranking)) == 1:
            return f"{names['ranking']!r} ranks every response the same, so the row prefers nothing"
    return None


MAX_TEXT_CHARACTERS = 200_000
"""A text longer than this (about 100 times a T5 context) is a broken file or column, not a prompt."""


def _text_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"is {_describe(value)}, expected text"
    if not value.strip():
        return "is empty" if not value else "is only whitespace"
    if len(value) > MAX_TEXT_CHARACTERS:
        return (f"is {len(value):,} characters long (at most {MAX_TEXT_CHARACTERS:,}): a whole document or file "
                "in one cell? cut it to what the model should read")
    return None


def _texts_problem(value: object) -> str | None:
    if not isinstance(value, list):
        return f"is {_describe(value)}, expected a list of texts"
    if len(value) < 2:
        return f"has {len(value)} response{'' if len(value) == 1 else 's'}, a ranking needs at least 2"
    for position, item in enumerate(value, start=1):
        problem = _text_problem(item)
        if problem:
            return f"item {position} {problem}"
    stripped = [item.strip() for item in value]
    if len(set(stripped)) < len(stripped):
        duplicate = next(item for item in stripped if stripped.count(item) > 1)
        return f"has the same response twice ({_preview(duplicate)})"
    return None


def _ranks_problem(value: object) -> str | None:
    if not isinstance(value, list):
        return f"is {_describe(value)}, expected a list of integer ranks"
    for position, rank in enumerate(value, start=1):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            return f"item {position} is {_describe(rank)}, expected an integer rank >= 1 (1 = best)"
    return None


def _number_problem(value: object) -> str | None:
    number = _as_number(value)
    if number is None:
        return f"is {_describe(value)}, expected a number"
    if not math.isfinite(number):
        return f"is {value!r}, expected a finite number"
    return None


_VALUE_CHECKS = {TEXT: _text_problem, TEXTS: _texts_problem, RANKS: _ranks_problem, NUMBER: _number_problem}


def _as_number(value: object) -> float | None:
    """A number, or a string holding one (a CSV column with one blank cell is read as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _canonical_value(kind: str, value: object) -> object:
    return _as_number(value) if kind == NUMBER else value


def _describe(value: object) -> str:
    """A value as a user would recognise it in their file."""
    if value is None:
        return "missing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the text {_preview(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _preview(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _did_you_mean(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


# ---------------------------------------------------------------------------------------------------
# Loading one table
# ---------------------------------------------------------------------------------------------------

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_FORMAT_NAMES = {".jsonl": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
_BUILDER_OPTIONS = {
    # datasets 5 reads files whose rows look like agent traces ("type" + "message" columns) as traces,
    # and fails without the optional `teich` package; lorahf's data is never an agent trace.
    # (Older datasets versions have no such option, and reject unknown ones.)
    "json": {"parse_agent_traces": False} if "parse_agent_traces" in JsonConfig.__dataclass_fields__ else {},
    # By default pandas reads the texts "NA", "None", "null", "n/a" as missing values; a summary may be
    # exactly "None". Blank cells then read as "" and are reported as empty.
    "csv": {"keep_default_na": False},
    "parquet": {},
}
_HUB_ID = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*(/[\w.-]+)?)(:(?P<split>[\w.-]+))?$")


def load_table(source: str) -> datasets.Dataset:
    """Load one source as a Dataset, with its own columns, untouched.

    A local `.jsonl`, `.json` (an array of objects), `.csv` or `.parquet` file, a folder written by
    `Dataset.save_to_disk` (its "train" split if it holds several), or else a Hugging Face Hub dataset
    id, "name" or "org/name", with an optional ":split" (default "train"). Local files are parsed into
    memory through a temporary cache, so nothing is left in the user's HF cache. Raises a one-line
    DataError naming the source when it is missing, empty, unreadable or not one row per object.
    """
    datasets.disable_progress_bars()  # lorahf renders its own progress
    path = Path(source).expanduser()
    if path.is_dir():
        table = _load_saved_folder(source, path)
    elif path.is_file():
        table = _load_file(source, path)
    elif _looks_like_hub_id(source):
        table = _load_from_hub(source)
    else:
        raise DataError(f"{source}: no such file or folder")
    if len(table) == 0:
        raise DataError(f"{source}: has no rows")
    return table


def _load_file(source: str, path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise DataError(
            f"{source}: unsupported file type {repr(path.suffix) if path.suffix else '(no extension)'}; "
            f"supported: {', '.join(_BUILDERS)} files and folders written by Dataset.save_to_disk"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{source}: the file is empty")
    builder = _BUILDERS[suffix]
    try:
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="lorahf-data-") as cache_dir:
            table = datasets.load_dataset(
                builder,
                data_files=str(path),
                split="train",
                cache_dir=cache_dir,
                keep_in_memory=True,  # the temporary cache is deleted on return
                **_BUILDER_OPTIONS[builder],
            )
        # pyarrow's JSON reader lets bytes that are not UTF-8 through; they would fail later, mid-run.
        table.data.validate(full=True)
    except Exception as error:  # any parser failure on a user's file is a problem with that file
        raise DataError(f"{source}: {_explain_load_failure(path, error)}") from error
    if builder == "json" and table.column_names == ["text"]:
        # datasets wraps a JSON array of non-objects ([1, 2] or ["a", "b"]) into a "text" column.
        problem = _json_problem(path)
        if problem:
            raise DataError(f"{source}: {problem}")
    return table


def _load_saved_folder(source: str, path: Path) -> datasets.Dataset:
    try:
        with _quiet_datasets():
            saved = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as error:
        raise DataError(
            f"{source}: is a folder but not one written by Dataset.save_to_disk ({_first_line(error)})"
        ) from error
    if isinstance(saved, datasets.DatasetDict):
        if "train" not in saved:
            raise DataError(f"{source}: has splits {', '.join(saved)} but no 'train' split")
        saved = saved["train"]
    return saved


def _looks_like_hub_id(source: str) -> bool:
    """"name", "org/name" or "org/name:split"; not a path a user meant as a local file.

    A name ending in a file extension (".txt", ".jsonl") is a local file that is missing; version
    suffixes of hub names (".1" in "squad_v1.1") have digits.
    """
    suffix = Path(source.split(":")[0]).suffix
    return bool(_HUB_ID.match(source)) and not suffix[1:].isalpha()


def _load_from_hub(source: str) -> datasets.Dataset:
    match = _HUB_ID.match(source)
    name, split_name = match["name"], match["split"] or "train"
    try:
        with _quiet_datasets():
            return datasets.load_dataset(name, split=split_name)
    except Exception as error:
        raise DataError(
            f"{source}: no such file or folder, and loading it from the Hugging Face Hub failed "
            f"({_first_line(error)})"
        ) from error


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs a parser failure to stderr before raising it; lorahf reports it once, as a DataError."""
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _explain_load_failure(path: Path, error: Exception) -> str:
    """Why datasets could not read a file, in words, with the line to blame where it can be found."""
    causes = _causes(error)
    format_name = _FORMAT_NAMES[path.suffix.lower()]
    if path.suffix.lower() != ".parquet" or any(isinstance(cause, UnicodeDecodeError) for cause in causes):
        line = _first_non_utf8_line(path)
        if line:
            return f"line {line} is not UTF-8 text; save the file as UTF-8"
    messages = [str(cause) for cause in causes]
    if any("corresponds to no data" in message for message in messages):
        return "has no rows"
    for message in messages:
        ragged = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
        if ragged:
            expected, line, seen = ragged.groups()
            return f"line {line} has {seen} fields but the header has {expected}"
        if "No columns to parse" in message:
            return "the file has no header and no rows"
    if format_name.startswith("JSON"):
        problem = _json_problem(path)
        if problem:
            return problem
    return f"could not be read as {format_name} ({_first_line(causes[-1])})"


def _json_problem(path: Path) -> str | None:
    """The first place a JSON or JSON Lines file is not one object per row, or None.

    pyarrow reports a bad line relative to a 10 MB block of the file, so on failure we look ourselves.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as whole_error:
        if text.lstrip().startswith("["):
            return f"line {whole_error.lineno}: not valid JSON ({whole_error.msg})"
    else:
        if isinstance(whole, list):
            for position, item in enumerate(whole, start=1):
                if not isinstance(item, dict):
                    return f"item {position} of the JSON array is {_describe(item)}, not an object"
            return None
        if not isinstance(whole, dict) or "\n" in text.strip():
            return f"the file holds one JSON value ({_describe(whole)}), not one object per row"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number}: not valid JSON ({error.msg})"
        if not isinstance(value, dict):
            return f"line {number}: {_describe(value)}, not a JSON object (one object per line)"
    return None


def _first_non_utf8_line(path: Path) -> int | None:
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _causes(error: BaseException) -> list[BaseException]:
    """An exception and its causes, outermost first (datasets wraps parser errors)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------------
# Splitting and shuffling
# ---------------------------------------------------------------------------------------------------


def split(
    dataset: datasets.Dataset, eval_fraction: float, seed: int, eval_size_cap: int | None = None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split rows into (train, eval), the same way for the same seed on any machine or process.

    eval gets round(eval_fraction * rows) rows, at least 1 when eval_fraction > 0 and there are >= 2
    rows, never all of them, and at most `eval_size_cap`. eval_fraction 0 gives an empty eval set.
    Both parts keep the rows in file order.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    rows = len(dataset)
    eval_rows = 0
    if eval_fraction > 0 and rows >= 2:
        eval_rows = min(max(1, round(eval_fraction * rows)), rows - 1)
    if eval_size_cap is not None:
        eval_rows = min(eval_rows, eval_size_cap)
    # numpy's generator is seeded explicitly, so the split does not depend on PYTHONHASHSEED.
    order = np.random.default_rng(seed).permutation(rows)
    eval_indices, train_indices = np.sort(order[:eval_rows]), np.sort(order[eval_rows:])
    return dataset.select(train_indices.tolist()), dataset.select(eval_indices.tolist())


def batches(n: int, batch_size: int, seed: int | None, epoch: int = 0) -> Iterator[list[int]]:
    """Row indices 0..n-1 in batches of `batch_size`; the last, partial batch is kept.

    With a seed, the order is a permutation drawn from (seed, epoch): each epoch is shuffled
    differently, and rerunning gives the same batches. Without one, rows come in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size].tolist()


# ---------------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------------


@dataclass
class TruncationReport:
    """How many prompts and responses were cut to their token limits, and the longest seen before cutting.

    Lengths count the EOS token. The limits are optional so that a report can be built from counts alone.
    """

    rows: int
    prompts_truncated: int
    responses_truncated: int
    max_prompt_tokens_seen: int
    max_response_tokens_seen: int
    prompt_token_limit: int | None = None
    response_token_limit: int | None = None

    def summary(self) -> str:
        """One line: "3 of 3000 prompts truncated to 96 tokens (longest 120); 0 of 3000 responses ..."."""
        prompts = _truncation_line(
            self.rows, "prompts", self.prompts_truncated, self.prompt_token_limit, self.max_prompt_tokens_seen
        )
        if self.response_token_limit is None and self.max_response_tokens_seen == 0:
            return prompts  # a prompts-only report
        responses = _truncation_line(
            self.rows,
            "responses",
            self.responses_truncated,
            self.response_token_limit,
            self.max_response_tokens_seen,
        )
        return f"{prompts}; {responses}"


def _truncation_line(rows: int, what: str, truncated: int, limit: int | None, longest: int) -> str:
    to_limit = f" to {limit} tokens" if limit is not None else ""
    return f"{truncated} of {rows} {what} truncated{to_limit} (longest {longest})"


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt text becomes the model's input: `template.format(prompt=text)`, then, with `chat`, the user's turn of
    the tokenizer's chat template (after a `system` turn, if given), ready for the assistant's answer."""

    template: str = "{prompt}"
    chat: bool = False
    system: str | None = None

    def encode(self, tokenizer, texts: list[str]) -> list[list[int]]:
        texts = _apply_template(self.template, texts)
        if not self.chat:
            return [list(ids) for ids in tokenizer(texts)["input_ids"]] if texts else []
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"chat_template is on but the tokenizer of {tokenizer.name_or_path} has no chat template",
                            hint="set chat_template: false and write the format in prompt_template")
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [list(_ids(tokenizer.apply_chat_template(system + [{"role": "user", "content": text}],
                                                        add_generation_prompt=True, tokenize=True)))
                for text in texts]


def encode_prompts(
    tokenizer, texts: list[str], max_tokens: int, template: str | PromptFormat = "{prompt}"
) -> tuple[list[list[int]], int]:
    """Token ids of each prompt (`template` a PromptFormat or a `prompt_template` string), and how many were
    truncated to `max_tokens`.

    The prompt keeps the tokenizer's own framing: T5's tokenizer ends it with EOS (the encoder then sees where it
    ends), a decoder-only one (Llama, GPT) does not (the response follows it). A longer prompt keeps that framing and
    loses text where it matters least: an encoder's prompt keeps its start, a decoder's its end, which is where the
    template or chat turn hands over to the answer (TRL's `keep_end` too); a BOS stays in front.
    """
    ids, truncated, _ = _encode_prompts(tokenizer, texts, max_tokens, template)
    return ids, truncated


def encode_responses(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids of each response, ending with the tokenizer's EOS, and how many were truncated.

    A response longer than `max_tokens` (EOS included) is cut to `max_tokens` tokens WITHOUT EOS:
    a cut response does not end, and training on an EOS there would teach the model to stop mid-text.
    """
    ids, truncated, _ = _encode_responses(tokenizer, texts, max_tokens)
    return ids, truncated


def encode_pairs(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    max_prompt_tokens: int,
    max_response_tokens: int,
    template: str | PromptFormat = "{prompt}",
) -> tuple[list[list[int]], list[list[int]], TruncationReport]:
    """`encode_prompts` and `encode_responses` of aligned lists, and a TruncationReport of both."""
    prompt_ids, prompts_cut, longest_prompt = _encode_prompts(tokenizer, prompts, max_prompt_tokens, template)
    response_ids, responses_cut, longest_response = _encode_responses(tokenizer, responses, max_response_tokens)
    report = TruncationReport(
        rows=len(prompts),
        prompts_truncated=prompts_cut,
        responses_truncated=responses_cut,
        max_prompt_tokens_seen=longest_prompt,
        max_response_tokens_seen=longest_response,
        prompt_token_limit=max_prompt_tokens,
        response_token_limit=max_response_tokens,
    )
    return prompt_ids, response_ids, report


def _apply_template(template: str, texts: list[str]) -> list[str]:
    try:
        return [template.format(prompt=text) for text in texts]
    except (KeyError, IndexError, ValueError) as error:
        raise DataError(
            f"prompt template {template!r} may use only the field {{prompt}} ({error!r})"
        ) from error


def _ids(encoded) -> list[int]:
    """`apply_chat_template(tokenize=True)` gives a list of ids or, in transformers 5, a BatchEncoding."""
    return encoded["input_ids"] if isinstance(encoded, Mapping) else encoded


def _encode_prompts(tokenizer, texts, max_tokens: int, template: str | PromptFormat) -> tuple[list[list[int]], int, int]:
    """Prompt ids cut to `max_tokens` as `encode_prompts` says, how many were cut, the longest length."""
    form = template if isinstance(template, PromptFormat) else PromptFormat(template)
    full = form.encode(tokenizer, list(texts))
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id

    def cut(ids: list[int]) -> list[int]:
        if len(ids) <= max_tokens:
            return ids
        if ids[-1] == eos:  # an encoder's prompt: its start, then EOS
            return ids[: max_tokens - 1] + [eos]
        head = [bos] if bos is not None and ids[0] == bos else []  # a decoder's prompt: BOS, then its end
        return head + ids[len(ids) - max_tokens + len(head):]

    ids = [cut(sequence) for sequence in full]
    truncated = sum(len(sequence) > max_tokens for sequence in full)
    return ids, truncated, max((len(sequence) for sequence in full), default=0)


def _encode_responses(tokenizer, texts, max_tokens: int) -> tuple[list[list[int]], int, int]:
    """Response ids (+ EOS) cut to `max_tokens` without EOS, how many were cut, the longest length."""
    eos = tokenizer.eos_token_id
    full = [list(ids) + [eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if len(texts) else []
    ids = [sequence if len(sequence) <= max_tokens else sequence[:max_tokens] for sequence in full]
    truncated = sum(len(sequence) > max_tokens for sequence in full)
    return ids, truncated, max((len(sequence) for sequence in full), default=0)


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------


@dataclass
class Seq2SeqBatch:
    """A padded batch for an encoder-decoder model. Masks are 1 on real tokens, 0 on padding (long).

    Masks are built from lengths, never from `ids != pad`: T5's decoder start token has the id of
    `<pad>` (0), so once a model shifts `response_ids` right, pad-based masks would be wrong.
    """

    input_ids: Tensor  # [B, P] prompt ids, right-padded with pad_token_id
    attention_mask: Tensor  # [B, P] 1 on prompt tokens
    response_ids: Tensor  # [B, R] response ids (ending with EOS unless truncated), right-padded
    response_mask: Tensor  # [B, R] 1 on response tokens, EOS included
    response_lengths: Tensor  # [B] number of response tokens per row

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        return Seq2SeqBatch(**{field.name: getattr(self, field.name).to(device) for field in fields(self)})


def collate(prompts: list[list[int]], responses: list[list[int]] | None, pad_token_id: int) -> Seq2SeqBatch:
    """Right-pad token id lists into a Seq2SeqBatch.

    With `responses` None (prompts only, for generation), the response tensors are empty: [B, 0].
    """
    input_ids, attention_mask, _ = _pad(prompts, pad_token_id)
    if responses is None:
        responses = [[] for _ in prompts]
    response_ids, response_mask, response_lengths = _pad(responses, pad_token_id)
    return Seq2SeqBatch(input_ids, attention_mask, response_ids, response_mask, response_lengths)


def _pad(sequences: list[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids [B, L], a mask from lengths [B, L], and the lengths [B]."""
    lengths = torch.tensor([len(sequence) for sequence in sequences], dtype=torch.long)
    width = int(lengths.max()) if len(sequences) else 0
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids, mask, lengths
