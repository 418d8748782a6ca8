"""Convert Pascal VOC or YOLO labels into the COCO JSON that ``CocoDetection`` reads (``retinanet convert``).

The format readers (``voc.py``, ``yolo.py``) produce :class:`ImageRecord` lists; this module turns them
into COCO dicts, splits them into train/val deterministically and writes them.

COCO conventions of the output: categories get ids 1..K in class order, images ids 1..N in sorted
file-name order (the same ids in the train and val files of a split, so an image keeps its id), and
annotations ids 1..A; ``bbox`` is [x, y, w, h] in continuous 0-based pixel coordinates (the top-left
corner of the image is (0, 0), the bottom-right (W, H)) and ``area`` is w * h. Image sizes are the
size the training loader sees: read from the file header with the EXIF orientation applied.

Bad input is collected rather than raised one at a time: :class:`Problems` gathers every problem
with its file (and line) and :func:`Problems.raise_if_any` reports the first 20 and the count in one
:class:`ConvertError`.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_REPORTED = 20
_EXIF_ORIENTATION = 0x0112


class ConvertError(ValueError):
    """Input labels cannot be converted; the message names the file (and line)."""


@dataclass
class Box:
    """One object: class index into the class list, continuous 0-based pixel box, crowd flag."""
    label: int
    x: float
    y: float
    w: float
    h: float
    iscrowd: int = 0


@dataclass
class ImageRecord:
    """One image: path relative to the image root (POSIX separators), real size, boxes."""
    file_name: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


class Problems:
    """Collects ``where: message`` problems so one run reports all of them together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: Union[str, Path], message: str, line: Optional[int] = None) -> None:
        self.items.append(f"{where}{f':{line}' if line is not None else ''}: {message}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, what: str, hint: str = "") -> None:
        if not self.items:
            return
        shown = "\n  ".join(self.items[:MAX_REPORTED])
        more = f"\n  ... and {len(self.items) - MAX_REPORTED} more" if len(self.items) > MAX_REPORTED else ""
        raise ConvertError(f"{len(self.items)} {what}:\n  {shown}{more}{hint}")


def require_dir(path: Union[str, Path], what: str) -> Path:
    """``path`` as a Path, or a ConvertError saying which option points at a missing folder."""
    p = Path(path)
    if not p.is_dir():
        raise ConvertError(f"{what} folder not found: {p}")
    return p


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


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the loader will see the image: header only, EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # Orientations 5-8 rotate by 90 degrees; preprocess.read_image applies them, so the size swaps.
            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConvertError(f"cannot read image {path}: {e}") from None
    return int(w), int(h)


def resolve_inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` after resolving '..' and symlinks; a ConvertError if it escapes ``root``."""
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, name))
    if os.path.isabs(name) or os.path.commonpath([path, real_root]) != real_root:
        raise ConvertError(f"{where}: file name {name!r} points outside the image folder {root}")
    return Path(path)


def clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[float, ...]:
    """Corners clipped to the image, returned as (x, y, w, h)."""
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return x0, y0, x1 - x0, y1 - y0


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


def write_json(data: dict, path: Path) -> None:
    """Writes through a temporary file, so an interrupted run never leaves half a JSON behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


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
        from .voc import read_voc
        records, class_list = read_voc(labels, images, class_list, difficult=difficult, skip_bad=skip_bad)
    elif fmt == "yolo":
        from .yolo import read_yolo
        if class_list is None:
            raise ConvertError("--format yolo needs --classes (class names, one per line, in index order)")
        records = read_yolo(labels, images, class_list, skip_bad=skip_bad)
    else:
        raise ConvertError(f"unknown format {fmt!r}; expected voc or yolo")
    if not records:
        raise ConvertError(f"no images found to convert in {images}")
    coco = to_coco(records, class_list)
    if split_val is None:
        write_json(coco, out)
        logger.info("wrote %s: %s", out, summary(coco))
        return {"all": out}
    train, val = split_coco(coco, split_val, seed)
    paths = {"train": out / "train.json", "val": out / "val.json"}
    for name, data in (("train", train), ("val", val)):
        write_json(data, paths[name])
        logger.info("wrote %s: %s", paths[name], summary(data))
    return paths
