from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from retinanet.anchors import AnchorGenerator


def _grids(height: int, width: int) -> list[tuple[int, int]]:
    """P3-P7 grid sizes of a ResNet-FPN: C3 = ceil(x / 8), then each stride-2 stage rounds up."""
    h, w = -(-height // 8), -(-width // 8)
    grids = [(h, w)]
    for _ in range(4):
        h, w = -(-h // 2), -(-w // 2)
        grids.append((h, w))
    return grids


def test_native_cell_anchors_hand_computed():
    gen = AnchorGenerator(sizes=[32], scales=[1.0, 2.0], ratios=[0.5, 1.0, 2.0], strides=[8])
    assert gen.num_anchors == 6
    cell = gen.cell_anchors[0]
    s = math.sqrt(2)  # ratio 0.5 at size 32: w = 32 * sqrt(2), h = 32 / sqrt(2)
    expected = torch.tensor([
        [-16 * s, -8 * s, 16 * s, 8 * s], [-32 * s, -16 * s, 32 * s, 16 * s],   # ratio 0.5, scales 1, 2
        [-16, -16, 16, 16], [-32, -32, 32, 32],                                 # ratio 1
        [-8 * s, -16 * s, 8 * s, 16 * s], [-16 * s, -32 * s, 16 * s, 32 * s],  # ratio 2
    ])
    torch.testing.assert_close(cell, expected)


def test_native_default_geometry():
    gen = AnchorGenerator()
    assert gen.num_anchors == 9
    for size, cell in zip((32, 64, 128, 256, 512), gen.cell_anchors):
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        scales = torch.tensor([1.0, 2 ** (1 / 3), 2 ** (2 / 3)]).repeat(3)
        torch.testing.assert_close((w * h).sqrt(), size * scales)  # area = (size * scale)^2
        torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]).repeat_interleave(3))  # ratio = h / w
        torch.testing.assert_close(cell[:, :2], -cell[:, 2:])  # centred at 0


def test_native_centres_and_order():
    gen = AnchorGenerator(sizes=[32, 64], strides=[8, 16])
    grids = [(2, 3), (1, 2)]
    anchors = gen((16, 24), grids, torch.device("cpu"))
    assert anchors.shape == ((6 + 2) * 9, 4) and anchors.dtype == torch.float32
    first = anchors[: 6 * 9].view(2, 3, 9, 4)  # level 0: row-major locations, then the 9 cell anchors
    for y in range(2):
        for x in range(3):
            torch.testing.assert_close(first[y, x], gen.cell_anchors[0] + torch.tensor([8.0 * x, 8 * y, 8 * x, 8 * y]))
    second = anchors[6 * 9:].view(1, 2, 9, 4)
    torch.testing.assert_close(second[0, 1], gen.cell_anchors[1] + torch.tensor([16.0, 0, 16, 0]))


@pytest.mark.parametrize("height, width", [(800, 1216), (512, 512), (480, 640), (224, 352), (96, 160)])
def test_compat_equals_torchvision(height, width):
    # Sizes that are multiples of 32 but not of 128: torchvision's strides become image // grid.
    tv = _default_anchorgen()
    ours = AnchorGenerator(torchvision_compat=True)
    grids = _grids(height, width)
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    expected = tv(images, feats)[0]
    got = ours((height, width), grids, torch.device("cpu"))
    assert torch.equal(got, expected)


def test_compat_uses_torchvision_strides_and_int_sizes():
    gen = AnchorGenerator(torchvision_compat=True)
    # int(32 * 2 ** (1/3)) == 40: the middle scale of level 0, ratio 1, is 40 px wide.
    assert (gen.cell_anchors[0][4, 2] - gen.cell_anchors[0][4, 0]).item() == 40
    grids = _grids(800, 800)  # P6 has 13 cells: torchvision's stride is 800 // 13 = 61, not 64
    anchors = gen((800, 800), grids, torch.device("cpu"))
    start = sum(h * w * 9 for h, w in grids[:3])
    p6 = anchors[start:start + 13 * 13 * 9].view(13, 13, 9, 4)
    centre = (p6[0, 1, 4, :2] + p6[0, 1, 4, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([61.0, 0.0]))


def test_anchors_are_cached_per_size():
    gen = AnchorGenerator()
    a = gen((64, 64), _grids(64, 64), torch.device("cpu"))
    assert gen((64, 64), _grids(64, 64), torch.device("cpu")) is a
    b = gen((64, 128), _grids(64, 128), torch.device("cpu"))
    assert b is not a and b.shape[0] > a.shape[0]
    assert gen((64, 64), _grids(64, 64), torch.device("cpu")) is a


def test_mismatched_sizes_and_strides():
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(sizes=[32, 64], strides=[8])
