# The README's commands. Each runs the set-up step first (dev/setup_env.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG := configs/Baselines/cascade_rcnn_R_18_FPN_demo_shapes.yaml
DEMO_DIR := output/demo

.PHONY: setup demo test lint format benchmark

setup:
	CASCADE_ZOO_VENV=$(abspath $(VENV)) bash dev/setup_env.sh

# Train a Cascade R-CNN on the embedded shapes dataset (a few minutes on a CPU), evaluate it,
# print the AP table and draw predictions into $(DEMO_DIR)/predictions.png.
demo: setup
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --resume OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/visualize.py --config-file $(DEMO_CONFIG) --dataset shapes_val \
		--output $(DEMO_DIR)/predictions.png MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth

test: setup lint
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

benchmark: setup
	$(PY) tools/benchmark.py --output docs/benchmarks.md
