"""How a batch of windows becomes class scores: PyTorch eager or ONNX Runtime, behind one small interface.

Every inference path of eval.inference (`predict_logits` for eval/eval.py, `predict_rows` for deploy/predict.py)
cuts the windows, normalises, blends and takes the softmax itself, and calls one function in between: a `Model`,
normalised images (B, 3, H, W) in, logits (B, C, H, W) out. Two backends implement it:

- `torch`: the segmenter itself (PyTorch eager, inference mode);
- `onnxruntime`: `OnnxRuntimeModel`, the same segmenter exported once to an ONNX graph (model/onnx_graph.py) and run
  by ONNX Runtime's CPU provider. Its probabilities agree with PyTorch's within CHECK_TOLERANCE, checked on every
  graph it exports.

`auto` picks ONNX Runtime on a machine without a GPU wherever it measured faster there (CPU_DEFAULT, measured by
scripts/bench_predict.py and scripts/benchmark.py: docs/performance.md), PyTorch on a GPU.

The cache. A graph is exported once per checkpoint and input size and reused by later runs: `<cache>/<key>.onnx`,
the key being the SHA-256 of everything that changes the graph (`graph_identity`: the checkpoint file's SHA-256,
student or EMA weights, the config's model keys, the input height and width, and GRAPH_FORMAT). `<cache>` is
$RS_MTDF_CACHE/onnx, else $XDG_CACHE_HOME/rs_mtdf/onnx, else ~/.cache/rs_mtdf/onnx. Entries are written atomically;
one that ONNX Runtime cannot open, or whose recorded key is another, is exported again.

Threads: ONNX Runtime's intra-op pool gets the threads PyTorch has (torch.get_num_threads(): the commands' --threads,
else OMP_NUM_THREADS, else one per physical core), one inter-op thread (the graph is one chain). The two never run at
once: ONNX Runtime computes a batch, then PyTorch blends it. The pool does not spin after a batch, so that its idle
threads leave the cores to PyTorch's blending in between.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eval.inference import Model
from model.onnx_graph import MAX_WEIGHT_BYTES, exporter_missing, require_exporter, to_onnx, weight_bytes
from util.config import MODEL_KEYS, Config, flatten, under
from util.errors import ConfigError, OutputError, short_reason
from util.io import atomic_path, remove_stale_temporaries

if TYPE_CHECKING:
    import onnx
    import onnxruntime

BACKENDS = ("torch", "onnxruntime")
BACKEND_CHOICES = ("auto", *BACKENDS)
# What `auto` runs on a machine without a GPU, per inference mode: measured, docs/performance.md.
CPU_DEFAULT = {"original": "onnxruntime", "sliding_window": "onnxruntime"}
INPUT, OUTPUT = "image", "logits"
# Changes whenever the graph this file exports changes for the same identity: older entries are then not reused.
GRAPH_FORMAT = 1
CHECK_TOLERANCE = 1e-4
CACHE_KEY = "rs_mtdf_cache_key"


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """--backend and --threads, the same for eval.py and predict.py."""
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="what runs the model: torch (PyTorch), onnxruntime (the model exported to ONNX once, "
                             "cached, run by ONNX Runtime on the CPU), or auto (default: onnxruntime on a machine "
                             "without a GPU, torch with one)")
    parser.add_argument("--threads", type=int,
                        help="threads of PyTorch and ONNX Runtime (default: OMP_NUM_THREADS, else one per physical "
                             "core)")


def backend_device(requested: str, device: torch.device) -> torch.device:
    """The device images go to: the CPU for ONNX Runtime asked for (its CPU provider runs the model), else `device`."""
    return torch.device("cpu") if requested == "onnxruntime" else device


def set_threads(threads: int | None) -> int:
    """Set PyTorch's threads to `threads` (None: leave its default); returns the number both backends use."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: give a number of threads, 1 or more")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def choose_backend(requested: str, device: torch.device, mode: str, model: nn.Module) -> str:
    """The backend that runs: `requested`, or for `auto` PyTorch on a GPU and CPU_DEFAULT[mode] on a CPU. `auto`
    stays with PyTorch where ONNX Runtime cannot run the model (its packages missing, weights beyond one ONNX file);
    `onnxruntime` asked for there is a one-line error."""
    if requested not in BACKEND_CHOICES:
        raise ConfigError(f"--backend {requested}: give one of {', '.join(BACKEND_CHOICES)}")
    if requested == "torch" or (requested == "auto" and (device.type != "cpu" or CPU_DEFAULT[mode] == "torch")):
        return "torch"
    problem = onnxruntime_problem(model)
    if problem is None:
        return "onnxruntime"
    if requested == "onnxruntime":
        raise ConfigError(f"--backend onnxruntime: {problem}; use --backend torch")
    print(f"note: running PyTorch, not ONNX Runtime: {problem}", file=sys.stderr)
    return "torch"


