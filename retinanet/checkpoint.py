"""Checkpoint files: our format, torchvision state dicts, and safe loading.

Our format is a dict ``{"format": "retinanet-v1", "model": state_dict, "config": dict,
"categories": [{"id": int, "name": str}, ...], ...training state}``. Every load uses
``weights_only=True``: a pickle that would construct arbitrary objects is refused.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

FORMAT = "retinanet-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


def save_checkpoint(path: Union[str, Path], payload: dict[str, Any]) -> None:
    """Writes atomically: a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """Loads a checkpoint on the CPU. Returns our format as is; a bare state dict (ours or
    torchvision's) comes back as ``{"model": state_dict}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path}: refused to load: it holds Python objects that could run code "
                                  f"(only tensors and plain data are accepted). {msg}") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(data).__name__}")
    if "model" in data and isinstance(data["model"], dict):
        return data
    if all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model": data}
    raise CheckpointError(f"{path}: has no 'model' state dict (keys: {sorted(data)[:10]})")


def is_torchvision_state_dict(state: dict) -> bool:
    return any(k.startswith("head.classification_head.") for k in state)


_TV_RULES = [
    (r"^backbone\.body\.", "backbone.body."),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.", r"fpn.lateral.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.", r"fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.", r"fpn.output.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.", r"fpn.output.\1."),
    (r"^backbone\.fpn\.extra_blocks\.(p[67])\.", r"fpn.\1."),
    (r"^head\.classification_head\.conv\.(\d)\.0\.", r"head.cls_tower.\1.conv."),
    (r"^head\.classification_head\.conv\.(\d)\.1\.", r"head.cls_tower.\1.norm."),
    (r"^head\.regression_head\.conv\.(\d)\.0\.", r"head.box_tower.\1.conv."),
    (r"^head\.regression_head\.conv\.(\d)\.1\.", r"head.box_tower.\1.norm."),
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.bbox_reg\.", "head.box_pred."),
]


def convert_torchvision_state_dict(state: dict) -> dict:
    """Renames a torchvision ``retinanet_resnet50_fpn[_v2]`` state dict to our keys.

    Handles torchvision's pre-0.13 head layout (``conv.0/2/4/6``, no Conv2dNormActivation) too.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        legacy = re.match(r"^head\.(classification|regression)_head\.conv\.(\d)\.(weight|bias)$", key)
        if legacy and state[key].dim() in (1, 4) and f"head.{legacy[1]}_head.conv.{legacy[2]}.0.weight" not in state:
            key = f"head.{legacy[1]}_head.conv.{int(legacy[2]) // 2}.0.{legacy[3]}"
        for pattern, repl in _TV_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise CheckpointError(f"torchvision state dict: unexpected key {key!r}")
    return out


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strictly loads ``state`` into ``model``; errors name every missing, unexpected or mis-shaped key."""
    if is_torchvision_state_dict(state):
        state = convert_torchvision_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch for " + "; ".join(shapes[:10]))
        if missing:
            parts.append(f"missing keys {missing[:10]}" + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}"
                         + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
        hint = ""
        if any("cls_logits" in s for s in shapes):
            hint = " The class layer differs: the checkpoint was trained for another number of classes."
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(parts) + "." + hint)
    model.load_state_dict(state)
