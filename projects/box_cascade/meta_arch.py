"""GeneralizedRCNN that also returns the ROI heads' stage-wise outputs at test time."""

from typing import Dict, List, Optional

import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances


@META_ARCH_REGISTRY.register()
class BoxCascadeRCNN(GeneralizedRCNN):
    """Detectron2's GeneralizedRCNN (same parameters, same training), whose inference also
    passes on what the ROI heads return besides the detections: with
    ``MODEL.BOX_CASCADE.STAGEWISE_TEST``, each output dict gets

    - "stage_instances": {"stage1": Instances, ..., "ensemble": Instances}, each stage's own
      detections and the ensemble's, in the input image's size;
    - "stage_proposals": {"rpn": Instances, "stage1": Instances, ...}, the boxes entering the
      first stage and those each stage regresses, with ``objectness_logits`` (the RPN's, or the
      stage's foreground probability) for proposal recall.
    """

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        if detected_instances is not None:
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, _ = self.proposal_generator(images, features, None)
        else:
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
        results, extras = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return results
        # detector_postprocess rescales boxes in place, and stage outputs may share them with the
        # final results: rescale copies, before the final results are rescaled.
        stagewise = [{} for _ in batched_inputs]
        for key in ("stage_instances", "stage_proposals"):
            for name, per_image in (extras or {}).get(key, {}).items():
                for out, inst, inp in zip(stagewise, per_image, batched_inputs):
                    height = inp.get("height", inst.image_size[0])
                    width = inp.get("width", inst.image_size[1])
                    out.setdefault(key, {})[name] = detector_postprocess(_copy(inst), height, width)
        processed = GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        for out, extra in zip(processed, stagewise):
            out.update(extra)
        return processed


def _copy(instances: Instances) -> Instances:
    """A shallow copy whose Boxes fields are cloned."""
    fields = {
        k: v.clone() if isinstance(v, Boxes) else v for k, v in instances.get_fields().items()
    }
    return Instances(instances.image_size, **fields)
