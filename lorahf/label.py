"""Labelling: pairs of answers from a run, put before people one at a time, each choice a preference row.

    items = items_from_run("runs/quickstart")                    # evaluate's answers: policy vs sft
    items = sample_items("runs/quickstart", prompts, "policy", 2) # fresh answers for a next round
    labels = Labels(items, "runs/quickstart/labels/policy-vs-sft.jsonl")
    shown = labels.next("ana", tab="t1")                          # {"item", "prompt", "left", "right", ...}
    labels.choose("ana", "t1", shown["item"], "left")             # one flushed row the reward stage reads

The labels file is the reward stage's pairwise layout (prompt, chosen, rejected; a tie keeps `tie: true` and is not
trained on) plus who labelled it, when, and which answers (adapters) were compared, so `reward.data.files` can list it
as it is. Every choice is appended and flushed at once; `undo` takes the annotator's last row out again (the file is
rewritten atomically, so it always holds exactly the choices in force, in the order they were made). A restart reads
the file and goes on where it stopped. An item is leased to one tab while it is shown, so two tabs or two annotators
never see the same item at the same time; with `per_item` > 1 several annotators label each item and their agreement
is measured. The page (lorahf.web) never learns which answer an adapter wrote: left and right are drawn here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lorahf.errors import LorahfError
from lorahf.report import read_jsonl
from lorahf.judge import preference_row
from lorahf.runs import RunFolder, append_line, write_text

REFERENCE = "reference"  # the data's own answer, a side of a pair like any adapter
CHOICES = ("left", "right", "tie")
LEASE_S = 600.0  # an item shown in a tab is that tab's for this long (a tab left open keeps it no longer)


@dataclass(frozen=True)
class Item:
    """One pair to label: a prompt, two different answers and what wrote each."""

    prompt: str
    a: str
    b: str
    a_by: str
    b_by: str

    @property
    def id(self) -> str:
        text = json.dumps([self.prompt, self.a, self.b, self.a_by, self.b_by], ensure_ascii=False)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------------------- the items
def items_from_run(run_dir: str | Path, a: str | None = None, b: str | None = None) -> tuple[list[Item], str]:
    """Pairs of a run's answers and where they came from: evaluate's (`a` and `b` name two adapters, or one and
    `reference`; default: the first challenger against the baseline, or the only adapter against the references),
    else sft's held-out samples against their references. Pairs whose two answers are the same text are left out."""
    folder = RunFolder(run_dir)
    evaluate, sft = folder.samples_path("evaluate"), folder.samples_path("sft")
    if evaluate.is_file():
        rows, path = read_jsonl(evaluate), evaluate
        sides = [key for key in rows[0] if key not in ("prompt", REFERENCE) and not key.startswith("reward.")] \
            if rows else []
        if rows and REFERENCE in rows[0]:
            sides.append(REFERENCE)
    elif sft.is_file():
        rows, path = [{"prompt": r["prompt"], "sft": r["response"], REFERENCE: r.get(REFERENCE)}
                      for r in read_jsonl(sft) if r.get(REFERENCE) is not None], sft
        sides = ["sft", REFERENCE]
    else:
        raise LorahfError(f"{run_dir}: no answers to label (no samples/evaluate.jsonl or samples/sft.jsonl)",
                          hint=f"run its evaluate stage, or sample answers: lorahf label {run_dir} --prompts FILE "
                               "--adapter sft --answers 2")
    if a is None and b is None:
        if len(sides) < 2:
            raise LorahfError(f"{path}: answers by {', '.join(sides) or 'nobody'} only, nothing to compare",
                              hint=f"sample pairs instead: lorahf label {run_dir} --prompts FILE --answers 2")
        a, b = (sides[1], sides[0]) if sides[1] != REFERENCE else (sides[0], REFERENCE)
    missing = [side for side in (a, b) if side not in sides]
    if missing or a is None or b is None or a == b:
        raise LorahfError(f"{path}: cannot compare {a} with {b} (answers here: {', '.join(sides)})",
                          hint="--a and --b name two different columns of it")
    items = [Item(row["prompt"], row[a], row[b], a, b) for row in rows
             if isinstance(row.get(a), str) and isinstance(row.get(b), str) and row[a].strip() != row[b].strip()]
    if not items:
        raise LorahfError(f"{path}: {a} and {b} answered every prompt alike; nothing to choose between",
                          hint=f"sample pairs instead: lorahf label {run_dir} --prompts FILE --adapter {a} --answers 2")
    return items, f"{path.name}: {a} vs {b}"


