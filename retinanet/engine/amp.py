"""Mixed precision: which autocast dtype ``train.amp`` asks for, and whether this device runs it fast.

bf16 pays only where the hardware computes in it: CUDA GPUs, and CPUs with AVX512_BF16 or AMX
(Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later). Elsewhere PyTorch emulates
bf16 matmuls and convolutions by converting to fp32 and back, which is *slower* than fp32, so asking
for it there warns.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

# train.amp -> autocast dtype ("" is fp32). The loss, box decoding and NMS stay in fp32 regardless.
AMP_MODES: dict[str, Optional[torch.dtype]] = {"": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# /proc/cpuinfo flags of CPUs with bf16 arithmetic: dot products (AVX-512) or tile matmuls (AMX).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: Callable[[], frozenset[str]] = cpu_flags) -> bool:
    """Whether the CPU computes in bf16 natively (``flags`` returns the CPU flags; tests mock it)."""
    return any(f in flags() for f in NATIVE_BF16_FLAGS)


def autocast_dtype(mode: str, device: torch.device,
                   flags: Callable[[], frozenset[str]] = cpu_flags) -> Optional[torch.dtype]:
    """The dtype for ``torch.autocast`` on ``device``, or None for fp32. bf16 on a CPU without
    native bf16 is honoured but warns that it will be slow."""
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp: expected one of {', '.join(repr(m) for m in AMP_MODES)}, got {mode!r}")
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on a CPU with bf16 support")
    if mode == "bf16" and device.type == "cpu" and not cpu_has_native_bf16(flags):
        warnings.warn("train.amp=bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), so PyTorch "
                      "emulates it and training will be several times SLOWER than fp32; use train.amp='' "
                      "(fp32) here, bf16 on a CUDA GPU or a CPU with AVX512_BF16/AMX", RuntimeWarning, stacklevel=2)
    return AMP_MODES[mode]


# The device decisions of the trainer, as pure functions so that their CUDA answers are tested on a CPU.
def uses_channels_last(device: torch.device, amp: str) -> bool:
    """NHWC activations and weights: they pay on a CPU (oneDNN) and with AMP on a GPU (tensor cores);
    cuDNN's fp32 NHWC convolutions are not faster than NCHW."""
    return device.type == "cpu" or bool(amp)


def uses_winograd(device: torch.device) -> bool:
    """Winograd 3x3 convs (``fusion.prepare_for_training``) only on a CPU: cuDNN picks its own algorithms."""
    return device.type == "cpu"


def grad_scaler(device: torch.device, amp_dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """Loss scaling only for fp16, whose gradients underflow; bf16 and fp32 have fp32's exponent range.
    Disabled, the scaler is a pass-through (scale(loss) is loss, step() is optimizer.step())."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
