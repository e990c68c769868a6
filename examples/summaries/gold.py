"""Gold judge for the bundled match-report summarisation task.

The judge plays the part of the human labellers in "Learning to Summarize from Human
Feedback": it knows what a good summary of a match report is, and lorahf uses it to
measure how much RLHF improved on imitation.  It works from the document text alone:
the facts (winner, loser, score, city) are parsed back out of the report with regexes
built from the very templates that generate.py writes reports with, so the two files
can never disagree.

Standard library only; importable as a module (``import gold``) or by file path.

API
    facts(prompt)            -> dict | None   the match facts, None if unparseable
    score(prompt, response)  -> float         quality of a summary, max MAX_SCORE
    compare(prompt, a, b)    -> "a" | "b" | "tie"
    breakdown(prompt, response) -> dict       the score's parts, for debugging
    reference_summary(facts) -> str           the reference summary of a report
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

# ------------------------------------------------------------------------------------ vocabulary
# Small closed pools keep the task inside a ~500-token BPE vocabulary: every name is a
# single capitalised word, and the pools are disjoint so a name has exactly one meaning.
TEAMS = (
    "Falcons", "Tigers", "Eagles", "Wolves", "Bears", "Lions", "Sharks", "Hawks",
    "Rovers", "Rangers", "Panthers", "Comets", "Giants", "Pirates", "Dragons", "Foxes",
    "Badgers", "Owls", "Stags", "Bulls", "Ravens", "Hornets", "Jets", "Kings",
)
CITIES = (
    "Leeds", "York", "Bristol", "Cardiff", "Dublin", "Glasgow", "Oxford", "Bath",
    "Derby", "Exeter", "Hull", "Leicester", "Norwich", "Preston", "Dundee", "Swansea",
    "Bolton", "Chester", "Durham", "Lincoln",
)
PLAYERS = (
    "Silva", "Moreno", "Kane", "Novak", "Okafor", "Berg", "Costa", "Duval",
    "Ferreira", "Haas", "Ito", "Jensen", "Kowal", "Lund", "Mensah", "Nilsson",
    "Ortiz", "Petrov", "Quinn", "Rossi", "Sato", "Tanaka", "Varga", "Weber",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# ------------------------------------------------------------------------- document templates
# A report is one sentence from each of RESULT, VENUE, STAR and CROWD plus a filler, in a
# random order.  Every result template names the winner before the loser, in a different shape:
# measured on the quickstart's 1.3M-parameter T5, templates that name the loser first ("X lost to
# Y") kept SFT from getting the winner right within minutes (gold 1.15 of 6 after 10 minutes).
RESULT_TEMPLATES = (
    "{winner} beat {loser} {ws} to {ls} in a hard fought game.",
    "The final score was {winner} {ws}, {loser} {ls}.",
    "{winner} claimed a {ws}-{ls} win over {loser}.",
    "{winner} won {ws}-{ls} against {loser}.",
)
VENUE_TEMPLATES = (
    "{home} hosted {away} in {city} on {day}.",
    "The game was played in {city} on {day} in front of a loud crowd.",
    "On {day}, fans in {city} saw {home} take on {away}.",
    "{city} was the venue for the match on {day}.",
    "{home} welcomed {away} to {city} on {day}.",
)
STAR_TEMPLATES = (
    "{player} scored for {winner} and was named player of the match.",
    "{player} of {winner} was the best player on the pitch.",
    "{player} played well for {loser} but could not stop the defeat.",
    "The coach of {winner} said {player} had a great game.",
)
CROWD_TEMPLATES = (
    "A crowd of {crowd} watched the game.",
    "The attendance was {crowd}, a good number for the time of year.",
    "{crowd} fans came to the ground to watch.",
)
FILLER_SENTENCES = (
    "The weather was cold and wet all afternoon.",
    "Both sides started slowly and the first half was quiet.",
    "The coach praised the players after the game.",
    "Neither side had many chances in the first half.",
    "The referee showed three yellow cards in a tense second half.",
    "The home fans sang loudly for the whole game.",
    "It was a busy week for both clubs.",
    "The pitch was in good condition despite the rain.",
    "There were few chances after the break.",
    "Both teams will play again next week.",
)

# -------------------------------------------------------------------------- summary templates
# The reference form, and the realistic ways a summary goes wrong.  generate.py fills these
# in; the judge uses their words (SUMMARY_WORDS) to tell plausible wording from garbage.
REFERENCE_TEMPLATE = "{winner} beat {loser} {ws}-{ls} in {city}."
FLAW_TEMPLATES = {
    "missing_score": ("{winner} beat {loser} in {city}.",),
    "missing_city": ("{winner} beat {loser} {ws}-{ls}.",),
    "swapped": ("{loser} beat {winner} {ws}-{ls} in {city}.",),
    # {winner}/{loser} below are filled with a made-up team or numbers by the generator.
    "invented_team": (REFERENCE_TEMPLATE,),
    "wrong_score": (REFERENCE_TEMPLATE,),
    "wrong_city": (REFERENCE_TEMPLATE,),
    "rambling": (
        "{winner} beat {loser} {ws}-{ls} in {city} on {day} in front of {crowd} fans.",
        "{winner} beat {loser} {ws}-{ls} in {city} as {player} starred for the team.",
        "{winner} beat {loser} {ws}-{ls} in {city} after a long and hard game that the fans will remember.",
        "In {city} on {day}, {winner} beat {loser} {ws}-{ls} in a game that went on and on.",
    ),
    "vague": (
        "A match was played.",
        "A game took place.",
        "Two teams played a match.",
    ),
}

# Verbs that put a team in the winner's or the loser's role in a summary.
WIN_VERBS = ("beat", "beats", "defeated", "edged", "overcame", "won")
LOSE_VERBS = ("lost to", "fell to", "were beaten by")

# ------------------------------------------------------------------------------ scoring table
# Facts earn credit only in their right role.  A wrong fact costs more than leaving it out,
# so "say less" beats "say something false", as a careful human labeller would rate it.
CREDIT = {
    "winner": 2.0,        # the winner named as winner
    "loser": 1.0,         # the loser named as loser
    "score": 2.0,         # the exact score (either order of the two numbers)
    "city": 1.0,          # the city the match was played in
    "mentioned": 0.5,     # a team of the match named with no role
}
PENALTY = {
    "winner_as_loser": 1.5,   # the winner put in the loser's role
    "loser_as_winner": 2.0,   # the loser put in the winner's role
    "wrong_score": 2.0,       # a score that is not the match's
    "invented_name": 2.0,     # each capitalised word found neither in the report nor in summary wording
    "unknown_word": 1.0,      # each other word or number found neither in the report nor in summary wording
    "repeated_word": 0.5,     # each repeat of a word (function words: from the second repeat)
    "extra_length": 0.25,     # each word beyond FREE_LENGTH
}
FREE_LENGTH = 9        # words (numbers count as words); the reference has 7
EMPTY_SCORE = -3.0     # a response with no words at all
MIN_SCORE = -6.0       # floor, so that garbage of any length scores about the same
MAX_SCORE = CREDIT["winner"] + CREDIT["loser"] + CREDIT["score"] + CREDIT["city"]

# Function words get one free repeat: a good long summary may need "in" or "the" twice.
STOPWORDS = frozenset("a an and the in on of to for by as at with that".split())

_WORD = re.compile(r"[A-Za-z]+|\d+")
_NAME = r"[A-Z][a-z]+"
_FIELD_PATTERNS = {
    "winner": _NAME, "loser": _NAME, "home": _NAME, "away": _NAME,
    "city": _NAME, "player": _NAME, "day": "|".join(DAYS),
    "ws": r"\d+", "ls": r"\d+", "crowd": r"\d+",
}


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _template_words(template: str) -> set[str]:
    return {w.lower() for w in _words(re.sub(r"\{\w+\}", " ", template))}


SUMMARY_WORDS = frozenset().union(
    _template_words(REFERENCE_TEMPLATE),
    *(_template_words(t) for ts in FLAW_TEMPLATES.values() for t in ts),
    *(_template_words(v) for v in WIN_VERBS + LOSE_VERBS),
)


# -------------------------------------------------------------------------------- parsing facts
def _template_regex(template: str) -> re.Pattern:
    """Turn a document template into a regex with one named group per field.

    Tokens are joined by optional whitespace, so the regex still matches a report that went
    through a tokenizer's encode/decode and came back as "3 - 1" or "Leeds ."."""
    parts = []
    for token in re.findall(r"\{\w+\}|[A-Za-z]+|\d+|[^\sA-Za-z\d]", template):
        if token.startswith("{"):
            field = token[1:-1]
            parts.append(f"(?P<{field}>{_FIELD_PATTERNS[field]})")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\b" + r"\s*".join(parts))


