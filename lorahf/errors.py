"""The one error type users see.

Every problem caused by a user's input (a recipe, a data file, a command-line argument) is raised as
a `LorahfError` whose message is one readable line naming the file, key or row. The CLI prints that
line (plus an optional hint) and exits non-zero; a Python traceback is shown only with `--debug`.
"""

from __future__ import annotations


class LorahfError(Exception):
    """A problem with the user's input, explained in one line (several for a list of problems)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RecipeError(LorahfError):
    """A recipe that does not validate; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str], hint: str | None = None):
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            message = f"{source}: {problems[0]}"
        else:
            message = f"{source}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(message, hint)


class DataError(LorahfError):
    """A data file that cannot be used: missing, empty, a missing column, a bad row."""
