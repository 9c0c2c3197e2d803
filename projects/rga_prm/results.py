"""RGA + PRM's part of the shapes benchmark's reports (cascade_zoo.results): its README's results
blocks (Fig. 2's AP by objects per image is stored with every run)."""

from pathlib import Path

from cascade_zoo.results.registry import register_results

register_results("rga_prm", readme=Path(__file__).with_name("README.md"))
