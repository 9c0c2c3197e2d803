"""Multi-process launch on GPUs (Detectron2's launch), on CPUs (gloo) and under torchrun."""

import contextlib
import gc
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def started_by_torchrun() -> bool:
    """Whether this process was started by torchrun / torch.distributed.elastic."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(
    main_func,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in every process of a (possibly) distributed job.

    - Under torchrun: this process is one worker; the process group is initialised from the
      environment (env://) and the ``num_*``/``dist_url`` arguments are ignored.
    - With CUDA: Detectron2's ``launch`` (one process per GPU, NCCL).
    - Without CUDA and more than one process: one process per ``num_processes_per_machine``
      on the CPU, with the gloo backend (Detectron2 v0.6's ``launch`` requires CUDA).
    """
    if started_by_torchrun():
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        _init_worker(
            backend="nccl" if torch.cuda.is_available() else "gloo",
            init_method="env://",
            world_size=int(os.environ["WORLD_SIZE"]),
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            local_size=local_size,
            timeout=timeout,
        )
        with _process_group_destroyed_at_exit():
            return main_func(*args)
    world_size = num_machines * num_processes_per_machine
    if world_size == 1 or torch.cuda.is_available():
        return d2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works only for a single machine")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info(f"No CUDA: launching {num_processes_per_machine} CPU processes (gloo)")
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args,
              timeout),
        daemon=False,
    )  # fmt: skip


def _cpu_worker(local_rank, main_func, world_size, local_size, machine_rank, dist_url, args,
                timeout):  # fmt: skip
    _init_worker(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * local_size + local_rank,
        local_rank=local_rank,
        local_size=local_size,
        timeout=timeout,
    )
    with _process_group_destroyed_at_exit():
        main_func(*args)


@contextlib.contextmanager
def _process_group_destroyed_at_exit():
    """Destroy this worker's process groups when its work ends (normally or not). A gloo group
    still referenced at the interpreter's shutdown (by the default group, by Detectron2's local
    group, or by a DistributedDataParallel model of a trainer kept alive by reference cycles)
    is destroyed with its threads running, which aborts the process ("terminate called without
    an active exception") after the job has finished."""
    try:
        yield
        gc.collect()  # the trainer and its DDP model, which hold the group
        if dist.is_available() and dist.is_initialized():
            comm.synchronize()  # every process done with every collective before any tears down
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if getattr(comm, "_LOCAL_PROCESS_GROUP", None) is not None:
            comm._LOCAL_PROCESS_GROUP = None  # v0.6's reference (set by _set_local_process_group)
        gc.collect()


def _init_worker(*, backend, init_method, world_size, rank, local_rank, local_size, timeout):
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group init failed: backend={backend}, url={init_method}")
        raise
    _set_local_process_group(local_size, rank // local_size, world_size // local_size)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()


def _set_local_process_group(local_size: int, machine_rank: int, num_machines: int) -> None:
    """Give Detectron2's ``comm`` the group of ranks on this machine, as its launch() does.

    Current Detectron2 has ``comm.create_local_process_group``; v0.6 reads the module-level
    ``_LOCAL_PROCESS_GROUP`` that its launch() sets.
    """
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(local_size)
        return
    for i in range(num_machines):
        group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
