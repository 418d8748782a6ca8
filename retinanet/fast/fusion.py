"""Rewrites of a RetinaNet that keep its outputs (to float rounding) and its state-dict keys: BatchNorm
folded into the preceding convolution, the channels_last memory layout and, on a CPU, Winograd
convolutions (``winograd.py``); for inference (``fuse_for_inference``) and training
(``prepare_for_training``, where the folding is recomputed every step because the convs still train).

``fuse_for_inference`` returns a *copy*: the caller's model, its parameters and its state-dict keys
stay as they are (checkpoints, training and export see the original).

Why it pays on a CPU: a frozen BatchNorm after a conv is a full extra read and write of every
activation map (``x * scale + shift``); folded into the conv weights (``w * scale``, bias
``b * scale + shift``) it costs nothing. channels_last (NHWC) is the layout oneDNN's convolutions
use natively, so PyTorch skips reordering every input and output.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from .winograd import winograd_convs, winograd_eligible, winograd_train_conv

_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _affine(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale (C,), shift (C,)) such that ``norm(x) == x * scale + shift`` in eval mode."""
    eps = norm.eps
    scale = norm.weight * (norm.running_var + eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


def _pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.Module, str]]:
    """(conv, norm, the norm's name) for each conv followed by a BatchNorm directly under ``module``:
    consecutive entries of an nn.Sequential (torchvision's downsample and Conv2dNormActivation), or
    attributes named ``convN``/``bnN`` (torchvision's ResNet stem, BasicBlock and Bottleneck, whose
    forward calls them in that order)."""
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        pairs = [(a, b, name_b) for (_, a), (name_b, b) in zip(items, items[1:])]
    else:
        pairs = [(c, getattr(module, "bn" + n[4:], None), "bn" + n[4:]) for n, c in module.named_children()
                 if n.startswith("conv")]
    return [(c, n, name) for c, n, name in pairs if isinstance(c, nn.Conv2d) and isinstance(n, _NORMS)]


def fuse_for_inference(model: nn.Module, channels_last: bool = True, winograd: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with its BatchNorms folded into their convolutions and, with
    ``channels_last``, its weights in NHWC; feed it ``batch.contiguous(memory_format=torch.channels_last)``.
    With ``winograd`` (CPU), its wide 3x3 convs run as Winograd F(4x4, 3x3) (``winograd.py``).
    Its outputs equal the model's to float rounding (~1e-6 relative; ~1e-5 with ``winograd``)."""
    fused = copy.deepcopy(model).eval()
    _undo_training_rewrite(fused)  # a model rewritten by prepare_for_training: back to conv, then norm
    for p in fused.parameters():
        p.requires_grad_(False)
    for m in list(fused.modules()):
        for conv, norm, name in _pairs(m):  # conv(x) := norm(conv(x)), the norm becomes an Identity
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                          norm.running_var, norm.eps, norm.weight, norm.bias)
            setattr(m, name, nn.Identity())
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if winograd:
        winograd_convs(fused)
    return fused


def weights_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place
    (optimizer steps, ``load_state_dict``): identity and in-place version counter of each tensor.
    Costs microseconds, so it can be checked before every forward."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))


# -- training: the same folding, recomputed every step because the convs still train ----------------

class _ConvThenFrozenNorm(nn.Conv2d):
    """A Conv2d followed by a FrozenBatchNorm2d, computed as one conv with weights scaled on the fly:
    ``conv(x, w * s, b * s + t)`` instead of ``conv(x, w, b) * s + t``. Same parameters (the conv's
    weight keeps training, gradients flow through the scaling) and the same state-dict keys; it
    saves the norm's passes over the activations, forward and backward."""

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = _affine(self._frozen_norm[0])
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


class _WinogradConv(nn.Conv2d):
    """A wide 3x3 conv that trains through Winograd F(4x4, 3x3) on a CPU (``winograd.winograd_train_conv``):
    fewer multiply-adds forward and backward. Same parameters and state-dict keys; the direct
    conv elsewhere (CUDA, autocast, other dtypes, maps under ``min_pixels``)."""

    # On smaller maps the backward's per-tile-position accumulations cost more than the multiply-adds saved.
    min_pixels = 1024

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or x.shape[-2] * x.shape[-1] < self.min_pixels):
            return super()._conv_forward(x, weight, bias)
        return winograd_train_conv(x, weight, bias)


class _WinogradConvThenFrozenNorm(_ConvThenFrozenNorm, _WinogradConv):
    """Both rewrites: the norm folded into the weights, then the Winograd conv."""


class _NormFoldedIntoConv(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose conv applies it (see ``_ConvThenFrozenNorm``): identity here, its
    buffers stay where checkpoints expect them."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def prepare_for_training(model: nn.Module, channels_last: bool = True, winograd: bool = False,
                         min_channels: int = 256) -> nn.Module:
    """Rewrites ``model`` in place for faster CPU/GPU training with identical parameters, state-dict
    keys and outputs (to float rounding): each Conv2d followed by a FrozenBatchNorm2d computes both
    (the classes are swapped, no tensor is copied); with ``winograd`` (CPU training), 3x3 convs with
    at least ``min_channels`` inputs run as Winograd F(4x4, 3x3); and with ``channels_last`` the
    weights are NHWC (feed it channels_last batches). Returns ``model``. ``fuse_for_inference``
    undoes the swaps on its copy."""
    for m in list(model.modules()):
        for conv, norm, _ in _pairs(m):
            if type(conv) is nn.Conv2d and type(norm) is FrozenBatchNorm2d:
                conv.__class__, norm.__class__ = _ConvThenFrozenNorm, _NormFoldedIntoConv
                conv._frozen_norm = (norm,)  # a tuple: not registered as a second parent of the norm
    if winograd:
        for m in list(model.modules()):
            if type(m) in (nn.Conv2d, _ConvThenFrozenNorm) and m.in_channels >= min_channels and winograd_eligible(m):
                m.__class__ = _WinogradConvThenFrozenNorm if type(m) is _ConvThenFrozenNorm else _WinogradConv
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _undo_training_rewrite(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _ConvThenFrozenNorm):
            del m._frozen_norm
        if isinstance(m, (_ConvThenFrozenNorm, _WinogradConv)):
            m.__class__ = nn.Conv2d
        elif type(m) is _NormFoldedIntoConv:
            m.__class__ = FrozenBatchNorm2d
