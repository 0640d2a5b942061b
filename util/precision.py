"""Which dtype autocast runs in, for train.precision on a device.

On a GPU `auto` is bf16 where the card has it (fp32 otherwise), `bf16`/`fp16` are taken as asked. On a CPU
everything is fp32 unless the caller opts in with `allow_cpu=True`: CPU autocast is slow on most CPUs and
the tests want exact fp32, but the GPU's precision paths (bf16 autocast, fp16 with a GradScaler) can only
be exercised on a machine without a GPU that way (tests/test_gpu_paths.py, scripts/benchmark.py --cpu-amp).
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device | str, allow_cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype for `precision` (train.precision) on `device`; None means plain fp32.

    `allow_cpu`: on a CPU, give the dtype a GPU would get (`auto` -> bf16) instead of None.
    """
    device = torch.device(device)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return DTYPES[precision]
    if device.type == "cpu" and allow_cpu:
        return torch.bfloat16 if precision == "auto" else DTYPES[precision]
    return None
