"""FSCascade's part of the shapes benchmark's reports (cascade_zoo.results): its README's results
blocks, the Fig. 5 its tool makes from the runs' models, and the paper's headline claims."""

from pathlib import Path

from cascade_zoo.results.registry import Claim, Comparison, register_results

FS = "FSCascade/fs_cascade_R_18_FPN_shapes.yaml"
CASCADE = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"
# the head is the paper's equations, it reduces to the core's cascade with its switches off, and
# each ablation is one delta over the shapes config (the runs name the delta they make)
CHECKS = (
    "tests/fs_cascade/test_fs_equations.py::test_stage_chain_is_the_papers_equations_on_random_features",
    "tests/fs_cascade/test_fs_equations.py::test_eq2_reads_the_current_stages_features_in_every_line",
    "tests/fs_cascade/test_fs_equivalence.py::test_without_sharing_and_with_the_fc_head_it_is_the_cores_cascade",
    "tests/fs_cascade/test_fs_configs.py::test_ablation_resolves_to_the_papers_switches",
    *(f"run, not made yet: FSCascade's ablation `FSCascade/fs_cascade_R_18_FPN_shapes.yaml+"
      f"FSCascade/ablations/{delta}.yaml` ({what})"
      for delta, what in (("cascade", "Fig. 3a: Cascade R-CNN inside the FSCascade code"),
                          ("cfs", "Fig. 3b: CFS only"), ("lfs", "Fig. 3c: conv head and LFS"),
                          ("conv_head", "Table 1: conv head without LFS"))),
)  # fmt: skip

register_results(
    "fs_cascade",
    readme=Path(__file__).with_name("README.md"),
    figures=[
        (
            "images/fs_cascade_score_vs_iou.png",
            "FSCascade's Fig. 5: scores of the last stage's detections with IoU in [0.5, 0.75]",
        ),
    ],  # fmt: skip
    claims=[
        Claim(
            "narrows-last-stage-gap",
            "feature sharing narrows the gap between the last stage and the one before at low "
            "IoU (stage 3 minus stage 2 at AP50 is less negative than in Cascade R-CNN)",
            "abstract, Fig. 1, Fig. 3, conclusion (1)",
            "stage 3 minus stage 2 at AP50 (R-50 1x, COCO val): -1.1 in Cascade R-CNN, -0.4 "
            "with CFS alone, -0.5 with LFS alone (Sec. 4.2; FSCascade's own value is plotted "
            "only)",
            Comparison(FS, CASCADE, "AP50", stage="stage3-stage2", baseline_stage="stage3-stage2"),
            CHECKS,
        ),
        Claim(
            "above-cascade-last-stage",
            "FSCascade's last stage is above Cascade R-CNN's last stage alone",
            "Table 2",
            "+1.5 AP on COCO test-dev (R-50, 2x: 41.7 against 40.2 of Cascade R-CNN's last "
            "stage as the FSCascade paper re-implements it)",
            Comparison(FS, CASCADE, "AP", baseline_stage="stage3"),
            CHECKS,
        ),
        Claim(
            "above-cascade-ensemble",
            "FSCascade's last stage alone is above Cascade R-CNN's three-stage ensemble",
            "Table 2",
            "+1.1 AP on COCO test-dev (R-50, 2x: 41.7 against 40.6 of the original Cascade R-CNN's "
            "three-stage ensemble)",
            Comparison(FS, CASCADE, "AP"),
            CHECKS,
        ),
    ],
)
