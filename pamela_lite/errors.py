"""One exception type for every problem with what a user handed us."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A bad input: a missing file or column, an unknown id, a NaN embedding, ...

    The message is one line that names the file (when there is one) and the problem, so the
    command-line tools can print it as it is and exit with status 2.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


def preview(values, limit: int = 5) -> str:
    """Show at most `limit` offending values, and how many there are in all."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return f"{shown}{more}"
