"""Every RGA + PRM ablation config resolves to the paper's settings (Tables 4, 5, 6, 8, and
Table 1's single-module baselines), written out here as a literal table; each is one delta applied
over the COCO RGA + PRM config and over its shapes version."""

import pytest
from conftest import ROOT

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions

ABLATIONS = ROOT / "configs" / "RGA_PRM" / "ablations"
COCO = ROOT / "configs" / "RGA_PRM" / "faster_rcnn_R_50_FPN_1x_rga_prm.yaml"
SHAPES = ROOT / "configs" / "RGA_PRM" / "faster_rcnn_R_18_FPN_rga_prm_shapes.yaml"

# name: (positive fractions of the modules, RGA on, lambda0, annealed, sampling)
TABLE = {
    "rga_lambda3": ([0.25], True, 3.0, True, "soft"),  # Table 4
    "rga_lambda5": ([0.25], True, 5.0, True, "soft"),
    "rga_lambda9": ([0.25], True, 9.0, True, "soft"),
    "rga_constant7": ([0.25], True, 7.0, False, "soft"),
    "prm_1to1_1to1": ([0.5, 0.5], False, 7.0, True, "soft"),  # Table 5
    "prm_1to1_1to5": ([0.5, 1 / 6], False, 7.0, True, "soft"),
    "prm_three_modules": ([0.5, 0.1, 0.25], False, 7.0, True, "soft"),  # Table 6
    "rga_prm_three_modules": ([0.5, 0.1, 0.25], True, 7.0, True, "soft"),
    **{f"{mode}_1to{n}": ([1 / (1 + n)], False, 7.0, True, mode)  # Table 8
       for n in (1, 3, 5, 7) for mode in ("hard", "soft")},
    "soft_1to9": ([0.1], False, 7.0, True, "soft"),  # Tables 1, 5: PRM's 1:9 module trained alone
}  # fmt: skip


def test_every_ablation_config_is_in_the_table():
    assert {p.stem for p in ABLATIONS.glob("*.yaml")} == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_ablation_resolves_to_the_papers_settings(name):
    fractions, rga, lambda0, anneal, sampling = TABLE[name]
    delta = ABLATIONS / f"{name}.yaml"
    for base in (COCO, SHAPES):
        cfg = setup_cfg([base, delta])
        p = cfg.MODEL.BOX_CASCADE.PARALLEL
        assert p.NUM_MODULES == len(fractions)
        assert list(p.POSITIVE_FRACTIONS) == pytest.approx(fractions)
        assert cfg.MODEL.RGA.ENABLED == rga
        if rga:
            assert cfg.MODEL.RGA.LAMBDA0 == lambda0 and cfg.MODEL.RGA.ANNEAL == anneal
        assert cfg.MODEL.PRM.SAMPLING == sampling
        assert cfg.MODEL.ROI_HEADS.NAME == "PRMROIHeads"
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5]
        assert not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG  # Faster R-CNN's regression
    # one delta, whose header names the two configs it applies over
    rel = [[str(f.relative_to(ROOT / "configs")) for f in (base, delta)] for base in (COCO, SHAPES)]
    assert documented_compositions(delta) == rel


def test_main_configs_follow_table_2():
    d = ROOT / "configs" / "RGA_PRM"
    base = setup_cfg(str(d / "faster_rcnn_R_50_FPN_1x.yaml"))
    assert not base.MODEL.RGA.ENABLED and list(
        base.MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS
    ) == [0.25]
    full = setup_cfg(str(d / "faster_rcnn_R_50_FPN_1x_rga_prm.yaml"))
    assert full.MODEL.RGA.ENABLED and full.MODEL.RGA.LAMBDA0 == 7.0
    assert list(full.MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS) == [0.5, 0.1]
    assert full.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and full.SOLVER.BASE_LR == 0.02
    two_x = setup_cfg(str(d / "faster_rcnn_R_50_FPN_2x_rga_prm.yaml"))
    assert two_x.SOLVER.MAX_ITER == 2 * full.SOLVER.MAX_ITER
    cascade = setup_cfg(str(d / "cascade_rcnn_R_50_FPN_1x_rga_prm.yaml"))
    assert list(cascade.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.6, 0.7]
    assert cascade.MODEL.ROI_HEADS.NAME == "PRMROIHeads" and cascade.MODEL.RGA.ENABLED
