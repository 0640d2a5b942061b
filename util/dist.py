"""Distributed setup in one place: the rest of the code calls these and runs the same in a single process.

A process learns its rank from its launcher: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) where they are
set, else SLURM's inside a SLURM job step (`srun`: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master address
is the step's first node, the port comes from the job id unless MASTER_PORT is set). With more than one process
a process group is created: NCCL on CUDA, gloo on CPU. Launched plainly, there is no process group, and every
helper below is a no-op.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.synchronize import Event

import torch
import torch.distributed as dist

from util.errors import UserError


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


class LaunchError(UserError):
    """A launch that cannot work (the tasks of a SLURM step and the GPUs or the job disagree); only the first
    process prints it, so that the job's output holds it once."""

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


@dataclass(frozen=True)
class Launch:
    """Who this process is, as its launcher says: rank, world size and local rank, and where the group meets
    (None: torchrun's store, from its own variables)."""

    rank: int
    world_size: int
    local_rank: int
    master: tuple[str, int] | None = None
    tasks_on_busiest_node: int = 1


def launch_of(env: Mapping[str, str]) -> Launch:
    """This process's place in its launch: torchrun's variables win; SLURM's count only inside a job step."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return Launch(0, 1, 0)
    rank, world = int(env["SLURM_PROCID"]), int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    expected = env.get("RS_MTDF_TASKS")  # what the job asked for, exported by scripts/slurm_train.sh
    if expected is not None and int(expected) != world:
        raise LaunchError(f"this job step runs {world} task(s), the job asked for {expected}: start the step with "
                          f"scripts/slurm_train.sh (or srun without -n/--ntasks) so that every task trains", rank)
    nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "localhost"))
    address = env.get("MASTER_ADDR") or first_host(nodes)
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else port_of_job(env)
    per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", str(world))))
    return Launch(rank, world, int(env.get("SLURM_LOCALID", "0")), (address, port), max(per_node, default=1))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks-per-node list, expanded: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match:
            counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def port_of_job(env: Mapping[str, str]) -> int:
    """A port for the job's process group, from its id and restart count (a requeued job meets on another port
    than its killed predecessor, which may still hold its own): within [20000, 60000)."""
    job = int(env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0")))
    task = int(env.get("SLURM_ARRAY_TASK_ID", "0"))
    restart = int(env.get("SLURM_RESTART_COUNT", "0"))
    return 20000 + (job * 7919 + task * 104729 + restart * 31) % 40000


def init_distributed() -> DistInfo:
    """Join the process group of this launch (torchrun or a SLURM step), or describe a single process."""
    launch = launch_of(os.environ)
    if launch.world_size <= 1:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device, is_main=True)
    rank, world_size, local_rank = launch.rank, launch.world_size, launch.local_rank
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        # SLURM may bind one GPU to each task (--gpus-per-task): it then sees that one as cuda:0.
        if launch.master is not None and gpus == 1:
            local_rank = 0
        elif launch.tasks_on_busiest_node > gpus:
            raise LaunchError(f"{launch.tasks_on_busiest_node} tasks share a node with {gpus} GPU(s): ask SLURM for "
                              f"at most one task per GPU (--ntasks-per-node, --gpus-per-node)", rank)
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        if launch.master is None:
            store = _store_of_this_attempt(rank, world_size)
        else:
            host, port = launch.master
            store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timedelta(minutes=10))
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
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


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all processes (what they logged alike); unchanged in a single process."""
    if not is_distributed() or not values:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(values, (stacked / dist.get_world_size()).tolist()))


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


class StopAgreement:
    """Whether every process stops now: each calls `poll(requested)` at the same points (after every step and
    after each evaluation), and all get the same answer, so that they save one consistent state.

    The answer is whether any process had requested a stop at the previous poll: an all-reduce started there
    runs on a CPU (gloo) group while the next step computes, so no step waits for it and the GPU's stream is never
    synchronised for it; a stop is honoured within one step. A single process answers at once.
    """

    def __init__(self) -> None:
        self.group: dist.ProcessGroup | None = None
        if is_distributed():
            group = dist.new_group(backend="gloo")
            assert isinstance(group, dist.ProcessGroup), group  # every process is in it
            self.group = group
        self.flag = torch.zeros(1)
        self.pending: dist.Work | None = None

    def poll(self, requested: bool) -> bool:
        if self.group is None:
            return requested
        agreed = False
        if self.pending is not None:
            self.pending.wait()
            agreed = bool(self.flag.item())
        self.flag = torch.tensor([float(requested or agreed)])
        self.pending = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def close(self) -> None:
        """Wait for the last all-reduce, so that no process leaves one unanswered."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None


def barrier() -> None:
    """Wait for every process; nothing to wait for in a single process."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
