"""Distributed setup in one place: the rest of the code calls these and runs the same in a single process.

Launched by torchrun (WORLD_SIZE > 1), a process group is created: NCCL on CUDA, gloo on CPU. Launched
plainly, there is no process group, and every helper below is a no-op.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed() -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device, is_main=True)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_store_of_this_attempt(rank, world_size), rank=rank,
                                world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, is_main=rank == 0)


def _store_of_this_attempt(rank: int, world_size: int) -> dist.Store:
    """torchrun's key-value store, seen through a prefix private to this restart attempt.

    torchrun keeps one store across `--max-restarts` restarts: without the prefix, restarted processes read
    the dead processes' gloo addresses from it and fail to connect (tests/test_train_run.py); NCCL exchanges
    its connection id through the same store.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world_size))
    return dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (and return it); unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of `tensor` over all processes, in place (and returned)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# Set when this (main) process exits; its DataLoader workers obey SIGTERM from then on.
_exiting: Event | None = None


def worker_init() -> Callable[[int], None]:
    """A DataLoader worker_init_fn: the worker leaves SIGTERM to the main process while that one runs.

    SIGTERM sent to a whole process group or job (what `timeout`, SLURM and Kubernetes do, and torchrun to each
    worker's group) must not kill the workers under a trainer that is still going to the iteration where it
    saves: the main process decides, and its workers end with it. They obey SIGTERM once the main process
    exits, which is when multiprocessing terminates the workers that are still there.
    """
    global _exiting
    if _exiting is None:
        _exiting = multiprocessing.get_context().Event()
        atexit.register(_exiting.set)  # after multiprocessing's own exit handler, so it runs before it
    return functools.partial(_leave_sigterm_to_the_main_process, _exiting)


def _leave_sigterm_to_the_main_process(exiting: Event, _: int) -> None:
    def on_sigterm(signum: int, frame: object) -> None:
        if exiting.is_set():
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)


def barrier() -> None:
    """Wait for every process; nothing to wait for in a single process."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
