from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.retinanet import RetinaNetHead as TVHead

from retinanet.checkpoint import convert_torchvision_state_dict
from retinanet.head import RetinaNetHead
from retinanet.outputs import flatten_levels


def _feats(channels: int, sizes=((8, 10), (4, 5), (2, 3), (1, 2), (1, 1)), n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(n, channels, h, w) for h, w in sizes]


def test_init():
    head = RetinaNetHead(64, 9, 5)
    for conv in [head.cls_logits, head.box_pred] + [b.conv for b in head.cls_tower] + [b.conv for b in head.box_tower]:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert conv.weight.mean().abs().item() < 1e-3
    assert torch.all(head.box_pred.bias == 0) and torch.all(head.cls_tower[0].conv.bias == 0)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((45,), -math.log(0.99 / 0.01)))
    torch.testing.assert_close(RetinaNetHead(64, 9, 5, prior_prob=0.1).cls_logits.bias, torch.full((45,), -math.log(9)))
    assert torch.all(RetinaNetHead(64, 9, 5, prior_init=False).cls_logits.bias == 0)


def test_structure_and_gn():
    head = RetinaNetHead(32, 9, 3, num_convs=2, norm="gn")
    assert len(head.cls_tower) == len(head.box_tower) == 2
    assert isinstance(head.cls_tower[0].norm, nn.GroupNorm) and head.cls_tower[0].conv.bias is None
    assert not hasattr(RetinaNetHead(32, 9, 3).cls_tower[0], "norm")
    with pytest.raises(ValueError, match="model.head.norm"):
        RetinaNetHead(32, 9, 3, norm="bn")


def test_output_shapes():
    head = RetinaNetHead(16, 9, 4)
    feats = _feats(16)
    cls_maps, box_maps = head(feats)
    assert [m.shape for m in cls_maps] == [(2, 9 * 4, *f.shape[-2:]) for f in feats]
    assert [m.shape for m in box_maps] == [(2, 9 * 4, *f.shape[-2:]) for f in feats]
    logits, deltas = flatten_levels(cls_maps, box_maps, head.num_anchors)
    r = sum(f.shape[2] * f.shape[3] * 9 for f in feats)
    assert logits.shape == (2, r, 4) and deltas.shape == (2, r, 4)


class _Code(nn.Module):
    """Replaces a final conv: channel c at (y, x) of a level with height h outputs c * 1e4 + y * 100 + x + h * 1e6."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        n, _, h, w = f.shape
        c = torch.arange(self.channels).view(1, -1, 1, 1) * 1e4
        y = torch.arange(h).view(1, 1, -1, 1) * 100.0
        x = torch.arange(w).view(1, 1, 1, -1)
        return (c + y + x + h * 1e6).expand(n, -1, -1, -1).double()


def test_channel_to_row_ordering():
    a, k = 9, 3
    head = RetinaNetHead(8, a, k).double()
    head.cls_tower, head.box_tower = nn.Identity(), nn.Identity()
    head.cls_logits, head.box_pred = _Code(a * k), _Code(a * 4)
    sizes = ((4, 5), (2, 3), (1, 2))
    logits, deltas = flatten_levels(*head([f.double() for f in _feats(8, sizes, n=1)]), a)
    start = 0
    for h, w in sizes:
        for y in range(h):
            for x in range(w):
                for anchor in range(a):
                    row = start + (y * w + x) * a + anchor
                    for cls in range(k):
                        assert logits[0, row, cls].item() == (anchor * k + cls) * 1e4 + y * 100 + x + h * 1e6
                    for j in range(4):
                        assert deltas[0, row, j].item() == (anchor * 4 + j) * 1e4 + y * 100 + x + h * 1e6
        start += h * w * a


@pytest.mark.parametrize("norm", ["", "gn"])
def test_equals_torchvision_head(norm):
    tv = TVHead(32, 9, 4, norm_layer=(lambda c: nn.GroupNorm(32, c)) if norm else None).eval()
    head = RetinaNetHead(32, 9, 4, norm=norm)
    state = convert_torchvision_state_dict({f"head.{k}": v for k, v in tv.state_dict().items()})
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
    feats = _feats(32)
    expected = tv(feats)
    logits, deltas = flatten_levels(*head(feats), head.num_anchors)
    torch.testing.assert_close(logits, expected["cls_logits"])
    torch.testing.assert_close(deltas, expected["bbox_regression"])
