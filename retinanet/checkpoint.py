"""Checkpoint files: our format, torchvision state dicts, and safe loading.

Our format is a dict ``{"format": "retinanet-v1", "model": state_dict, "config": dict,
"categories": [{"id": int, "name": str}, ...], ...training state}``. Every load uses
``weights_only=True``: a pickle that would construct arbitrary objects is refused.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .jsonio import TMP_SUFFIX, atomic_write

FORMAT = "retinanet-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class NonFiniteWeightsError(CheckpointError):
    """A state dict holds NaN or Inf values; such a model is never written, loaded or scored."""


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or Inf (parameters and buffers:
    a BatchNorm running variance that became NaN breaks the model as surely as a weight)."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _nonfinite_message(names: list[str]) -> str:
    more = f" (+{len(names) - 10} more)" if len(names) > 10 else ""
    return f"{len(names)} tensor(s) hold NaN or Inf: {', '.join(names[:10])}{more}"


def save_checkpoint(path: Union[str, Path], payload: dict[str, Any]) -> None:
    """Writes atomically: a temp file in the same folder, fsync, then rename over ``path``.

    Refuses (NonFiniteWeightsError) a ``model`` state dict with non-finite values. A failed write
    (full disk, no permission) raises OSError naming ``path`` and the cause, and leaves no temp file."""
    path = Path(path)
    bad = nonfinite_tensors(payload["model"]) if isinstance(payload.get("model"), dict) else []
    if bad:
        raise NonFiniteWeightsError(f"not writing {path}: the model's {_nonfinite_message(bad)}")
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        raise _write_error(path, e) from None


def _write_error(path: Path, e: BaseException) -> OSError:
    """A one-line OSError for a failed checkpoint write. torch.save reports a full disk as a
    RuntimeError from its zip writer ("file write failed"), so the free space is checked too."""
    code = getattr(e, "errno", None)
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    if code == errno.ENOSPC or (code is None and full):
        return OSError(errno.ENOSPC, f"cannot write checkpoint {path}: no space left on device")
    if isinstance(e, OSError):
        return OSError(code, f"cannot write checkpoint {path}: {e.strerror or e}")
    return OSError(code or errno.EIO, f"cannot write checkpoint {path}: {str(e).splitlines()[-1][:200]}")


def remove_stale_temp_files(folder: Union[str, Path]) -> list[Path]:
    """Removes the temp files a killed ``save_checkpoint`` left in ``folder`` (each as large as a
    checkpoint); returns them. Call only when no other process is saving into ``folder``."""
    removed = []
    for tmp in Path(folder).glob(f"*.pth.*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: Union[str, Path], allow_nonfinite: bool = False) -> dict[str, Any]:
    """Loads a checkpoint on the CPU. Returns our format as is; a bare state dict (ours or
    torchvision's) comes back as ``{"model": state_dict}``. Weights holding NaN or Inf raise
    NonFiniteWeightsError naming the tensors, unless ``allow_nonfinite``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        raise CheckpointError(_load_error_message(path, e)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(data).__name__}")
    if not ("model" in data and isinstance(data["model"], dict)):
        if not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise CheckpointError(f"{path}: has no 'model' state dict (keys: {sorted(data)[:10]})")
        data = {"model": data}
    bad = [] if allow_nonfinite else nonfinite_tensors(data["model"])
    if bad:
        raise NonFiniteWeightsError(f"{path}: unusable weights: {_nonfinite_message(bad)} (the run that wrote "
                                    f"it diverged; use an earlier checkpoint)")
    return data


def _load_error_message(path: Path, e: Exception) -> str:
    """Tells a file that is not a checkpoint at all from a pickle that would construct objects.
    weights_only wraps every unpickling error in the same "Weights only load failed" text, so only
    its "Unsupported global" (a class or function to import) means code would run."""
    text = str(e)
    if re.search(r"unsupported (global|class)", text, re.I):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found[1]})" if found else ""
        return (f"{path}: refused to load: it contains objects that could run code{what}; only tensors and "
                f"plain data are accepted")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(\n\n|$)", text, re.S)
    cause = detail[1].strip() if detail else f"{type(e).__name__} {text}".strip()
    return f"{path}: not a PyTorch checkpoint (unreadable as one: {cause.splitlines()[0][:160]})"


def is_torchvision_state_dict(state: dict) -> bool:
    return any(k.startswith("head.classification_head.") for k in state)


_TV_RULES = [
    (r"^backbone\.body\.", "backbone.body."),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?", r"fpn.lateral.\1."),  # 0.: Conv2dNormActivation
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?", r"fpn.output.\1."),
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