def sample_items(run_dir: str | Path, prompts: list[str], adapter: str, answers: int, temperature: float = 1.0,
                 seed: int = 0, progress=None) -> list[Item]:
    """`answers` sampled answers per prompt from `adapter`, paired every way (k answers: k(k-1)/2 pairs; equal
    answers are not paired)."""
    from lorahf.generate import Sampling, generate

    if answers < 2:
        raise LorahfError(f"--answers {answers}: a pair needs at least 2 answers per prompt")
    repeated = [prompt for prompt in prompts for _ in range(answers)]
    texts = generate(run_dir, repeated, adapter, Sampling(temperature=temperature), seed=seed, progress=progress)
    items = []
    for row, prompt in enumerate(prompts):
        mine = texts[row * answers:(row + 1) * answers]
        for i, j in itertools.combinations(range(answers), 2):
            if mine[i].strip() != mine[j].strip():
                items.append(Item(prompt, mine[i], mine[j], f"{adapter}#{i + 1}", f"{adapter}#{j + 1}"))
    return items


def write_items(path: Path, items: list[Item], source: str) -> None:
    write_text(path, "".join(json.dumps({**item.__dict__, "source": source}, ensure_ascii=False) + "\n"
                             for item in items))


def read_items(path: Path) -> tuple[list[Item], str]:
    rows = read_jsonl(path)
    if not rows:
        raise LorahfError(f"{path}: no items")
    return [Item(r["prompt"], r["a"], r["b"], r["a_by"], r["b_by"]) for r in rows], rows[0].get("source", "")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def prepare(run_dir: str | Path, *, name: str | None = None, a: str | None = None, b: str | None = None,
            prompts: str | Path | None = None, column: str = "prompt", max_prompts: int | None = None,
            adapter: str = "policy", answers: int = 2, temperature: float = 1.0, per_item: int = 1,
            progress=None) -> Labels:
    """The labelling session `lorahf label` serves: its items (from the run's answers, or sampled for `prompts`
    once and kept in RUN/labels/NAME.items.jsonl, so a restart shows the same pairs) and its labels file
    RUN/labels/NAME.jsonl."""
    from lorahf.generate import read_prompts
    from lorahf.runs import load_run

    recipe = load_run(run_dir)  # a run folder, or one line saying it is not
    labels_dir = RunFolder(run_dir).root / "labels"
    if prompts is not None:
        name = _checked_name(name or re.sub(r"[^A-Za-z0-9._-]+", "-", f"{adapter}-x{answers}-{Path(prompts).stem}"))
        items_path = labels_dir / f"{name}.items.jsonl"
        if items_path.is_file():
            items, source = read_items(items_path)
        else:
            source = f"{Path(prompts).name}: {answers} answers by {adapter}"
            texts = read_prompts(prompts, column)[:max_prompts]
            items = sample_items(run_dir, texts, adapter, answers, temperature, recipe.seed, progress)
            if not items:
                raise LorahfError(f"{prompts}: {adapter} gave the same answer {answers} times to every prompt",
                                  hint="sample at a higher --temperature, or more --answers")
            write_items(items_path, items, source)
    else:
        items, source = items_from_run(run_dir, a, b)
        name = _checked_name(name or f"{items[0].a_by}-vs-{items[0].b_by}")
    return Labels(items, labels_dir / f"{name}.jsonl", source, per_item, recipe.seed)


