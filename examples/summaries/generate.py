"""Write the bundled match-report summarisation task into examples/summaries/data/.

    python examples/summaries/generate.py [--out DIR] [--seed N] [--scale F]

Each document is a short, generated sports match report; its reference summary is one line
("Falcons beat Tigers 3-1 in Leeds.").  The files mirror the data of "Learning to Summarize
from Human Feedback": demonstrations of mixed quality for SFT, noisy pairwise preferences,
rankings and scalar ratings for the reward model, fresh prompts for PPO and a test set.
Column names are deliberately not lorahf's own, so the recipe has to map them.

Standard library only, and byte-identical output for the same seed and scale.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so that `import gold` works however this script is started
import gold  # noqa: E402  (shares the templates and pools with the judge)

SEED = 1234
LABEL_FLIP_RATE = 0.10   # share of preference labels flipped, like disagreeing labellers
RATING_NOISE = 0.3       # std of the Gaussian noise on scalar ratings
ROWS = {                 # rows per file at --scale 1
    "sft": 3000,
    "preferences": 2500,
    "rankings": 300,
    "scores": 300,
    "prompts": 1000,
    "test": 200,
}
# The summaries that stand in for human demonstrations: under half are the reference, the
# rest realistic mistakes.  The reference is still the most likely form at every token, so
# greedy decoding from an SFT model should give it, yet the average demonstration scores
# well below it: room for RLHF to improve on imitation.
SFT_MIX = {
    "reference": 0.45,
    "missing_score": 0.08,
    "missing_city": 0.08,
    "swapped": 0.08,
    "invented_team": 0.08,
    "wrong_score": 0.08,
    "wrong_city": 0.05,
    "rambling": 0.06,
    "vague": 0.04,
}
MAX_GOALS = 5


# ------------------------------------------------------------------------------------ documents
def make_facts(rng: random.Random) -> dict:
    winner, loser = rng.sample(gold.TEAMS, 2)
    home, away = rng.sample([winner, loser], 2)   # the host wins only half the time
    winner_score = rng.randint(1, MAX_GOALS)
    return {
        "winner": winner,
        "loser": loser,
        "winner_score": winner_score,
        "loser_score": rng.randint(0, winner_score - 1),   # no draws: there is always a winner
        "city": rng.choice(gold.CITIES),
        "day": rng.choice(gold.DAYS),
        "player": rng.choice(gold.PLAYERS),
        "crowd": rng.randrange(2000, 40000, 100),
        "home": home,
        "away": away,
    }


def _fill(template: str, f: dict) -> str:
    return template.format(ws=f["winner_score"], ls=f["loser_score"], **f)


def make_document(rng: random.Random, f: dict) -> str:
    """Five sentences in random order: result, venue, star, crowd and a filler."""
    sentences = [
        _fill(rng.choice(group), f)
        for group in (gold.RESULT_TEMPLATES, gold.VENUE_TEMPLATES, gold.STAR_TEMPLATES,
                      gold.CROWD_TEMPLATES)
    ]
    sentences += rng.sample(gold.FILLER_SENTENCES, 1)
    rng.shuffle(sentences)
    return " ".join(sentences)


class Documents:
    """Hands out documents never handed out before, so every file's documents are fresh."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def new(self, rng: random.Random) -> tuple[str, dict]:
        while True:
            f = make_facts(rng)
            doc = make_document(rng, f)
            if doc not in self.seen:
                break
        self.seen.add(doc)
        # The judge must read back exactly the facts the document was written from.
        parsed = gold.facts(doc)
        assert parsed and all(parsed[k] == f[k] for k in parsed), (doc, parsed, f)
        return doc, f


# ------------------------------------------------------------------------------------ summaries
def make_summary(rng: random.Random, f: dict, kind: str) -> str:
    """A summary of the match with facts `f`, either the reference or one kind of flaw."""
    if kind == "reference":
        return gold.reference_summary(f)
    g = dict(f)
    if kind == "invented_team":
        # A team that is not in the report takes the winner's or the loser's place.
        outsider = rng.choice([t for t in gold.TEAMS if t not in (f["winner"], f["loser"])])
        g[rng.choice(("winner", "loser"))] = outsider
    elif kind == "wrong_score":
        truth = (f["winner_score"], f["loser_score"])
        pairs = [(a, b) for a in range(1, MAX_GOALS + 1) for b in range(a) if (a, b) != truth]
        g["winner_score"], g["loser_score"] = rng.choice(pairs)
    elif kind == "wrong_city":
        g["city"] = rng.choice([c for c in gold.CITIES if c != f["city"]])
    return _fill(rng.choice(gold.FLAW_TEMPLATES[kind]), g)


