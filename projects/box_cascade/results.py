"""The box-cascade core's part of the shapes benchmark's reports (cascade_zoo.results): its
README's results blocks."""

from pathlib import Path

from cascade_zoo.results.registry import register_results

register_results("box_cascade", readme=Path(__file__).with_name("README.md"))
