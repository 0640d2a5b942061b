"""Fetch the official weight files a config names from their publishers, verified, into place.

    python -m model.fetch [--config configs/loveda.yaml] [--dest pretrained/] [--only student,dino,clip]
                          [--replace] [key.sub=value ...]

Which files: those the config reads (Config.weight_files: model.pretrained, teachers.dino.weights,
teachers.clip.weights), each from the release that fits its architecture (model.backbone, teachers.*.arch):
DINOv2 ViT-S/B/L/g 14 from Meta's release, CLIP ViT-L/14 from OpenAI's. --dest puts them into one folder under
the file names the config gives; by default each goes where the config names it.

Verified before it takes its final name: the size the server announced (Content-Length), the SHA-256 where the
publisher gives one (OpenAI's CLIP URL carries it), and that the file loads as the model it is for (DINOv2:
into a DinoEncoder of that size; CLIP: its visual tower through the teachers' reader).

Atomic: torch.hub.download_url_to_file writes into a temporary file beside the target (util.io.atomic_path),
which is checked and only then renamed over the target; a failed, short or interrupted transfer removes it.
A file already there that verifies is kept ("already there", no network touched); one that does not is
refused unless --replace is given.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.hub import download_url_to_file

import methods  # noqa: F401  (registers the training methods a config may name)
from model.encoder import DinoEncoder, load_dinov2_weights
from model.teachers import build_clip_tower, read_clip_state
from model.weights import mismatch
from util.cli import config_from_args, one_line, path_arg, run_main
from util.config import Config
from util.errors import ConfigError, OutputError, WeightsError, short_reason
from util.io import atomic_path, check_output_folder, file_sha256, is_temporary, process_alive, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "loveda.yaml"
README = "pretrained/README.md"


@dataclass(frozen=True)
class Source:
    """Where one official weight file comes from, and how a copy of it is recognised."""

    what: str  # "DINOv2 ViT-S/14", for messages
    kind: Literal["dinov2", "clip"]
    arch: str  # DinoEncoder size or teachers.CLIP_ARCHS name: what the file must load into
    url: str
    sha256: str | None = None  # published by the publisher; None: checked by loading only
    names: tuple[str, ...] = ()  # file names this file goes by (a config naming one for another arch is a mix-up)


# Meta's DINOv2 release (facebookresearch/dinov2, dinov2/hub/backbones.py: _DINOV2_BASE_URL and
# f"/{model_name}/{model_name}_pretrain.pth"). Meta publishes no checksums for them: a download is checked by
# loading it into the encoder of its size.
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"


def dinov2_source(size: str, short: str, title: str) -> Source:
    name = f"dinov2_{short}"
    return Source(f"DINOv2 {title}", "dinov2", size, f"{DINOV2_URL}/{name}/{name}_pretrain.pth",
                  names=(f"dinov2_{size}.pth", f"{name}_pretrain.pth"))


# By DinoEncoder size (model.backbone, teachers.dino.arch).
DINOV2: dict[str, Source] = {
    "small": dinov2_source("small", "vits14", "ViT-S/14"),
    "base": dinov2_source("base", "vitb14", "ViT-B/14"),
    "large": dinov2_source("large", "vitl14", "ViT-L/14"),
    "giant": dinov2_source("giant", "vitg14", "ViT-g/14"),
}

# OpenAI's CLIP release (openai/CLIP, clip/clip.py _MODELS["ViT-L/14"]): the URL's last folder is the file's
# SHA-256, which clip.load checks. By teachers.clip.arch.
CLIP_VIT_L_14_URL = ("https://openaipublic.azureedge.net/clip/models/"
                     "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt")
CLIP: dict[str, Source] = {
    "ViT-L-14": Source("OpenAI CLIP ViT-L/14", "clip", "ViT-L-14", CLIP_VIT_L_14_URL,
                       sha256=CLIP_VIT_L_14_URL.split("/")[-2], names=("ViT-L-14.pt",)),
}

# --only names -> config keys
PARTS = {"student": "model.pretrained", "dino": "teachers.dino.weights", "clip": "teachers.clip.weights"}
USER_AGENT = "torch.hub"  # what download_url_to_file sends; the size query sends the same
HEAD_TIMEOUT_S = 60
# download_url_to_file's own temporary, beside the one it is given: "<dst>.<32 hex>.partial".
PARTIAL = re.compile(r"^(?P<dst>.+)\.[0-9a-f]{32}\.partial$")


@dataclass
class Entry:
    """One file to put in place: the config keys that read it, where it goes, where it comes from."""

    keys: list[str]
    target: Path
    source: Source | None  # None: no known download
    arch: str  # for messages when there is no source

    @property
    def label(self) -> str:
        return ", ".join(self.keys)


def shown(path: Path) -> str:
    """`path` relative to the current folder where it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def source_for(cfg: Config, key: str) -> tuple[Source | None, str]:
    """The release the file of config `key` comes from (None: none known) and the architecture it is for."""
    if key == "model.pretrained":
        return DINOV2.get(cfg.model.backbone), f"DINOv2 {cfg.model.backbone}"
    if key == "teachers.dino.weights":
        return DINOV2.get(cfg.teachers.dino.arch), f"DINOv2 {cfg.teachers.dino.arch}"
    if key == "teachers.clip.weights":
        return CLIP.get(cfg.teachers.clip.arch), f"CLIP {cfg.teachers.clip.arch}"
    return None, key