def _checked_name(name: str) -> str:
    """A file name inside RUN/labels, never a path out of it."""
    if not NAME.fullmatch(name) or name.endswith(".items"):
        raise LorahfError(f"--name {name!r}: use letters, digits, '.', '-' and '_' (it names RUN/labels/NAME.jsonl)")
    return name


# ---------------------------------------------------------------------------------------- the labels
class Labels:
    """The labels file and who is labelling what. Thread-safe: the web server calls it from many threads."""

    def __init__(self, items: list[Item], path: str | Path, source: str = "", per_item: int = 1, seed: int = 0,
                 lease_s: float = LEASE_S, clock=time.monotonic):
        if per_item < 1:
            raise LorahfError(f"--per-item {per_item}: each item needs at least one label")
        self.items = {item.id: item for item in items}  # in order; an item listed twice counts once
        self.path, self.source, self.per_item, self.seed = Path(path), source, per_item, seed
        self.lease_s, self.clock = lease_s, clock
        self.rows = self._read()
        self.annotators_of = self._index()  # item -> who labelled it: `next` asks for every item
        self.leases: dict[str, tuple[str, float]] = {}  # item -> (tab, until)
        self.skipped: dict[str, set[str]] = {}  # annotator -> items skipped in this session
        self.lock = threading.Lock()

    # -- what a tab sees
    def next(self, annotator: str, tab: str) -> dict | None:
        """The item this tab holds, else the first one this annotator has not labelled or skipped that needs labels
        and no other tab holds (leased to this tab); None when there is none."""
        with self.lock:
            now = self.clock()
            held = [i for i, (owner, until) in self.leases.items() if owner == tab and until > now]
            for item_id in held:
                if self._open_to(item_id, annotator):
                    self.leases[item_id] = (tab, now + self.lease_s)
                    return self._shown(item_id, annotator)
                del self.leases[item_id]
            for item_id in self.items:
                if self._open_to(item_id, annotator) and item_id not in self.skipped.get(annotator, ()) \
                        and not self._leased_elsewhere(item_id, tab, now):
                    self.leases[item_id] = (tab, now + self.lease_s)
                    return self._shown(item_id, annotator)
            return None

    def choose(self, annotator: str, tab: str, item_id: str, choice: str) -> dict:
        """Write the choice ("left", "right" or "tie" as this annotator saw the item) as one flushed row."""
        if choice not in CHOICES:
            raise LorahfError(f"choice {choice!r}: expected one of {', '.join(CHOICES)}")
        with self.lock:
            self._check_held(item_id, annotator, tab)
            item = self.items[item_id]
            left_is_a = self._left_is_a(item_id, annotator)
            outcome = "tie" if choice == "tie" else "a" if (choice == "left") == left_is_a else "b"
            row = {**preference_row(item.__dict__, outcome, "human"), "annotator": annotator,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "item": item_id, "source": self.source,
                   "shown_left": "a" if left_is_a else "b"}
            append_line(self.path, json.dumps(row, ensure_ascii=False))
            self.rows.append(row)
            self.annotators_of.setdefault(item_id, []).append(annotator)
            self.leases.pop(item_id, None)
            return row

    def skip(self, annotator: str, tab: str, item_id: str) -> None:
        """Not this one, for this annotator, until the server restarts; the item goes to someone else."""
        with self.lock:
            self._check_held(item_id, annotator, tab)
            self.skipped.setdefault(annotator, set()).add(item_id)
            self.leases.pop(item_id, None)

    def undo(self, annotator: str, tab: str) -> dict | None:
        """Take the annotator's last choice out of the file; its item is this tab's again, shown as before. None when
        the annotator has no choice in the file."""
        with self.lock:
            last = max((i for i, row in enumerate(self.rows) if row["annotator"] == annotator), default=None)
            if last is None:
                return None
            row = self.rows.pop(last)
            self._rewrite(self.rows)
            self.annotators_of = self._index()
            self.leases = {i: lease for i, lease in self.leases.items() if lease[0] != tab}
            item_id = row["item"]
            if item_id in self.items:
                self.leases[item_id] = (tab, self.clock() + self.lease_s)
                self.skipped.get(annotator, set()).discard(item_id)
                return self._shown(item_id, annotator)
            return None

    def release(self, tab: str) -> None:
        """The tab closed: what it held is free again."""
        with self.lock:
            self.leases = {i: lease for i, lease in self.leases.items() if lease[0] != tab}

    # -- how far along
    def progress(self, annotator: str | None = None) -> dict:
        with self.lock:
            counted = [row for row in self.rows if row.get("item") in self.items]
            agreement = agreement_of(counted)
            return {"labelled": len(counted), "total": len(self.items) * self.per_item, "items": len(self.items),
                    "per_item": self.per_item, "mine": sum(row["annotator"] == annotator for row in counted),
                    "annotators": sorted({row["annotator"] for row in counted}), **agreement,
                    "ties": sum(bool(row["tie"]) for row in counted)}

    # -- inside
    def _read(self) -> list[dict]:
        """The rows written so far. A last line cut short (a kill while writing) is dropped; any other bad line is
        an error naming it, since the file is the user's data."""
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not {"prompt", "chosen", "rejected", "annotator"} <= row.keys():
                    raise KeyError
                rows.append(row)
            except (json.JSONDecodeError, KeyError, AttributeError):
                if number == len(lines) and not text.endswith("\n"):
                    self._rewrite(rows)
                    break
                raise LorahfError(f"{self.path}: line {number} is not a label row (prompt, chosen, rejected, "
                                  "annotator)", hint="give another --name, or mend the line") from None
        return rows

    def _rewrite(self, rows: list[dict]) -> None:
        """The file as exactly these rows, in one atomic replace."""
        write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def _index(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for row in self.rows:
            found.setdefault(row.get("item"), []).append(row["annotator"])
        return found

    def _open_to(self, item_id: str, annotator: str) -> bool:
        annotators = self.annotators_of.get(item_id, ())
        return len(annotators) < self.per_item and annotator not in annotators

    def _leased_elsewhere(self, item_id: str, tab: str, now: float) -> bool:
        owner, until = self.leases.get(item_id, (tab, 0.0))
        return owner != tab and until > now

    def _check_held(self, item_id: str, annotator: str, tab: str) -> None:
        if item_id not in self.items:
            raise LorahfError(f"no item {item_id!r} here")
        # a lease that ran out (or was lost with a restart) is no obstacle while no other tab took the item
        if self._leased_elsewhere(item_id, tab, self.clock()) or not self._open_to(item_id, annotator):
            raise Conflict(f"item {item_id} is not this tab's to label (labelled already, or shown in another tab)")

    def _left_is_a(self, item_id: str, annotator: str) -> bool:
        """Which answer is on the left: random, the same for one annotator each time the item is shown."""
        return random.Random(f"{self.seed}:{item_id}:{annotator}").random() < 0.5

    def _shown(self, item_id: str, annotator: str) -> dict:
        item = self.items[item_id]
        left, right = (item.a, item.b) if self._left_is_a(item_id, annotator) else (item.b, item.a)
        return {"item": item_id, "prompt": item.prompt, "left": left, "right": right}


class Conflict(LorahfError):
    """A choice for an item the tab no longer holds (the page then asks for its next item)."""


def agreement_of(rows: list[dict]) -> dict:
    """How often two annotators of one item chose alike (chosen answer, or a tie), over every pair of labels on
    items labelled by two or more people; None when no item has two."""
    by_item: dict[str, list[str]] = {}
    for row in rows:
        by_item.setdefault(row["item"], []).append("tie" if row["tie"] else row["chosen_by"])
    pairs = [(x == y) for outcomes in by_item.values() if len(outcomes) > 1
             for x, y in itertools.combinations(outcomes, 2)]
    shared = sum(len(outcomes) > 1 for outcomes in by_item.values())
    return {"shared_items": shared, "agreement": sum(pairs) / len(pairs) if pairs else None}
