#!/usr/bin/env bash
# One-command GPU check of cascade-zoo, for a machine with one CUDA GPU (under 8 minutes on one
# H100), from a fresh copy of the repository. It runs, each step in its own process:
#   1. the CUDA tests: `pytest -k "cuda or gpu"` (the tests named for CUDA/GPU; they skip without
#      one, e.g. tests/test_predictor.py::test_zoo_predictor_on_cuda_gives_the_cpus_outputs);
#   2. the shapes benchmark's Cascade R-CNN (configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml
#      under configs/Protocols/shapes_v3.yaml, from the shipped pretrained backbone) trained
#      --iters iterations (300) on the GPU, with mixed precision off and on
#      (SOLVER.AMP.ENABLED): s/iter and box AP on shapes_val;
#   3. the box-cascade core against Detectron2's CascadeROIHeads at COCO size (R-50-FPN,
#      configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml against
#      configs/Baselines/cascade_rcnn_R_50_FPN_1x.yaml, the same weights) on random 800x1067
#      images: train s/iter (2 images), inference ms/image and peak GPU memory, with the ratios;
#   4. the export of step 2's GPU-trained model (AMP off) to ONNX and TorchScript, with --check;
# and prints ONE summary table (Markdown, also written to <out>/summary.md; the logs of the steps
# are in <out>/). A failed step is marked in the table with its log, and the others still run; the
# exit status is 1 if any failed.
#
#   bash dev/gpu_check.sh [--iters N] [--out DIR] [--no-setup]
#   bash dev/gpu_check.sh --dry-run    # no GPU needed: every step on the CPU at a tiny size
#
# It first runs `make setup` (pass PYTHON=... to use an environment that already has a CUDA torch
# and Detectron2, e.g. on a machine without access to PyPI) and stops at once, saying why, if
# torch sees no GPU. docs/benchmarks.md ("One-command GPU check") has the table to fill in.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
iters=300
out=output/gpu_check
dry_run=0
setup=1
while [ $# -gt 0 ]; do
    case "$1" in
    --iters) iters=$2 && shift ;;
    --out) out=$2 && shift ;;
    --no-setup) setup=0 ;;
    --dry-run) dry_run=1 && setup=0 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2 && exit 2 ;;
    esac
    shift
done
PY=${CASCADE_ZOO_VENV:-$root/.venv}/bin/python
start=$SECONDS
fail() {
    echo "gpu_check: error: $*" >&2
    exit 1
}

if [ "$setup" = 1 ]; then
    echo "== make setup"
    make setup || fail "make setup failed (above). Without access to PyPI, run it with" \
        "PYTHON=<an interpreter whose environment has a CUDA torch and Detectron2>"
fi
[ -x "$PY" ] || fail "$PY is missing: run make setup (or drop --no-setup)"
mkdir -p "$out" && rm -f "$out/rows.tsv" "$out/summary.md"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# The Python parts, as one file of small commands (kept in <out> for reading).
helpers=$out/gpu_check_helpers.py
cat >"$helpers" <<'PY'
"""Helpers of dev/gpu_check.sh: python gpu_check_helpers.py COMMAND ... (see the script)."""

import argparse
import json
import platform
import statistics
import sys
import time

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)


def machine(args):
    import detectron2
    import torch

    from cascade_zoo.utils.env import compiled_ops_available

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    ops = "compiled ops" if compiled_ops_available() else "Python-only, no compiled ops"
    print(
        f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), detectron2 "
        f"{detectron2.__version__} ({ops}), Python {platform.python_version()}"
    )


def gpu(args):
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            f"no GPU: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no "
            "CUDA device. Run on a machine with a GPU and a CUDA build of torch, or --dry-run."
        )
    print(f"GPU: {torch.cuda.get_device_name(0)}")


