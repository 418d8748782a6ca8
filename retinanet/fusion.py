"""Inference-only rewrites of a RetinaNet that keep its outputs: BatchNorm folded into the preceding
convolution, and the channels_last memory layout.

``fuse_for_inference`` returns a *copy*: the caller's model, its parameters and its state-dict keys
stay as they are (checkpoints, training and export see the original). The Detector keeps such a copy
next to its model and rebuilds it when the model's weights change (see ``weights_version``).

Why it pays on a CPU: a frozen BatchNorm after a conv is a full extra read and write of every
activation map (``x * scale + shift``); folded into the conv weights (``w * scale``, bias
``b * scale + shift``) it costs nothing. channels_last (NHWC) is the layout oneDNN's convolutions
use natively, so PyTorch skips reordering every input and output.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _affine(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale (C,), shift (C,)) such that ``norm(x) == x * scale + shift`` in eval mode."""
    eps = norm.eps
    scale = norm.weight * (norm.running_var + eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Rewrites ``conv`` in place so that ``conv(x) == norm(old_conv(x))`` (up to float rounding)."""
    scale, shift = _affine(norm)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def _fold_children(module: nn.Module) -> int:
    """Folds every (conv, norm) pair directly under ``module``: consecutive entries of an
    nn.Sequential (torchvision's downsample and Conv2dNormActivation), or attributes named
    ``convN``/``bnN`` (torchvision's ResNet stem, BasicBlock and Bottleneck, whose forward calls
    them in that order). The norm becomes an Identity. Returns the number of pairs folded."""
    folded = 0
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (_, a), (name_b, b) in zip(items, items[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, _NORMS):
                fold_norm_into_conv(a, b)
                module._modules[name_b] = nn.Identity()
                folded += 1
    else:
        for name, child in list(module.named_children()):
            if name.startswith("conv") and isinstance(child, nn.Conv2d):
                norm = getattr(module, "bn" + name[4:], None)
                if isinstance(norm, _NORMS):
                    fold_norm_into_conv(child, norm)
                    setattr(module, "bn" + name[4:], nn.Identity())
                    folded += 1
    return folded + sum(_fold_children(c) for c in module.children())


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with its BatchNorms folded into their convolutions and, with
    ``channels_last``, its weights in NHWC; feed it ``batch.contiguous(memory_format=torch.channels_last)``.
    Its outputs equal the model's to float rounding (~1e-6 relative)."""
    fused = copy.deepcopy(model).eval()
    for p in fused.parameters():
        p.requires_grad_(False)
    _fold_children(fused)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


def weights_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place
    (optimizer steps, ``load_state_dict``): identity and in-place version counter of each tensor.
    Costs microseconds, so it can be checked before every forward."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))
