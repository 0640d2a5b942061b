"""torchrun with torchrun's own options, minus its tracebacks: what scripts/train.sh starts the trainers with.

    python scripts/launch.py --nproc_per_node 4 --master_port 29500 train.py --config configs/loveda.yaml ...

torchrun ends with a Python traceback whenever a trainer exits with a status other than 0 or a signal reaches
torchrun itself, even where the trainers did exactly what they were asked (Ctrl-C: stop at the end of the step,
save, exit 130; SIGTERM: save, exit 0). This runs torchrun's launcher in-process and ends instead with the
trainers' outcome:

- a signal to the launcher (SIGTERM, SIGUSR1, SIGHUP: a scheduler's stop; SIGINT: Ctrl-C) is passed to the
  trainers, which are given SHUTDOWN_SECONDS to finish the current step or evaluation and save latest.pth (torchrun
  would kill them after 30 s); exit status 0, or 130 for Ctrl-C;
- trainers that stopped after a Ctrl-C: 130; one that refused its input with a one-line error: 2 (it printed the
  line);
- any other failure: one `error:` line naming the process, its exit status or signal; status 1.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

# How long the trainers may take to stop cleanly after a signal before they are killed: a step, or the rest of
# an evaluation of the val list, and writing latest.pth.
SHUTDOWN_SECONDS = 900
# Besides torchrun's own (SIGTERM, SIGINT, SIGHUP, SIGQUIT): SLURM's warning before a time limit.
SIGNALS_TO_PASS_ON = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def outcome(exit_codes: list[int]) -> tuple[int, str | None]:
    """The launcher's exit status for the trainers' exit statuses (negative: killed by that signal), and the line
    to print (None: the trainers said it)."""
    failed = [code for code in exit_codes if code not in (0, 130)]
    if not failed:
        return 130, None
    if 2 in failed:
        return 2, None
    how = f"was killed by {signal.Signals(-failed[0]).name}" if failed[0] < 0 else f"exited with status {failed[0]}"
    return 1, f"error: a training process {how}; its output above says why"


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "shutdown_timeout", 0) is None:
        args.shutdown_timeout = SHUTDOWN_SECONDS
    if getattr(args, "signals_to_handle", None) == "SIGTERM,SIGINT,SIGHUP,SIGQUIT":
        args.signals_to_handle = SIGNALS_TO_PASS_ON
    try:
        torchrun.run(args)
    except ChildFailedError as failed:
        code, line = outcome([failure.exitcode for failure in failed.failures.values()])
        if line:
            print(line, file=sys.stderr)
        return code
    except SignalException as stop:
        if stop.sigval == signal.SIGINT:
            return 130
        print(f"stopped by {signal.Signals(stop.sigval).name}: the trainers saved latest.pth; run the same command "
              f"to resume", file=sys.stderr)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
