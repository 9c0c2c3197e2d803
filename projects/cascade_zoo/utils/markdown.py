"""The one Markdown-table writer of the project: every tool and report builds its tables here."""

import math
from typing import Any, Callable, Iterable, Sequence


def format_number(value: Any, digits: int = 2) -> str:
    """A table cell: floats with ``digits`` decimals, "-" for None and NaN, str() otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    cell: Callable[[Any], str] = format_number,
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline). Each row must have one value per
    header column; values are written by ``cell`` (default :func:`format_number`)."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(header):
            raise ValueError(
                f"markdown_table: row {i} has {len(row)} values for {len(header)} columns: {row}"
            )
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)
