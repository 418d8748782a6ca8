"""Anchor labelling: foreground, background or ignored, from an IoU matrix."""
from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND = -1
IGNORE = -2


class Matcher:
    """Assigns each anchor the index of its ground truth, ``BACKGROUND`` (-1) or ``IGNORE`` (-2).

    IoU >= ``fg_iou``: foreground; < ``bg_iou``: background; in between: ignored. With
    ``allow_low_quality`` each ground truth also claims the anchors of its highest IoU (ties
    included), and such an anchor keeps its *own* best ground truth (Detectron2, torchvision).
    Crowd boxes mark ignore regions: a background anchor whose intersection-over-anchor-area with a
    crowd box is at least ``bg_iou`` becomes ignored rather than a negative.
    """

    def __init__(self, fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality: bool = True):
        if bg_iou > fg_iou:
            raise ValueError(f"matcher: bg_iou ({bg_iou}) must not exceed fg_iou ({fg_iou})")
        self.fg_iou, self.bg_iou, self.allow_low_quality = fg_iou, bg_iou, allow_low_quality

    def match_iou(self, iou: Tensor) -> Tensor:
        """``iou`` (G, R) -> matched index (R,) int64 in [0, G) or BACKGROUND / IGNORE."""
        if iou.numel() == 0:
            return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64, device=iou.device)
        best_iou, best_gt = iou.max(dim=0)
        if self.allow_low_quality:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # A gt with IoU 0 against every anchor would otherwise claim all of them.
            low_quality = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        matches = torch.where(best_iou < self.fg_iou, IGNORE, best_gt)
        matches = torch.where(best_iou < self.bg_iou, BACKGROUND, matches)
        if self.allow_low_quality:
            matches = torch.where(low_quality, best_gt, matches)
        return matches

    def __call__(self, gt_boxes: Tensor, anchors: Tensor, crowd_boxes: Tensor | None = None) -> Tensor:
        """``gt_boxes`` (G, 4), ``anchors`` (R, 4), ``crowd_boxes`` (C, 4) -> matched index (R,)."""
        matches = self.match_iou(box_iou(gt_boxes.float(), anchors))
        if crowd_boxes is not None and crowd_boxes.numel() > 0:
            matches = torch.where((matches == BACKGROUND) & (crowd_ioa(crowd_boxes.float(), anchors) >= self.bg_iou),
                                  IGNORE, matches)
        return matches


def _intersection(boxes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection areas (G, R) of ``boxes`` (G, 4) with ``anchors`` (R, 4), and the anchor areas (R,).

    Per coordinate on contiguous (G, R) planes, which reads memory in order where broadcasting (G, R, 2)
    over the strided anchor columns does not; the same float operations in the same order (torchvision's
    box_iou bit for bit).
    """
    bx1, by1, bx2, by2 = boxes[:, :, None].unbind(1)  # (G, 1) each
    ax1, ay1, ax2, ay2 = anchors.T.contiguous()  # (R,) each
    w = (torch.minimum(bx2, ax2) - torch.maximum(bx1, ax1)).clamp_(min=0)
    h = (torch.minimum(by2, ay2) - torch.maximum(by1, ay1)).clamp_(min=0)
    return w.mul_(h), (ax2 - ax1) * (ay2 - ay1)


def box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """(G, R) IoU of ``boxes`` (G, 4) with ``anchors`` (R, 4), xyxy; equals ``torchvision.ops.box_iou``."""
    inter, anchor_area = _intersection(boxes, anchors)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (box_area[:, None] + anchor_area - inter)


def crowd_ioa(crowd: Tensor, anchors: Tensor) -> Tensor:
    """(R,) largest intersection over anchor area between each anchor and any crowd box."""
    inter, anchor_area = _intersection(crowd, anchors)
    return (inter / anchor_area.clamp(min=1e-6)).max(dim=0).values
