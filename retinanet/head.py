"""Class and box subnets shared across pyramid levels."""
from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor, nn

from .config import HeadNorm

HEAD_NORMS = get_args(HeadNorm)


class ConvBlock(nn.Module):
    def __init__(self, channels: int, norm: str = ""):
        super().__init__()
        # A bias before GroupNorm is redundant (torchvision v2 has none either).
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=not norm)
        if norm == "gn":
            self.norm = nn.GroupNorm(32, channels)
        elif norm not in HEAD_NORMS:
            raise ValueError(f"model.head.norm: expected one of {HEAD_NORMS}, got {norm!r}")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "norm"):
            x = self.norm(x)
        return torch.relu(x)


class RetinaNetHead(nn.Module):
    """Towers of ``num_convs`` x (3x3 conv, [GN], ReLU), then K*A class logits and 4*A deltas.

    Weights ~ N(0, 0.01), biases 0; the class bias starts at -log((1 - pi) / pi) so that every
    anchor begins with foreground probability pi, which keeps the loss of the ~100k easy
    negatives from swamping the first iterations.
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 norm: str = "", prior_prob: float = 0.01, prior_init: bool = True):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.cls_tower = nn.Sequential(*[ConvBlock(channels, norm) for _ in range(num_convs)])
        self.box_tower = nn.Sequential(*[ConvBlock(channels, norm) for _ in range(num_convs)])
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if prior_init:
            nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """P3..P7 -> per level, class logits (N, A*K, H_l, W_l) and box deltas (N, A*4, H_l, W_l).

        Channel ``a * K + k`` is anchor a, class k; ``outputs.flatten_levels`` turns these into rows.
        """
        return ([self.cls_logits(self.cls_tower(f)) for f in feats],
                [self.box_pred(self.box_tower(f)) for f in feats])
