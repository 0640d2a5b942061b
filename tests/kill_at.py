"""Run train.py, but SIGKILL this very process at a chosen moment: the resume tests' fault injector.

    python tests/kill_at.py POINT COUNT [--rank R] -- <train.py arguments>

POINT is where the process dies on the COUNT-th time it gets there:
  step      inside an optimisation step, after AdamW has updated the weights and before the EMA has;
  evaluate  inside a validation pass, after its first forward (the COUNT-th pass: student and EMA count apart);
  save      inside a checkpoint write, after half of the file's bytes are on disk.
Only process R (the RANK torchrun gives it; 0 without torchrun) dies, and only on torchrun's first attempt,
so that an elastic restart (`--max-restarts`) runs through. Nothing here is imported by the project itself.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import methods.step  # noqa: E402
import train  # noqa: E402
from util.cli import run_main  # noqa: E402


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def on_count(count: int, then: Callable[..., Any]) -> Callable[..., Any]:
    """A function that runs `then` on its count-th call and does nothing before."""
    calls = 0

    def hook(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == count:
            return then(*args, **kwargs)
        return None

    return hook


def arm_step(count: int) -> None:
    real, kill = methods.step.ema_update, on_count(count, die)

    def ema_update(*args: Any, **kwargs: Any) -> None:
        kill()
        real(*args, **kwargs)

    methods.step.ema_update = ema_update


def arm_evaluate(count: int) -> None:
    real = train.evaluate
    kill = on_count(count, lambda model: model.register_forward_hook(lambda *_: die()))

    def evaluate(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        kill(model)
        return real(model, *args, **kwargs)

    train.evaluate = evaluate


def arm_save(count: int) -> None:
    real = torch.save

    def half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        die()

    kill = on_count(count, half_then_die)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        kill(obj, f, *args, **kwargs)
        real(obj, f, *args, **kwargs)

    torch.save = save


ARM = {"step": arm_step, "evaluate": arm_evaluate, "save": arm_save}


def main(argv: list[str]) -> int | None:
    # Split by hand at "--": argparse's REMAINDER mixes up options on either side of it.
    ours, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser()
    parser.add_argument("point", choices=sorted(ARM))
    parser.add_argument("count", type=int)
    parser.add_argument("--rank", type=int, default=0)
    args = parser.parse_args(ours)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and int(os.environ.get("RANK", "0")) == args.rank:
        ARM[args.point](args.count)
    return run_main(lambda: train.main(train_args))


if __name__ == "__main__":
    main(sys.argv[1:])
