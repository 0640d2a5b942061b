"""The first thing to run on a GPU machine: every GPU path of the project once, at real sizes, in minutes.

    sh scripts/gpu_smoke.sh [OUT]          # on a GPU: real model sizes, 8+8 crops of 518 (about 5 min, one H100)
    sh scripts/gpu_smoke.sh --cpu [OUT]    # the same stages at tiny sizes on the CPU (tests/test_gpu_paths.py)

No downloads and no files needed. Stages, each timed and checked; a failure of one of the first three ends the
run, a later one skips only the stages that need its result (the resumed run and the evaluations):
  environment   PyTorch, CUDA, the GPUs, bf16 support, the dense bf16 peak used for MFU
  weights       random weights written in the official formats: DINOv2-S/B state dicts (official key names,
                mask_token included), OpenAI CLIP ViT-L/14 state dict (OpenAI key names, text tower included,
                fp16 as OpenAI ships it); training reads them through the real loaders
  data          synthetic LoveDA scenes (dataset.synthetic) cut and split by `dataset.prepare --resplit`
  gpu_tests     tests/test_gpu_paths.py on the GPU: SDPA kernels, bf16/fp16 paths, fused AdamW, compile, memory
  train_*       20 iterations (2 epochs) of supervised, fixmatch, unimatch_v2 (8+8 crops of 518, 16 for
                supervised's reference protocol), each evaluated after every epoch
  rs_mtdf_*     RS-MTDF killed with SIGKILL right after its checkpoint at iteration 15, then run again: it
                must resume at 15 and finish at 20
  eval_*        eval/eval.py on RS-MTDF's best.pth in `original` and `sliding_window` mode (224-px windows,
                several per tile, batched)
  benchmark     scripts/benchmark.py --both --flops --memory: ours and the reference way side by side, MFU,
                measured peak memory next to the estimate
  nccl          two processes under torchrun (NCCL) when two GPUs are present; skipped otherwise

With --cpu: tiny student and teachers, 56-px crops, 2 iterations, everything on the CPU. Writes
OUT/gpu_smoke.json (every stage: ok, seconds, figures, error), OUT/gpu_smoke.md (a summary) and OUT/logs/
(each stage's output, train.log files, the benchmark JSON). Exit code 0 when no stage failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dataset.splits import split_file
from methods import METHODS as REGISTRY
from util.cli import run_main
from util.io import check_output_folder, write_text

REPO = Path(__file__).resolve().parents[1]

# Every method without teachers trains briefly; RS-MTDF gets the kill/resume and two-process stages below.
METHODS = tuple(name for name, method in REGISTRY.items() if not method.teachers)
CONFIG = "configs/loveda.yaml"
# project entry point -> (module for running in this process, script for running in a child process)
ENTRIES = {"train": ("train", "train.py"), "eval": ("eval.eval", "eval/eval.py"),
           "benchmark": ("scripts.benchmark", "scripts/benchmark.py")}


@dataclass(frozen=True)
class Sizes:
    """What differs between a GPU run (real sizes) and a --cpu run (tiny)."""

    backbone: str
    dino: str
    clip: str
    clip_input: int
    translator_hidden: int
    crop: int
    batch: int
    epochs: int
    iters_per_epoch: int
    kill_at: int          # iteration whose checkpoint the killed run dies after
    raw_size: int         # synthetic LoveDA scene side (tiles are its quadrants)
    scenes: int           # per domain of Train (Val gets half)
    val_tiles: int
    window: int           # sliding-window evaluation
    workers: int
    log_interval: int
    benchmark: tuple[str, ...]
    timeout: int          # seconds per stage


GPU = Sizes(backbone="small", dino="base", clip="ViT-L-14", clip_input=224, translator_hidden=1024, crop=518,
            batch=8, epochs=2, iters_per_epoch=10, kill_at=15, raw_size=1024, scenes=12, val_tiles=8, window=224,
            workers=4, log_interval=5, benchmark=("--what", "both", "--iters", "5", "--warmup", "2"), timeout=300)
CPU = Sizes(backbone="tiny", dino="tiny", clip="tiny", clip_input=28, translator_hidden=16, crop=56, batch=2,
            epochs=1, iters_per_epoch=2, kill_at=1, raw_size=112, scenes=1, val_tiles=4, window=28, workers=0,
            log_interval=1, benchmark=("--tiny", "--what", "train", "--iters", "1", "--warmup", "0"), timeout=120)


# ----------------------------------------------------------------------------------------------------------
# Weight files in the official layouts


def dinov2_official_state(arch: str) -> dict[str, torch.Tensor]:
    """A randomly initialised DINOv2 under the official checkpoint's key names (mask_token included)."""
    from model.encoder import SIZES, DinoEncoder

    state = DinoEncoder(arch).state_dict()
    if SIZES[arch].swiglu:
        state = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v for k, v in state.items()}
    return {**state, "mask_token": torch.zeros(1, SIZES[arch].embed_dim)}