def shapes(args):
    """s/iter (mean of the logged medians after the first --skip iterations) and the last box AP
    of a train_net.py run's metrics.json."""
    with open(f"{args.run_dir}/metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    timed = [r for r in records if "time" in r and r.get("iteration", 0) >= args.skip]
    timed = timed or [r for r in records if "time" in r]
    evals = [r for r in records if "bbox/AP" in r]
    if not timed or not evals:
        sys.exit(f"{args.run_dir}/metrics.json has no timed iterations or no evaluation")
    s_iter = statistics.mean(r["time"] for r in timed)
    data = statistics.mean(r.get("data_time", 0.0) for r in timed)
    print(f"{s_iter:.4f} s/iter ({data:.4f} waiting for data), box AP {evals[-1]['bbox/AP']:.2f}")


def _random_batches(count, per_batch, height, width, classes, device):
    """Batches of random images with 12 random boxes each, as Detectron2's models take them."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    size = torch.tensor([width, height], dtype=torch.float32)
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(per_batch):
            corner = torch.rand(12, 2, generator=g) * size * 0.8
            extent = (torch.rand(12, 2, generator=g) * 0.3 + 0.02) * size
            boxes = torch.cat([corner, torch.minimum(corner + extent, size - 1)], 1)
            labels = torch.randint(0, classes, (12,), generator=g)
            image = torch.randint(0, 256, (3, height, width), generator=g).float()
            instances = Instances((height, width), gt_boxes=Boxes(boxes), gt_classes=labels)
            batch.append(
                {"image": image.to(device), "instances": instances.to(device),
                 "height": height, "width": width}
            )  # fmt: skip
        batches.append(batch)
    return batches


def core_vs_detectron2(args):
    """Train s/iter, inference ms/image and peak memory of the core and of Detectron2's
    CascadeROIHeads, same weights, same random inputs; one model at a time."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from cascade_zoo import setup_cfg

    cuda = args.device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    configs = {
        "detectron2": "configs/Baselines/cascade_rcnn_R_50_FPN_1x.yaml",
        "core": "configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml",
    }
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device]
    opts += ["MODEL.BOX_CASCADE.STAGEWISE_TEST", "False"]  # the same work as Detectron2's
    width = round(args.size * 4 / 3)
    reference, out = None, {}
    for name, path in configs.items():
        cfg = setup_cfg(path, opts)
        torch.manual_seed(0)
        model = build_model(cfg)
        if reference is None:
            reference = model.state_dict()
        else:
            mismatch = model.load_state_dict(reference, strict=False)
            if mismatch.missing_keys or mismatch.unexpected_keys:
                sys.exit(f"{path}: Detectron2's weights do not load: {mismatch}")
        classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        batches = _random_batches(4, 2, args.size, width, classes, cfg.MODEL.DEVICE)
        # lr 0: each step costs what a real one does, and the random weights (no ImageNet
        # backbone offline) stay where their outputs are finite
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train = []
        model.train()
        with EventStorage(0):
            for i in range(args.warmup + args.iters):
                sync()
                tick = time.perf_counter()
                loss = sum(model(batches[i % len(batches)]).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                sync()
                train.append(time.perf_counter() - tick)
        train_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        model.eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        infer = []
        with torch.no_grad():
            for i in range(args.warmup + args.iters):
                image = batches[i % len(batches)][0]
                sync()
                tick = time.perf_counter()
                model([{k: image[k] for k in ("image", "height", "width")}])
                sync()
                infer.append(time.perf_counter() - tick)
        infer_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        out[name] = {
            "train": statistics.median(train[args.warmup :]),
            "infer": 1000 * statistics.median(infer[args.warmup :]),
            "train_mem": train_mem,
            "infer_mem": infer_mem,
        }
        del model, optimizer, batches
        if cuda:
            torch.cuda.empty_cache()
    core, d2 = out["core"], out["detectron2"]
    size = f"{args.size}x{width}"
    memory = (
        f"train {core['train_mem']:.2f} vs {d2['train_mem']:.2f} (ratio "
        f"{core['train_mem'] / d2['train_mem']:.3f}); inference {core['infer_mem']:.2f} vs "
        f"{d2['infer_mem']:.2f}"
        if cuda
        else "n/a on the CPU"
    )
    print(
        f"ROW\tcore vs Detectron2 CascadeROIHeads, R-50-FPN, {size}: train s/iter (2 images)\tok\t"
        f"{core['train']:.4f} vs {d2['train']:.4f}: ratio {core['train'] / d2['train']:.3f}"
    )
    print(
        f"ROW\tcore vs Detectron2 CascadeROIHeads, R-50-FPN, {size}: inference ms/image\tok\t"
        f"{core['infer']:.1f} vs {d2['infer']:.1f}: ratio {core['infer'] / d2['infer']:.3f}"
    )
    print(
        f"ROW\tcore vs Detectron2 CascadeROIHeads, R-50-FPN, {size}: peak GPU memory (GiB)\tok\t"
        + memory
    )


def main(argv=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("machine").set_defaults(run=machine)
    sub.add_parser("gpu").set_defaults(run=gpu)
    p = sub.add_parser("shapes")
    p.add_argument("run_dir")
    p.add_argument("--skip", type=int, default=100)
    p.set_defaults(run=shapes)
    p = sub.add_parser("core-vs-detectron2")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.set_defaults(run=core_vs_detectron2)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
PY

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$out/rows.tsv"; }
failed=0
# step NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in <out>/NAME.log; sets $step_s
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
    step_s=$((SECONDS - t0))
    [ "$rc" = 124 ] && echo "timed out after ${limit} s" >>"$out/$name.log"
    tail -n 3 "$out/$name.log"
    return "$rc"
}
note_failure() { # note_failure CHECK NAME: a failed step's row
    failed=1
    row "$1" "FAILED" "see $out/$2.log: $(tail -n 1 "$out/$2.log" | cut -c1-150)" "$step_s"
}

if [ "$dry_run" = 1 ]; then
    device=cpu
    size=160 core_iters=2 core_warmup=1 iters=4 skip=0 workers=1
    data=(DATASETS.TRAIN '("shapes_tiny_train",)' DATASETS.TEST '("shapes_tiny_val",)')
    data+=(SOLVER.IMS_PER_BATCH 2)
    echo "== dry run: every step on the CPU at a tiny size (checks the script, measures nothing)"
else
    device=cuda
    size=800 core_iters=20 core_warmup=5 skip=100 workers=4
    data=()
    [ "$iters" -le "$skip" ] && skip=0
    "$PY" "$helpers" gpu || fail "this check needs a GPU (--dry-run runs it on the CPU)"
fi
machine=$("$PY" "$helpers" machine 2>/dev/null | tail -n 1)

# 1. the CUDA tests
check="CUDA tests (pytest -k \"cuda or gpu\")"
if step cuda_tests 300 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests; then
    row "$check" ok "$(grep -E '(passed|skipped|deselected)' "$out/cuda_tests.log" | tail -n 1)" \
        "$step_s"
else
    note_failure "$check" cuda_tests
fi

# 2. the shapes benchmark config on the GPU, AMP off then on
model_config=configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml
config=(--config-file "$model_config" --config-file configs/Protocols/shapes_v3.yaml)
first=$((iters * 3 / 4)) second=$((iters * 9 / 10))     # the benchmark's drops: 75% and 90%
[ "$second" -le "$first" ] && first=$((iters / 2)) second=$((iters * 3 / 4))
drops="($first, $second)"
for amp in off on; do
    name=shapes_amp_$amp
    check="shapes Cascade R-CNN R-18, $iters iterations, AMP $amp"
    if [ "$amp" = on ] && [ "$device" = cpu ]; then
        row "$check" skipped "Detectron2's AMPTrainer needs CUDA" 0
        continue
    fi
    flag=$([ "$amp" = on ] && echo True || echo False)
    rm -rf "${out:?}/$name"
    if step "$name" 420 "$PY" train_net.py "${config[@]}" \
        OUTPUT_DIR "$out/$name" MODEL.DEVICE "$device" SOLVER.AMP.ENABLED "$flag" \
        SOLVER.MAX_ITER "$iters" SOLVER.STEPS "$drops" SOLVER.CHECKPOINT_PERIOD 100000 \
        TEST.EVAL_PERIOD 0 DATALOADER.NUM_WORKERS "$workers" "${data[@]}" &&
        figures=$("$PY" "$helpers" shapes "$out/$name" --skip "$skip" 2>>"$out/$name.log"); then
        row "$check" ok "$figures" "$step_s"
    else
        note_failure "$check" "$name"
    fi
done

# 3. the core against Detectron2's CascadeROIHeads at COCO size, random images
if step core_vs_detectron2 300 "$PY" "$helpers" core-vs-detectron2 --device "$device" \
    --size "$size" --iters "$core_iters" --warmup "$core_warmup"; then
    grep '^ROW' "$out/core_vs_detectron2.log" | while IFS=$'\t' read -r _ check status figures; do
        row "$check" "$status" "$figures" "$step_s"
    done
else
    note_failure "core vs Detectron2 CascadeROIHeads, R-50-FPN" core_vs_detectron2
fi

# 4. the export of the GPU-trained model (on the CPU, as the tool exports), with --check
weights=$out/shapes_amp_off/model_final.pth
for format in onnx torchscript; do
    check="export of the GPU-trained model: $format, --check on 3 images"
    if [ ! -f "$weights" ]; then
        failed=1 && row "$check" FAILED "no $weights (step 2 failed)" 0
        continue
    fi
    rm -rf "${out:?}/export_$format"
    if step "export_$format" 300 "$PY" tools/deploy/export_model.py --config-file "$model_config" \
        --output "$out/export_$format" --format "$format" --check \
        --opts MODEL.WEIGHTS "$weights" "${data[@]}"; then
        largest=$(grep -c 'largest differences' "$out/export_$format.log")
        file=$(ls "$out/export_$format"/model.* 2>/dev/null | head -n 1)
        row "$check" ok "$file ($(du -h "$file" | cut -f1)); $largest images equal to eager" \
            "$step_s"
    else
        note_failure "$check" "export_$format"
    fi
done

# The one table
{
    echo "Measured $(date -u +%Y-%m-%d) on: $machine; total $((SECONDS - start)) s."
    [ "$dry_run" = 1 ] && echo "DRY RUN on the CPU at tiny sizes: the figures mean nothing."
    echo
    echo "| check | status | result | time (s) |"
    echo "|---|---|---|---|"
    while IFS=$'\t' read -r check status figures seconds; do
        echo "| $check | $status | $figures | $seconds |"
    done <"$out/rows.tsv"
} >"$out/summary.md"
echo
cat "$out/summary.md"
exit "$failed"