_DOC_REGEXES = tuple(
    _template_regex(t)
    for t in RESULT_TEMPLATES + VENUE_TEMPLATES + STAR_TEMPLATES + CROWD_TEMPLATES
)
_REQUIRED = ("winner", "loser", "winner_score", "loser_score", "city")


@lru_cache(maxsize=4096)  # score() is called with the same report many times
def _parse(prompt: str) -> dict:
    """Every fact that some template sentence of the report gives (maybe only some)."""
    found: dict = {}
    for regex in _DOC_REGEXES:
        match = regex.search(prompt)
        if match:
            for field, value in match.groupdict().items():
                found.setdefault(field, value)
    out = {
        "winner": found.get("winner"),
        "loser": found.get("loser"),
        "winner_score": int(found["ws"]) if "ws" in found else None,
        "loser_score": int(found["ls"]) if "ls" in found else None,
        "city": found.get("city"),
        "day": found.get("day"),
        "player": found.get("player"),
        "crowd": int(found["crowd"]) if "crowd" in found else None,
    }
    return {k: v for k, v in out.items() if v is not None}


def facts(prompt: str) -> dict | None:
    """The match facts of a report: winner, loser, winner_score, loser_score, city, and day,
    player and crowd when given; None when the report cannot be parsed.

    `prompt` may carry a prefix such as "summarize: " (the regexes search, not match)."""
    found = _parse(prompt)
    if any(key not in found for key in _REQUIRED):
        return None
    return dict(found)  # a copy: the cached dict must not be changed by callers


