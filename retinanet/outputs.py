"""What the network hands to the loss and the post-processor: dense outputs over all anchors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class DenseOutputs:
    """Raw dense predictions of one padded batch.

    cls_logits (N, R, K), box_deltas (N, R, 4), anchors (R, 4) xyxy in padded-image pixels,
    level_sizes: anchors per level (sums to R). Rows run over (level, location, anchor).
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    level_sizes: list[int]


def flatten_levels(cls_maps: Sequence[Tensor], box_maps: Sequence[Tensor], num_anchors: int) -> tuple[Tensor, Tensor]:
    """Per-level head maps -> rows over (level, location, anchor).

    ``cls_maps[l]`` (N, A*K, H_l, W_l) with channel ``a * K + k`` for anchor a, class k, and
    ``box_maps[l]`` (N, A*4, H_l, W_l) -> class logits (N, R, K) and box deltas (N, R, 4),
    R = sum_l H_l W_l A. The model and the exported-file runtime both go through here.
    """
    a = num_anchors
    logits, deltas = [], []
    for cls, box in zip(cls_maps, box_maps):
        n, _, h, w = cls.shape
        logits.append(cls.view(n, a, -1, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, -1))
        deltas.append(box.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
    return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
