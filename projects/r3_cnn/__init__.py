"""R3-CNN (Rossi et al., "Recursively Refined R-CNN: Instance Segmentation with Self-RoI
Rebalancing"): one box head (and one mask head) applied in loops, each loop trained at its own IoU
threshold, on the box-cascade core. Importing it registers ``R3CNNROIHeads``, the
``NonLocalConvBoxHead`` of R3-CNN-L and the "max_logits" test ensemble."""

from . import results  # noqa: F401  (registers its part of the benchmark's reports)
from .box_head import NonLocalBlock, NonLocalConvBoxHead
from .config import add_r3_cnn_config
from .masks import LoopsShareMaskHead
from .roi_heads import R3CNNROIHeads, max_of_logits

__all__ = [
    "add_r3_cnn_config",
    "LoopsShareMaskHead",
    "NonLocalBlock",
    "NonLocalConvBoxHead",
    "R3CNNROIHeads",
    "max_of_logits",
]
