"""What a checkpoint needs beyond the weights, optimizer and scheduler for ``--resume`` to give
the model an uninterrupted run gives: the random-number generators of every process and the
training data stream (``cascade_zoo.data.stream``).

:class:`ResumeStateHook` sits just before the PeriodicCheckpointer. At every checkpoint
iteration it gathers the RNG states (torch CPU, CUDA, numpy, Python) of all processes, so the
checkpoint (written by the main process alone) holds each process's; its state also holds the
stream's seed. At resume, before the first step, it restarts the data stream at the resumed
iteration (a fresh loader iterator) and only then restores each process's RNG states, so
nothing that runs at start-up (loader workers draw their seeds from the torch RNG) moves them.
Evaluation during training runs under :func:`preserved_rng`, so it does not move them either.
"""

import contextlib
import logging
import random
from typing import Dict, List

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.stream import StreamOrder

logger = logging.getLogger(__name__)

__all__ = ["ResumeStateHook", "capture_rng", "preserved_rng", "restore_rng"]


def capture_rng() -> Dict:
    """This process's RNG states, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (e.g. an evaluation) without changing any RNG state of the process."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def _data_loader_iter_attribute(trainer) -> str:
    # Detectron2 main makes the iterator lazily (_data_loader_iter_obj); v0.6 in __init__.
    return (
        "_data_loader_iter_obj"
        if hasattr(trainer, "_data_loader_iter_obj")
        else "_data_loader_iter"
    )


class ResumeStateHook(HookBase):
    """Saves every process's RNG states and the data stream's seed with each checkpoint and
    restores them at resume (see module doc). ``period``: the checkpoint period."""

    def __init__(self, period: int, stream_loader=None):
        self.period = period
        self.loader = stream_loader  # a build_stream_loader loader, or None
        self.states: List[Dict] = []
        self._resumed = None

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if (self.period > 0 and next_iter % self.period == 0) or next_iter >= self.trainer.max_iter:
            state = capture_rng()
            self.states = comm.all_gather(state) if comm.get_world_size() > 1 else [state]

    def state_dict(self):
        seed = self.loader.batch_sampler.order.seed if self.loader is not None else 0
        return {"rng": self.states, "stream_seed": seed}

    def load_state_dict(self, state_dict):
        self._resumed = state_dict

    def before_train(self):
        resumed, self._resumed = self._resumed, None
        start_iter = self.trainer.start_iter
        if self.loader is not None and start_iter > 0:
            # a checkpoint without this hook's state (an older one) still continues the stream
            # of the config's seed at the resumed iteration
            seed = self.loader.batch_sampler.order.seed
            if resumed is not None:
                seed = int(resumed.get("stream_seed", seed))
            set_stream_position(self.loader, seed=seed, start_iter=start_iter)
            inner = self.trainer._trainer
            setattr(inner, _data_loader_iter_attribute(inner), iter(inner.data_loader))
        if resumed is None:
            return
        states = resumed.get("rng") or []
        if len(states) == comm.get_world_size():
            restore_rng(states[comm.get_rank()])
        else:
            logger.warning(
                f"The checkpoint holds the RNG states of {len(states)} process(es), this run has "
                f"{comm.get_world_size()}: random draws after iteration {start_iter} will differ "
                "from an uninterrupted run's"
            )


def set_stream_position(loader, *, seed: int, start_iter: int) -> None:
    """Point a ``build_stream_loader`` loader at ``seed``'s stream from ``start_iter`` (takes
    effect for iterators made after this)."""
    sampler = loader.batch_sampler
    if seed != sampler.order.seed:
        order = StreamOrder(sampler.order.num_records, seed, sampler.order.shuffle)
        sampler.order = order
        loader.dataset.order = order
    sampler.start_iter = start_iter
