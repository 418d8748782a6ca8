from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from retinanet.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder


def _boxes(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * 500
    return torch.cat([xy, xy + torch.rand(n, 2) * 300 + 16], dim=1)  # size ratios < exp(clamp)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    coder, anchors, boxes = BoxCoder(weights), _boxes(1000), _boxes(1000)
    torch.testing.assert_close(coder.decode(coder.encode(anchors, boxes), anchors), boxes, atol=1e-3, rtol=1e-5)
    assert coder.encode(anchors, anchors).abs().max() < 1e-5  # an anchor encodes itself as zero


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_equals_torchvision(weights):
    ours, tv = BoxCoder(weights), TVBoxCoder(weights)
    anchors, boxes = _boxes(500), _boxes(500)
    torch.testing.assert_close(ours.encode(anchors, boxes), tv.encode_single(boxes, anchors))
    deltas = torch.randn(500, 4) * 3  # large enough that some dw/dh hit the clamp after / weight
    deltas[:5, 2:] = 50.0
    torch.testing.assert_close(ours.decode(deltas, anchors), tv.decode_single(deltas, anchors))


def test_broadcasting_over_a_batch():
    coder, anchors = BoxCoder(), _boxes(30)
    deltas = torch.randn(2, 30, 4)
    out = coder.decode(deltas, anchors)
    assert out.shape == (2, 30, 4)
    torch.testing.assert_close(out[1], coder.decode(deltas[1], anchors))


def test_dw_dh_clamped_at_log_1000_over_16():
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))
    anchors = torch.tensor([[0.0, 0, 16, 16]])
    box = BoxCoder().decode(torch.tensor([[0.0, 0, 100, 1e4]]), anchors)[0]
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[2] - box[0], torch.tensor(1000.0))  # exp(clamp) * 16
    torch.testing.assert_close(box[3] - box[1], torch.tensor(1000.0))
    small = BoxCoder().decode(torch.tensor([[0.0, 0, -1.0, 0.5]]), anchors)[0]  # below the clamp: untouched
    torch.testing.assert_close(small[2:] - small[:2], torch.tensor([16 * math.exp(-1), 16 * math.exp(0.5)]))


def test_fp32_under_bfloat16():
    coder, anchors, boxes = BoxCoder(), _boxes(100), _boxes(100)
    enc = coder.encode(anchors.bfloat16(), boxes.bfloat16())
    dec = coder.decode(torch.randn(100, 4).bfloat16(), anchors.bfloat16())
    assert enc.dtype == dec.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = coder.decode(torch.randn(100, 4, dtype=torch.bfloat16), anchors)
        assert dec.dtype == torch.float32
