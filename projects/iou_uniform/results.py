"""IoU-Uniform R-CNN's part of the shapes benchmark's reports (cascade_zoo.results): its README's
results blocks, Table 6's "EFO: No" evaluation of the trained models, and the figures its tools
make from the runs' models."""

from pathlib import Path

from cascade_zoo.results.registry import register_results

register_results(
    "iou_uniform",
    readme=Path(__file__).with_name("README.md"),
    eval_variants={
        # Table 6 "EFO: No" / Fig. 8(a): the trained model ranked by the IoU predicted at the
        # input boxes, without re-pooling at the refined ones
        f"Benchmark/iou_uniform_{arch}_rcnn_R_18_FPN_shapes": [
            ("no EFO", ["MODEL.IOU_UNIFORM.EFO", "False"])
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
)
