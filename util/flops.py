"""Model FLOPs utilisation: FLOPs counted on a real step, over the GPU's dense bf16 peak.

The trainer counts the FLOPs of its first step with `flop_counter` (PyTorch's FlopCounterMode: 2 FLOPs per
multiply-add of every matmul, convolution and attention; elementwise work is memory-bound and not counted)
and logs MFU = FLOPs per step / seconds per step / peak, where the peak is known (`peak_bf16_tflops`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, by a fragment of torch.cuda.get_device_name();
# the first fragment found in the name wins, so the specific ones come first. GeForce cards (RTX 4090) reach
# their figure only with fp16 accumulation; PyTorch accumulates in fp32, at half that rate.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.0))


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name` (TFLOP/s), or None if it is not in the table."""
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


def device_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of `device`: a GPU in the table; None for a CPU or an unknown GPU (no MFU then)."""
    if device.type != "cuda":
        return None
    return peak_bf16_tflops(torch.cuda.get_device_name(device))


def model_flops_utilisation(flops_per_step: float, seconds_per_step: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs per second over the device's peak (a fraction), or None without a known peak."""
    if not peak_tflops or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (peak_tflops * 1e12)


def _sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha_flops(query: Any, key: Any, value: Any, embed_dim: int, num_head: int, *args: Any,
                      out_shape: Any = None, **kwargs: Any) -> int:
    """nn.MultiheadAttention's inference fast path (CLIP's blocks, frozen): projections and attention in one op."""
    b, n_q, d = query
    n_k = key[1]
    projections = 2 * b * d * d * (n_q + 2 * n_k) + 2 * b * n_q * d * d  # q, k, v in; out
    return projections + 2 * 2 * b * n_q * n_k * d


def flop_counter() -> Any:
    """FlopCounterMode that also counts the CPU's fused attention and nn.MultiheadAttention's fast path, which
    PyTorch's table leaves out (its GPU attention kernels are in it)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
        aten._native_multi_head_attention: _native_mha_flops})


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention that `fn()` runs."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()
