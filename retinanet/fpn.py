"""Feature pyramid P3-P7 on top of C3-C5."""
from __future__ import annotations

from typing import get_args

import torch.nn.functional as F
from torch import Tensor, nn

from .config import P6Source

P6_SOURCES = get_args(P6Source)


class FPN(nn.Module):
    """Lateral 1x1 + top-down nearest upsampling + 3x3 output convs, then P6 and P7.

    P6 is a 3x3 stride-2 conv on C5 (``p6_from="c5"``, paper and Detectron2) or on P5 (``"p5"``,
    torchvision v1); P7 is a 3x3 stride-2 conv on ReLU(P6).
    """

    def __init__(self, in_channels: tuple[int, int, int], channels: int = 256, p6_from: str = "c5"):
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise ValueError(f"model.fpn.p6_from: expected one of {P6_SOURCES}, got {p6_from!r}")
        self.p6_from = p6_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(in_channels[-1] if p6_from == "c5" else channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # "c2_xavier_fill" in Detectron2, same in torchvision
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """[C3, C4, C5] -> [P3, ..., P7], each (N, channels, H_l, W_l)."""
        top = self.lateral[-1](feats[-1])
        outs = [self.output[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        p6 = self.p6(feats[-1] if self.p6_from == "c5" else outs[-1])
        return outs + [p6, self.p7(F.relu(p6))]
