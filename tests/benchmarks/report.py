"""Summaries, plain-text tables, and the order in which a round measures its contenders."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def summarize_us(samples: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and mean of samples in microseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": len(samples),
        "p50_us": cuts[49],
        "p90_us": cuts[89],
        "p99_us": cuts[98],
        "mean_us": statistics.fmean(samples),
        "min_us": min(samples),
        "max_us": max(samples),
    }


def turn(order: Sequence[T], round_: int) -> list[T]:
    """`order` starting with its `round_`-th item: whichever runs first after another's turn
    (caches, the scheduler) is not the same one in every round."""
    start = round_ % len(order)
    return [*order[start:], *order[:start]]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or digits == 0:
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """Left-aligned first column, right-aligned others; every cell already a string or a number."""
    cells = [[cell if isinstance(cell, str) else number(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [title, "=" * len(title), line([str(h) for h in headers]), rule, *(line(row) for row in cells)]
    out += [f"  {note}" for note in notes]
    return "\n".join(out)


def section_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a section run alone (`python -m tests.benchmarks.<module>`), with --output."""
    parser = argparse.ArgumentParser(prog=f"python -m tests.benchmarks.{module}", description=doc.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="also write the figures there as JSON")
    return parser


def write_figures(figures: Any, output: Path) -> None:
    """Write a run's figures to `output` as JSON, and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {output}")


def emit(result: dict[str, Any], render: Callable[[dict[str, Any]], str], output: Path | None) -> int:
    """Print a section's tables and write its figures to `output` if given."""
    print(render(result))
    if output:
        output.write_text(json.dumps(result, indent=2))
    return 0
