"""Parallel R-CNN Modules (PRM, Sec. 3.2 of the paper) on the box-cascade core.

``PRMROIHeads`` is the core's ``ParallelModulesROIHeads`` (K box heads + predictors per stage on
the shared backbone and RPN, each trained on its own sample of the same proposals with its own
positive fraction; at test the modules' pre-softmax logits averaged and the boxes taken from the
module with the largest positive fraction) with the paper's two further switches:

- ``MODEL.PRM.SAMPLING "hard"``: a module's positives are duplicated until they are its ratio's
  share of the batch, and negatives fill the rest (appendix A, Table 8); "soft" (default) is
  Detectron2's sampling, which takes all positives when there are fewer than the share;
- ``MODEL.PRM.EVAL_MODULE m``: detections from module m alone (Tables 1 and 5).

On Cascade R-CNN every stage has K modules; the boxes refined for the next stage come from the
box module (the largest positive fraction), as the test-time boxes do. The paper does not say how
its Cascade R-CNN + PRM refines between stages; this is the choice made here. Later stages train
every module on all refined boxes of the previous stage (the cascade samples only at stage 1).
"""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances

from box_cascade import ParallelModulesROIHeads

__all__ = ["PRMROIHeads", "hard_ratio_sample", "SAMPLINGS"]

SAMPLINGS = ("soft", "hard")


def hard_ratio_sample(
    sampled: List[Instances], positive_fraction: float, batch_size: int, num_classes: int
) -> List[Instances]:
    """Turn Detectron2's (soft) sample of each image into a hard-ratio one: if it has fewer than
    ``int(batch_size * positive_fraction)`` positives (but at least one), positives are drawn
    again with replacement up to that number, and the first negatives fill the rest of the
    batch. Images without positives are left as they are."""
    target = int(batch_size * positive_fraction)
    out = []
    for inst in sampled:
        fg = inst.gt_classes < num_classes
        pos, neg = torch.nonzero(fg).flatten(), torch.nonzero(~fg).flatten()
        if len(pos) == 0 or len(pos) >= target:
            out.append(inst)
            continue
        extra = pos[torch.randint(len(pos), (target - len(pos),), device=pos.device)]
        keep = torch.cat([pos, extra, neg[: max(batch_size - target, 0)]])
        out.append(inst[keep])
    return out


class _HardRatio:
    """A module's sampler followed by :func:`hard_ratio_sample`."""

    def __init__(self, sampler, positive_fraction: float):
        self.sampler = sampler
        self.positive_fraction = positive_fraction

    def __call__(self, heads, stage, proposals, targets):
        sampled = self.sampler(heads, stage, proposals, targets)
        batch = self.sampler.settings.get("batch_size_per_image") or heads.batch_size_per_image
        return hard_ratio_sample(sampled, self.positive_fraction, batch, heads.num_classes)


@ROI_HEADS_REGISTRY.register()
class PRMROIHeads(ParallelModulesROIHeads):
    """Parallel R-CNN Modules with hard / soft sampling and single-module evaluation."""

    @configurable
    def __init__(self, *, sampling: str = "soft", eval_module: int = -1, **kwargs):
        super().__init__(**kwargs)
        if sampling not in SAMPLINGS:
            raise ValueError(f"MODEL.PRM.SAMPLING must be one of {SAMPLINGS}, got {sampling!r}")
        k = self.num_modules
        if not -1 <= eval_module < k:
            raise ValueError(
                f"MODEL.PRM.EVAL_MODULE must be -1 or in 0..{k - 1}, got {eval_module}"
            )
        self.sampling = sampling
        self.eval_module = eval_module

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(sampling=cfg.MODEL.PRM.SAMPLING, eval_module=cfg.MODEL.PRM.EVAL_MODULE)
        return ret

    def _module_sampler(self, stage: int, m: int):
        sampler = super()._module_sampler(stage, m)
        if sampler is None or self.sampling == "soft":
            return sampler
        return _HardRatio(sampler, self.module_fractions[m])

    def predict(self, stage, box_features, memory):
        if self.training or self.eval_module < 0:
            return super().predict(stage, box_features, memory)
        return self.predict_module(stage, self.eval_module, box_features), {}
