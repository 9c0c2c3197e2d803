"""The one Markdown-table writer of the project: every tool and report builds its tables here."""

import math
import os
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


def write_markdown_section(path: str, title: str, text: str) -> None:
    """Put ``text`` (which starts with "## title") into the Markdown file ``path``, replacing the
    section of the same title if there is one (up to the next "## " heading)."""
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    start = old.find(f"## {title}\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + text + ("" if end < 0 else old[end:])
    with open(path, "w") as f:
        f.write(new)