def onnxruntime_problem(model: nn.Module) -> str | None:
    """Why ONNX Runtime cannot run `model`, or None. Only ONNX Runtime itself is looked for here: the exporter's
    packages (onnx, ONNX Script: seconds to import) are needed, and checked, only when a graph is not cached yet."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "the package onnxruntime is not installed (pip install -r requirements.txt)"
    missing = exporter_missing()
    if missing:
        return f"exporting the graph needs {missing}"
    size = weight_bytes(model)
    if size > MAX_WEIGHT_BYTES:
        return f"{size / 2**30:.1f} GiB of weights, more than one ONNX graph holds (2 GiB)"
    return None


def backend_model(requested: str, model: nn.Module, device: torch.device, mode: str, cfg: Config,
                  checkpoint_sha256: str, weights: str, threads: int) -> tuple[str, Model]:
    """The backend that runs (`choose_backend`) and the `Model` it runs: the segmenter, or its OnnxRuntimeModel."""
    backend = choose_backend(requested, device, mode, model)
    if backend == "torch":
        return backend, model
    return backend, OnnxRuntimeModel(model, graph_identity(cfg, checkpoint_sha256, weights), threads)


def graph_identity(cfg: Config, checkpoint_sha256: str, weights: str) -> dict[str, Any]:
    """What identifies the graph of a checkpoint's weights (besides the input size): the checkpoint file, student
    or EMA, and the config's model keys (the architecture they build)."""
    settings = {k: v for k, v in flatten(cfg.to_dict()).items() if under(k, MODEL_KEYS)}
    return {"checkpoint_sha256": checkpoint_sha256, "weights": weights, "nclass": cfg.dataset.nclass,
            "model": settings}


def cache_dir() -> Path:
    """Where exported graphs are kept (module docstring)."""
    if os.environ.get("RS_MTDF_CACHE"):
        return Path(os.environ["RS_MTDF_CACHE"]).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rs_mtdf" / "onnx"


class OnnxRuntimeModel:
    """A `Model` (eval.inference) that runs `model` in ONNX Runtime: one session per input size, each graph taken from
    the cache or exported into it on first use."""

    def __init__(self, model: nn.Module, identity: dict[str, Any], threads: int, cache: Path | None = None) -> None:
        self.model = model.float().eval()
        self.identity = identity
        self.threads = threads
        self.cache = cache or cache_dir()
        self.sessions: dict[tuple[int, int], onnxruntime.InferenceSession] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        session = self.sessions.get((height, width)) or self._open(height, width)
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        logits = session.run([OUTPUT], {INPUT: array})[0]
        return torch.from_numpy(logits).to(batch.device)

    def key(self, height: int, width: int) -> str:
        """The cache key of the graph for inputs of height x width: JSON text, sorted."""
        return json.dumps({**self.identity, "height": height, "width": width, "format": GRAPH_FORMAT}, sort_keys=True)

    def path(self, height: int, width: int) -> Path:
        """The cache entry of the graph for height x width."""
        return self.cache / f"{hashlib.sha256(self.key(height, width).encode()).hexdigest()[:32]}.onnx"

    def _open(self, height: int, width: int) -> onnxruntime.InferenceSession:
        path, key = self.path(height, width), self.key(height, width)
        session = self._session(path, key) if path.is_file() else None
        if session is None:
            why = "its cache entry did not open" if path.is_file() else "once per checkpoint and size"
            # Beside a progress bar, not through it: the first batch arrives while one is on screen.
            tqdm.write(f"note: exporting the model for ONNX Runtime at {height} x {width} ({why}) into {path}",
                       file=sys.stderr)
            self._export(path, key, height, width)
            session = self._session(path, key)
            if session is None:
                raise OutputError(f"the ONNX graph just written to {path} does not open; use --backend torch")
        self.sessions[height, width] = session
        return session

    def _session(self, path: Path, key: str) -> onnxruntime.InferenceSession | None:
        """A session of the graph in `path`, or None when it cannot be opened or records another key."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: a corrupt entry is reported by this module, once
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any unreadable entry (truncated, corrupt, foreign) is exported again
            return None
        return session if session.get_modelmeta().custom_metadata_map.get(CACHE_KEY) == key else None

    def _export(self, path: Path, key: str, height: int, width: int) -> None:
        """Export the graph for height x width, check it against PyTorch and write it to `path` atomically."""
        require_exporter("--backend onnxruntime")
        proto = to_onnx(self.model, height, width, INPUT, OUTPUT)
        check_against_torch(proto, self.model, height, width)
        set_cache_key(proto, key)
        write_graph(proto, path)


def set_cache_key(proto: onnx.ModelProto, key: str) -> None:
    """Record `key` in the graph's metadata (replacing one there): an entry is used only for the key it records."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != CACHE_KEY]
    del proto.metadata_props[:]
    for name, value in [*kept, (CACHE_KEY, key)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = name, value


def check_against_torch(proto: onnx.ModelProto, model: nn.Module, height: int, width: int) -> float:
    """ONNX Runtime's probabilities on one random input against PyTorch's: their largest difference; more than
    CHECK_TOLERANCE is an error (an exporter problem: PyTorch still runs the model)."""
    import onnxruntime as ort

    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = torch.from_numpy(session.run([OUTPUT], {INPUT: image.numpy()})[0]).softmax(1)
    with torch.inference_mode():
        reference = model(image).float().softmax(1)
    diff = float((ours - reference).abs().max())
    if not diff <= CHECK_TOLERANCE:
        raise ConfigError(f"the ONNX graph gives probabilities {diff:.2g} away from PyTorch's (at most "
                          f"{CHECK_TOLERANCE} expected): an exporter problem; use --backend torch")
    return diff


def write_graph(proto: onnx.ModelProto, path: Path) -> None:
    """Save `proto` at `path` atomically, making the cache folder; a failure is one OutputError."""
    import onnx

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
    except OSError as e:
        raise OutputError(f"could not write the ONNX cache entry {path}: {short_reason(e)}; set RS_MTDF_CACHE to a "
                          f"writable folder, or use --backend torch") from None
