"""Convolutions fused with the ReLU and residual add after them, through oneDNN (CPU inference only).

After BatchNorm folding, a ResNet block is conv, ReLU, conv, ReLU, conv, add, ReLU: each ReLU and add
is one more read and write of a whole activation map, memory traffic that no multiply-add pays for.
oneDNN applies them inside the convolution, on the output tile while it is in cache
(``torch.ops.mkldnn._convolution_pointwise``, the kernel torch.compile's CPU backend emits for the
same pattern). ``fuse_pointwise`` rewrites a BatchNorm-folded, channels_last copy in place: ResNet
bottleneck and basic blocks, the stem and the head towers. Outputs are the same to float rounding.
Without oneDNN (``torch.backends.mkldnn``), the model is left as it is.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..head import ConvBlock
from .winograd import WinogradConv2d, winograd_conv


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv(module: nn.Module, x: Tensor, relu: bool = False, add: Optional[Tensor] = None) -> Tensor:
    """``module(x)`` (a Conv2d or WinogradConv2d), then ``+ add`` (same shape as the output), then
    ReLU if ``relu``: one pass over the output."""
    if isinstance(module, WinogradConv2d):
        if add is None and x.shape[-2] * x.shape[-1] >= module.min_pixels and x.dtype == module.u.dtype:
            return winograd_conv(x, module.u, module.bias, module.block_tiles, relu=relu)
        module = module.conv
    args = (module.weight, module.bias, module.padding, module.stride, module.dilation, module.groups)
    unary = "relu" if relu else None
    if add is None:
        return torch.ops.mkldnn._convolution_pointwise(x, *args, unary or "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(x, add.contiguous(memory_format=torch.channels_last),
                                                          *args, "add", None, unary, [], "")


class _Bottleneck(Bottleneck):
    def forward(self, x: Tensor) -> Tensor:
        out = conv(self.conv2, conv(self.conv1, x, relu=True), relu=True)
        identity = x if self.downsample is None else conv(self.downsample[0], x)
        return conv(self.conv3, out, relu=True, add=identity)


class _BasicBlock(BasicBlock):
    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv(self.downsample[0], x)
        return conv(self.conv2, conv(self.conv1, x, relu=True), relu=True, add=identity)


class _ConvReLU(nn.Module):
    """Stands in for a ResNet stem's conv1, whose ReLU then becomes an Identity."""

    def __init__(self, module: nn.Conv2d):
        super().__init__()
        self.conv = module

    def forward(self, x: Tensor) -> Tensor:
        return conv(self.conv, x, relu=True)


class _ConvBlock(ConvBlock):
    def forward(self, x: Tensor) -> Tensor:
        return conv(self.conv, x, relu=True)


_PLAIN = (nn.Conv2d, WinogradConv2d, nn.Identity, nn.ReLU, nn.Sequential)


def _folded(block: nn.Module) -> bool:
    """Only convs, ReLUs and Identities (folded norms) inside: the fused forward skips the norms."""
    return all(type(m) in _PLAIN for m in list(block.modules())[1:])


def fuse_pointwise(model: nn.Module) -> int:
    """Rewrites, in place, the blocks of a BatchNorm-folded (``fusion.fuse_for_inference``) RetinaNet whose
    ReLUs and adds can run inside their convolutions. Returns how many modules were rewritten."""
    if not available():
        return 0
    count = 0
    for m in list(model.modules()):
        if type(m) in (Bottleneck, BasicBlock) and not _folded(m):
            continue
        if type(m) is Bottleneck:
            m.__class__ = _Bottleneck
        elif type(m) is BasicBlock:
            m.__class__ = _BasicBlock
        elif type(m) is ConvBlock and not hasattr(m, "norm"):
            m.__class__ = _ConvBlock
        elif (hasattr(m, "layer1") and isinstance(getattr(m, "bn1", None), nn.Identity)  # a ResNet's stem
              and type(m.conv1) is nn.Conv2d):
            m.conv1, m.relu = _ConvReLU(m.conv1), nn.Identity()
        else:
            continue
        count += 1
    return count
