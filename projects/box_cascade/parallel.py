"""Parallel modules within a stage: K box heads + predictors per stage on the same proposals, each
trained on its own sample with its own positive fraction, their losses summed; at test their
class logits merged (averaged, or their maximum) and the boxes taken from one module, the "box
module", which also refines the boxes for the next stage. With K = 1 this is the core.

The box module's head and predictor keep the core's (and Detectron2's) names ``box_head.k`` /
``box_predictor.k``; the other modules are ``parallel_box_head.m.k`` /
``parallel_box_predictor.m.k`` (m = 0..K-2, in the order of the config's list without the box
module).
"""

import copy
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from .ensembles import merge_branch_predictions
from .head_rule import StageModule
from .roi_heads import BoxCascadeROIHeads
from .samplers import SampleProposals
from .stages import StageRecord, as_predictions, d2_pair

BRANCH_MERGES = ("mean_logits", "max_logits")


def _module_name(m: int) -> str:
    return f"module{m}"


@ROI_HEADS_REGISTRY.register()
class ParallelModulesROIHeads(BoxCascadeROIHeads):
    """The box-cascade core with K parallel modules in every stage (see module doc)."""

    #: ``parallel_box_head.m.k`` / ``parallel_box_predictor.m.k``: module m's head and
    #: predictor k, indexed like the core's.
    STAGE_MODULES = {
        **BoxCascadeROIHeads.STAGE_MODULES,
        "parallel_box_head": StageModule("head", branches=True),
        "parallel_box_predictor": StageModule("predictor", branches=True),
    }

    @configurable
    def __init__(
        self,
        *,
        positive_fractions: List[float],
        box_module: int = -1,
        merge: str = "mean_logits",
        **kwargs,
    ):
        """
        Args (beyond BoxCascadeROIHeads'):
            positive_fractions: one per module (K = its length), the largest share of positives
                in the module's sample.
            stage_modules: ``parallel_box_head`` and ``parallel_box_predictor``, each an
                ``nn.ModuleList`` with, for each of the K - 1 modules other than the box module,
                an ``nn.ModuleList`` of its heads or predictors (as many as the core's).
            box_module: the module whose boxes are output and refined for the next stage;
                -1: the one with the largest positive fraction.
            merge: how the modules' logits are merged at test, one of BRANCH_MERGES.
        """
        super().__init__(**kwargs)
        if merge not in BRANCH_MERGES:
            raise ValueError(f"MODEL.BOX_CASCADE.PARALLEL.MERGE must be one of {BRANCH_MERGES}")
        k = len(positive_fractions)
        if not all(0.0 < f <= 1.0 for f in positive_fractions) or k == 0:
            raise ValueError(
                "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS must hold one fraction in (0, 1] "
                f"per module, got {list(positive_fractions)}"
            )
        if box_module == -1:
            box_module = max(range(k), key=lambda m: positive_fractions[m])
        if not 0 <= box_module < k:
            raise ValueError(
                f"MODEL.BOX_CASCADE.PARALLEL.BOX_MODULE must be -1 or in 0..{k - 1}, "
                f"got {box_module}"
            )
        self.box_module = box_module
        self.merge = merge
        self.module_fractions = [positive_fractions[box_module]] + [
            f for m, f in enumerate(positive_fractions) if m != box_module
        ]
        if (
            len(self.parallel_box_head or ()) != k - 1
            or len(self.parallel_box_predictor or ()) != k - 1
        ):
            raise ValueError(f"{k - 1} parallel modules expected besides the box module")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        p = cfg.MODEL.BOX_CASCADE.PARALLEL
        fractions = list(p.POSITIVE_FRACTIONS) or [cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION]
        if len(fractions) != p.NUM_MODULES:
            raise ValueError(
                f"MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS has {len(fractions)} entries but "
                f"MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES is {p.NUM_MODULES}: {fractions}"
            )
        heads, predictors = [], []
        for _ in range(len(fractions) - 1):  # built as the core builds its own, with their init
            built = cls._init_box_head(cfg, input_shape)
            n_heads, n_predictors = len(ret["box_heads"]), len(ret["box_predictors"])
            heads.append(built["box_heads"][:n_heads])
            predictors.append(built["box_predictors"][:n_predictors])
        ret.update(
            positive_fractions=fractions,
            stage_modules={
                "parallel_box_head": nn.ModuleList(nn.ModuleList(h) for h in heads),
                "parallel_box_predictor": nn.ModuleList(nn.ModuleList(q) for q in predictors),
            },
            box_module=p.BOX_MODULE,
            merge=p.MERGE,
        )
        return ret

    @property
    def num_modules(self) -> int:
        return len(self.module_fractions)

    def _module_sampler(self, stage: int, m: int):
        """Module m's sampler at a stage: the stage's sampler with the module's positive
        fraction if it samples; otherwise (all refined boxes) the box module's boxes."""
        sampler = self.stage_samplers[stage]
        if not isinstance(sampler, SampleProposals):
            return None
        own = copy.copy(sampler)
        own.settings = {**sampler.settings, "positive_fraction": self.module_fractions[m]}
        return own

    def stage_samples(self, stage, proposals, targets):
        main = self._module_sampler(stage, 0) or self.stage_samplers[stage]
        samples = {"main": main(self, stage, proposals, targets)}
        for m in range(1, self.num_modules):
            sampler = self._module_sampler(stage, m)
            samples[_module_name(m)] = (
                samples["main"] if sampler is None else sampler(self, stage, proposals, targets)
            )
        storage = get_event_storage()
        for m, name in enumerate(["main"] + [_module_name(m) for m in range(1, self.num_modules)]):
            labels = [p.gt_classes for p in samples[name]]
            total = sum(len(x) for x in labels)
            fg = sum(int((x < self.num_classes).sum()) for x in labels)
            storage.put_scalar(f"stage{stage}/module{m}/positive_fraction", fg / max(total, 1))
        return samples

    def module_names(self) -> Dict[int, str]:
        """Config index (order of PARALLEL.POSITIVE_FRACTIONS) -> the name of the module's
        record: "main" for the box module, "module1".. for the others in config order."""
        others = [m for m in range(self.num_modules) if m != self.box_module]
        names = {self.box_module: "main"}
        names.update({m: _module_name(j + 1) for j, m in enumerate(others)})
        return names

    def predict_module(self, stage: int, config_index: int, box_features):
        """The predictions of one module (by config index) alone on pooled features."""
        name = self.module_names()[config_index]
        if name == "main":  # the core's own head and predictor of the stage
            return BoxCascadeROIHeads.predict(self, stage, box_features, {})[0]
        return self._module_predict(stage, int(name[len("module") :]), box_features)

    def _module_predict(self, stage: int, m: int, box_features):
        idx = self.plan.trained_stage(stage)
        head = self.parallel_box_head[m - 1][self.plan.head_index(idx)]
        predictor = self.parallel_box_predictor[m - 1][self.plan.predictor_index(idx)]
        return as_predictions(predictor(head(box_features)))

    def run_branches(self, record, features, samples) -> Dict[str, StageRecord]:
        out = {}
        for m in range(1, self.num_modules):
            name = _module_name(m)
            box_features = self.pool(features, samples[name])
            predictions = self._module_predict(record.stage, m, box_features)
            out[name] = StageRecord(record.stage, samples[name], box_features, predictions)
        return out

    def stage_losses(self, record):
        losses = super().stage_losses(record)
        idx = self.plan.trained_stage(record.stage)
        for m in range(1, self.num_modules):
            branch = record.branches[_module_name(m)]
            predictor = self.parallel_box_predictor[m - 1][self.plan.predictor_index(idx)]
            extra = predictor.losses(d2_pair(branch.predictions), branch.proposals)
            extra = self.weighted_stage_losses(record.stage, extra)
            losses.update({f"{k}_module{m}": v for k, v in extra.items()})
        return losses

    def predict(self, stage, box_features, memory):
        main, memory = super().predict(stage, box_features, memory)
        if self.training or self.num_modules == 1:
            return main, memory
        branches = {"main": main}
        for m in range(1, self.num_modules):
            branches[_module_name(m)] = self._module_predict(stage, m, box_features)
        return merge_branch_predictions(branches, box_branch="main", how=self.merge), memory
