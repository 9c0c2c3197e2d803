"""The box-cascade core: Cascade R-CNN / Cascade Mask R-CNN of the TPAMI paper, complete, with the
extension points the other papers of the project use. Importing it registers the ROI heads
("BoxCascadeROIHeads", "IntegralLossROIHeads", "ParallelModulesROIHeads"), the
meta-architecture ("BoxCascadeRCNN"), the stage samplers, the test ensembles, the mask strategies
and the stage-wise evaluator."""

from cascade_zoo.evaluation import EXTRA_EVALUATOR_REGISTRY

from . import results  # noqa: F401  (registers its part of the benchmark's reports)
from .build import stage_loss_weights
from .config import add_box_cascade_config
from .ensembles import TEST_ENSEMBLE_REGISTRY, merge_branch_predictions, register_test_ensemble
from .evaluation import StageWiseCOCOEvaluator, build_stagewise_evaluator, format_stagewise_tables
from .integral_loss import IntegralLossROIHeads
from .masks import MASK_STRATEGY_REGISTRY, MaskStrategy, build_mask_strategy
from .meta_arch import BoxCascadeRCNN
from .parallel import ParallelModulesROIHeads
from .roi_heads import BoxCascadeROIHeads
from .samplers import STAGE_SAMPLER_REGISTRY, StageSampler, build_stage_sampler
from .stages import StagePlan, StageRecord
from .statistics import TrainingIoUStats, TrainingIoUStatsHook

if "build_stagewise_evaluator" not in EXTRA_EVALUATOR_REGISTRY:
    EXTRA_EVALUATOR_REGISTRY.register(build_stagewise_evaluator)

__all__ = [
    "add_box_cascade_config",
    "BoxCascadeRCNN",
    "BoxCascadeROIHeads",
    "IntegralLossROIHeads",
    "MASK_STRATEGY_REGISTRY",
    "MaskStrategy",
    "ParallelModulesROIHeads",
    "STAGE_SAMPLER_REGISTRY",
    "StagePlan",
    "StageRecord",
    "TEST_ENSEMBLE_REGISTRY",
    "register_test_ensemble",
    "merge_branch_predictions",
    "StageSampler",
    "StageWiseCOCOEvaluator",
    "TrainingIoUStats",
    "TrainingIoUStatsHook",
    "build_mask_strategy",
    "build_stage_sampler",
    "build_stagewise_evaluator",
    "format_stagewise_tables",
    "stage_loss_weights",
]
