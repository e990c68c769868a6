"""A scripted annotator for `lorahf label`'s page: it asks the server for pairs and chooses as a judge function says,
over the same HTTP calls the page makes (the page itself is driven in a browser in test_label_page.py)."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Callable


def address_of(output: str) -> tuple[str, str]:
    """(base url, token) from the address `lorahf label` prints."""
    found = re.search(r"(http://[^/\s]+)/\S*\?token=([\w-]+)", output)
    if not found:
        raise AssertionError(f"no address in {output!r}")
    return found.group(1), found.group(2)


def label_all(base: str, token: str, compare: Callable[[str, str, str], str], annotator: str = "gold") -> int:
    """Label every pair the server gives this annotator: `compare(prompt, left, right)` -> "a" (left), "b" or "tie".
    Returns how many were labelled."""
    who = {"annotator": annotator, "tab": f"{annotator}-script"}

    def call(path: str, body: dict | None = None) -> dict:
        url = f"{base}/{path}" + ("" if body else f"?annotator={annotator}&tab={who['tab']}")
        request = urllib.request.Request(url, data=json.dumps({**who, **body}).encode() if body else None,
                                         headers={"X-Lorahf-Token": token, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    shown, labelled = call("api/next")["item"], 0
    while shown:
        outcome = compare(shown["prompt"], shown["left"], shown["right"])
        choice = {"a": "left", "b": "right", "tie": "tie"}[outcome]
        shown = call("api/choose", {"item": shown["item"], "choice": choice})["item"]
        labelled += 1
    return labelled


def reward_accuracy(run_dir, items, compare: Callable[[str, str, str], str]) -> tuple[float, int]:
    """How often the run's reward model prefers the answer `compare` prefers, over the items it does not call a tie:
    (accuracy, pairs)."""
    from lorahf.backbone import Backbone
    from lorahf.reward_model import of_run
    from lorahf.runs import RunFolder, load_run

    decided = [(item, compare(item.prompt, item.a, item.b)) for item in items]
    decided = [(item, outcome) for item, outcome in decided if outcome != "tie"]
    recipe = load_run(run_dir)
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization, recipe.model.device)
    try:
        reward = of_run(recipe, backbone, RunFolder(run_dir))
        prompts = [item.prompt for item, _ in decided]
        scores_a = reward.score(prompts, [item.a for item, _ in decided])
        scores_b = reward.score(prompts, [item.b for item, _ in decided])
    finally:
        backbone.close()
    right = sum((a > b) == (outcome == "a") for (_, outcome), a, b in zip(decided, scores_a, scores_b))
    return right / len(decided), len(decided)


def serving(*args: str, cwd, timeout: float = 120):
    """`lorahf ARGS` as a person starts it: it prints its address and serves until Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "lorahf", *args, "--no-open"], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
    printed, deadline = "", time.time() + timeout
    while "token=" not in printed:
        line = process.stdout.readline()
        assert line or process.poll() is None, process.stderr.read()[-2000:]
        assert time.time() < deadline, printed
        printed += line
    base, token = address_of(printed)

    def stop() -> str:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0 and "Traceback" not in err, err[-2000:]
        return printed + out
    return base, token, stop
