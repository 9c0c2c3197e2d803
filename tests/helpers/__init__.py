"""Helpers shared by the tests, importable as ``helpers.<module>`` (pytest puts tests/ on the
path: ``pythonpath`` in pyproject.toml):

- ``helpers.core``: configs, models with fixed seeds, batches, training and test passes of the
  box-cascade core, Fast R-CNN's losses written out (every paper's tests use them);
- ``helpers.fs``: FSCascade's switches and Eq. 1 / Eq. 2 written out;
- ``helpers.iu``: IoU-Uniform's configs and its pieces written out slowly;
- ``helpers.r3``: R3-CNN's loops written out;
- ``helpers.runs``: a child process that makes a benchmark run with a sleeping trainer, to be
  killed by the runner's tests.
"""
