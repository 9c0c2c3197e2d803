"""Analysis behind the tools/ scripts: AP-vs-IoU curves, training IoU histograms, detections
matched to ground truth, parameter and FLOP breakdowns."""

from .ap_iou import (
    AnalysisInputError,
    curves_table,
    difference_curves,
    load_ap_curves,
    plot_ap_curves,
)
from .cost import flop_breakdown, module_group, parameter_breakdown
from .iou_hist import collect_iou_stats, load_iou_stats, plot_iou_histograms
from .matching import binned_means, match_detections, plot_matches

__all__ = [
    "AnalysisInputError",
    "binned_means",
    "collect_iou_stats",
    "curves_table",
    "difference_curves",
    "flop_breakdown",
    "load_ap_curves",
    "load_iou_stats",
    "match_detections",
    "module_group",
    "parameter_breakdown",
    "plot_ap_curves",
    "plot_iou_histograms",
    "plot_matches",
]
