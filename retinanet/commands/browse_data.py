"""``retinanet browse-data``: look at a dataset before training: drawn boxes, counts per class and size.

    retinanet browse-data --config CFG [--split train|val] [--augment] [--num N] --output DIR [key=value ...]

Draws the ground-truth boxes of the first N images of the split as stored (original pixels), or with
``--augment`` after the training transforms (random scale and flip, colour jitter when configured;
one draw per image, seeded by its index so a rerun shows the same views). Writes ``DIR/images/*.jpg``,
``DIR/summary.json`` (boxes per class and per COCO size bucket, over the whole split, from the
annotation file: small < 32^2 <= medium < 96^2 <= large, by the annotation's ``area`` as COCOeval
does, else the box area) and ``DIR/histogram.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..config_loader import load_config
from ..jsonio import write_json
from . import positive_int

SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config naming data.train / data.val")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--augment", action="store_true", help="draw after the training transforms")
    p.add_argument("--num", type=positive_int, default=16, help="images to draw (default 16)")
    p.add_argument("--output", required=True, help="folder for images/, summary.json and histogram.png")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def box_summary(annotations: dict) -> dict:
    """``{"images", "boxes", "crowd", "empty_images", "per_class": {name: n}, "per_size": {bucket: n}}``
    of a COCO annotation dict; crowd regions are counted apart and left out of the buckets."""
    names = {c["id"]: c["name"] for c in annotations.get("categories", [])}
    per_class = {n: 0 for n in names.values()}
    per_size = {b[0]: 0 for b in SIZE_BUCKETS}
    crowd, with_boxes = 0, set()
    for a in annotations.get("annotations", []):
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        with_boxes.add(a["image_id"])
        per_class[names.get(a["category_id"], str(a["category_id"]))] = \
            per_class.get(names.get(a["category_id"], str(a["category_id"])), 0) + 1
        area = float(a.get("area") or a["bbox"][2] * a["bbox"][3])
        per_size[next(n for n, lo, hi in SIZE_BUCKETS if lo <= area < hi)] += 1
    images = len(annotations.get("images", []))
    return {"images": images, "boxes": sum(per_class.values()), "crowd": crowd,
            "empty_images": images - len(with_boxes), "per_class": per_class, "per_size": per_size}


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..data.loader import build_dataset
    from ..evaluation.report_plots import histogram_plot
    from ..visualize import draw_detections
    cfg = load_config(args.config, args.overrides)
    ds_cfg = getattr(cfg.data, args.split)
    ds = build_dataset(cfg, args.split, augment=args.augment)  # generates the demo data when asked
    names = [c["name"] for c in ds.categories]
    out = Path(args.output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    mean, std = np.asarray(cfg.input.pixel_mean) * 255, np.asarray(cfg.input.pixel_std) * 255
    drawn = 0
    for i in range(min(args.num, len(ds))):
        sample = ds[(i, i)] if args.augment else ds[i]  # the index is the seed: the same views every run
        if sample is None:  # unreadable: already logged by the dataset
            continue
        img = sample["image"].numpy().transpose(1, 2, 0)
        # The dataset hands out normalised floats (augmented) or [0, 1] floats (as stored): back to uint8.
        img = img * std + mean if args.augment else img * 255
        image = np.clip(img, 0, 255).round().astype(np.uint8)
        labels = sample["labels"].numpy()
        picture = draw_detections(image, sample["boxes"].numpy(), [names[int(c)] for c in labels], labels=labels)
        Image.fromarray(picture).save(out / "images" / (Path(sample["file_name"]).stem + ".jpg"), quality=90)
        drawn += 1
    summary = {"split": args.split, "annotations": ds_cfg.annotations, "augment": args.augment,
               **box_summary(json.loads(Path(ds_cfg.annotations).read_text()))}
    write_json(out / "summary.json", summary, indent=2)
    (out / "histogram.png").write_bytes(histogram_plot(summary["per_class"], summary["per_size"], args.split))
    print(json.dumps({k: summary[k] for k in ("images", "boxes", "per_class", "per_size")}))
    print(f"drew {drawn} image(s) -> {out / 'images'}; wrote {out / 'summary.json'} and {out / 'histogram.png'}",
          file=sys.stderr)
    return 0 if drawn or len(ds) == 0 else 1
