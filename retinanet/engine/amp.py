"""Mixed precision: which autocast dtype ``train.amp`` asks for, and whether this device can run it."""
from __future__ import annotations

from typing import Optional

import torch

# train.amp -> autocast dtype ("" is fp32). The loss, box decoding and NMS stay in fp32 regardless.
AMP_MODES: dict[str, Optional[torch.dtype]] = {"": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The dtype for ``torch.autocast`` on ``device``, or None for fp32."""
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp: expected one of {', '.join(repr(m) for m in AMP_MODES)}, got {mode!r}")
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on the CPU")
    return AMP_MODES[mode]
