"""COCO-format detection dataset: validated JSON, contiguous labels, crowd ignore regions, bad-image skipping.

The JSON is read with ``json`` and validated entry by entry, so a malformed file gives one error naming
the file and the offending entry instead of a KeyError from deep inside pycocotools.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..preprocess import read_image, to_float_tensor
from ..fast.records import ImageRecords, gc_paused, load_json, parse_annotations
from .validate import CocoFormatError, check_image_paths, validate_coco

logger = logging.getLogger(__name__)

MIN_ANNOTATION_SIZE = 1.0  # pixels; narrower or shorter boxes (after clipping to the image) are dropped
Index = Union[int, tuple[int, Optional[int]]]


# An annotation file or image entry is malformed; the message names the file and the entry.
DatasetError = CocoFormatError


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
        with gc_paused():  # millions of new objects and no cycles: collections would only cost time
            data = self._read_json()
            self.categories, images_by_id, anns = self._validate(data)
            self.cat_id_to_label = {c["id"]: i for i, c in enumerate(self.categories)}
            self._build_targets(images_by_id, anns)
        empty = self._records.num_boxes() == 0
        keep = [i for j, i in enumerate(images_by_id) if not (filter_empty and empty[j])]
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
            data = load_json(self.annotation_file)
        except json.JSONDecodeError as e:
            raise self._err(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise self._err(f"cannot read: {e}") from None
        return data

    def _validate(self, data: dict) -> tuple[list[dict], dict[int, dict], list]:
        # The shared validator reports every malformed entry; degenerate boxes pass, to be dropped below.
        validate_coco(data, self.annotation_file, "train")
        check_image_paths(data["images"], self.root, self.annotation_file)
        categories = {c["id"]: {"id": c["id"], "name": c["name"]} for c in data["categories"]}
        images = {im["id"]: {"file_name": im["file_name"], "height": im["height"], "width": im["width"]}
                  for im in data["images"]}
        return [categories[k] for k in sorted(categories)], images, data["annotations"]

    def _build_targets(self, images: dict[int, dict], anns: list) -> None:
        """Annotations (validated) -> records: xywh -> xyxy clipped to the image, degenerate boxes dropped
        and counted, crowds set apart as ignore regions. Vectorised: COCO train has 860k annotations."""
        parsed = parse_annotations(anns, list(images), self.cat_id_to_label)  # column-wise
        if parsed is None:  # pragma: no cover - validate_coco accepts only what the parser reads
            raise self._err("annotations passed validation but not the column-wise parser")
        img_idx, labels, crowd, xywh = parsed
        wh = np.array([(v["width"], v["height"]) for v in images.values()], np.float64).reshape(-1, 2)[img_idx]
        with np.errstate(invalid="ignore"):
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).clip(0, np.tile(wh, 2))
            bad = (~np.isfinite(xywh).all(1) | (xywh[:, 2:] < 0).any(1)
                   | (xyxy[:, 2:] - xyxy[:, :2] < MIN_ANNOTATION_SIZE).any(1))
        dropped = int(bad.sum())
        if dropped:
            j = int(np.argmax(bad))
            ref = f"id {anns[j]['id']}" if "id" in anns[j] else f"[{j}]"
            logger.warning("%s: dropped %d degenerate boxes (width or height < %g px after clipping, NaN or "
                           "negative), e.g. annotation %s in image %r: bbox %s", self.annotation_file, dropped,
                           MIN_ANNOTATION_SIZE, ref, images[anns[j]["image_id"]]["file_name"], anns[j]["bbox"])
        # Flat buffers, not per-image objects: forked loader workers then share them (fast/records.py).
        keep = ~bad
        self._records = ImageRecords(images, img_idx[keep], xyxy[keep].astype(np.float32), labels[keep], crowd[keep])
        self.stats: dict[str, int] = dict(
            images=len(images), annotations=len(anns), degenerate_dropped=dropped, crowd=int(crowd[keep].sum()),
            empty_images=int((self._records.num_boxes() == 0).sum()), filtered_empty=0, skipped_images=0)

    # ------------------------------------------------------------------------------------------
    # Access

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict:
        """``{"file_name", "height", "width"}`` of dataset index ``index``, from the JSON (no image read)."""
        return self._records.info(self._records.position(self.ids[index]))

    def __getitem__(self, index: Index) -> Optional[dict]:
        index, seed = index if isinstance(index, (tuple, list)) else (index, None)
        image_id = self.ids[index]
        j = self._records.position(image_id)
        info = self._records.info(j)
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
        boxes, labels, crowd = self._records.targets(j)  # copies: callers may edit them in place
        if self.transform is not None:
            img, boxes, labels, crowd = self.transform(image, boxes, labels, crowd, seed)
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
