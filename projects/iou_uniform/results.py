"""IoU-Uniform R-CNN's part of the shapes benchmark's reports (cascade_zoo.results): its README's
results blocks, Table 6's "EFO: No" evaluation of the trained models, the figures its tools
make from the runs' models, and the paper's headline claims."""

from pathlib import Path

from cascade_zoo.results.registry import Claim, Comparison, register_results

FASTER = "Baselines/faster_rcnn_R_18_FPN_shapes.yaml"
CASCADE = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"
IU_FASTER = "IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml"
IU_CASCADE = "IoUUniform/iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml"
TESTS = "tests/iou_uniform"
# the generated boxes, the losses and the scoring are the paper's restated slowly, and with the
# branch off the heads are the core's Faster and Cascade R-CNN
CHECKS = (
    f"{TESTS}/test_iu_sampler.py::test_selection_equals_the_slow_per_box_restatement",
    f"{TESTS}/test_iu_sampler.py::test_candidates_follow_equation_1_ranges",
    f"{TESTS}/test_iu_training.py::test_losses_equal_the_slow_restatement",
    f"{TESTS}/test_iu_training.py::test_branch_off_equals_the_cores_faster_and_cascade_rcnn",
    f"{TESTS}/test_iu_inference.py::test_detections_equal_the_literal_scoring",
)


def _runs(model: str) -> tuple:
    """The runs that separate the method from its test-time scoring and its sample count."""
    return (
        f"run: `{model}` evaluated with its IoU factor set to 1 at test (the class score alone, "
        '`MODEL.IOU_UNIFORM.TEST_IOU_SCORING False`: its eval variant "no IoU scoring")',
        f"run, not made yet: `{model}+IoUUniform/ablations/equal_samples.yaml` "
        "(`MODEL.IOU_UNIFORM.NUM_SAMPLES_VS_RPN 1.0`: as many generated boxes as RPN positives)",
    )


register_results(
    "iou_uniform",
    readme=Path(__file__).with_name("README.md"),
    eval_variants={
        # Table 6 "EFO: No" / Fig. 8(a): the trained model ranked by the IoU predicted at the
        # input boxes, without re-pooling at the refined ones
        f"IoUUniform/iou_uniform_{arch}_rcnn_R_18_FPN_shapes": [
            ("no EFO", ["MODEL.IOU_UNIFORM.EFO", "False"]),
            # the IoU factor set to 1 at test: separates the test-time scoring from training
            ("no IoU scoring", ["MODEL.IOU_UNIFORM.TEST_IOU_SCORING", "False"]),
        ]
        for arch in ("faster", "cascade")
    },
    figures=[
        (
            "images/iou_uniform_fig3_gain.png",
            "IoU-Uniform's Fig. 3: the regression's IoU gain by the proposal's IoU",
        ),
        (
            "images/iou_uniform_fig6_refined_iou.png",
            "IoU-Uniform's Fig. 6: IoU of the refined boxes",
        ),
        (
            "images/iou_uniform_fig8_predicted_iou.png",
            "IoU-Uniform's Fig. 8: predicted against true IoU, without and with EFO",
        ),
    ],  # fmt: skip
    claims=[
        Claim(
            "faster-above-faster",
            "IoU-Uniform Faster R-CNN is above Faster R-CNN",
            "Table 2, Table 1",
            "+2.7 AP on COCO val (R-50: 39.1 against 36.4); +5.2 AP on VOC 2007 (Table 1)",
            Comparison(IU_FASTER, FASTER, "AP"),
            CHECKS + _runs(IU_FASTER),
        ),
        Claim(
            "faster-gain-at-high-iou",
            "its gain is largest at high IoU",
            "Table 1",
            "+12.2 AP90 against +0.7 AP50 on VOC 2007 (R-50)",
            Comparison(IU_FASTER, FASTER, "AP90-AP50"),
            CHECKS + _runs(IU_FASTER),
        ),
        Claim(
            "cascade-above-cascade",
            "IoU-Uniform Cascade R-CNN is above Cascade R-CNN",
            "Table 2, Table 1",
            "+0.5 AP on COCO val (R-50: 40.9 against 40.4; R-101: +0.4); +1.2 AP on VOC 2007 "
            "(R-50, Table 1; -0.1 with R-101); both built on mmdetection, whose Cascade R-CNN "
            "averages the stages' logits at test",
            # the same test ensemble on both sides: the mean of the stages' logits
            Comparison(IU_CASCADE, CASCADE, "AP", baseline_variant="mean_logits ensemble"),
            CHECKS
            + (
                f"{TESTS}/test_iu_training.py::test_cascade_losses_equal_the_slow_restatement",
                f"run: the Cascade baseline with its own test ensemble (`{CASCADE}` "
                "`all_on_final`, the main table's row) against the same-ensemble comparison "
                "above ('mean_logits ensemble', IoU-Uniform's)",
            )
            + _runs(IU_CASCADE),
        ),
        Claim(
            "efo-helps",
            "eliminating the feature offsets (the IoU predicted on features pooled again at "
            "the refined box) raises AP",
            "Table 6, Fig. 8",
            "+2.0 AP on VOC 2007 (R-50, IoU branch trained on generated boxes: 52.2 against "
            "50.2 without EFO)",
            Comparison(IU_FASTER, IU_FASTER, "AP", baseline_variant="no EFO"),
            (
                f"{TESTS}/test_iu_inference.py::test_detections_equal_the_literal_scoring",
                f"{TESTS}/test_iu_inference.py::test_efo_changes_the_iou_scores_and_not_the_boxes",
            ),
        ),
        Claim(
            "uniform-at-equal-count",
            "IoU-uniform generated boxes help at the same number of samples as the RPN's "
            "positives (the gain is not only more samples)",
            "Table 5",
            "+3.2 AP on VOC 2007 (R-50: 53.4 against the baseline's 50.2)",
            Comparison(f"{IU_FASTER}+IoUUniform/ablations/equal_samples.yaml", FASTER, "AP"),
            CHECKS,
        ),
    ],
)
