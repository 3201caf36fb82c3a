"""Where and in which precision the math runs: one code path for CPU and CUDA."""

from __future__ import annotations

import torch

from simclr.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` picks bf16 autocast where the hardware computes bf16 natively, else fp32.

    On CPUs with AVX512-BF16 or AMX, oneDNN runs bf16 convolutions 2-3x faster than fp32 (see
    docs/benchmarks.md); elsewhere bf16 is emulated and slower, so fp32 is kept.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and _cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name, ``None`` for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
