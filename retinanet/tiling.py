"""Tiled inference for large images: overlapping tiles at native resolution, batched, merged across borders.

A 2,500 px aerial photo shrunk to the 800 px test size turns 40 px objects into 13 px ones, below the
smallest anchor. Tiles keep every pixel. Only tiles travel to the device, a batch at a time, so the whole
image never has to fit there as one tensor.

Merging (``merge``): ``nms`` pools every tile's pre-NMS candidates, shifted into the image, and runs one
class-aware NMS, as test-time augmentation does with its views; ``nmm`` is SAHI's greedy non-maximum
merging: each tile's final detections, and a lower-scored box that covers a kept one by intersection over
the smaller box (IoS) >= ``nmm_thresh`` is merged into it (union box), which joins an object cut by a tile
border with its whole self. An optional ``full_pass`` adds the whole image at the test size, for objects
larger than a tile.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .postprocess import rescale_boxes
from .preprocess import ImageInput, to_float_tensor


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of tiles of ``tile`` px (clipped to the image) overlapping by ``overlap`` of a tile;
    the last row and column end at the image border. An image within one tile gives one tile."""
    if tile < 32 or not 0 <= overlap < 1:
        raise ValueError(f"tile must be >= 32 px and overlap in [0, 1), got tile={tile}, overlap={overlap}")
    step = max(1, int(tile * (1 - overlap)))

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        return sorted(set(list(range(0, size - tile, step)) + [size - tile]))
    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


def _tile_candidates(detector, image: Tensor, tiles: Sequence[tuple[int, int, int, int]], batch_size: int,
                     final: bool) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per tile, (boxes (D, 4) in image pixels, scores, labels): pre-NMS candidates, or with ``final`` each
    tile's post-processed detections. Tiles run unresized (short and long side are the test sizes)."""
    out = []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start:start + batch_size]
        crops = [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk]
        sizes = [(c.shape[1], c.shape[2]) for c in crops]
        batch, resized, _ = detector.preprocess(crops, min(min(s) for s in sizes), max(max(s) for s in sizes))
        per_tile = detector.postprocessor.per_image(detector.network(batch), resized, nms=final)
        for (b, s, l), (y0, x0, _, _), size, original in zip(per_tile, chunk, resized, sizes):
            shift = torch.tensor([x0, y0, x0, y0], dtype=b.dtype, device=b.device)
            out.append((rescale_boxes(b, size, original) + shift, s, l))
    return out


def greedy_nmm(boxes: Tensor, scores: Tensor, labels: Tensor, thresh: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """SAHI's greedy non-maximum merging, per class: best first, every remaining box whose intersection
    over the smaller box with it is >= ``thresh`` is merged into it (union box, the kept score).
    (D, 4), (D,), (D,) -> merged boxes, scores, labels, best first."""
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    inter = (torch.min(boxes[:, None, 2:], boxes[None, :, 2:]) - torch.max(boxes[:, None, :2], boxes[None, :, :2]))
    ios = inter.clamp(min=0).prod(2) / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-6)
    match = (ios >= thresh) & (labels[:, None] == labels[None, :])
    free = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    kept, merged = [], []
    for i in range(len(boxes)):  # greedy: a loop over detections (after thresholding), not anchors
        if not free[i]:
            continue
        group = match[i] & free
        free &= ~group
        kept.append(i)
        members = boxes[group]
        merged.append(torch.cat([members[:, :2].min(0).values, members[:, 2:].max(0).values]))
    idx = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    return (torch.stack(merged) if merged else boxes[:0]), scores[idx], labels[idx]


@torch.no_grad()
def predict_tiled(detector, images: Sequence[ImageInput], tile: int, overlap: float = 0.2, batch_size: int = 4,
                  merge: str = "nms", full_pass: bool = False, nmm_thresh: float = 0.5) -> list[dict]:
    """``Detector.predict`` by tiles: per image ``boxes`` (D, 4) xyxy in original pixels, ``scores``,
    ``labels`` (dataset category ids), ``names``, best first. An image within one tile runs untiled."""
    if merge not in ("nms", "nmm"):
        raise ValueError(f"tile merge must be 'nms' or 'nmm', got {merge!r}")
    post, results = detector.postprocessor, []
    for item in images:
        image = to_float_tensor(item)  # stays on the CPU; tiles move to the device in batches
        h, w = image.shape[-2:]
        tiles = tile_grid(h, w, tile, overlap)
        if len(tiles) == 1:
            results.append(detector.predict(image, tile=0))
            continue
        parts = _tile_candidates(detector, image, tiles, batch_size, final=merge == "nmm")
        if full_pass:
            batch, sizes, originals = detector.preprocess([image])
            b, s, l = post.per_image(detector.network(batch), sizes, nms=merge == "nmm")[0]
            parts.append((rescale_boxes(b, sizes[0], originals[0]), s, l))
        b, s, l = (torch.cat(t) for t in zip(*parts))
        if merge == "nms":
            kept = post.select(b, s, l)
            b, s, l = b[kept], s[kept], l[kept]
        else:
            b, s, l = (t[: post.detections_per_img] for t in greedy_nmm(b, s, l, nmm_thresh))
        results.append(detector.to_results(b, s, l, (h, w), (h, w)))
    return results
