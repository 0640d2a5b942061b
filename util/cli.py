"""What every entry point shares: config arguments, overrides, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from util.config import PATH_KEYS, Config, load_config, parse_override
from util.errors import ConfigError, UserError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. train.lr=1e-5 eval.mode=sliding_window")


class _RenamedFlag(argparse.Action):
    """A flag that was renamed: given in any form (alone, with a value, abbreviated), it is an error naming the new
    one, so that it is neither taken for another flag nor dropped."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{self.option_strings[0]} was renamed: did you mean {self.new}?")


def refuse_renamed_flags(parser: argparse.ArgumentParser, renamed: Mapping[str, str]) -> None:
    """Refuse each old flag of `renamed` ({old: new}) with one line naming the new one (hidden from --help)."""
    for old, new in renamed.items():
        parser.add_argument(old, action=_RenamedFlag, new=new, nargs="?", default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


def user_path(text: str) -> str:
    """A path argument as the user meant it: `~` expanded also where no shell did it (`--out=~/maps`)."""
    return os.path.expanduser(text)


def path_arg(text: str) -> Path:
    """argparse `type=` for a path argument: `user_path` as a Path."""
    return Path(user_path(text))


def config_from_args(args: argparse.Namespace, flags: Mapping[str, Any] | None = None,
                     relative_to: str | None = None) -> Config:
    """Load --config with the positional `key.sub=value` overrides (in order: a later one wins) and the keys that
    command-line flags stand for (`flags`: {key: value}, None for a flag not given).

    A flag and an override that set one key to different values contradict each other: a ConfigError naming
    both, rather than one silently winning. `relative_to`: the folder that relative paths in --config, in the
    overrides and in the flags are taken from (a launcher that changes folder passes the user's); default: the
    current folder.
    """
    given = {key: from_folder(key, value, relative_to) for key, value in (flags or {}).items() if value is not None}
    overrides = [from_folder_override(text, relative_to) for text in args.overrides]
    set_by_overrides = {}
    for text in overrides:
        path, value = parse_override(text)
        set_by_overrides[".".join(path)] = (text, value)
    for key, value in given.items():
        if key in set_by_overrides:
            text, theirs = set_by_overrides[key]
            if theirs != parse_override(f"{key}={value}")[1]:
                raise ConfigError(f"command line: the flag for {key} says {value!r}, the override '{text}' says "
                                  f"otherwise; give one of them")
    config = user_path(args.config)
    if relative_to is not None:
        config = os.path.join(relative_to, config)
    return load_config(config, overrides + [f"{key}={value}" for key, value in given.items()])


def from_folder(key: str, value: Any, folder: str | None) -> Any:
    """`value` of config key `key` with a relative path taken from `folder` (unchanged where no folder is given,
    the key holds no path, or the path is absolute)."""
    if folder is None or key not in PATH_KEYS or not isinstance(value, str) or value == "null":
        return value
    return os.path.join(folder, user_path(value))


def from_folder_override(text: str, folder: str | None) -> str:
    """A `key.sub=value` override whose relative path, if it holds one, is taken from `folder`."""
    if folder is None:
        return text
    key, sep, value = text.partition("=")
    return f"{key}{sep}{from_folder(key, value, folder)}" if sep and value else text


def print_config_value(cfg: Config, key: str) -> None:
    """Print what `cfg` resolves `key` to: a dotted key (a section or a mapping as YAML, an entry of a mapping such
    as distill.fusion_weights.clip, a value as YAML writes it: null, true, [0.9, 0.999]; a string as it is, for
    shell scripts), `run_dir` (the folder save_path names), or `all` (every value, as YAML). An unknown key is a
    ConfigError with the closest one."""
    if key == "all":
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return
    if key == "run_dir":
        print(cfg.run_dir)
        return
    node: Any = cfg.to_dict()
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            here = list(node) if isinstance(node, dict) else []
            prefix = ".".join(key.split(".")[:depth])
            close = difflib.get_close_matches(part, here, n=1)
            hint = f" (did you mean '{'.'.join(filter(None, [prefix, close[0]]))}'?)" if close else ""
            raise ConfigError(f"--get {key}: no such key{hint}")
        node = node[part]
    if isinstance(node, dict):
        print(yaml.safe_dump(node, sort_keys=False).rstrip("\n"))
    elif isinstance(node, str):
        print(node)
    else:
        print(yaml.safe_dump(node, default_flow_style=True).removesuffix("...\n").strip())


def one_line(error: Exception) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it with its traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        # DataLoader re-raises a worker's exception with the worker's traceback inside the message; the
        # original one-line message is the last line, after the exception's class name.
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def close_progress_bars() -> None:
    """Close the progress bars still on screen (a loop left by an exception), so that a message after them
    starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point: a UserError becomes `error: <one line>` on stderr and exit code 2."""
    # The exit is outside the except blocks: the error and its traceback are released first, and with them
    # what its frames held (a DataLoader's worker processes are shut down, not left to the exit handlers).
    try:
        code = main()
    except UserError as e:
        close_progress_bars()
        # An error every process of a launch finds alike (util.dist.LaunchError) is printed by the first only.
        if getattr(e, "rank", 0) == 0:
            print(f"error: {one_line(e)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)
