"""Drawing detections: boxes, class names and scores in a fixed, readable colour per class."""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated colour per label, stable across runs; golden-ratio hue steps keep neighbours apart."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on light labels, white on dark ones (ITU-R BT.601 luma).
    return (0, 0, 0) if 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 140 else (255, 255, 255)


def draw_detections(image: np.ndarray, boxes, names: Sequence[str], scores=None, labels=None,
                    score_thresh: float = 0.0, line_width: Optional[int] = None) -> np.ndarray:
    """Returns a copy of ``image`` (H, W, 3) uint8 RGB with each box (D, 4) xyxy outlined and
    captioned ``name score``; boxes, scores and labels are arrays or CPU tensors. Colours follow
    ``labels`` (D,) (default: the name), so a class keeps its colour across images. Captions sit above
    the box, or inside it at the top edge."""
    # Not torchvision.utils.draw_bounding_boxes: it scales the caption font only when given a TrueType
    # file (otherwise PIL's fixed small bitmap font, unreadable on a large photo), and it writes the
    # caption inside the box, over the object. Here PIL's built-in font scales with the image and the
    # caption sits above the box, kept inside the image.
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    if len(names) != len(boxes):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(names)} names")
    h, w = image.shape[:2]
    line_width = line_width or max(2, round(min(h, w) / 250))
    font = ImageFont.load_default(size=max(11, round(min(h, w) / 35)))
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    order = np.argsort(scores) if scores is not None else np.arange(len(boxes))  # best drawn last, on top
    for i in order:
        if scores is not None and scores[i] < score_thresh:
            continue
        key = int(labels[i]) if labels is not None else sum(map(ord, names[i]))
        color = class_color(key)
        x1, y1, x2, y2 = boxes[i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        text = names[i] if scores is None else f"{names[i]} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=_text_color(color), font=font)
    return np.asarray(canvas)