# OpenAI CLIP ViT-L/14's text tower: width, layers, vocabulary, context length, joint embedding width.
TEXT_TOWER = {"ViT-L-14": (768, 12, 49408, 77, 768), "tiny": (32, 1, 100, 77, 32)}


def openai_clip_state(arch: str, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A randomly initialised OpenAI CLIP state dict (ViT-L-14.pt's keys): vision tower for 224 px, text tower."""
    from model.teachers import build_clip_tower

    state = {f"visual.{k}": v for k, v in build_clip_tower(arch, 224).state_dict().items()}
    width, layers, vocab, context, embed = TEXT_TOWER[arch]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return std * torch.randn(*shape, generator=g)

    state.update({"positional_embedding": rnd(context, width, std=0.01), "text_projection": rnd(width, embed),
                  "logit_scale": torch.tensor(4.6052), "token_embedding.weight": rnd(vocab, width),
                  "ln_final.weight": torch.ones(width), "ln_final.bias": torch.zeros(width)})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        state.update({p + "attn.in_proj_weight": rnd(3 * width, width), p + "attn.in_proj_bias": torch.zeros(3 * width),
                      p + "attn.out_proj.weight": rnd(width, width), p + "attn.out_proj.bias": torch.zeros(width),
                      p + "ln_1.weight": torch.ones(width), p + "ln_1.bias": torch.zeros(width),
                      p + "mlp.c_fc.weight": rnd(4 * width, width), p + "mlp.c_fc.bias": torch.zeros(4 * width),
                      p + "mlp.c_proj.weight": rnd(width, 4 * width), p + "mlp.c_proj.bias": torch.zeros(width),
                      p + "ln_2.weight": torch.ones(width), p + "ln_2.bias": torch.zeros(width)})
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def write_weights(folder: Path, sizes: Sizes) -> dict[str, Path]:
    """dinov2_<student>.pth, dinov2_<teacher>.pth and ViT-L-14.pth in `folder`; their paths by config key."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = {"model.pretrained": (folder / f"dinov2_{sizes.backbone}.pth",
                                  lambda: dinov2_official_state(sizes.backbone)),
             "teachers.dino.weights": (folder / f"dinov2_{sizes.dino}_teacher.pth",
                                       lambda: dinov2_official_state(sizes.dino)),
             "teachers.clip.weights": (folder / f"clip_{sizes.clip}.pth", lambda: openai_clip_state(sizes.clip))}
    for path, make in files.values():
        torch.save(make(), path)
    return {key: path for key, (path, _) in files.items()}


# ----------------------------------------------------------------------------------------------------------
# Running stages


@dataclass
class Smoke:
    out: Path
    work: Path
    sizes: Sizes
    cpu: bool
    isolate: bool
    stages: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Path] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def stage(self, name: str, fn: Callable[[], dict[str, Any] | None], skip: str | None = None) -> dict[str, Any]:
        """Run one stage: its figures, or its error; never raises."""
        record: dict[str, Any] = {"stage": name}
        start = time.perf_counter()
        if skip:
            record.update(status="skipped", reason=skip)
        else:
            try:
                record.update(fn() or {})
                record["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - a failed stage is reported, the others still run
                record.update(status="failed", error=f"{type(e).__name__}: {e}"[-3000:],
                              traceback=traceback.format_exc()[-4000:])
        record["seconds"] = round(time.perf_counter() - start, 1)
        self.stages.append(record)
        note = record.get("reason") or record.get("error", "")
        print(f"[gpu_smoke] {name}: {record['status']} ({record['seconds']} s){' - ' + note[:300] if note else ''}",
              flush=True)
        self.write_reports()
        return record

    def entry(self, name: str, what: str, argv: list[str], check: bool = True) -> int:
        """Run a project entry point (train, eval, benchmark) in this process or a child; its output to logs/."""
        log = self.logs / f"{name}.log"
        if self.isolate:
            with open(log, "w") as f:
                done = subprocess.run([sys.executable, ENTRIES[what][1], *argv], cwd=REPO, stdout=f,
                                      stderr=subprocess.STDOUT, timeout=self.sizes.timeout)
            code = done.returncode
        else:
            module = importlib.import_module(ENTRIES[what][0])
            with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                code = module.main(argv) or 0
        if check and code != 0:
            raise RuntimeError(f"{what} exited with {code}: {tail(log)}")
        return code

    def config_overrides(self) -> list[str]:
        s, data = self.sizes, self.work / "data"
        return [f"dataset.root={data / 'loveda'}", f"dataset.lists={data / 'splits'}",
                f"dataset.crop_size={s.crop}", f"model.backbone={s.backbone}", f"teachers.dino.arch={s.dino}",
                f"teachers.clip.arch={s.clip}", f"teachers.clip.input_size={s.clip_input}",
                f"distill.translator_hidden={s.translator_hidden}", f"train.batch_size={s.batch}",
                # Every process takes train.batch_size crops a step, no accumulation: the iteration counts below.
                "train.global_batch=null",
                f"train.epochs={s.epochs}", f"train.num_workers={s.workers}", f"train.log_interval={s.log_interval}",
                f"train.checkpoint_interval={s.log_interval}",
                # The reference supervised protocol doubles the batch: the same iterations per epoch.
                f"train.supervised_epoch_samples={2 * s.batch * s.iters_per_epoch}", "eval.num_visualize=1",
                *(f"{key}={path}" for key, path in self.weights.items())]

    def train_argv(self, method: str, extra: tuple[str, ...] = ()) -> list[str]:
        return ["--config", CONFIG, "--save-path", str(self.run_dir(method)), f"train.method={method}",
                *self.config_overrides(), *extra]

    def run_dir(self, method: str) -> Path:
        return self.work / "runs" / method

    def write_reports(self) -> None:
        report = {"mode": "cpu" if self.cpu else "gpu", "ok": not any(s["status"] == "failed" for s in self.stages),
                  "stages": self.stages}
        write_text(self.out / "gpu_smoke.json", json.dumps(report, indent=2, default=str) + "\n")
        write_text(self.out / "gpu_smoke.md", markdown(report))


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def training_figures(run: Path, total: int) -> dict[str, Any]:
    """Check a finished run (progress.json, train.log) and read its figures."""
    progress = json.loads((run / "progress.json").read_text())
    if not progress["finished"] or progress["iteration"] != total:
        raise RuntimeError(f"run stopped at iteration {progress['iteration']} of {total} (expected {total})")
    log = (run / "train.log").read_text()
    metrics = [line for line in log.splitlines() if re.search(r"iteration \d+/\d+:", line)]
    if not metrics:
        raise RuntimeError(f"no metrics lines in {run / 'train.log'}")
    last = dict(re.findall(r"(\w+) ([-\d.e+naif]+)(?:,|$)", metrics[-1].split(": ", 1)[1]))
    bad = [k for k, v in last.items() if k.startswith("loss") and not _finite(v)]
    if bad:
        raise RuntimeError(f"non-finite {', '.join(bad)} in {metrics[-1]}")
    return {"iterations": progress["iteration"], "best": progress["best"], "last_metrics": last,
            "images_per_s": _number(last.get("images_per_s")), "gpu_memory_gb": _number(last.get("gpu_memory_gb"))}


def _finite(text: str) -> bool:
    try:
        return abs(float(text)) < float("inf")
    except ValueError:
        return False


def _number(text: str | None) -> float | None:
    return float(text) if text is not None and _finite(text) else None


def copy_logs(smoke: Smoke, method: str) -> None:
    src = smoke.run_dir(method) / "train.log"
    if src.is_file():
        shutil.copy(src, smoke.logs / f"train_{method}.train.log")


# ----------------------------------------------------------------------------------------------------------
# The stages


def environment(smoke: Smoke) -> dict[str, Any]:
    from util.flops import peak_bf16_tflops

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "cpu_threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        info.update(gpus=[{"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                           "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
                          for p in props],
                    bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version(),
                    nccl=nccl_version(),
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    peak_bf16_tflops=peak_bf16_tflops(props[0].name))
    elif not smoke.cpu:
        raise RuntimeError("no GPU visible to PyTorch (torch.cuda.is_available() is False); run with --cpu for the "
                           "CPU-sized smoke test")
    return info


def nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def weights_stage(smoke: Smoke) -> dict[str, Any]:
    smoke.weights = write_weights(smoke.work / "pretrained", smoke.sizes)
    return {"files": {k: {"path": str(p), "mib": round(p.stat().st_size / 2**20, 1)} for k, p in smoke.weights.items()}}


def data_stage(smoke: Smoke) -> dict[str, Any]:
    s, data = smoke.sizes, smoke.work / "data"
    raw, splits = data / "raw", data / "splits"
    with open(smoke.logs / "data.log", "w") as f:
        for argv in (["-m", "dataset.synthetic", "--dataset", "loveda", "--out", str(raw), "--size", str(s.raw_size),
                      "--count", str(s.scenes), "--seed", "0"],
                     ["-m", "dataset.prepare", "loveda", "--raw", str(raw), "--out", str(data / "loveda"), "--lists",
                      str(splits), "--resplit", "--workers",
                      str(max(1, min(8, os.cpu_count() or 1)) if not smoke.cpu else 1)]):
            subprocess.run([sys.executable, *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=True,
                           timeout=s.timeout)
    # Exactly iters_per_epoch batches of unlabelled crops per epoch, and a short val list.
    unlabeled = split_file(splits, "unlabeled", "10")
    lines = unlabeled.read_text().splitlines()
    need = s.batch * s.iters_per_epoch
    if len(lines) < need:
        raise RuntimeError(f"{unlabeled} has {len(lines)} lines, {need} needed")
    unlabeled.write_text("\n".join(lines[:need]) + "\n")
    val = split_file(splits, "val")
    val.write_text("\n".join(val.read_text().splitlines()[:s.val_tiles]) + "\n")
    return {"unlabeled": need, "labeled": len(split_file(splits, "labeled", "10").read_text().splitlines()),
            "val": s.val_tiles, "tile": s.raw_size // 2}


def train_stage(smoke: Smoke, method: str) -> dict[str, Any]:
    shutil.rmtree(smoke.run_dir(method), ignore_errors=True)
    try:
        smoke.entry(f"train_{method}", "train", smoke.train_argv(method))
    finally:
        copy_logs(smoke, method)
    return training_figures(smoke.run_dir(method), smoke.sizes.epochs * smoke.sizes.iters_per_epoch)


def killed_stage(smoke: Smoke) -> dict[str, Any]:
    """RS-MTDF in a child process that SIGKILLs itself right after writing its checkpoint at kill_at."""
    run = smoke.run_dir("rs_mtdf")
    shutil.rmtree(run, ignore_errors=True)
    log = smoke.logs / "rs_mtdf_killed.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "scripts/gpu_smoke.py", "--kill-after", str(smoke.sizes.kill_at), "--",
                               *smoke.train_argv("rs_mtdf")], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              timeout=smoke.sizes.timeout)
    if done.returncode != -signal.SIGKILL:
        raise RuntimeError(f"expected the run to die by SIGKILL, it exited with {done.returncode}: {tail(log)}")
    from util.checkpoint import load_own_checkpoint

    saved = load_own_checkpoint(run / "latest.pth")["iteration"]
    if saved != smoke.sizes.kill_at:
        raise RuntimeError(f"latest.pth holds iteration {saved}, expected {smoke.sizes.kill_at}")
    return {"killed_after_iteration": saved, "exit": done.returncode}


def resumed_stage(smoke: Smoke) -> dict[str, Any]:
    run = smoke.run_dir("rs_mtdf")
    try:
        smoke.entry("rs_mtdf_resumed", "train", smoke.train_argv("rs_mtdf"))
    finally:
        copy_logs(smoke, "rs_mtdf")
    log = (run / "train.log").read_text()
    found = re.findall(r"resumed from \S+ at iteration (\d+)", log)
    if [int(i) for i in found] != [smoke.sizes.kill_at]:
        raise RuntimeError(f"expected one 'resumed ... at iteration {smoke.sizes.kill_at}' in train.log, found {found}")
    return {"resumed_at": int(found[0]), **training_figures(run, smoke.sizes.epochs * smoke.sizes.iters_per_epoch)}


def eval_stage(smoke: Smoke, mode: str) -> dict[str, Any]:
    out = smoke.work / f"eval_{mode}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--config", CONFIG, "--checkpoint", str(smoke.run_dir("rs_mtdf") / "best.pth"), "--mode", mode,
            "--out", str(out), *smoke.config_overrides()]
    if mode == "sliding_window":
        argv += ["--window", str(smoke.sizes.window)]
    smoke.entry(f"eval_{mode}", "eval", argv)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"miou": metrics["miou"], "images": metrics["images"], "window": metrics.get("window"),
            "stride": metrics.get("stride")}


def benchmark_stage(smoke: Smoke) -> dict[str, Any]:
    out = smoke.logs / "benchmark.json"
    smoke.entry("benchmark", "benchmark", ["--config", CONFIG, "--both", "--flops", "--memory", *smoke.sizes.benchmark,
                                           "--out", str(out)])
    report = json.loads(out.read_text())
    train = report["train"]
    return {"device": report["device"],
            "train_images_per_s": {k: train[k]["images_per_s"] for k in ("ours", "reference")},
            "train_speedup": train["ratios"]["train_speedup"], "mfu": train["ours"].get("mfu"),
            "ms_breakdown": train["ours"]["ms_breakdown"], "adamw_ms": train["ours"].get("adamw_ms"),
            "peak_memory_gb": {k: train[k]["peak_memory_gb"] for k in ("ours", "reference")},
            "peak_reserved_gb": {k: train[k].get("peak_reserved_gb") for k in ("ours", "reference")},
            "peak_memory_estimate_gb": {k: report["memory"][k]["peak_gib"] for k in ("ours", "reference")},
            "tflop_per_step": report["flops"]["total"] / 1e12, "flops_share": report["flops"]["share"],
            "eval_ratios": report["eval"]["ratios"] if "eval" in report else None}


def gpu_tests_stage(smoke: Smoke) -> dict[str, Any]:
    log = smoke.logs / "gpu_tests.log"
    with open(log, "w") as f:
        # One process (-n 0): the CUDA tests measure memory on the one GPU, which workers beside them would share.
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-n", "0", "tests/test_gpu_paths.py", "-k",
                               "cuda"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=smoke.sizes.timeout)
    summary = tail(log, 3)
    if done.returncode != 0:
        raise RuntimeError(f"pytest exited with {done.returncode}: {tail(log, 30)}")
    return {"summary": summary}


def nccl_stage(smoke: Smoke) -> dict[str, Any]:
    run = smoke.run_dir("rs_mtdf_2proc")
    shutil.rmtree(run, ignore_errors=True)
    argv = smoke.train_argv("rs_mtdf", ("train.checkpoint_interval=0",))
    argv[argv.index("--save-path") + 1] = str(run)
    log = smoke.logs / "nccl.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", "29533", "train.py", *argv], cwd=REPO, stdout=f,
                              stderr=subprocess.STDOUT, timeout=smoke.sizes.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}: {tail(log)}")
    text = (run / "train.log").read_text()
    if f"= 2 process(es) x {smoke.sizes.batch} crops" not in text:
        raise RuntimeError("train.log does not report a global batch of both processes")
    # Each process takes batch crops of its shard: an epoch is half as many iterations.
    total = smoke.sizes.epochs * smoke.sizes.iters_per_epoch // 2
    return training_figures(run, total)


# ----------------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU smoke test ({report['mode']}): {'all stages passed' if report['ok'] else 'FAILURES'}", "",
             "| stage | status | seconds | figures |", "|---|---|---:|---|"]
    for s in report["stages"]:
        keep = {k: v for k, v in s.items() if k not in ("stage", "status", "seconds", "traceback", "files", "gpus",
                                                           "last_metrics", "best", "flops_share")}
        text = json.dumps(keep, default=str)
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {text[:400].replace('|', '/')} |")
    bench = next((s for s in report["stages"] if s["stage"] == "benchmark" and s["status"] == "ok"), None)
    if bench:
        mem, est = bench["peak_memory_gb"], bench["peak_memory_estimate_gb"]

        def gib(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        mfu = bench["mfu"]
        lines += ["", f"## Benchmark on {bench['device']}", "",
                  "| | ours | reference |", "|---|---:|---:|",
                  f"| training images/s | {bench['train_images_per_s']['ours']:.2f} | "
                  f"{bench['train_images_per_s']['reference']:.2f} |",
                  f"| peak memory measured (GiB) | {gib(mem['ours'])} | {gib(mem['reference'])} |",
                  f"| peak memory estimated (GiB) | {gib(est['ours'])} | {gib(est['reference'])} |", "",
                  f"Speed-up {bench['train_speedup']:.2f}x; {bench['tflop_per_step']:.2f} TFLOP per step; MFU "
                  f"{'-' if mfu is None else f'{100 * mfu:.1f} %'}; step parts (ms) {bench['ms_breakdown']}; "
                  f"AdamW ms {bench['adamw_ms']}; FLOP shares "
                  + ", ".join(f"{k} {100 * v:.0f} %" for k, v in bench["flops_share"].items()) + "."]
    failed = [s for s in report["stages"] if s["status"] == "failed"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- **{s['stage']}**: {s['error'][:1500]}" for s in failed]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def train_and_die(kill_after: int, argv: list[str]) -> int:
    """train.py's main, with a SIGKILL of this process right after latest.pth of iteration `kill_after` is on disk."""
    import train
    import util.run
    from util.checkpoint import atomic_save

    def save_then_maybe_die(obj: Any, path: str | os.PathLike) -> None:
        atomic_save(obj, path)
        if Path(path).name == "latest.pth" and obj.get("iteration") == kill_after:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    util.run.atomic_save = save_then_maybe_die  # the trainer saves through it
    return train.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--kill-after"]:
        return train_and_die(int(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="exp/gpu_smoke", help="folder for the report (default exp/gpu_smoke)")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (weights, data, runs)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="run every stage in its own process (default: on a GPU yes, with --cpu no)")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip (e.g. gpu_tests,nccl)")
    args = parser.parse_args(argv)

    out = check_output_folder(Path(args.out).expanduser().resolve(), "OUT")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    if args.cpu:
        # A smoke test, not a measurement: one thread is the fastest on a small, busy CPU (no OpenMP spinning).
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    smoke = Smoke(out=out, work=work, sizes=CPU if args.cpu else GPU, cpu=args.cpu,
                  isolate=(not args.cpu) if args.isolate is None else args.isolate)
    skip = {s for s in args.skip.split(",") if s}
    print(f"[gpu_smoke] {'CPU (tiny)' if args.cpu else 'GPU (real sizes)'}; report in {out}, temporary files in {work}",
          flush=True)
    started = time.perf_counter()
    try:
        env = smoke.stage("environment", lambda: environment(smoke))
        if env["status"] == "failed":
            return 1
        setup = [smoke.stage("weights", lambda: weights_stage(smoke)), smoke.stage("data", lambda: data_stage(smoke))]
        if any(s["status"] == "failed" for s in setup):
            return 1
        cuda = torch.cuda.is_available() and not args.cpu
        smoke.stage("gpu_tests", lambda: gpu_tests_stage(smoke),
                    skip="skipped" if "gpu_tests" in skip else None if cuda else
                    "no GPU: the suite runs tests/test_gpu_paths.py on the CPU")
        for method in METHODS:
            smoke.stage(f"train_{method}", functools.partial(train_stage, smoke, method),
                        skip="skipped" if f"train_{method}" in skip else None)
        killed = smoke.stage("rs_mtdf_killed", lambda: killed_stage(smoke))
        resumed = smoke.stage("rs_mtdf_resumed", lambda: resumed_stage(smoke),
                              skip=None if killed["status"] == "ok" else "the killed run failed")
        for mode in ("original", "sliding_window"):
            smoke.stage(f"eval_{mode}", functools.partial(eval_stage, smoke, mode),
                        skip=None if resumed["status"] == "ok" else "no RS-MTDF checkpoint")
        smoke.stage("benchmark", lambda: benchmark_stage(smoke), skip="skipped" if "benchmark" in skip else None)
        two = cuda and torch.cuda.device_count() >= 2
        smoke.stage("nccl", lambda: nccl_stage(smoke),
                    skip=None if two and "nccl" not in skip else
                    f"{torch.cuda.device_count() if cuda else 0} GPU(s): two processes on NCCL need two GPUs")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        smoke.write_reports()
    total = round(time.perf_counter() - started, 1)
    failed = [s["stage"] for s in smoke.stages if s["status"] == "failed"]
    print(f"[gpu_smoke] {'FAILED: ' + ', '.join(failed) if failed else 'all stages passed'} in {total} s; "
          f"{out / 'gpu_smoke.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