def arch_key(key: str) -> str:
    """The config key that chooses the architecture of the file of `key`."""
    return {"model.pretrained": "model.backbone", "teachers.dino.weights": "teachers.dino.arch",
            "teachers.clip.weights": "teachers.clip.arch"}.get(key, key)


def parse_only(text: str | None) -> list[str] | None:
    """--only student,dino,clip -> config keys; None: all."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ConfigError(f"--only {text}: choose from {', '.join(PARTS)} (comma-separated)")
    return [PARTS[name] for name in names]


def plan(cfg: Config, only: list[str] | None, dest: Path | None) -> tuple[list[Entry], list[str]]:
    """The files to put in place (one entry per target path), and lines about the keys that need none."""
    files = cfg.weight_files
    notes = []
    for key in only or []:
        if key not in files:
            raise ConfigError(f"--only: this config reads no {key} (train.method={cfg.train.method} does not "
                              f"distil, or the teacher is disabled)")
    entries: dict[Path, Entry] = {}
    known_names = {name: source for table in (DINOV2, CLIP) for source in table.values() for name in source.names}
    for key, path in files.items():
        if only is not None and key not in only:
            continue
        if path is None:
            notes.append(f"{key}: null (random init), nothing to fetch")
            continue
        target = Path(path) if dest is None else dest / Path(path).name
        target = target.absolute()
        source, arch = source_for(cfg, key)
        named_for = known_names.get(target.name)
        if source is not None and named_for is not None and named_for != source:
            raise ConfigError(f"{key}: {Path(path).name} is the name of the {named_for.what} file, but "
                              f"{arch_key(key)} asks for {source.what}; point {key} at "
                              f"{shown(target.with_name(source.names[0]))}")
        if target in entries:
            other = entries[target]
            if other.source != source or other.arch != arch:
                raise ConfigError(f"{other.label} and {key} both name {shown(target)}, for different models "
                                  f"({other.arch} and {arch}); give them different files")
            other.keys.append(key)
            continue
        entries[target] = Entry([key], target, source, arch)
    return list(entries.values()), notes


# ----------------------------------------------------------------------------------------------------------
# Checking a file


def load_problem(path: Path, source: Source, label: str) -> str | None:
    """Why `path` does not load as the model `source` is for (through the project's readers), or None."""
    try:
        if source.kind == "dinov2":
            with torch.device("meta"):  # shapes only: nothing allocated, the file's tensors are not copied
                encoder = DinoEncoder(source.arch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "copying ... to a meta parameter is a no-op"
                load_dinov2_weights(encoder, path, label)
            return None
        visual = read_clip_state(path, label)
        with torch.device("meta"):
            tower = build_clip_tower(source.arch, 224)  # the release's resolution
        problem = mismatch(tower.state_dict(), visual)
        return f"its visual tower does not fit {source.what}: {problem}" if problem else None
    except WeightsError as e:
        return one_line(e)


def file_problem(path: Path, source: Source, label: str) -> str | None:
    """Why the file at `path` is not the official file of `source`, or None (`label`: the config keys)."""
    if source.sha256 is not None:
        digest = file_sha256(path)
        if digest != source.sha256:
            return f"its SHA-256 is {digest[:16]}..., the published one {source.sha256[:16]}..."
    problem = load_problem(path, source, label)
    # The readers' messages name the key and the path; the caller's names both already.
    return problem.removeprefix(f"{label}: ").replace(str(path), "the file") if problem else None


def verified(source: Source) -> str:
    """What a file of `source` that passed the checks was checked for."""
    return "SHA-256 matches" if source.sha256 else f"loads as {source.what}"


# ----------------------------------------------------------------------------------------------------------
# Downloading


def announced_size(url: str) -> int | None:
    """The Content-Length the server gives for `url` (a HEAD request), or None where it gives none."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError:
        return None  # HEAD refused: the download itself reports a missing file
    return int(length) if length is not None and length.strip().isdigit() else None


def transfer_error(error: BaseException, url: str) -> str:
    """A short reason for a failed transfer of `url`."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        elif isinstance(reason, BaseException):
            reason = short_reason(reason)
        return f"cannot reach {urllib.parse.urlsplit(url).hostname}: {reason}"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection ended before the file did"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {short_reason(error)}" if str(error) else type(error).__name__


def remove_stale_partials(folder: Path) -> None:
    """Delete what a killed fetch left in `folder`: its temporary files (util.io's `.<name>.<pid>.tmp`) and
    download_url_to_file's `<that>.<hex>.partial`, where the process that wrote them is gone."""
    remove_stale_temporaries(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = PARTIAL.match(path.name)
        if match and is_temporary(match["dst"]) and not process_alive(int(match["dst"].split(".")[-2])):
            path.unlink(missing_ok=True)


def download(entry: Entry, progress: bool) -> int:
    """Download `entry` into a temporary file beside its target, check it, rename it over the target; any
    failure leaves the target as it was and no temporary file. Returns the file's size in bytes."""
    source = entry.source
    assert source is not None
    target = entry.target
    print(f"{entry.label}: fetching {source.what} from {source.url}", flush=True)

    def failed(reason: str) -> WeightsError:
        return WeightsError(f"{entry.label}: downloading {source.url} failed ({reason}); nothing was saved as "
                            f"{shown(target)}. Run the command again, or put the file there by hand ({README})")

    with atomic_path(target) as tmp:
        try:
            expected = announced_size(source.url)
            download_url_to_file(source.url, str(tmp), progress=progress)
        except (OSError, http.client.HTTPException) as e:
            raise failed(transfer_error(e, source.url)) from None
        size = tmp.stat().st_size
        if expected is not None and size != expected:
            raise failed(f"got {size} bytes of the {expected} the server announced")
        problem = file_problem(tmp, source, entry.label)
        if problem:
            raise WeightsError(f"{entry.label}: the file at {source.url} is not the expected {source.what} "
                               f"({problem}); nothing was saved as {shown(target)}")
    return size


# ----------------------------------------------------------------------------------------------------------
# The command


def fetch(entries: Iterable[Entry], replace: bool = False, progress: bool = True) -> dict[str, int]:
    """Put every entry's file in place; returns how many were {"kept", "fetched", "by hand"}.

    Every file already there is checked first, with no network: one that differs from the official file is
    refused (all such in one error) before anything is downloaded, unless `replace`.
    """
    entries = list(entries)
    counts = {"kept": 0, "fetched": 0, "by hand": 0}
    todo: list[Entry] = []
    refused = []
    for entry in entries:
        target, source = entry.target, entry.source
        if os.path.lexists(target) and not target.is_file():
            raise OutputError(f"{entry.label}: {shown(target)} is there but is not a file; move it away")
        if source is None:
            if target.is_file():
                print(f"{entry.label}: {shown(target)} is there (no known download for {entry.arch} to check it "
                      f"against)")
                counts["kept"] += 1
            else:
                print(f"{entry.label}: no known download for {entry.arch}; put the file at {shown(target)} by "
                      f"hand ({README})")
                counts["by hand"] += 1
            continue
        if not target.is_file():
            todo.append(entry)
            continue
        problem = file_problem(target, source, entry.label)
        if problem is None:
            print(f"{entry.label}: {shown(target)} already there ({verified(source)})")
            counts["kept"] += 1
        elif replace:
            print(f"{entry.label}: {shown(target)} is not {source.what} ({problem}); replacing it")
            todo.append(entry)
        else:
            refused.append(f"{shown(target)} ({entry.label}) is not the official {source.what}: {problem}")
    if refused:
        raise WeightsError(f"{'; '.join(refused)}; move {'it' if len(refused) == 1 else 'them'} away or pass "
                           f"--replace")
    for folder in dict.fromkeys(entry.target.parent for entry in todo):
        check_output_folder(folder, "weights folder")
    for entry in todo:
        assert entry.source is not None
        entry.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(entry.target.parent)
        size = download(entry, progress)
        print(f"{entry.label}: saved {shown(entry.target)} ({size / 1e6:.1f} MB, {verified(entry.source)})")
        counts["fetched"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=path_arg, default=DEFAULT_CONFIG,
                        help="YAML config whose weight files to fetch (default: configs/loveda.yaml; the shipped "
                             "configs name the same three files)")
    parser.add_argument("--dest", type=path_arg, default=None,
                        help="put the files into this folder, under the config's file names (default: where the "
                             "config names them, pretrained/ for the shipped configs)")
    parser.add_argument("--only", default=None, metavar="PARTS",
                        help=f"comma-separated, of {','.join(PARTS)} (default: every file the config reads)")
    parser.add_argument("--replace", action="store_true",
                        help="replace a file already there that is not the official one (default: refuse)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. model.backbone=base "
                             "model.pretrained=pretrained/dinov2_vitb14_pretrain.pth")
    args = parser.parse_intermixed_args(argv)
    only = parse_only(args.only)
    cfg = config_from_args(args)
    if args.dest is not None:
        check_output_folder(args.dest, "--dest")
    entries, notes = plan(cfg, only, args.dest)
    for note in notes:
        print(note)
    counts = fetch(entries, replace=args.replace)
    for entry in entries:
        elsewhere = [key for key in entry.keys if Path(cfg.weight_files[key] or "").absolute() != entry.target]
        if elsewhere and entry.target.is_file():
            print(f"note: the config reads {elsewhere[0]} from {cfg.weight_files[elsewhere[0]]}; pass "
                  f"{elsewhere[0]}={shown(entry.target)} to use this file")
    if counts["by hand"]:
        n = counts["by hand"]
        raise WeightsError(f"{n} weight file{'s' if n > 1 else ''} to put in place by hand (listed above)")
    print(f"ok: {counts['kept'] + counts['fetched']} weight files in place ({counts['kept']} already there, "
          f"{counts['fetched']} fetched)")
    return 0


if __name__ == "__main__":
    run_main(main)
