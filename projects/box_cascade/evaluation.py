"""Stage-wise evaluation (the paper's Table 2, Fig. 8 and Table 8): COCO AP at every IoU from 0.50
to 0.95 and APs/APm/APl for each stage's own detections and the ensemble's, and proposal recall
(AR@100, AR@1000) of the boxes entering the first stage and of those each stage regresses."""

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from cascade_zoo.evaluation import PerIoUCOCOEvaluator
from cascade_zoo.utils.markdown import markdown_table

logger = logging.getLogger(__name__)

AP_COLUMNS = ["AP"] + [f"AP{50 + 5 * i}" for i in range(10)] + ["APs", "APm", "APl"]
AR_COLUMNS = ["AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000"]
RESULTS_FILE = "stagewise_results.json"


class StageWiseCOCOEvaluator(DatasetEvaluator):
    """Evaluates the "stage_instances" and "stage_proposals" that BoxCascadeRCNN returns.

    Results: {"stage1/bbox": {...}, ..., "ensemble/bbox": {...}, "proposals/rpn": {...},
    "proposals/stage1": {...}, ...}; also logged as two tables and written to
    ``<output_dir>/stagewise_results.json``.
    """

    def __init__(
        self,
        dataset_name: str,
        num_stages: int,
        *,
        output_dir: str = None,
        distributed: bool = True,
        use_fast_impl: bool = False,
    ):
        base = PerIoUCOCOEvaluator(
            dataset_name, tasks=("bbox",), distributed=distributed, use_fast_impl=use_fast_impl
        )
        stages = [f"stage{k + 1}" for k in range(num_stages)]
        # copies share the loaded COCO ground truth; each keeps its own predictions
        self._detections = OrderedDict((k, copy.copy(base)) for k in stages + ["ensemble"])
        self._proposals = OrderedDict((k, copy.copy(base)) for k in ["rpn"] + stages)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._missing = False

    def reset(self):
        for ev in (*self._detections.values(), *self._proposals.values()):
            ev.reset()
        self._missing = False

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "stage_instances" not in out:
                self._missing = True
                continue
            for key, ev in self._detections.items():
                if key in out["stage_instances"]:
                    ev.process([inp], [{"instances": out["stage_instances"][key]}])
            for key, ev in self._proposals.items():
                if key in out.get("stage_proposals", {}):
                    ev.process([inp], [{"proposals": out["stage_proposals"][key]}])

    def evaluate(self):
        if self._missing:
            raise RuntimeError(
                "Stage-wise evaluation got outputs without 'stage_instances': use "
                "MODEL.META_ARCHITECTURE 'BoxCascadeRCNN' with MODEL.BOX_CASCADE.STAGEWISE_TEST "
                "True (or drop the stage-wise evaluator)"
            )
        results = OrderedDict()
        for key, ev in self._detections.items():
            res = ev.evaluate()
            if res.get("bbox"):
                results[f"{key}/bbox"] = {k: v for k, v in res["bbox"].items() if "-" not in k}
        for key, ev in self._proposals.items():
            res = ev.evaluate()
            if res.get("box_proposals"):
                results[f"proposals/{key}"] = res["box_proposals"]
        if not comm.is_main_process():
            return {}
        logger.info(
            f"Stage-wise detection AP on {self._dataset_name}:\n" + format_stagewise_tables(results)
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=1)
        return results


def format_stagewise_tables(results: Dict[str, Dict[str, float]]) -> str:
    """The stage-wise results as two Markdown tables (detections; proposal recall)."""
    det = [(k.split("/")[0], v) for k, v in results.items() if k.endswith("/bbox")]
    prop = [(k.split("/")[1], v) for k, v in results.items() if k.startswith("proposals/")]
    parts = []
    if det:
        parts.append(_table(det, AP_COLUMNS, "detections"))
    if prop:
        parts.append(_table(prop, AR_COLUMNS, "proposals"))
    return "\n\n".join(parts)


def _table(rows, columns: List[str], first: str) -> str:
    return markdown_table(
        [first] + columns, [[name] + [metrics.get(c) for c in columns] for name, metrics in rows]
    )


def build_stagewise_evaluator(cfg, dataset_name: str, output_folder: str):
    """For ZooTrainer (in cascade_zoo.evaluation.EXTRA_EVALUATOR_REGISTRY): the stage-wise
    evaluator when the model returns stage-wise outputs, else None."""
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from cascade_zoo.utils.env import compiled_ops_available

    from .roi_heads import BoxCascadeROIHeads

    heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    if not (
        cfg.MODEL.META_ARCHITECTURE == "BoxCascadeRCNN"
        and issubclass(heads, BoxCascadeROIHeads)
        and cfg.MODEL.BOX_CASCADE.STAGEWISE_TEST
    ):
        return None
    num_stages = heads.num_stages_at_test(cfg)
    return StageWiseCOCOEvaluator(
        dataset_name,
        num_stages,
        output_dir=output_folder,
        use_fast_impl=compiled_ops_available(),
    )
