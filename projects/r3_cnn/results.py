"""R3-CNN's part of the shapes benchmark's reports (cascade_zoo.results): its README's results
blocks, Table 2's evaluations of the trained 3-loop model with L_e = 1..5 test loops, and the
paper's headline claims."""

from pathlib import Path

from cascade_zoo.results.registry import Claim, Comparison, register_results

R3 = "R3CNN/r3_cnn_R_18_FPN_shapes.yaml"
LOOPS = "tests/r3_cnn/test_r3_loops.py"
# the loops are the paper's, one loop is Faster R-CNN with a class-agnostic regressor, the box
# branch is one stage of the core's cascade, and the shared head's gradient is the loops' sum
CHECKS = (
    f"{LOOPS}::test_training_loops_equal_a_literal_restatement_losses_and_gradients",
    f"{LOOPS}::test_detections_equal_a_literal_restatement",
    f"{LOOPS}::test_one_loop_is_faster_rcnn_with_class_agnostic_regression",
    f"{LOOPS}::test_box_branch_is_one_stage_of_the_cores_cascade",
    f"{LOOPS}::test_shared_head_gets_the_sum_of_the_loops_weighted_gradients",
)

register_results(
    "r3_cnn",
    readme=Path(__file__).with_name("README.md"),
    eval_variants={
        # Table 2: the 3-loop model evaluated with L_e = 1..5 loops
        "R3CNN/r3_cnn_R_18_FPN_shapes": [
            (f"L_e={n}", ["MODEL.BOX_CASCADE.NUM_TEST_STAGES", str(n)]) for n in range(1, 6)
        ],
    },
    claims=[
        Claim(
            "above-one-stage",
            "the naive R3-CNN (one head, three loops) is above the detector with one head "
            "looped once",
            "Table 1 (rows 1 and 4), Table 2",
            "+2.7 box AP on COCO minival (R-50: 40.9 against Mask R-CNN's 38.2; both with a mask "
            "branch, compared here without one)",
            Comparison(R3, "Baselines/faster_rcnn_R_18_FPN_shapes.yaml", "AP"),
            CHECKS,
        ),
        Claim(
            "close-to-cascade",
            "one shared head looped three times comes close to a three-stage cascade with "
            "three heads",
            "Table 1",
            "-0.8 box AP on COCO minival (R-50: 40.9 against HTC's 41.7, a three-stage mask "
            "cascade run without its semantic branch; compared here with the box cascade); "
            "tolerance here 1 AP",
            Comparison(
                R3, "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml", "AP", expect="~", size=1.0
            ),
            CHECKS,
        ),
        Claim(
            "test-loops-help",
            "three test loops are above one loop of the same model",
            "Table 2",
            "+3.0 box AP on COCO minival (L_e = 3: 40.9, L_e = 1: 37.9)",
            Comparison(R3, R3, "AP", baseline_stage="stage1"),
            (f"{LOOPS}::test_test_loops_change_the_detections",) + CHECKS[:2],
        ),
    ],
)
