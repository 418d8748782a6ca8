"""Generated large, dense scenes (aerial-like): thousands of pixels across, hundreds of 12-40 px objects.

Two classes: round "crowns" (ellipses, long side 12-40 px) and "vehicles" (axis-aligned rectangles, 2:1).
Objects do not overlap, so every drawn object is fully visible and its box is exact. Shrinking such an image
to a usual 800 px test size makes most objects smaller than the smallest anchor: the case that crop training
and tiled inference are for. Every image depends only on (seed, split, index). Used by
large_images_benchmark.py and the tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from retinanet.data.synthetic import _background
from retinanet.jsonio import atomic_write, write_json

CATEGORIES = [{"id": 1, "name": "crown"}, {"id": 2, "name": "vehicle"}]


def render_scene(h: int, w: int, n_objects: int, rng: np.random.Generator,
                 object_px: tuple[float, float] = (12, 40)) -> tuple[Image.Image, list[dict]]:
    """One (h, w) image with up to ``n_objects`` non-overlapping objects ``{"category_id", "bbox" xywh, "area"}``."""
    img = Image.fromarray(np.clip(0.5 * _background(h, w, rng) + 40, 0, 255).astype(np.uint8))
    draw, occupied, objects = ImageDraw.Draw(img), np.zeros((h, w), bool), []
    for _ in range(n_objects * 4):  # placement attempts
        if len(objects) == n_objects:
            break
        cat = int(rng.integers(2))
        size = float(np.exp(rng.uniform(*np.log(object_px))))
        bw, bh = (size, size * rng.uniform(0.75, 1.0)) if cat == 0 else (size, size / 2)
        bw, bh = (bh, bw) if cat == 1 and rng.random() < 0.5 else (bw, bh)
        x0, y0 = rng.uniform(0, w - bw - 1), rng.uniform(0, h - bh - 1)
        x1, y1 = x0 + bw, y0 + bh
        region = occupied[int(y0):int(y1) + 2, int(x0):int(x1) + 2]
        if region.any():
            continue
        region[:] = True
        colour = (int(rng.integers(150, 230)), int(rng.integers(150, 230)), int(rng.integers(0, 80)))
        if cat == 0:
            draw.ellipse([x0, y0, x1, y1], fill=(40, int(rng.integers(120, 200)), 40), outline=(20, 60, 20))
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour, outline=(30, 30, 30))
        objects.append({"category_id": CATEGORIES[cat]["id"], "bbox": [x0, y0, bw, bh], "area": bw * bh})
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * 6
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)), objects


def make_large_scenes_coco(root: Union[str, Path], num_train: int = 8, num_val: int = 4,
                           image_size: tuple[int, int] = (1600, 2000), objects: tuple[int, int] = (100, 300),
                           object_px: tuple[float, float] = (12, 40), seed: int = 0) -> dict:
    """Writes ``root/images/*.jpg`` and ``root/annotations/{train,val}.json``; returns their paths."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out = {"root": str(root), "images": str(root / "images")}
    for split_idx, (split, count) in enumerate([("train", num_train), ("val", num_val)]):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_idx, i])
            h, w = image_size
            img, objs = render_scene(h, w, int(rng.integers(objects[0], objects[1] + 1)), rng, object_px)
            name = f"{split}_{i:04d}.jpg"
            atomic_write(root / "images" / name, lambda p, img=img: img.save(p, format="JPEG", quality=92))
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            first = len(annotations) + 1
            annotations += [{"id": first + k, "image_id": i + 1, "iscrowd": 0, **o} for k, o in enumerate(objs)]
        data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        path = root / "annotations" / f"{split}.json"
        write_json(path, data)
        out[split] = str(path)
    return out
