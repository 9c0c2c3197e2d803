"""The vectorized CPU gradient of ROIAlign (cascade_zoo.roi_align) against torchvision's own
backward kernel, on boxes inside, across and outside the feature map, degenerate boxes, both
sampling modes and both alignments; and in a model, where it must change no prediction and
no parameter gradient beyond rounding."""

import pytest
import torch
from conftest import INSTANT, run_tool, trainer_model_losses
from detectron2.layers import ROIAlign
from torchvision.ops import roi_align

from cascade_zoo import setup_cfg
from cascade_zoo.roi_align import (
    VectorizedBackwardROIAlign,
    roi_align_input_grad,
    use_roi_align_backward,
)


def _random_rois(num, num_images, height, width, scale, generator, dtype):
    """Boxes in image coordinates: most inside the map, some across its edges or outside it."""
    size = torch.tensor([width, height], dtype=dtype) / scale
    corner = torch.rand(num, 2, generator=generator, dtype=dtype) * size * 1.4 - 0.2 * size
    extent = torch.rand(num, 2, generator=generator, dtype=dtype) * size * 0.6
    images = torch.randint(0, num_images, (num, 1), generator=generator).to(dtype)
    return torch.cat([images, corner, corner + extent], 1)


def _torchvision_grad(x, rois, grad_out, output_size, scale, sampling_ratio, aligned):
    x = x.detach().requires_grad_()
    out = roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return grad


def _assert_equal_to_rounding(got, expected):
    """float32 sums of many boxes' terms in another order: equal to 1e-5 of the largest value."""
    assert expected.abs().max() > 0
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_input_grad_equals_torchvision_backward(sampling_ratio, aligned, output_size):
    gen = torch.Generator().manual_seed(sampling_ratio * 10 + aligned + output_size[1])
    num_images, channels, height, width, scale = 3, 5, 19, 26, 0.25
    x = torch.randn(num_images, channels, height, width, generator=gen, dtype=torch.float64)
    rois = _random_rois(60, num_images, height, width, scale, gen, torch.float64)
    # degenerate boxes: a point, a line, one far outside the map (torchvision's kernel itself
    # fails on boxes with x1 < x0 when aligned)
    rois[:3, 1:] = torch.tensor(
        [[20.0, 20.0, 20.0, 20.0], [8.0, 5.0, 8.0, 60.0], [500.0, 500.0, 540.0, 530.0]],
        dtype=torch.float64,
    )
    grad_out = torch.randn(60, channels, *output_size, generator=gen, dtype=torch.float64)
    expected = _torchvision_grad(x, rois, grad_out, output_size, scale, sampling_ratio, aligned)
    got = roi_align_input_grad(grad_out, rois, x.shape, scale, sampling_ratio, aligned)
    assert got.shape == x.shape
    assert expected.abs().max() > 1  # the boxes reach the map
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_float32_grad_and_large_boxes_at_a_fine_level():
    # FPN level 2 of a 256 x 320 image (stride 4), boxes up to 200 pixels: grids of 1 to 8
    # samples per bin, windows of several sizes in one call
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, 80, generator=gen)
    rois = _random_rois(300, 2, 64, 80, 0.25, gen, torch.float32)
    grad_out = torch.randn(300, 16, 7, 7, generator=gen)
    expected = _torchvision_grad(x, rois, grad_out, (7, 7), 0.25, 0, True)
    got = roi_align_input_grad(grad_out, rois, x.shape, 0.25, 0, True)
    _assert_equal_to_rounding(got, expected)
    assert (got == 0).equal(expected == 0)  # the same cells are touched


def test_no_boxes_give_a_zero_gradient():
    got = roi_align_input_grad(
        torch.zeros(0, 4, 7, 7), torch.zeros(0, 5), (2, 4, 9, 9), 0.5, 0, True
    )
    assert got.shape == (2, 4, 9, 9) and not got.any()


def test_module_matches_detectron2_roialign_forward_and_backward():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 20, generator=gen)
    rois = _random_rois(25, 2, 16, 20, 0.125, gen, torch.float32)
    grad_out = torch.randn(25, 4, 7, 7, generator=gen)
    outputs, grads = [], []
    for module in (
        ROIAlign((7, 7), 0.125, 0, True),
        VectorizedBackwardROIAlign((7, 7), 0.125, 0, True),
    ):
        inp = x.clone().requires_grad_()
        out = module(inp, rois)
        out.backward(grad_out)
        outputs.append(out.detach())
        grads.append(inp.grad)
    assert torch.equal(outputs[0], outputs[1])  # torchvision's forward either way
    _assert_equal_to_rounding(grads[1], grads[0])
    with torch.no_grad():  # inference takes torchvision's path
        assert torch.equal(VectorizedBackwardROIAlign((7, 7), 0.125, 0, True)(x, rois), outputs[0])


def _loss_and_grads(cfg, batch):
    model, losses = trainer_model_losses(cfg, batch)
    total = sum(losses.values())
    total.backward()
    return (
        model,
        total.detach(),
        {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize(
    "config", ["cascade_mask_rcnn_instant_test.yaml", "faster_rcnn_instant_test.yaml"]
)
def test_trainer_model_uses_the_option_and_both_give_the_same_gradients(config):
    from detectron2.data import build_detection_train_loader
    from detectron2.utils.env import seed_all_rng

    models, results = {}, {}
    for backward in ("torchvision", "vectorized"):
        cfg = setup_cfg(
            str(INSTANT / config),
            ["ZOO.ROI_ALIGN_CPU_BACKWARD", backward, "DATALOADER.NUM_WORKERS", 0],
        )
        if not results:
            # Detectron2's sampler draws its seed, and the augmentations draw, from NumPy
            seed_all_rng(0)
            batch = next(iter(build_detection_train_loader(cfg)))
        models[backward], *results[backward] = _loss_and_grads(cfg, batch)
    kinds = {b: {type(m) for m in models[b].modules() if isinstance(m, ROIAlign)} for b in models}
    assert kinds == {"torchvision": {ROIAlign}, "vectorized": {VectorizedBackwardROIAlign}}
    (loss_a, grads_a), (loss_b, grads_b) = results["torchvision"], results["vectorized"]
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    backbone = [n for n in grads_a if n.startswith("backbone.")]
    assert backbone and any(
        grads_a[n].abs().max() > 0 for n in backbone
    )  # the pooled features' gradient
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_backward_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="ZOO.ROI_ALIGN_CPU_BACKWARD"):
        use_roi_align_backward(torch.nn.Sequential(ROIAlign((7, 7), 1.0, 0)), "fast")


def test_benchmark_tool_times_both_backwards_on_one_config(tmp_path):
    out = tmp_path / "bench.md"
    config = INSTANT / "faster_rcnn_instant_test.yaml"
    run_tool("benchmark_cpu_option.py", "--configs", config, "--train-iters", 1, "--warmup", 0,
             "--output", out)  # fmt: skip
    text = out.read_text()
    assert "| config | train s/iter, torchvision | train s/iter, vectorized | speed-up |" in text
    row = next(
        line
        for line in text.splitlines()
        if "faster_rcnn_instant_test.yaml" in line and "|" in line
    )
    torchvision, vectorized, ratio = row.strip("|").split("|")[1:]
    assert float(ratio.strip().rstrip("x")) == pytest.approx(
        float(torchvision) / float(vectorized), abs=0.01
    )
    assert "Command: `python tools/benchmark_cpu_option.py" in text
