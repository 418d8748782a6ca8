"""(dx, dy, dw, dh) box deltas relative to anchors, computed in fp32 whatever the autocast dtype."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# Detectron / torchvision: keeps exp() finite for a wild dw/dh early in training.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas (..., 4) that turn ``anchors`` (..., 4) into ``boxes`` (..., 4), both xyxy."""
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centre_size(anchors.float())
        bx, by, bw, bh = _centre_size(boxes.float())
        return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah,
                            ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes (..., 4) xyxy from ``deltas`` (..., 4) and ``anchors`` broadcastable to it."""
        deltas = deltas.float()
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centre_size(anchors.float())
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        half_w, half_h = 0.5 * torch.exp(dw) * aw, 0.5 * torch.exp(dh) * ah
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
