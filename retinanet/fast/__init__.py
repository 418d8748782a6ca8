"""The speed machinery, behind one door. Each fast path returns what the plain reference path returns,
to float rounding (``tests/test_fast_paths.py``); the config key ``model.fast: false`` switches them all
off, and nothing in the core (model, backbone, ..., criterion, losses) imports this package.

* ``for_inference(model, device)``: an eval-mode copy of a RetinaNet with BatchNorm folded into its
  convs and, on a CPU, channels_last weights, Winograd 3x3 convs, and ReLUs and residual adds run inside
  the convs (``fusion.py``, ``winograd.py``, ``onednn.py``). ``Detector.network`` runs it.
* ``for_training(model, device, amp)``: the same rewrites in place for training, with the same
  parameters and state-dict keys. The trainer calls it.
* ``topk.topk_rows``: post-processing's per-level top-k over millions of logits, the same result
  from a pre-selected few thousand; ``build.build_postprocessor`` passes it to the post-processor.
* ``focal.sparse_focal_loss``: the focal class loss without its (N, R, K) one-hot targets;
  ``build.build_criterion`` passes it to the criterion.
* ``records``: the COCO annotations in a few flat numpy buffers, which forked data-loader workers share
  instead of copying (``data/coco.py``). It is the only storage there is, so it has no switch.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..engine.amp import uses_channels_last, uses_winograd
from .fusion import fuse_for_inference, prepare_for_training, weights_version
from .onednn import fuse_pointwise

__all__ = ["for_inference", "for_training", "weights_version"]


def for_inference(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """An eval-mode copy of ``model`` (a RetinaNet) with the same outputs to float rounding; it takes the
    same (N, 3, H, W) batches. ``model`` itself, its parameters and state-dict keys are left as they are."""
    cpu = torch.device(device).type == "cpu"  # fp32 NHWC convs pay on oneDNN, not reliably on cuDNN
    fused = fuse_for_inference(model, channels_last=cpu, winograd=cpu)
    if cpu:
        fuse_pointwise(fused)
        fused.register_forward_pre_hook(_channels_last_input)
    return fused


def for_training(model: nn.Module, device: Union[str, torch.device], amp: bool = False) -> nn.Module:
    """``model`` rewritten in place (``fusion.prepare_for_training``): each conv computes the frozen
    BatchNorm after it, and on a CPU wide 3x3 convs train through Winograd; the same parameters, keys,
    losses and gradients to float rounding. Returns ``model``; it takes the same (N, 3, H, W) batches."""
    device = torch.device(device)
    channels_last = uses_channels_last(device, amp)
    prepare_for_training(model, channels_last, winograd=uses_winograd(device))
    if channels_last:
        model.register_forward_pre_hook(_channels_last_input)
    return model


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Feeds the NHWC weights an NHWC batch, so callers pass the usual layout (a module-level function:
    models stay picklable)."""
    batch: Tensor = args[0]
    return (batch.contiguous(memory_format=torch.channels_last), *args[1:])
