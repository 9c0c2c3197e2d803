# The README's commands. Each runs the set-up step first (dev/setup_env.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG := configs/CascadeRCNN/cascade_rcnn_R_18_FPN_finetune_shapes.yaml
DEMO_DIR := output/demo

.PHONY: setup demo test lint format benchmark results

setup:
	CASCADE_ZOO_VENV=$(abspath $(VENV)) bash dev/setup_env.sh

# Train a Cascade R-CNN on the embedded shapes dataset (a few minutes on a CPU), evaluate it,
# print the AP table and draw predictions into $(DEMO_DIR)/predictions.png.
demo: setup
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --resume OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/visualize.py --config-file $(DEMO_CONFIG) --dataset shapes_val \
		--output $(DEMO_DIR)/predictions.png --score-threshold 0.5 MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth

test: setup lint
	$(PY) -m pytest -q --durations=15 tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Rewrites the two sections of docs/benchmarks.md (run on an otherwise idle machine).
BASELINES := configs/Baselines
benchmark: setup
	$(PY) tools/benchmark.py --title "CPU shapes configs: Faster R-CNN and Cascade R-CNN" \
		--configs $(BASELINES)/faster_rcnn_R_18_FPN_shapes.yaml \
		$(BASELINES)/cascade_rcnn_R_18_FPN_shapes.yaml \
		configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml \
		--baseline $(BASELINES)/faster_rcnn_R_18_FPN_shapes.yaml --repeat 2 --output docs/benchmarks.md
	$(PY) tools/benchmark.py --title "Box-cascade core vs Detectron2's CascadeROIHeads" \
		--configs $(BASELINES)/cascade_rcnn_R_18_FPN_shapes.yaml \
		configs/CascadeRCNN/cascade_rcnn_R_18_FPN_detectron2_shapes.yaml \
		--baseline $(BASELINES)/cascade_rcnn_R_18_FPN_shapes.yaml --repeat 3 --interleave \
		--output docs/benchmarks.md MODEL.BOX_CASCADE.STAGEWISE_TEST False

# The fair shapes benchmark (docs/benchmark_protocol.md): trains the runs that are missing (the
# pretrained backbone first), resumes killed ones, writes benchmarks/results/, docs/results.md,
# MODEL_ZOO.md and the paper READMEs' results blocks. Run it again to go on where it stopped.
RESULTS_PROTOCOL := Protocols/shapes_v3.yaml
RESULTS_CONFIGS := Baselines/faster_rcnn_R_18_FPN_shapes.yaml \
	CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml CascadeRCNN/cascade_rcnn_R_18_FPN_detectron2_shapes.yaml \
	FSCascade/fs_cascade_R_18_FPN_shapes.yaml R3CNN/r3_cnn_R_18_FPN_shapes.yaml \
	RGA_PRM/faster_rcnn_R_18_FPN_rga_shapes.yaml RGA_PRM/faster_rcnn_R_18_FPN_prm_shapes.yaml \
	RGA_PRM/faster_rcnn_R_18_FPN_rga_prm_shapes.yaml RGA_PRM/cascade_rcnn_R_18_FPN_rga_prm_shapes.yaml \
	IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml IoUUniform/iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml
# LANES=2: two runs at a time, one torch thread each (on 2 cores about twice the throughput).
LANES ?= 1
results: setup
	$(PY) tools/run_results.py --protocol $(RESULTS_PROTOCOL) --configs $(RESULTS_CONFIGS) --seeds 0 1 2 \
		--lanes $(LANES)
