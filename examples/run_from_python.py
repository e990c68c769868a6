"""Run lorahf from Python: load a recipe, add a judge of your own, run it, read the metrics.

    python examples/run_from_python.py recipes/quickstart.yaml
    python examples/run_from_python.py my-recipe.yaml --set sft.max_steps=50

Everything `lorahf run` does is a library call; nothing here needs the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lorahf

JUDGE = f"{Path(__file__).with_name('custom_judge.py')}:score"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    # The recipe as `lorahf run` reads it, with one more judge: it scores every evaluated answer too
    recipe = lorahf.load_recipe(args.recipe, [f"judges.concise.python={JUDGE}", *args.overrides])
    try:
        result = lorahf.run(recipe)
    except lorahf.LorahfError as error:  # a bad input is one line, as on the command line
        raise SystemExit(f"error: {error.message}")

    for stage, metrics in result.metrics.items():
        numbers = {key: round(value, 3) for key, value in metrics.items() if isinstance(value, float)}
        print(f"{stage}: {dict(list(numbers.items())[:6])}")
    evaluate = result.metrics.get("evaluate", {})
    if "win_rate.concise" in evaluate:
        low, high = evaluate["win_rate_ci.concise"]
        print(f"the concise judge prefers {evaluate['adapters'][1]} to {evaluate['baseline']} in "
              f"{evaluate['win_rate.concise']:.2f} of answers [{low:.2f}, {high:.2f}]")
    print(f"run folder: {result.folder.root}")


if __name__ == "__main__":
    main()
