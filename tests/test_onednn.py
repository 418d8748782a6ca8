"""fast/onednn.py: convolutions with their ReLU and residual add fused in return what the unfused
modules return, and only BatchNorm-folded blocks are rewritten."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_fast_paths import _randomise_norms
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from retinanet.build import build_model
from retinanet.fast.fusion import fuse_for_inference
from retinanet.fast.onednn import available, conv, fuse_pointwise
from retinanet.fast.winograd import WinogradConv2d

pytestmark = pytest.mark.skipif(not available(), reason="this torch has no oneDNN")


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2)])
def test_fused_conv_matches_conv_add_relu(relu, add, kernel, stride):
    layer = nn.Conv2d(8, 12, kernel, stride, padding=kernel // 2)
    nn.init.uniform_(layer.bias, -1, 1)
    x = torch.randn(2, 8, 13, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = layer(x)
        other = torch.randn_like(ref) if add else None
        ref = ref + other if add else ref
        ref = F.relu(ref) if relu else ref
        got = conv(layer, x, relu=relu, add=other)
    assert (ref < 0).any() != relu  # the ReLU has something to do, or was not applied
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_winograd_conv_with_relu():
    layer = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 11, 9)
    with torch.no_grad():
        got = conv(WinogradConv2d(layer, min_pixels=0), x, relu=True)
        torch.testing.assert_close(got, F.relu(layer(x)), rtol=1e-4, atol=1e-4)
        assert (got == 0).any()


@pytest.mark.parametrize("backbone,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_fused_retinanet_matches_the_folded_one(tiny_cfg, backbone, block):
    model = build_model(tiny_cfg(f"model.backbone.name={backbone}", "model.head.prior_init=false")).eval()
    _randomise_norms(model)
    folded = fuse_for_inference(model, winograd=True)
    fused = copy.deepcopy(folded)
    blocks = sum(type(m) is block for m in fused.modules())
    assert fuse_pointwise(fused) == blocks + 1 + 8  # the residual blocks, the stem, the two towers of 4
    assert not any(type(m) is block for m in fused.modules())
    assert fuse_pointwise(fused) == 0  # a second call finds nothing left to rewrite
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = folded(x), fused(x)
    for ref, got in ((a.cls_logits, b.cls_logits), (a.box_deltas, b.box_deltas)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_blocks_with_norms_stay_as_they_are(tiny_cfg):
    model = build_model(tiny_cfg()).eval()
    assert fuse_pointwise(model) == 8  # only the head's conv blocks: every ResNet block still has its norms
    assert sum(type(m) is BasicBlock for m in model.modules()) == 8
