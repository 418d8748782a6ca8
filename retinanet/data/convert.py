"""Convert Pascal VOC or YOLO labels into the COCO JSON that ``CocoDetection`` reads (``retinanet convert``).

The format readers (``voc.py``, ``yolo.py``) produce :class:`ImageRecord` lists; this module turns them
into COCO dicts, splits them into train/val deterministically and writes them.

COCO conventions of the output: categories get ids 1..K in class order, images ids 1..N in sorted
file-name order (the same ids in the train and val files of a split, so an image keeps its id), and
annotations ids 1..A; ``bbox`` is [x, y, w, h] in continuous 0-based pixel coordinates (the top-left
corner of the image is (0, 0), the bottom-right (W, H)) and ``area`` is w * h. Image sizes are the
size the training loader sees: read from the file header with the EXIF orientation applied.

Bad input is collected rather than raised one at a time: ``labels.Problems`` gathers every problem
with its file (and line) and reports the first 20 and the count in one :class:`ConvertError`.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Optional, Union

from ..jsonio import write_json
from .labels import IMAGE_EXTENSIONS, ConvertError, ImageRecord
from .voc import read_voc
from .yolo import read_yolo

logger = logging.getLogger(__name__)


def read_class_file(path: Union[str, Path]) -> list[str]:
    """Class names, one per line (blank lines ignored); duplicates are an error."""
    p = Path(path)
    if not p.is_file():
        raise ConvertError(f"classes file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{p}: cannot read: {e}") from None
    names: list[str] = []
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise ConvertError(f"{p}:{i}: duplicate class name {name!r}")
        names.append(name)
    if not names:
        raise ConvertError(f"{p}: no class names")
    return names


def to_coco(records: list[ImageRecord], classes: list[str]) -> dict:
    """COCO dict; images numbered 1..N in file-name order, categories 1..K in class order."""
    records = sorted(records, key=lambda r: r.file_name)
    images, annotations = [], []
    for image_id, rec in enumerate(records, 1):
        images.append({"id": image_id, "file_name": rec.file_name, "width": rec.width, "height": rec.height})
        for b in rec.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": b.label + 1,
                                "bbox": [round(v, 3) for v in (b.x, b.y, b.w, b.h)],
                                "area": round(b.w * b.h, 3), "iscrowd": b.iscrowd})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(classes, 1)]}


def split_coco(coco: dict, val_fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, val) by image: round(N * val_fraction) images (at least 1 each) drawn with ``seed``.

    The draw depends only on the sorted image list and the seed, so re-running gives the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConvertError(f"--split-val must be between 0 and 1 (exclusive), got {val_fraction}")
    ids = [im["id"] for im in coco["images"]]
    if len(ids) < 2:
        raise ConvertError(f"--split-val needs at least 2 images, found {len(ids)}")
    n_val = min(max(round(len(ids) * val_fraction), 1), len(ids) - 1)
    val_ids = set(random.Random(seed).sample(ids, n_val))

    def subset(keep: set) -> dict:
        return {"images": [im for im in coco["images"] if im["id"] in keep],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
                "categories": coco["categories"]}  # both files keep every class: the label mapping must agree
    return subset(set(ids) - val_ids), subset(val_ids)


def _refuse_input_as_output(target: Path, images: str, labels: str) -> None:
    """A ConvertError when writing ``target`` would replace an input: an image or label file by its name,
    or any existing non-JSON file under the image or label folder."""
    if target.suffix.lower() in IMAGE_EXTENSIONS + (".xml", ".txt"):
        raise ConvertError(f"--output {target} names an image or label file; the COCO JSON needs a .json name")
    if not target.is_file() or target.suffix.lower() == ".json":
        return
    real = os.path.realpath(target)
    for folder, what in ((images, "--images"), (labels, "--labels")):
        root = os.path.realpath(folder)
        if os.path.commonpath([real, root]) == root:
            raise ConvertError(f"--output {target} is an existing file inside {what} {folder}; writing the JSON "
                               f"would replace it. Choose another --output")


def summary(coco: dict) -> str:
    """One line: images, empty images, boxes, crowd boxes, classes."""
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    crowd = sum(a["iscrowd"] for a in coco["annotations"])
    return (f"{len(coco['images'])} images ({len(coco['images']) - len(with_boxes)} without objects), "
            f"{len(coco['annotations'])} boxes ({crowd} crowd/ignore), {len(coco['categories'])} classes")


def convert(fmt: str, labels: str, images: str, output: str, classes: Optional[str] = None,
            difficult: str = "crowd", skip_bad: bool = False, split_val: Optional[float] = None,
            seed: int = 0) -> dict[str, Path]:
    """Runs a conversion and writes the JSON file(s); returns {"all" | "train" | "val": path}.

    With ``split_val`` the ``output`` is a folder that receives ``train.json`` and ``val.json``;
    without it ``output`` is the JSON file.
    """
    out = Path(output)
    if split_val is not None and out.suffix.lower() == ".json":
        raise ConvertError(f"with --split-val, --output is a folder (it receives train.json and val.json), "
                           f"got {out}")
    targets = [out] if split_val is None else [out / "train.json", out / "val.json"]
    for target in targets:
        _refuse_input_as_output(target, images, labels)
    class_list = read_class_file(classes) if classes else None
    if fmt == "voc":
        records, class_list = read_voc(labels, images, class_list, difficult=difficult, skip_bad=skip_bad)
    elif fmt == "yolo":
        if class_list is None:
            raise ConvertError("--format yolo needs --classes (class names, one per line, in index order)")
        records = read_yolo(labels, images, class_list, skip_bad=skip_bad)
    else:
        raise ConvertError(f"unknown format {fmt!r}; expected voc or yolo")
    if not records:
        raise ConvertError(f"no images found to convert in {images}")
    coco = to_coco(records, class_list)
    if split_val is None:
        write_json(out, coco)
        logger.info("wrote %s: %s", out, summary(coco))
        return {"all": out}
    train, val = split_coco(coco, split_val, seed)
    paths = {"train": out / "train.json", "val": out / "val.json"}
    for name, data in (("train", train), ("val", val)):
        write_json(paths[name], data)
        logger.info("wrote %s: %s", paths[name], summary(data))
    return paths
