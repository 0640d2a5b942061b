"""Whether to take the GPU's code paths, and which dtype autocast runs in, for train.precision on a device.

The GPU's paths (reduced precision, teachers in their own precisions, channels-last, fused AdamW) are taken on a
GPU, and on a CPU only where train.cpu_autocast asks to exercise them (`gpu_paths`, the one place that decides).
On a GPU `auto` is bf16 where the card has it (fp32 otherwise), `bf16`/`fp16` are taken as asked. On a CPU
everything is fp32 unless the caller opts in with `allow_cpu=True`: CPU autocast is slow on most CPUs and
the tests want exact fp32, but the GPU's precision paths (bf16 autocast, fp16 with a GradScaler) can only
be exercised on a machine without a GPU that way (tests/test_gpu_paths.py, scripts/benchmark.py --cpu-amp).
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def gpu_paths(device: torch.device | str, cpu_autocast: bool = False) -> bool:
    """Whether code on `device` takes the GPU's paths: on a GPU, or on a CPU where `cpu_autocast`
    (train.cpu_autocast) asks to exercise them without one."""
    return torch.device(device).type == "cuda" or cpu_autocast


def autocast_dtype(precision: str, device: torch.device | str, allow_cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype for `precision` (train.precision) on `device`; None means plain fp32.

    `allow_cpu`: on a CPU, give the dtype a GPU would get (`auto` -> bf16) instead of None.
    """
    device = torch.device(device)
    if precision == "fp32" or not gpu_paths(device, allow_cpu and device.type == "cpu"):
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else None
    return DTYPES[precision]
