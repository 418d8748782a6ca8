"""Per-image records (file name, size, boxes, labels, crowd regions) in a handful of flat numpy
buffers instead of one Python dict and three arrays per image.

Why: data-loader workers are forked. Every Python object they touch gets its reference count
written, which copies its memory page (copy-on-write), so indexing a dataset held as 118k dicts
and 350k small arrays makes each of 4 workers slowly duplicate it (the issue Detectron2's
``_TorchSerializedList`` solves). Reading from a few large numpy buffers writes to no page, so the
workers keep sharing the parent's memory. The buffers are also much smaller than the Python objects.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import operator
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np


def group_by_image(image_index: np.ndarray, values: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``values`` (M, ...) belonging to image ``image_index`` (M,) -> the rows sorted by
    image (stable: file order kept within an image) and offsets (num_images + 1,): image j owns
    rows ``offsets[j]:offsets[j + 1]``."""
    order = np.argsort(image_index, kind="stable")
    offsets = np.zeros(num_images + 1, np.int64)
    np.cumsum(np.bincount(image_index, minlength=num_images), out=offsets[1:])
    return values[order], offsets


class ImageRecords:
    """The records of ``images`` ({id: {"file_name", "height", "width"}}, in file order), addressed by
    position j (file order) or image id, from M annotations: image position ``image_index`` (M,), ``boxes``
    (M, 4) xyxy, ``labels`` (M,) and ``is_crowd`` (M,) bool; crowd boxes become the ignore regions.

    Held as ``hw`` (N, 2) int32 heights and widths; ``boxes`` (B, 4) float32 xyxy and ``labels`` (B,)
    int64 with ``box_offsets`` (N + 1,); ``crowd`` (C, 4) float32 with ``crowd_offsets`` (N + 1,). File
    names are stored as one UTF-8 byte buffer with offsets.
    """

    def __init__(self, images: dict[int, dict], image_index: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 is_crowd: np.ndarray):
        self.image_ids = np.fromiter(images, np.int64, count=len(images))
        encoded = [v["file_name"].encode("utf-8") for v in images.values()]
        self._names = np.frombuffer(b"".join(encoded), np.uint8)
        self._name_offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=self._name_offsets[1:])
        self.hw = np.array([(v["height"], v["width"]) for v in images.values()], np.int32).reshape(-1, 2)
        n, fg, boxes = len(images), ~is_crowd, np.asarray(boxes, np.float32)
        self.boxes, self.box_offsets = group_by_image(image_index[fg], boxes[fg], n)
        self.labels, _ = group_by_image(image_index[fg], np.asarray(labels, np.int64)[fg], n)
        self.crowd, self.crowd_offsets = group_by_image(image_index[is_crowd], boxes[is_crowd], n)
        # id -> position without a dict: binary search in the sorted ids.
        self._id_order = np.argsort(self.image_ids, kind="stable")
        self._sorted_ids = self.image_ids[self._id_order]

    def __len__(self) -> int:
        return len(self.image_ids)

    def position(self, image_id: int) -> int:
        """Position of ``image_id``; KeyError if absent."""
        k = int(np.searchsorted(self._sorted_ids, image_id))
        if k == len(self._sorted_ids) or self._sorted_ids[k] != image_id:
            raise KeyError(image_id)
        return int(self._id_order[k])

    def info(self, j: int) -> dict:
        """``{"file_name", "height", "width"}`` of the image at position ``j``."""
        name = self._names[self._name_offsets[j]:self._name_offsets[j + 1]].tobytes().decode("utf-8")
        return {"file_name": name, "height": int(self.hw[j, 0]), "width": int(self.hw[j, 1])}

    def num_boxes(self) -> np.ndarray:
        """(N,) training boxes per image."""
        return np.diff(self.box_offsets)

    def targets(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies (callers may edit them) of image j's boxes (G, 4), labels (G,), crowd boxes (C, 4)."""
        b0, b1 = self.box_offsets[j], self.box_offsets[j + 1]
        c0, c1 = self.crowd_offsets[j], self.crowd_offsets[j + 1]
        return self.boxes[b0:b1].copy(), self.labels[b0:b1].copy(), self.crowd[c0:c1].copy()


def load_json(path: Union[str, Path]) -> Any:
    """``json.load`` of a file, with orjson when it is installed (faster on COCO's large files: it
    parses bytes straight to objects). Files orjson rejects (NaN, Infinity) go through json, which also
    gives the error for invalid ones."""
    with gc_paused():
        try:
            import orjson
            return orjson.loads(Path(path).read_bytes())
        except (ImportError, ValueError):  # orjson absent, or a file only json reads (NaN) or neither does
            with open(path, encoding="utf-8") as f:
                return json.load(f)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block. Parsing COCO creates ~2M dicts and lists; each
    full collection walks all of them, so collections would take most of the parse. JSON data holds no
    reference cycles, so nothing is left for later either."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _all_types(values: Iterable, allowed: tuple) -> bool:
    return set(map(type, values)) <= set(allowed)  # map(type) loops in C


def parse_annotations(anns: list, image_ids: Sequence[int], cat_id_to_label: dict[int, int]
                      ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """COCO annotation dicts -> (image position (M,) int64, contiguous label (M,) int64, iscrowd (M,)
    bool, bbox xywh (M, 4) float64), built column by column with C-level loops; or None when any
    entry is malformed (not a dict, missing or mistyped image_id / category_id / bbox / iscrowd,
    unknown ids); ``data.validate.validate_coco`` names the culprit."""
    try:
        if not _all_types(anns, (dict,)):
            return None
        img = list(map(operator.itemgetter("image_id"), anns))  # map(itemgetter) loops in C
        cat = list(map(operator.itemgetter("category_id"), anns))
        bbox = list(map(operator.itemgetter("bbox"), anns))
        crowd = [a.get("iscrowd", 0) for a in anns]
    except KeyError:
        return None
    if not (_all_types(img, (int,)) and _all_types(cat, (int,)) and _all_types(bbox, (list,))
            and set(map(len, bbox)) <= {4} and _all_types(itertools.chain.from_iterable(bbox), (int, float))
            and _all_types(crowd, (int, bool, float)) and set(crowd) <= {0, 1}):  # as validate_coco
        return None
    ids = np.asarray(image_ids, np.int64)
    order = np.argsort(ids, kind="stable")
    img = np.asarray(img, np.int64)
    k = np.searchsorted(ids[order], img).clip(0, max(len(ids) - 1, 0))
    if len(img) and (len(ids) == 0 or not np.array_equal(ids[order][k], img)):
        return None
    cat_ids = np.asarray(sorted(cat_id_to_label), np.int64)
    cat = np.asarray(cat, np.int64)
    c = np.searchsorted(cat_ids, cat).clip(0, len(cat_ids) - 1)
    if not np.array_equal(cat_ids[c], cat):
        return None
    labels = np.asarray([cat_id_to_label[i] for i in cat_ids.tolist()], np.int64)[c]
    xywh = np.fromiter(itertools.chain.from_iterable(bbox), np.float64, count=4 * len(bbox)).reshape(-1, 4)
    return order[k], labels, np.asarray(crowd, bool), xywh
