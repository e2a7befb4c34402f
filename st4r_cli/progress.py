"""Console output and progress bars shared by every stage.

`set_verbosity` is called once by the CLI; library code calls `track(...)` around long loops and
`log(...)`/`debug(...)` for messages. With --quiet nothing but errors is printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console

T = TypeVar("T")

console = Console(stderr=True)
_verbosity = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """Set the global verbosity from the CLI flags."""
    global _verbosity
    _verbosity = 0 if quiet else (2 if verbose else 1)


def is_quiet() -> bool:
    return _verbosity == 0


def is_verbose() -> bool:
    return _verbosity >= 2


def log(message: str) -> None:
    """Print a normal status line (hidden with --quiet)."""
    if _verbosity >= 1:
        console.print(message)


def debug(message: str) -> None:
    """Print a detail line (only with --verbose)."""
    if _verbosity >= 2:
        console.print(f"[dim]{message}[/dim]")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a Rich progress bar (plain iteration with --quiet or when not a terminal-less run)."""
    if _verbosity == 0:
        yield from items
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
