"""A child process for the runner's tests: ``python -c SLEEPING_RUN CONFIG DIR`` makes run
(CONFIG, seed 0) under DIR/results and DIR/runs with a trainer that prints "training" and then
sleeps 60 s, so that a test can kill it mid-training (its wall time file is rewritten every
0.1 s)."""

SLEEPING_RUN = """
import sys, time
from pathlib import Path
from cascade_zoo.results import identity, runner
runner.WALL_TIME_EVERY_S = 0.1
run = identity.Run(sys.argv[1], 0, Path(sys.argv[2]) / "results", Path(sys.argv[2]) / "runs", ())
def trainer(run, device):
    print("training", flush=True)
    time.sleep(60)
runner.execute(run, device="cpu", trainer=trainer, publish_models=False)
"""
