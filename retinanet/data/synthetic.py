"""Built-in synthetic COCO dataset: coloured shapes on textured backgrounds, procedural and seeded.

Five classes with non-contiguous category ids (1, 3, 5, 7, 9) to exercise the id <-> label mapping;
objects from ~12 px to half the image, aspect ratios 1:3 to 3:1, some overlapping; image sizes vary
around ``image_size`` and a quarter are portrait; a few images have no objects. Boxes are the tight
extent of each drawn shape's pixels. Every image depends only on (seed, split, index).
``DEMO_DATASET`` is the easier set the demo config trains on (three classes, each in its own colour).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from ..config import DataConfig
from ..jsonio import atomic_write, write_json
from .coco import DatasetError

logger = logging.getLogger(__name__)

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "rectangle"}, {"id": 5, "name": "triangle"},
              {"id": 7, "name": "cross"}, {"id": 9, "name": "star"}]


def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """(V, 2) vertices in [-1, 1]^2 of shape ``name`` before scaling and rotation."""
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if name == "triangle":
        return np.array([[rng.uniform(-1, 1), -1], [1, 1], [-1, 1]], float)
    if name == "cross":
        a = rng.uniform(0.25, 0.45)  # arm half-thickness
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                         [-1, a], [-1, -a], [-a, -a]], float)
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2  # 5-pointed star
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32: muted colour gradient plus blotches, stripes or nothing (noise comes later)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) * (0.7 / max(h, w))
    c0, c1 = rng.uniform(40, 200, 3).astype(np.float32), rng.uniform(40, 200, 3).astype(np.float32)
    img = c0 + (c1 - c0) * ramp[..., None]
    kind = rng.integers(3)
    if kind == 0:  # low-frequency blotches: a coarse random grid upsampled
        coarse = rng.normal(0, 25, (h // 32 + 2, w // 32 + 2)).astype(np.float32)
        img += np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))[..., None]
    elif kind == 1:  # stripes
        period, phase = rng.uniform(6, 30), rng.uniform(0, 2 * np.pi)
        img += 20 * np.sin((xx * math.sin(angle) - yy * math.cos(angle)) * (2 * np.pi / period) + phase)[..., None]
    return img


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour not too close to ``avoid`` (the background under the shape)."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        c[rng.integers(3)] = rng.uniform(0, 40)  # saturated: one channel dark
        if np.abs(c - avoid).sum() > 180:
            break
    return tuple(int(v) for v in c)


# Hues (RGB) of the classes when colour gives the class away (the demo): red, blue, yellow, magenta, cyan.
CLASS_COLOURS = np.array([[220, 40, 40], [40, 80, 230], [235, 200, 30], [200, 40, 200], [30, 200, 200]], np.float32)


def _render(h: int, w: int, rng: np.random.Generator, categories: list[dict] = CATEGORIES,
            min_object: float = 12, max_objects: int = 8,
            class_colours: bool = False) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``{"category_id", "bbox" xywh, "area", "segmentation"}``."""
    bg = _background(h, w, rng)
    if class_colours:  # a grey-ish background, so that the saturated class colours stand out
        bg = 0.3 * bg + 0.7 * bg.mean(2, keepdims=True)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw, objects, boxes = ImageDraw.Draw(img), [], []
    n = 0 if rng.random() < 0.05 else int(rng.integers(1, max_objects + 1))
    lo, hi = math.log(min_object), math.log(0.5 * min(h, w))
    for _ in range(n * 10):  # placement attempts
        if len(objects) == n:
            break
        cat = categories[rng.integers(len(categories))]
        size = math.exp(rng.uniform(lo, hi))
        aspect = 1.0 if cat["name"] in ("circle", "star") else math.exp(rng.uniform(-math.log(3), math.log(3)))
        half = np.array([size * min(1, aspect), size * min(1, 1 / aspect)]) / 2  # long side = size
        theta = rng.uniform(-0.3, 0.3) if cat["name"] in ("rectangle", "cross") else rng.uniform(0, 2 * np.pi)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = (_unit_polygon(cat["name"], rng) * half) @ rot.T
        pts = pts + rng.uniform(-pts.min(0), np.array([w, h]) - pts.max(0))  # fully inside the image
        mask = Image.new("1", (w, h))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in pts], fill=1)
        ys, xs = np.nonzero(np.asarray(mask))
        if len(xs) == 0:
            continue
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)  # tight, pixel edges
        if any(_too_close(box, b) for b in boxes):
            continue
        if class_colours:
            k = next(i for i, c in enumerate(CATEGORIES) if c["id"] == cat["id"])
            fill = tuple(int(v) for v in np.clip(CLASS_COLOURS[k] + rng.uniform(-25, 25, 3), 0, 255))
        else:
            fill = _colour(rng, bg[ys, xs].mean(0))
        draw.polygon([tuple(p) for p in pts], fill=fill)
        boxes.append(box)
        objects.append({"category_id": cat["id"], "bbox": [float(v) for v in (*box[:2], *(box[2:] - box[:2]))],
                        "area": float(len(xs)), "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]]})
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(3, 12)  # over objects too
    arr = np.asarray(img, dtype=np.float32) + noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), objects


def _too_close(a: np.ndarray, b: np.ndarray) -> bool:
    """Overlap allowed, but no box mostly hidden by another (IoU > 0.3 or > 60% of the smaller)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) > 0.3 or inter / min(area_a, area_b) > 0.6


# The demo's dataset: three well-separated shapes, each in its own colour, 1-4 objects of 24 px up to
# half the image, small images. Easy enough that a ResNet-18 from scratch learns it on a CPU in minutes
# (README: measured AP).
DEMO_DATASET = {"num_train": 400, "num_val": 50, "image_size": (160, 192), "num_classes": 3,
                "min_object": 24, "max_objects": 4, "class_colours": True}


def make_synthetic_coco(root: Union[str, Path], num_train: int = 200, num_val: int = 50,
                        image_size: tuple[int, int] = (256, 320), seed: int = 0, vary_size: bool = True,
                        num_classes: int = len(CATEGORIES), min_object: float = 12, max_objects: int = 8,
                        class_colours: bool = False) -> dict:
    """Writes ``root/images/*.jpg`` and ``root/annotations/{train,val}.json``; returns their paths and counts.

    ``image_size`` (H, W) is the typical landscape size; with ``vary_size`` each image's sides vary by
    +-20% and a quarter are portrait, without it every image is exactly ``image_size``. Only the first
    ``num_classes`` categories are drawn; objects' long sides range from ``min_object`` px to half
    the image's short side; each image holds up to ``max_objects`` (about 5% hold none). With
    ``class_colours`` each class has its own hue (``CLASS_COLOURS``, +-25 per channel) on a desaturated
    background: shape and colour both tell the class, which a model from scratch learns quickly.
    """
    categories = CATEGORIES[:num_classes]
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out = {"root": str(root), "images": str(root / "images"), "categories": categories, "num_annotations": {}}
    for split_idx, (split, count) in enumerate([("train", num_train), ("val", num_val)]):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_idx, i])
            h, w = (int(round(s * rng.uniform(0.8, 1.2))) for s in image_size)
            h, w = (w, h) if rng.random() < 0.25 else (h, w)
            h, w = (h, w) if vary_size else image_size
            img, objects = _render(h, w, rng, categories, min_object, max_objects, class_colours)
            name = f"{split}_{i:06d}.jpg"
            atomic_write(root / "images" / name, lambda p, img=img: img.save(p, format="JPEG", quality=92))
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, **obj})
        data = {"info": {"description": f"retinanet synthetic shapes, seed {seed}"}, "images": images,
                "annotations": annotations, "categories": categories}
        path = root / "annotations" / f"{split}.json"
        write_json(path, data)
        out[split] = str(path)
        out["num_annotations"][split] = len(annotations)
    return out


def ensure_demo_dataset(data_cfg: DataConfig) -> None:
    """Generates the synthetic dataset where ``data_cfg`` expects it (``root/annotations/{train,val}.json``
    and ``root/images``) unless both annotation files exist already."""
    roots = set()
    for split in ("train", "val"):
        ds = getattr(data_cfg, split)
        if not ds.annotations:
            continue
        ann = Path(ds.annotations)
        root = ann.parent.parent
        if ann.parent.name != "annotations" or ann.name != f"{split}.json" or (
                ds.images and Path(ds.images).resolve() != (root / "images").resolve()):
            raise DatasetError(f"data.demo: data.{split} must point at <root>/images and <root>/annotations/"
                               f"{split}.json, got images={ds.images!r}, annotations={ds.annotations!r}")
        roots.add(root)
    for root in sorted(roots):
        if not ((root / "annotations" / "train.json").is_file() and (root / "annotations" / "val.json").is_file()):
            logger.info("generating the synthetic demo dataset in %s", root)
            make_synthetic_coco(root, **DEMO_DATASET)
