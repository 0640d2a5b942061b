"""What every entry point shares: config arguments, overrides, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from util.config import Config, load_config
from util.errors import UserError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. train.lr=1e-5 eval.mode=sliding_window")


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Load the config named by --config with the positional overrides, then `extra` ones from flags."""
    return load_config(args.config, list(args.overrides) + list(extra or []))


def one_line(error: Exception) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it with its traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        # DataLoader re-raises a worker's exception with the worker's traceback inside the message; the
        # original one-line message is the last line, after the exception's class name.
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point: a UserError becomes `error: <one line>` on stderr and exit code 2."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
