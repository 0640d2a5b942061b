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


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point: a UserError becomes `error: <one line>` on stderr and exit code 2."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
