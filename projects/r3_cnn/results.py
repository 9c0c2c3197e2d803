"""R3-CNN's part of the shapes benchmark's reports (cascade_zoo.results): its README's results
blocks, and Table 2's evaluations of the trained 3-loop model with L_e = 1..5 test loops."""

from pathlib import Path

from cascade_zoo.results.registry import register_results

register_results(
    "r3_cnn",
    readme=Path(__file__).with_name("README.md"),
    eval_variants={
        # Table 2: the 3-loop model evaluated with L_e = 1..5 loops
        "Benchmark/r3_cnn_R_18_FPN_shapes": [
            (f"L_e={n}", ["MODEL.BOX_CASCADE.NUM_TEST_STAGES", str(n)]) for n in range(1, 6)
        ],
    },
)
