"""COCO-format detection dataset: validated JSON, contiguous labels, crowd ignore regions, bad-image skipping.

The JSON is read with ``json`` and validated entry by entry, so a malformed file gives one error naming
the file and the offending entry instead of a KeyError from deep inside pycocotools.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..preprocess import read_image, to_float_tensor

logger = logging.getLogger(__name__)

MIN_BOX_SIZE = 1.0  # pixels; narrower or shorter boxes (after clipping to the image) are dropped
Index = Union[int, tuple[int, Optional[int]]]


class DatasetError(ValueError):
    """An annotation file or image entry is malformed; the message names the file and the entry."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class CocoDetection(Dataset):
    """COCO-format dataset; ``dataset[i]`` or ``dataset[(i, seed)]`` -> sample dict or None (bad image).

    Sample: ``image`` (3, h, w) float32 (normalised by ``transform``; [0, 1] RGB without one), ``boxes``
    (G, 4) float32 xyxy, ``labels`` (G,) int64 contiguous, ``crowd_boxes`` (C, 4) float32 ignore regions,
    ``image_id``, ``file_name``, ``orig_size`` (H, W) and ``size`` (h, w) after the transform.
    ``transform(image_uint8_hwc, boxes, labels, crowd_boxes, seed)`` -> (image, boxes, labels, crowd_boxes).
    """

    def __init__(self, images: str, annotations: str, transform: Optional[Callable] = None,
                 filter_empty: bool = False, skip_bad_images: bool = True):
        self.root = Path(images)
        self.annotation_file = Path(annotations)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._bad_paths: set[str] = set()
        data = self._read_json()
        self.categories, images_by_id, anns = self._validate(data)
        self.cat_id_to_label = {c["id"]: i for i, c in enumerate(self.categories)}
        self._build_targets(images_by_id, anns)
        keep = [i for i in images_by_id if not (filter_empty and len(self._targets[i][1]) == 0)]
        self.ids: list[int] = keep
        self.stats.update(filtered_empty=len(images_by_id) - len(keep))

    # ------------------------------------------------------------------------------------------
    # Loading and validation

    def _err(self, msg: str) -> DatasetError:
        return DatasetError(f"{self.annotation_file}: {msg}")

    def _read_json(self) -> dict:
        if not self.annotation_file.is_file():
            raise DatasetError(f"annotation file not found: {self.annotation_file}")
        try:
            with open(self.annotation_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise self._err(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise self._err(f"cannot read: {e}") from None
        if not isinstance(data, dict):
            raise self._err(f"top level must be an object, got {type(data).__name__}")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise self._err(f"missing top-level key '{key}'")
            if not isinstance(data[key], list):
                raise self._err(f"'{key}' must be a list, got {type(data[key]).__name__}")
        return data

    def _validate(self, data: dict) -> tuple[list[dict], dict[int, dict], list[tuple[int, dict]]]:
        categories: dict[int, dict] = {}
        for i, c in enumerate(data["categories"]):
            where = f"categories[{i}]"
            self._check_fields(c, where, {"id": _is_int, "name": lambda v: isinstance(v, str)})
            if c["id"] in categories:
                raise self._err(f"{where}: duplicate category id {c['id']}")
            categories[c["id"]] = {"id": c["id"], "name": c["name"]}
        if not categories:
            raise self._err("'categories' is empty")

        root = self.root.resolve()
        images: dict[int, dict] = {}
        for i, im in enumerate(data["images"]):
            where = f"images[{i}]"
            self._check_fields(im, where, {"id": _is_int, "file_name": lambda v: isinstance(v, str) and v != "",
                                           "height": lambda v: _is_int(v) and v > 0,
                                           "width": lambda v: _is_int(v) and v > 0})
            where = f"images[{i}] (id {im['id']})"
            if im["id"] in images:
                raise self._err(f"{where}: duplicate image id")
            # realpath follows symlinks, so '..', absolute names and links out of the root are all caught.
            path = os.path.realpath(root / im["file_name"])
            if os.path.commonpath([path, str(root)]) != str(root):
                raise self._err(f"{where}: file_name {im['file_name']!r} resolves outside the image root {root}")
            images[im["id"]] = {"file_name": im["file_name"], "height": im["height"], "width": im["width"]}

        anns = []
        for i, a in enumerate(data["annotations"]):
            where = f"annotations[{i}]" + (f" (id {a['id']})" if isinstance(a, dict) and "id" in a else "")
            self._check_fields(a, where, {"image_id": _is_int, "category_id": _is_int})
            if a["image_id"] not in images:
                raise self._err(f"{where}: image_id {a['image_id']} is not in 'images'")
            if a["category_id"] not in categories:
                raise self._err(f"{where}: category_id {a['category_id']} is not in 'categories'")
            bbox = a.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_num(v) for v in bbox):
                raise self._err(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            if a.get("iscrowd", 0) not in (0, 1):
                raise self._err(f"{where}: iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
            anns.append((i, a))
        return [categories[k] for k in sorted(categories)], images, anns

    def _check_fields(self, entry: Any, where: str, checks: dict[str, Callable[[Any], bool]]) -> None:
        if not isinstance(entry, dict):
            raise self._err(f"{where}: must be an object, got {type(entry).__name__}")
        for key, ok in checks.items():
            if key not in entry:
                raise self._err(f"{where}: missing key '{key}'")
            if not ok(entry[key]):
                raise self._err(f"{where}: invalid '{key}': {entry[key]!r}")

    def _build_targets(self, images: dict[int, dict], anns: list[tuple[int, dict]]) -> None:
        """xywh -> xyxy clipped to the image; degenerate boxes dropped and counted; crowds set apart."""
        self._info = images
        per_image: dict[int, tuple[list, list, list]] = {k: ([], [], []) for k in images}
        dropped, example, crowd = 0, "", 0
        for i, a in anns:
            info = images[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            x0, y0 = min(max(x, 0.0), info["width"]), min(max(y, 0.0), info["height"])
            x1, y1 = min(max(x + w, 0.0), info["width"]), min(max(y + h, 0.0), info["height"])
            finite = all(math.isfinite(v) for v in (x, y, w, h))
            if not finite or w < 0 or h < 0 or x1 - x0 < MIN_BOX_SIZE or y1 - y0 < MIN_BOX_SIZE:
                if dropped == 0:
                    example = (f"annotation {'id ' + str(a['id']) if 'id' in a else f'[{i}]'} in image "
                               f"{info['file_name']!r}: bbox {a['bbox']}")
                dropped += 1
                continue
            boxes, labels, crowds = per_image[a["image_id"]]
            if a.get("iscrowd", 0):
                crowds.append((x0, y0, x1, y1))
                crowd += 1
            else:
                boxes.append((x0, y0, x1, y1))
                labels.append(self.cat_id_to_label[a["category_id"]])
        if dropped:
            logger.warning("%s: dropped %d degenerate boxes (width or height < %g px after clipping, NaN or "
                           "negative), e.g. %s", self.annotation_file, dropped, MIN_BOX_SIZE, example)
        self._targets = {
            k: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64), np.asarray(c, np.float32).reshape(-1, 4))
            for k, (b, lab, c) in per_image.items()}
        self.stats: dict[str, int] = dict(
            images=len(images), annotations=len(anns), degenerate_dropped=dropped, crowd=crowd,
            empty_images=sum(len(t[1]) == 0 for t in self._targets.values()), filtered_empty=0, skipped_images=0)

    # ------------------------------------------------------------------------------------------
    # Access

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict:
        """``{"file_name", "height", "width"}`` of dataset index ``index``, from the JSON (no image read)."""
        return dict(self._info[self.ids[index]])

    def __getitem__(self, index: Index) -> Optional[dict]:
        index, seed = index if isinstance(index, (tuple, list)) else (index, None)
        image_id = self.ids[index]
        info = self._info[image_id]
        path = self.root / info["file_name"]
        try:
            image = read_image(path)
            if image.shape[:2] != (info["height"], info["width"]):
                raise OSError(f"image {path} is {image.shape[0]}x{image.shape[1]} (HxW) but the annotation "
                              f"file says {info['height']}x{info['width']}")
        except Exception as e:  # noqa: BLE001 - decoders of corrupt files raise more than OSError
            if not self.skip_bad_images:
                if isinstance(e, OSError):
                    raise
                raise OSError(f"cannot read image {path}: {e}") from e
            if str(path) not in self._bad_paths:
                self._bad_paths.add(str(path))
                self.stats["skipped_images"] = len(self._bad_paths)
                logger.warning("skipping bad image %s: %s", path, e)
            return None
        boxes, labels, crowd = self._targets[image_id]
        if self.transform is not None:
            img, boxes, labels, crowd = self.transform(image, boxes.copy(), labels.copy(), crowd.copy(), seed)
        else:
            img = to_float_tensor(image)
        return {
            "image": img,
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "crowd_boxes": torch.as_tensor(crowd, dtype=torch.float32).reshape(-1, 4),
            "image_id": image_id,
            "file_name": info["file_name"],
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "size": (int(img.shape[-2]), int(img.shape[-1])),
        }