def reference_summary(f: dict) -> str:
    """The reference summary of a report with facts `f`: the form that gets MAX_SCORE."""
    return REFERENCE_TEMPLATE.format(
        winner=f["winner"], loser=f["loser"], ws=f["winner_score"], ls=f["loser_score"], city=f["city"]
    )


# ------------------------------------------------------------------------------------- scoring
_WIN_RE = re.compile(rf"({_NAME})\s+(?:{'|'.join(WIN_VERBS)})\b(?:\s+({_NAME}))?")
_LOSE_RE = re.compile(rf"({_NAME})\s+(?:{'|'.join(LOSE_VERBS)})\s+({_NAME})")
_SCORE_RE = re.compile(r"\b(\d+)\s*(?:-|to)\s*(\d+)\b")


def _roles(response: str) -> tuple[set[str], set[str]]:
    """Which names the summary presents as winners and which as losers."""
    winners, losers = set(), set()
    for match in _WIN_RE.finditer(response):
        winners.add(match.group(1))
        if match.group(2):
            losers.add(match.group(2))
    for match in _LOSE_RE.finditer(response):
        losers.add(match.group(1))
        winners.add(match.group(2))
    return winners, losers


def breakdown(prompt: str, response: str) -> dict:
    """The parts of score(prompt, response): credits (positive) and penalties (negative)."""
    words = _words(response)
    if not words:
        return {"empty": EMPTY_SCORE}
    f = _parse(prompt)
    parts: dict = {}

    # Roles: credit each team in its right role, penalise it in the wrong one.
    winners, losers = _roles(response)
    winner, loser = f.get("winner"), f.get("loser")
    if winner in winners:
        parts["winner"] = CREDIT["winner"]
    if loser in losers:
        parts["loser"] = CREDIT["loser"]
    if winner in losers:
        parts["winner_as_loser"] = -PENALTY["winner_as_loser"]
    if loser in winners:
        parts["loser_as_winner"] = -PENALTY["loser_as_winner"]
    roleless = [t for t in (winner, loser) if t and t in words and t not in winners | losers]
    if roleless:
        parts["mentioned"] = CREDIT["mentioned"] * len(roleless)

    # Score: either order is fine ("lost 1-3" states the same fact); a wrong pair costs.
    score_numbers = set()
    if "winner_score" in f and "loser_score" in f:
        truth = (f["winner_score"], f["loser_score"])
        for a, b in _SCORE_RE.findall(response):
            score_numbers.update((a, b))
            if (max(int(a), int(b)), min(int(a), int(b))) == truth:
                parts["score"] = CREDIT["score"]
            else:
                parts["wrong_score"] = parts.get("wrong_score", 0.0) - PENALTY["wrong_score"]

    if f.get("city") and f["city"] in words:
        parts["city"] = CREDIT["city"]

    # Words from nowhere: capitalised ones are invented names, the rest garbage.
    known = {w.lower() for w in _words(prompt)} | SUMMARY_WORDS
    invented = unknown = 0
    for w in words:
        if w.isdigit():
            unknown += w not in known and w not in score_numbers
        elif w.lower() not in known:
            if w[0].isupper():
                invented += 1
            else:
                unknown += 1
    if invented:
        parts["invented_name"] = -PENALTY["invented_name"] * invented
    if unknown:
        parts["unknown_word"] = -PENALTY["unknown_word"] * unknown

    counts = Counter(w.lower() for w in words if w.isalpha())
    repeats = sum(n - 1 - (w in STOPWORDS and n > 1) for w, n in counts.items())
    if repeats:
        parts["repeated_word"] = -PENALTY["repeated_word"] * repeats
    if len(words) > FREE_LENGTH:
        parts["extra_length"] = -PENALTY["extra_length"] * (len(words) - FREE_LENGTH)
    return parts


def score(prompt: str, response: str) -> float:
    """Quality of `response` as a summary of the report `prompt`, in [MIN_SCORE, MAX_SCORE].

    The reference summary scores MAX_SCORE (6.0); an empty response EMPTY_SCORE (-3.0);
    random tokens hit the floor MIN_SCORE (-6.0).  Deterministic."""
    total = sum(breakdown(prompt, response).values())
    return round(max(MIN_SCORE, min(MAX_SCORE, total)), 6)


def compare(prompt: str, a: str, b: str) -> str:
    """Which of two summaries the judge prefers: "a", "b", or "tie" (equal scores)."""
    diff = score(prompt, a) - score(prompt, b)
    if abs(diff) < 1e-9:
        return "tie"
    return "a" if diff > 0 else "b"
