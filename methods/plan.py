"""How an optimizer step's global batch is made on P processes: P x crops a forward x forwards accumulated.

One rule for every method and process count (docs/training.md, "Batch and epoch"): the method's batch rule says
how many crops a step should take (train.global_batch; the reference supervised protocol doubles it) and at most
how many a forward (train.batch_size, doubled alike). They are reached exactly, with equal forwards of as many
crops as fit, accumulating as few forwards as that allows, and only with forwards that compute what one forward of
train.batch_size computes (the method's forward_problem: CutMix partners, UniMatch V2's share of whole pairs).
Where no such split exists the run is refused in one line that names the keys and the process counts that work;
nothing is rounded to a nearby batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.common import Method
from util.config import Config
from util.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """Processes x crops per forward x forwards accumulated: the crops of one optimizer step."""

    processes: int
    micro_batch: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.processes * self.micro_batch * self.accumulation

    def describe(self) -> str:
        """'global batch 32 = 1 process(es) x 8 crops x 4 accumulated'."""
        return (f"global batch {self.global_batch} = {self.processes} process(es) x {self.micro_batch} crops x "
                f"{self.accumulation} accumulated")


def split(wanted: int, limit: int, processes: int, method: Method, cfg: Config) -> BatchPlan | None:
    """The split of `wanted` crops over `processes` into the fewest equal forwards of at most `limit` crops that
    compute as one forward of train.batch_size does; None where there is none."""
    if wanted % processes:
        return None
    share = wanted // processes
    for accumulation in range(1, share + 1):
        micro, rest = divmod(share, accumulation)
        if not rest and micro <= limit and method.forward_problem(micro, cfg) is None:
            return BatchPlan(processes, micro, accumulation)
    return None


def plan_batches(method: Method, cfg: Config, processes: int) -> BatchPlan:
    """The batch plan of `method` under `cfg` on `processes` processes, or a ConfigError naming the keys."""
    wanted, limit = method.batch(cfg)
    if wanted is None:  # train.global_batch: null: the process count sets the global batch
        return BatchPlan(processes, limit, 1)
    plan = split(wanted, limit, processes, method, cfg)
    if plan is not None:
        return plan
    workable = [n for n in range(1, wanted + 1) if split(wanted, limit, n, method, cfg) is not None]
    doubled = " (doubled by train.supervised_protocol: reference)" if wanted != cfg.train.global_batch else ""
    why = ""
    if wanted % processes == 0:
        # The crops split over the processes, but no forward that fits computes as train.batch_size does: say why.
        share = wanted // processes
        fitting = [m for m in range(min(share, limit), 0, -1) if share % m == 0]
        why = f" ({method.forward_problem(fitting[0], cfg)})" if fitting else ""
    raise ConfigError(f"train.global_batch {wanted}{doubled} does not split over {processes} process(es) into equal "
                      f"forwards of at most train.batch_size {limit} crops{why}; process counts that do: "
                      f"{', '.join(map(str, workable)) or 'none'}; or set train.global_batch to a multiple of "
                      f"{processes} (null: {limit} crops a process, whatever their count)")