def sample_kind(rng: random.Random) -> str:
    return rng.choices(list(SFT_MIX), weights=list(SFT_MIX.values()))[0]


def sample_summary(rng: random.Random, f: dict) -> str:
    return make_summary(rng, f, sample_kind(rng))


# ---------------------------------------------------------------------------------------- files
def sft_rows(rng, docs, n):
    for _ in range(n):
        doc, f = docs.new(rng)
        yield {"document": doc, "summary": sample_summary(rng, f)}


def preference_rows(rng, docs, n):
    """Two different summaries of one document; the gold judge's choice, flipped 10% of the time."""
    for _ in range(n):
        doc, f = docs.new(rng)
        while True:
            a, b = sample_summary(rng, f), sample_summary(rng, f)
            if a != b and gold.compare(doc, a, b) != "tie":
                break
        better, worse = (a, b) if gold.compare(doc, a, b) == "a" else (b, a)
        if rng.random() < LABEL_FLIP_RATE:
            better, worse = worse, better
        yield {"document": doc, "better": better, "worse": worse}


def ranking_rows(rng, docs, n, size=4):
    """`size` summaries with different gold scores, ranked exactly (1 = best)."""
    for _ in range(n):
        doc, f = docs.new(rng)
        candidates, scores = [], set()
        while len(candidates) < size:
            s = sample_summary(rng, f)
            if gold.score(doc, s) not in scores:
                candidates.append(s)
                scores.add(gold.score(doc, s))
        order = sorted(range(size), key=lambda i: -gold.score(doc, candidates[i]))
        ranks = [order.index(i) + 1 for i in range(size)]
        yield {"document": doc, "candidates": candidates, "ranks": ranks}


def score_rows(rng, docs, n):
    for _ in range(n):
        doc, f = docs.new(rng)
        summary = sample_summary(rng, f)
        rating = gold.score(doc, summary) + rng.gauss(0.0, RATING_NOISE)
        yield {"document": doc, "summary": summary, "rating": round(rating, 3)}


def prompt_rows(rng, docs, n):
    for _ in range(n):
        yield {"document": docs.new(rng)[0]}


def test_rows(rng, docs, n):
    for _ in range(n):
        doc, f = docs.new(rng)
        yield {"document": doc, "reference": gold.reference_summary(f)}


BUILDERS = {
    "sft": sft_rows,
    "preferences": preference_rows,
    "rankings": ranking_rows,
    "scores": score_rows,
    "prompts": prompt_rows,
    "test": test_rows,
}


def generate(seed: int = SEED, scale: float = 1.0) -> dict[str, list[dict]]:
    """All files' rows.  Each file has its own random stream (seeded by name), so changing
    one file's generator does not reshuffle the others."""
    docs = Documents()
    out = {}
    for name, build in BUILDERS.items():
        rng = random.Random(f"{seed}:{name}")   # str seeds hash with SHA-512: stable across runs
        out[name] = list(build(rng, docs, max(1, round(ROWS[name] * scale))))
    return out


def write(files: dict[str, list[dict]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out_dir / f"{name}.jsonl").write_bytes(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------- stats
def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def stats(files: dict[str, list[dict]]) -> dict[str, float]:
    """The numbers README.md quotes: gold scores of each kind of text, judge-vs-label agreement."""
    sft, prefs = files["sft"], files["preferences"]
    return {
        "reference": _mean(gold.score(r["document"], r["reference"]) for r in files["test"]),
        "sft_summary": _mean(gold.score(r["document"], r["summary"]) for r in sft),
        "sft_reference_share": _mean(
            r["summary"] == gold.reference_summary(gold.facts(r["document"])) for r in sft),
        "preferences_better": _mean(gold.score(r["document"], r["better"]) for r in prefs),
        "preferences_worse": _mean(gold.score(r["document"], r["worse"]) for r in prefs),
        "judge_label_accuracy": _mean(
            gold.compare(r["document"], r["better"], r["worse"]) == "a" for r in prefs),
        "document_words": _mean(len(r["document"].split()) for r in sft),
        "summary_words": _mean(len(r["summary"].split()) for r in sft),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every file's row count")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)

    files = generate(args.seed, args.scale)
    write(files, args.out)
    if args.quiet:
        return
    for name, rows in files.items():
        size = (args.out / f"{name}.jsonl").stat().st_size
        print(f"{name + '.jsonl':20s} {len(rows):5d} rows {size / 1024:8.1f} KiB")
    for key, value in stats(files).items():
        print(f"{key:22s} {value:.3f}")


if __name__ == "__main__":
    main()
