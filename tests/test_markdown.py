"""The project's one Markdown-table writer."""

import pytest

from cascade_zoo.utils.markdown import format_number, markdown_table


def test_markdown_table_layout_and_cells():
    text = markdown_table(["name", "AP", "n"], [["a", 1.234, 3], ["b", float("nan"), None]])
    assert text.splitlines() == [
        "| name | AP | n |",
        "|---|---|---|",
        "| a | 1.23 | 3 |",
        "| b | - | - |",
    ]
    assert markdown_table(["x"], [[0.5]], cell=lambda v: f"{v:.0%}").endswith("| 50% |")


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 values for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])


def test_format_number_digits():
    assert format_number(2.0, digits=1) == "2.0" and format_number("x") == "x"
