"""Test-time augmentation: horizontal flip and several test scales, merged before NMS.

Every view contributes its pre-NMS candidates (``PostProcessor.candidates``: per level, score above
the threshold, top-k); their boxes are mapped back to the original image (and un-flipped), pooled,
and one class-aware NMS keeps ``detections_per_img``. Merging before NMS lets the views vote on
each object instead of stacking near-duplicates.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .postprocess import rescale_boxes
from .preprocess import ImageInput, to_float_tensor


def tta_views(min_size: int, max_size: int, min_sizes: Sequence[int] = (), flip: bool = True
              ) -> list[tuple[int, int, bool]]:
    """(min_size, max_size, flip) of every view: each of ``min_sizes`` (default: the test
    ``min_size``), plain and flipped. Extra scales keep the test aspect cap: max_size grows with the
    short side so that a larger short side is not clipped back by the long side."""
    views = []
    for s in list(min_sizes) or [min_size]:
        cap = max(max_size, math.ceil(s * max_size / min_size))
        views += [(s, cap, False)] + ([(s, cap, True)] if flip else [])
    return views


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirrors (D, 4) xyxy boxes in an image of the given width."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


@torch.no_grad()
def predict_tta(detector, images: Sequence[ImageInput], batch_size: int = 4,
                views: Optional[list[tuple[int, int, bool]]] = None) -> list[dict]:
    """``Detector.predict`` with every view of ``tta_views`` (or ``views``) merged before NMS: per image
    ``boxes`` (D, 4) xyxy in original pixels, ``scores`` (D,), ``labels`` (D,) dataset category ids,
    ``names``; sorted by decreasing score."""
    if views is None:
        pre, ev = detector.preprocessor, detector.cfg.evaluation
        views = tta_views(pre.min_size, pre.max_size, ev.tta_min_sizes, ev.tta_flip)
    post = detector.postprocessor
    results = []
    for start in range(0, len(images), batch_size):
        chunk = [to_float_tensor(x) for x in images[start:start + batch_size]]
        pooled: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in chunk]
        for min_size, max_size, flip in views:
            view = [im.flip(-1) for im in chunk] if flip else chunk
            x, sizes, originals = detector.preprocess(view, min_size, max_size)
            candidates = post.per_image(detector.network(x), sizes, nms=False)
            for i, ((b, s, l), original) in enumerate(zip(candidates, originals)):
                b = rescale_boxes(b, sizes[i], original)
                pooled[i].append((hflip_boxes(b, original[1]) if flip else b, s, l))
        for parts, original in zip(pooled, originals):
            b, s, l = (torch.cat(t) for t in zip(*parts))
            kept = post.select(b, s, l)
            # boxes are in original pixels already: an identity rescale
            results.append(detector.to_results(b[kept], s[kept], l[kept], original, original))
    return results

