"""Devices and dtypes as callers name them, checked before any weight is moved."""
from __future__ import annotations

import torch

DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device) -> torch.device:
    """A usable torch device, or a ValueError that says which ones this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no weights and cannot sample; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this torch sees no CUDA GPU (a CPU build of torch, or no "
                             f"driver); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use 'cpu'")
    return dev


def resolve_dtype(dtype) -> torch.dtype | None:
    """None (keep the file's), a floating torch dtype, or one of its names ('bf16', 'float16', ...)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise TypeError(f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, torch.float16) or one of "
                    f"{', '.join(DTYPE_NAMES)}, got {dtype!r}")
