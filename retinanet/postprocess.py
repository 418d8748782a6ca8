"""Dense outputs -> per-image detections: per-level top-k, decode, clip, class-aware NMS."""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .box_coder import BoxCoder
from .outputs import DenseOutputs

logger = logging.getLogger(__name__)


def _topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return x.topk(k, dim=1)


class PostProcessor:
    """Per level: keep (anchor, class) pairs scoring above ``score_thresh``, at most
    ``topk_candidates`` of them; decode and clip to the (unpadded) image; class-aware NMS over all
    levels; keep ``detections_per_img``. Top-k and decoding are batched over images; only NMS, whose
    input is ragged, loops per image. Runs in fp32. ``topk(x (N, L), k)`` may replace ``x.topk(k, dim=1)``
    by anything that returns the same (values, indices).
    """

    def __init__(self, box_coder: BoxCoder, score_thresh: float = 0.05, topk_candidates: int = 1000,
                 nms_thresh: float = 0.5, detections_per_img: int = 100,
                 topk: Optional[Callable[[Tensor, int], tuple[Tensor, Tensor]]] = None):
        self.box_coder, self.topk = box_coder, topk or _topk
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img

    def candidates(self, outputs: DenseOutputs, image_sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pre-NMS candidates: boxes (N, M, 4), scores (N, M), labels (N, M), keep mask (N, M)."""
        logits = outputs.cls_logits.float()
        deltas = outputs.box_deltas.float()
        n, _, k = logits.shape
        boxes, scores, labels = [], [], []
        start = 0
        for size in outputs.level_sizes:
            flat = logits[:, start:start + size].reshape(n, -1)
            # Top-k on logits, sigmoid on the k winners only: sigmoid is monotone, same set and order.
            top_logits, top_idx = self.topk(flat, min(self.topk_candidates, flat.shape[1]))
            top_scores = torch.sigmoid(top_logits)
            anchor_idx = torch.div(top_idx, k, rounding_mode="floor")
            d = deltas[:, start:start + size].gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes.append(self.box_coder.decode(d, outputs.anchors[start:start + size][anchor_idx]))
            scores.append(top_scores)
            labels.append(top_idx % k)
            start += size
        boxes, scores, labels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # (N, 2) as (H, W)
        upper = sizes.flip(1).repeat(1, 2).unsqueeze(1)  # (N, 1, 4): W, H, W, H
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        # A model with NaN weights or a NaN input gives NaN boxes and scores; pycocotools would count a
        # NaN box as a match and drawing cannot place one. Drop them (zeroed, so no caller sees a NaN).
        finite = torch.isfinite(boxes).all(-1) & torch.isfinite(scores)
        n_bad = int((~finite).sum())  # one sync per batch; the per-image NMS below syncs anyway
        if n_bad:
            logger.warning("dropped %d candidate detection(s) with a non-finite box or score (the model's "
                           "outputs hold NaN or Inf)", n_bad)
            boxes = torch.where(finite.unsqueeze(-1), boxes, torch.zeros((), dtype=boxes.dtype, device=boxes.device))
            scores = torch.where(finite, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
        return boxes, scores, labels, (scores > self.score_thresh) & finite

    def select(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        """One image's candidates (D, 4), (D,), (D,) -> indices kept by class-aware NMS, best first,
        at most ``detections_per_img``."""
        return batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]

    def per_image(self, outputs: DenseOutputs, image_sizes: Sequence[tuple[int, int]],
                  nms: bool = True) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes (D, 4) xyxy in the resized image, scores (D,), labels (D,)): the detections, or
        without ``nms`` the pre-NMS candidates (to merge with those of other views or tiles first)."""
        boxes, scores, labels, keep = self.candidates(outputs, image_sizes)
        results = []
        for i in range(boxes.shape[0]):
            b, s, l = boxes[i][keep[i]], scores[i][keep[i]], labels[i][keep[i]]
            kept = self.select(b, s, l) if nms else slice(None)
            results.append((b[kept], s[kept], l[kept]))
        return results

    def __call__(self, outputs: DenseOutputs, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image: boxes (D, 4) xyxy in the resized image, scores (D,), labels (D,)."""
        return [{"boxes": b, "scores": s, "labels": l} for b, s, l in self.per_image(outputs, image_sizes)]


def rescale_boxes(boxes: Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Maps (D, 4) xyxy boxes from the resized image (H', W') back to the original (H, W)."""
    ratio_h = torch.tensor(original_size[0], dtype=torch.float32) / torch.tensor(resized_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(original_size[1], dtype=torch.float32) / torch.tensor(resized_size[1], dtype=torch.float32)
    scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device)
    return boxes * scale
