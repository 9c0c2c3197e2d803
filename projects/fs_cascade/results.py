"""FSCascade's part of the shapes benchmark's reports (cascade_zoo.results): its README's results
blocks and the Fig. 5 its tool makes from the runs' models."""

from pathlib import Path

from cascade_zoo.results.registry import register_results

register_results(
    "fs_cascade",
    readme=Path(__file__).with_name("README.md"),
    figures=[
        (
            "images/fs_cascade_score_vs_iou.png",
            "FSCascade's Fig. 5: scores of the last stage's detections with IoU in [0.5, 0.75]",
        ),
    ],  # fmt: skip
)
