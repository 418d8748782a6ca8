"""Class and box subnets shared across pyramid levels."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ConvBlock(nn.Module):
    def __init__(self, channels: int, norm: str = ""):
        super().__init__()
        # A bias before GroupNorm is redundant (torchvision v2 has none either).
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=not norm)
        if norm == "gn":
            self.norm = nn.GroupNorm(32, channels)
        elif norm:
            raise ValueError(f"model.head.norm: expected '' or 'gn', got {norm!r}")

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

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """P3..P7 -> class logits (N, R, K) and box deltas (N, R, 4), R = sum_l H_l W_l A.

        Channel ``a * K + k`` of level l is anchor a, class k: rows follow (location, anchor).
        """
        logits, deltas = [], []
        for f in feats:
            n, _, h, w = f.shape
            logits.append(self.cls_logits(self.cls_tower(f)).view(n, self.num_anchors, -1, h, w)
                          .permute(0, 3, 4, 1, 2).reshape(n, h * w * self.num_anchors, -1))
            deltas.append(self.box_pred(self.box_tower(f)).view(n, self.num_anchors, 4, h, w)
                          .permute(0, 3, 4, 1, 2).reshape(n, h * w * self.num_anchors, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
