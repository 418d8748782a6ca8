from __future__ import annotations

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet.checkpoint import convert_torchvision_state_dict
from retinanet.fpn import FPN

IN = (16, 24, 40)


def _feats(n: int = 2, h: int = 12, w: int = 20) -> list[torch.Tensor]:
    # C3..C5 of an image of (8h, 8w): strides 8, 16, 32, sizes rounded up like a ResNet
    return [torch.randn(n, c, -(-h // 2 ** i), -(-w // 2 ** i)) for i, c in enumerate(IN)]


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_shapes(p6_from):
    outs = FPN(IN, 32, p6_from)(_feats())
    assert [tuple(o.shape) for o in outs] == [(2, 32, 12, 20), (2, 32, 6, 10), (2, 32, 3, 5), (2, 32, 2, 3), (2, 32, 1, 2)]


def test_p6_source():
    fpn_c5, fpn_p5 = FPN(IN, 32, "c5"), FPN(IN, 32, "p5")
    assert fpn_c5.p6.in_channels == IN[-1] and fpn_p5.p6.in_channels == 32
    feats = _feats()
    with torch.no_grad():
        p5 = fpn_p5(feats)[2]
        torch.testing.assert_close(fpn_p5(feats)[3], fpn_p5.p6(p5))
        torch.testing.assert_close(fpn_c5(feats)[3], fpn_c5.p6(feats[-1]))
    with pytest.raises(ValueError, match="p6_from"):
        FPN(IN, 32, "p4")


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_equals_torchvision(p6_from):
    # torchvision v1 builds P6 from P5 (LastLevelP6P7(256, 256)), v2 from C5 (LastLevelP6P7(2048, 256)).
    extra = LastLevelP6P7(32, 32) if p6_from == "p5" else LastLevelP6P7(IN[-1], 32)
    tv = FeaturePyramidNetwork(list(IN), 32, extra_blocks=extra)
    ours = FPN(IN, 32, p6_from)
    state = convert_torchvision_state_dict({f"backbone.fpn.{k}": v for k, v in tv.state_dict().items()})
    ours.load_state_dict({k.removeprefix("fpn."): v for k, v in state.items()})
    feats = _feats()
    with torch.no_grad():
        expected = list(tv({str(i): f for i, f in enumerate(feats)}).values())
        got = ours(feats)
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_init():
    fpn = FPN(IN, 32)
    assert all(torch.all(m.bias == 0) for m in fpn.modules() if isinstance(m, torch.nn.Conv2d))
