"""Starting a training run from another detector (``model.weights``): fine-tuning on new classes.

Every tensor whose name and shape fit is loaded; the rest keep their fresh initialisation, which for the
class layer of a model with another class count is the paper's prior (bias -log((1 - pi) / pi)). What was
loaded is logged by part, so a user sees at once whether the FPN and the box head came across.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .backbone import download_torchvision_weights
from .checkpoint import CheckpointError, convert_torchvision_state_dict, is_torchvision_state_dict, load_checkpoint

log = logging.getLogger("retinanet")

# (part, key prefixes), in the order a reader follows the model.
PARTS = (("backbone", ("backbone.",)), ("FPN", ("fpn.",)), ("class tower", ("head.cls_tower.",)),
         ("class layer", ("head.cls_logits.",)), ("box head", ("head.box_tower.", "head.box_pred.")))


def read_detector_weights(source: str) -> dict[str, torch.Tensor]:
    """Our key names -> tensors of ``source``: a checkpoint of ours (any ``retinanet train`` output), a
    torchvision RetinaNet state dict file (v1 or v2 layout), or a torchvision weights name such as
    ``RetinaNet_ResNet50_FPN_Weights.COCO_V1`` (downloaded; offline, an error says how to pass the file)."""
    path = Path(source).expanduser()
    if path.is_file():
        state = load_checkpoint(path)["model"]
    elif "/" in source or source.endswith((".pth", ".pt")):
        raise CheckpointError(f"model.weights: file not found: {source}")
    else:
        state = download_torchvision_weights(source, "model.weights", "RetinaNet_ResNet50_FPN_Weights.COCO_V1")
    return convert_torchvision_state_dict(state) if is_torchvision_state_dict(state) else state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict:
    """Copies into ``model`` each tensor of ``state`` whose name and shape fit; returns
    {part: (loaded, total)} and logs it, with the tensors that did not fit."""
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    summary, lines = {}, []
    for part, prefixes in PARTS:
        keys = [k for k in own if k.startswith(prefixes)]
        loaded = sum(k in fits for k in keys)
        summary[part] = (loaded, len(keys))
        unfit = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys if k in state and k not in fits]
        note = f" (shape differs: {'; '.join(unfit[:2])}{' ...' if len(unfit) > 2 else ''})" if unfit else ""
        if part == "class layer" and loaded < len(keys):
            note += ": re-initialised with the prior bias"
        lines.append(f"{part} {loaded}/{len(keys)}{note}")
    ignored = len([k for k in state if k not in own])
    log.info("model.weights: loaded %d of %d model tensors from %s: %s%s", len(fits), len(own), source,
             ", ".join(lines), f"; {ignored} checkpoint tensor(s) have no place in this model" if ignored else "")
    if not fits:
        raise CheckpointError(f"model.weights: nothing in {source} fits this model (another architecture?)")
    return summary

