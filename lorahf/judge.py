"""Judges: say how good a response to a prompt is.

For now: `python` judges, a user's own function `f(prompt, response) -> float`, named in the recipe as
`module:function` or `path/to/file.py:function` (the bundled example's gold judge is one).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from lorahf.errors import LorahfError


class PythonJudge:
    """Scores responses with a user's function."""

    def __init__(self, name: str, target: str):
        self.name = name
        self.target = target
        self.function = load_function(target)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(self.function(prompt, response)) for prompt, response in zip(prompts, responses)]


def load_function(target: str) -> Callable:
    """Import `module:function` or `path/to/file.py:function`."""
    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise LorahfError(f"judge '{target}': expected module:function or path/to/file.py:function")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise LorahfError(f"judge '{target}': file {location} not found")
        name = f"lorahf_judge_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise LorahfError(f"judge '{target}': cannot import {location} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise LorahfError(f"judge '{target}': {location} has no function {attribute}")
    return function


def load_judges(recipe) -> list[PythonJudge]:
    return [PythonJudge(name, spec.python) for name, spec in recipe.judges.items()]
