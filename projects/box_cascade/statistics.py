"""Training-sample statistics (the paper's Fig. 4): per stage, the IoU histogram of the boxes the
stage trains on, the share of them that are positives at each stage's threshold, and the number
of positives; the RPN proposals (before sampling) as a row of their own."""

import json
import os
from typing import Dict, List

import torch
from detectron2.engine import HookBase
from detectron2.structures import Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage


class TrainingIoUStats:
    """Accumulates IoU histograms of training boxes over iterations and logs per-iteration
    figures to EventStorage (so TensorBoard shows them).

    Rows: "rpn" (all RPN proposals of the batch, best IoU with any ground truth), then "stage1" ..
    "stageT" (the boxes each stage's loss is computed on, IoU with their matched ground truth).
    """

    def __init__(self, num_stages: int, bins: int, matchers):
        self.names = ["rpn"] + [f"stage{k + 1}" for k in range(num_stages)]
        self.bins = bins
        self.thresholds = [float(m.thresholds[1]) for m in matchers]
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(len(self.names), self.bins, dtype=torch.float64)
        # positives at each stage threshold, per row
        self.positives = torch.zeros(len(self.names), len(self.thresholds), dtype=torch.float64)

    def record_proposals(self, proposals: List[Instances], targets: List[Instances]) -> None:
        ious = [
            pairwise_iou(t.gt_boxes, p.proposal_boxes).max(dim=0).values
            if len(t) and len(p)
            else p.proposal_boxes.tensor.new_zeros(len(p))
            for p, t in zip(proposals, targets)
        ]
        self._record(0, torch.cat(ious) if ious else torch.zeros(0))

    def record_stage(self, stage: int, proposals: List[Instances]) -> None:
        ious = [
            matched_pairwise_iou(p.proposal_boxes, p.gt_boxes)
            if p.has("gt_boxes")
            else p.proposal_boxes.tensor.new_zeros(len(p))
            for p in proposals
        ]
        self._record(stage + 1, torch.cat(ious) if ious else torch.zeros(0))

    @torch.no_grad()
    def _record(self, row: int, ious: torch.Tensor) -> None:
        ious = ious.detach().float().clamp(0, 1).cpu()
        self.counts[row] += torch.histc(ious, bins=self.bins, min=0, max=1).double()
        above = torch.tensor(
            [(ious >= u).sum().item() for u in self.thresholds], dtype=torch.float64
        )
        self.positives[row] += above
        storage = get_event_storage()
        name = self.names[row]
        n = max(len(ious), 1)
        for u, count in zip(self.thresholds, above.tolist()):
            storage.put_scalar(f"train_iou/{name}/pos_share@{u:g}", count / n)
        if row > 0:
            storage.put_scalar(f"train_iou/{name}/num_pos", above[row - 1].item())
        if len(ious) and hasattr(storage, "put_histogram"):
            storage.put_histogram(f"train_iou/{name}", ious, bins=self.bins)

    def as_dict(self, counts=None, positives=None) -> Dict:
        """JSON-ready: bin edges, and per row the counts, total and share of positives at each
        stage threshold."""
        counts = self.counts if counts is None else counts
        positives = self.positives if positives is None else positives
        edges = torch.linspace(0, 1, self.bins + 1).tolist()
        rows = {}
        for i, name in enumerate(self.names):
            total = float(counts[i].sum())
            rows[name] = {
                "counts": [int(c) for c in counts[i].tolist()],
                "total": int(total),
                "positive_share": {
                    f"{u:g}": (float(positives[i, j]) / total if total else 0.0)
                    for j, u in enumerate(self.thresholds)
                },
            }
        return {"bin_edges": edges, "thresholds": self.thresholds, "rows": rows}


class TrainingIoUStatsHook(HookBase):
    """Every ``period`` iterations and after training: sums the statistics of all processes
    into the running totals and writes them to ``<output_dir>/training_iou_stats.json``.

    Insert it before the PeriodicCheckpointer with the same period: the totals are then complete
    when a checkpoint saves them (as hook state), so ``--resume`` continues them.
    """

    def __init__(self, stats: TrainingIoUStats, period: int, output_dir: str = None):
        self.stats = stats
        self.output_dir = output_dir  # default: the trainer's cfg.OUTPUT_DIR
        self.period = period
        self.total_counts = torch.zeros_like(stats.counts)
        self.total_positives = torch.zeros_like(stats.positives)

    @property
    def path(self) -> str:
        output_dir = self.output_dir or self.trainer.cfg.OUTPUT_DIR
        return os.path.join(output_dir, "training_iou_stats.json")

    def after_step(self):
        if self.period and (self.trainer.iter + 1) % self.period == 0:
            self.write()

    def after_train(self):
        self.write()

    def write(self) -> None:
        local = (self.stats.counts, self.stats.positives)
        gathered = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        self.total_counts += sum(c for c, _ in gathered)
        self.total_positives += sum(p for _, p in gathered)
        self.stats.reset()
        if comm.is_main_process():
            data = {
                "iteration": self.trainer.iter,
                **self.stats.as_dict(self.total_counts, self.total_positives),
            }
            with open(self.path, "w") as f:
                json.dump(data, f, indent=1)

    def state_dict(self):
        return {
            "counts": self.total_counts + self.stats.counts,
            "positives": self.total_positives + self.stats.positives,
        }

    def load_state_dict(self, state_dict):
        if state_dict["counts"].shape == self.total_counts.shape:
            self.total_counts = state_dict["counts"].clone()
            self.total_positives = state_dict["positives"].clone()
            self.stats.reset()
