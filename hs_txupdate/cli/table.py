"""Tables for the terminal: tabulate, imported only by a command that prints one (its
import costs more than most commands take)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """`rows` under `headers`, in columns (tabulate's "simple" format)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple")
