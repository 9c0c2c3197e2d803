"""Every FSCascade config loads and builds; the ablations resolve to the paper's switches (Fig. 3,
Table 1, Sec. 3.2), written out here as a literal table, each one delta applied over the COCO
config and over its shapes version; the COCO configs follow the paper's recipe (Sec. 4.1); the
benchmark config is the Cascade benchmark's model plus the FSCascade head."""

import pytest
from conftest import PROTOCOLS, ROOT, config_id, flat_config
from detectron2.modeling import build_model

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions

CONFIGS = ROOT / "configs" / "FSCascade"
ABLATIONS = CONFIGS / "ablations"
COCO, SHAPES = CONFIGS / "fs_cascade_R_50_FPN_20e.yaml", CONFIGS / "fs_cascade_R_18_FPN_shapes.yaml"

# name: (CFS, LOC_HEAD, LFS); "" is the main config, FSCascade itself (Fig. 3d)
TABLE = {
    "": (True, "conv", "serial"),
    "cascade": (False, "fc", "none"),  # Fig. 3a, Table 1 first row
    "cfs": (True, "fc", "none"),  # Fig. 3b
    "lfs": (False, "conv", "serial"),  # Fig. 3c, Table 1 "w/ LFS"
    "conv_head": (False, "conv", "none"),  # Table 1 "w/o LFS"
    "lfs_parallel": (False, "conv", "parallel"),  # Sec. 3.2, the parallel form
    "lfs_memory": (True, "conv", "serial_memory"),  # not the paper's: B_{i-1} from memory
}


def _files(name):
    """The COCO and the shapes config of an ablation, each as the files merged in order."""
    if not name:
        return [[COCO], [SHAPES]]
    return [[COCO, ABLATIONS / f"{name}.yaml"], [SHAPES, ABLATIONS / f"{name}.yaml"]]


# the main configs, each ablation over the COCO and the shapes one, the shapes one under each
# benchmark protocol
ALL = [[p] for p in sorted(CONFIGS.glob("*.yaml")) if not p.name.startswith("Base-")]
ALL += [files for name in TABLE if name for files in _files(name)]
ALL += [[SHAPES, protocol] for protocol in PROTOCOLS]


@pytest.mark.parametrize("files", ALL, ids=config_id)
def test_config_loads_and_builds(files):
    cfg = setup_cfg(files, ["MODEL.DEVICE", "cpu"])
    heads = build_model(cfg).roi_heads
    fs = cfg.MODEL.FS_CASCADE
    assert type(heads).__name__ == "FSCascadeROIHeads"
    assert heads.cfs == fs.CFS and heads.lfs == fs.LFS
    assert (heads.loc_head is not None) == (fs.LOC_HEAD == "conv")
    assert heads.reads_memory == (fs.LOC_HEAD == "conv" and fs.LFS == "serial_memory")
    # the paper's test: the last stage alone; ground truth at later stages as the Cascade
    # baseline's, except where per-box memory needs the boxes kept
    assert heads.test_ensemble == "none"
    assert heads.later_stage_gt == ("keep" if heads.reads_memory else "readd")
    assert heads.plan.num_run_at_test == 3


def test_every_ablation_config_is_in_the_table():
    on_disk = {p.name for p in ABLATIONS.glob("*.yaml")}
    assert on_disk == {f"{name}.yaml" for name in TABLE if name}


@pytest.mark.parametrize("name", list(TABLE), ids=lambda n: n or "fscascade")
def test_ablation_resolves_to_the_papers_switches(name):
    coco, shapes = _files(name)
    for files in (coco, shapes):
        fs = setup_cfg(files).MODEL.FS_CASCADE
        assert (fs.CFS, fs.LOC_HEAD, fs.LFS) == TABLE[name], files
    if name:  # one delta, whose header names the two configs it applies over
        rel = [[str(f.relative_to(ROOT / "configs")) for f in files] for files in (coco, shapes)]
        assert documented_compositions(coco[-1]) == rel
        cfg = setup_cfg(coco)
        assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.DATASETS.TRAIN == ("coco_2017_train",)


def test_coco_configs_follow_the_papers_recipe():
    # Sec. 4.1: 8 GPUs x 2 images, lr 0.02, 20 epochs, the first at lr / 10, lr / 10 after epochs
    # 10 and 16; 1200 x 800 in training and test. An epoch: the 117266 images of COCO
    # train2017 with annotations (what Detectron2 trains on), 16 per iteration.
    epoch = 117266 // 16
    for depth in (50, 101):
        cfg = setup_cfg(str(CONFIGS / f"fs_cascade_R_{depth}_FPN_20e.yaml"))
        s = cfg.SOLVER
        assert cfg.MODEL.RESNETS.DEPTH == depth and f"R-{depth}.pkl" in cfg.MODEL.WEIGHTS
        assert s.IMS_PER_BATCH == 16 and s.BASE_LR == 0.02
        assert s.MAX_ITER == 20 * epoch and tuple(s.STEPS) == (10 * epoch, 16 * epoch)
        assert s.GAMMA == 0.1
        assert (s.WARMUP_METHOD, s.WARMUP_FACTOR, s.WARMUP_ITERS) == ("constant", 0.1, epoch)
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1200
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1200)
        assert cfg.MODEL.FPN.OUT_CHANNELS == 256 and cfg.MODEL.ROI_BOX_HEAD.FC_DIM == 1024
        assert tuple(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == (0.5, 0.6, 0.7)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
def test_benchmark_config_is_the_cascade_benchmark_plus_the_fscascade_head(protocol):
    cascade_config = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_R_18_FPN_shapes.yaml"
    fs = flat_config(setup_cfg([str(SHAPES), str(protocol)]))
    cascade = flat_config(setup_cfg([str(cascade_config), str(protocol)]))
    assert {k for k in fs if fs[k] != cascade[k]} == {
        "MODEL.ROI_HEADS.NAME",  # FSCascadeROIHeads, with MODEL.FS_CASCADE's defaults: the paper's
        "MODEL.BOX_CASCADE.TEST_ENSEMBLE",  # none: the last stage alone
    }
    assert fs["MODEL.ROI_HEADS.NAME"] == "FSCascadeROIHeads"
    assert (fs["MODEL.FS_CASCADE.CFS"], fs["MODEL.FS_CASCADE.LOC_HEAD"]) == (True, "conv")
    assert fs["MODEL.FS_CASCADE.LFS"] == "serial"
