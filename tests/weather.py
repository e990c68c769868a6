"""A task in another domain than the bundled example, for testing lorahf as a new user meets it: weather logs
to one-line forecasts, with column names that are neither lorahf's nor the example's.

    write_task(folder)         forecasts.jsonl (SFT pairs of mixed quality), preferences.jsonl (pairs, 10 % of
                               the labels flipped), logs.jsonl (prompts only), validation.jsonl (held-out prompts
                               with their ideal forecasts)
    score(prompt, response)    the gold judge: what the log says against what the forecast says, -6 to 6

The recipe that runs on it is the one `lorahf init` writes; the test never edits it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

CITIES = ["Oslo", "Lima", "Cairo", "Quito", "Perth", "Dakar", "Hanoi", "Sofia", "Turin", "Malmo", "Bergen", "Split",
          "Porto", "Leeds", "Tunis", "Accra", "Busan", "Kobe", "Pune", "Cork", "Graz", "Basel", "Nice", "Riga"]
SKIES = ["sunny", "cloudy", "rainy", "foggy", "snowy", "windy"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
LOGS = ["{city} saw a {sky} {day} with a high of {high} degrees.",
        "On {day} the sky over {city} was {sky}; the high reached {high} degrees.",
        "A high of {high} degrees was logged in {city} on {day}, and it was {sky}."]
FILLERS = ["Winds were light.", "Humidity stayed low.", "The station reported no faults.", "Visibility was good.", ""]
LABEL_FLIP_RATE = 0.1


def ideal(city: str, sky: str, high: int) -> str:
    return f"{city}: {sky}, high {high}."


def _facts(rng: random.Random) -> tuple[str, str, int, str]:
    city, sky, high = rng.choice(CITIES), rng.choice(SKIES), rng.randint(1, 35)
    log = rng.choice(LOGS).format(city=city, sky=sky, high=high, day=rng.choice(DAYS))
    return city, sky, high, f"{log} {rng.choice(FILLERS)}".strip()


def _variant(rng: random.Random, city: str, sky: str, high: int) -> str:
    """A forecast of mixed quality, as people write them: mostly right, sometimes a fact wrong or missing."""
    roll = rng.random()
    if roll < 0.6:
        return ideal(city, sky, high)
    if roll < 0.75:
        return ideal(city, sky, high + rng.choice([-3, -2, 2, 3]))
    if roll < 0.85:
        return f"{city}: high {high}."
    if roll < 0.95:
        return ideal(city, rng.choice([s for s in SKIES if s != sky]), high)
    return f"{ideal(city, sky, high)} Nice day."


def write_task(folder: str | Path, seed: int = 0, sft_rows: int = 800, pairs: int = 600, prompts: int = 300,
               held_out: int = 100) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def write(name: str, rows: list[dict]) -> None:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    sft = []
    for _ in range(sft_rows):
        city, sky, high, log = _facts(rng)
        sft.append({"weather_log": log, "forecast": _variant(rng, city, sky, high)})
    write("forecasts.jsonl", sft)
    preferences = []
    while len(preferences) < pairs:
        city, sky, high, log = _facts(rng)
        a, b = _variant(rng, city, sky, high), _variant(rng, city, sky, high)
        if rng.random() < 0.3:
            a = ideal(city, sky, high)
        if score(log, a) == score(log, b):
            continue
        better, worse = (a, b) if score(log, a) > score(log, b) else (b, a)
        if rng.random() < LABEL_FLIP_RATE:
            better, worse = worse, better
        preferences.append({"weather_log": log, "preferred": better, "dispreferred": worse})
    write("preferences.jsonl", preferences)
    write("logs.jsonl", [{"weather_log": _facts(rng)[3]} for _ in range(prompts)])
    validation = []
    for _ in range(held_out):
        city, sky, high, log = _facts(rng)
        validation.append({"weather_log": log, "ideal_forecast": ideal(city, sky, high)})
    write("validation.jsonl", validation)
    return folder


def score(prompt: str, response: str) -> float:
    """+2 for each of the city, the sky and the high given right, -2 for each given wrong, -1 for each word past
    the three facts (at most -6 in all)."""
    city = next(c for c in CITIES if c in prompt)
    sky = next(s for s in SKIES if re.search(rf"\b{s}\b", prompt))
    high = re.search(r"high (?:of |reached )(\d+)", prompt).group(1)
    words = re.findall(r"[A-Za-z]+|\d+", response)
    total = 0.0
    for right, options in ((city, CITIES), (sky, SKIES)):
        said = [w for w in words if w in options]
        total += 2 if said == [right] else -2 if said else 0
    numbers = [w for w in words if w.isdigit()]
    total += 2 if numbers == [high] else -2 if numbers else 0
    extra = [w for w in words if w not in CITIES and w not in SKIES and not w.isdigit() and w != "high"]
    return max(-6.0, total - len(extra))
