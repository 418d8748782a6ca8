"""Detection confusion matrix and per-image error counts, by greedy IoU matching of detections to ground truth.

Convention (as in the report): with K classes the matrix is (K + 1, K + 1);
rows = ground-truth class, plus a last "background" row for detections that match no ground truth
(false positives); columns = predicted class, plus a last "background" column for ground truth that
no detection matched (missed). Cell [g, p] counts ground truths of class g matched by a detection of
class p, so the diagonal holds the correct detections and [K, K] is always 0.

Matching, per image: detections with score >= ``score_thresh`` are taken in descending score order;
each takes the still-unmatched ground truth of highest IoU (any class, so that a box on the right
object with the wrong label shows up as a confusion), if that IoU >= ``iou_thresh``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def match_image(gt_boxes: Tensor, det_boxes: Tensor, det_scores: Tensor, iou_thresh: float = 0.5) -> Tensor:
    """Greedy matching in one image: ``gt_boxes`` (G, 4), ``det_boxes`` (D, 4) xyxy, ``det_scores`` (D,).

    Returns (D,) int64: the index of the ground truth each detection matched, -1 for none.
    """
    matched = torch.full((len(det_boxes),), -1, dtype=torch.int64)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return matched
    iou = box_iou(det_boxes.float(), gt_boxes.float())  # (D, G), all pairs at once
    free = torch.ones(len(gt_boxes), dtype=torch.bool)
    for d in torch.argsort(det_scores, descending=True, stable=True).tolist():
        # A taken ground truth cannot be matched again: mask it out of this detection's row.
        cand = torch.where(free, iou[d], torch.full_like(iou[d], -1.0))
        best = int(cand.argmax())
        if cand[best] >= iou_thresh:
            matched[d] = best
            free[best] = False
    return matched


def confusion_matrix(gts: Sequence[dict], dets: Sequence[dict], num_classes: int, iou_thresh: float = 0.5,
                     score_thresh: float = 0.3) -> tuple[np.ndarray, list[dict]]:
    """Counts over images. ``gts[i]``: ``boxes`` (G, 4) xyxy, ``labels`` (G,) in [0, K);
    ``dets[i]``: ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) in [0, K).

    Returns the (K + 1, K + 1) int64 count matrix (module docstring for the layout) and per image
    ``{"tp", "fp", "fn", "confused", "f1"}``: tp = matched with the right class; fp = unmatched
    detections plus wrong-class matches; fn = ground truth without a right-class match; f1 =
    2tp / (2tp + fp + fn), 1 for an image with neither ground truth nor detections.
    """
    k = num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    per_image = []
    for gt, det in zip(gts, dets):
        gb, gl = torch.as_tensor(gt["boxes"]).reshape(-1, 4), torch.as_tensor(gt["labels"]).reshape(-1).long()
        keep = torch.as_tensor(det["scores"]).reshape(-1) >= score_thresh
        db = torch.as_tensor(det["boxes"]).reshape(-1, 4)[keep]
        ds = torch.as_tensor(det["scores"]).reshape(-1)[keep]
        dl = torch.as_tensor(det["labels"]).reshape(-1).long()[keep]
        m = match_image(gb, db, ds, iou_thresh)
        hit = m >= 0
        np.add.at(cm, (gl[m[hit]].numpy(), dl[hit].numpy()), 1)  # matched pairs: (gt class, predicted class)
        np.add.at(cm, (np.full(int((~hit).sum()), k), dl[~hit].numpy()), 1)  # false positives
        taken = torch.zeros(len(gb), dtype=torch.bool)
        taken[m[hit]] = True
        np.add.at(cm, (gl[~taken].numpy(), np.full(int((~taken).sum()), k)), 1)  # missed
        tp = int((gl[m[hit]] == dl[hit]).sum())
        confused = int(hit.sum()) - tp
        fp, fn = int((~hit).sum()) + confused, len(gb) - tp
        f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        per_image.append({"tp": tp, "fp": fp, "fn": fn, "confused": confused, "f1": f1})
    return cm, per_image


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a row without entries stays 0): for a ground-truth class, the share
    of its objects found as each class or missed; for the background row, the share of the false
    positives predicted as each class."""
    sums = cm.sum(1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros(cm.shape, np.float64), where=sums > 0)
