"""One validator for COCO-format files: training annotations, ground truth for AP, and results.

pycocotools trusts its input: a NaN box matches everything, a duplicate image id or a category id
missing from ``categories`` moves AP without a word, a missing key ends in a KeyError deep inside
``createIndex``. Every file we read goes through here first. A file's problems are reported
together (the first 20 and a count), each naming the file, the entry and the field.

Policy, by ``purpose``:

- ``"train"``: a box that is NaN, infinite or of negative size is left to the dataset, which drops
  and counts it (one bad box should not stop a week-long run); a malformed entry is an error.
- ``"gt"`` (ground truth scored by AP): any malformed box is an error, since AP must not move
  silently. Finite zero-size boxes are kept and counted. A missing ``area`` is computed (w*h).
- results (``validate_results``): non-finite or malformed entries and unknown image or category
  ids are errors.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .labels import Problems, inside_root

_NUM = (int, float)  # exact type() checks first: fast, and they exclude bool


class CocoFormatError(ValueError):
    """A COCO-format file is malformed; the message names the file, the entries and the fields."""


def _problems(source: Union[str, Path]) -> Problems:
    return Problems(source, CocoFormatError)


def _is_num(v: Any) -> bool:
    """A real number, not a bool; numpy scalars count (in-memory dicts hold them)."""
    t = type(v)
    return t is float or t is int or (t is not bool and isinstance(v, numbers.Real) and "bool" not in t.__name__)


def _is_int(v: Any) -> bool:
    t = type(v)
    return t is int or (t is not bool and isinstance(v, numbers.Integral) and "bool" not in t.__name__)


def _is_crowd_flag(v: Any) -> bool:
    return _is_int(v) and v in (0, 1)  # not True or 1.0: the dataset's column-wise parser takes ints only


def _is_pos_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _where(section: str, i: int, entry: Any) -> str:
    has_id = isinstance(entry, dict) and "id" in entry
    return f"{section}[{i}]" + (f" (id {entry['id']!r})" if has_id else "")


def _fields(p: Problems, where: str, entry: Any, checks: dict) -> bool:
    """Checks required fields; True when all are present and valid."""
    if not isinstance(entry, dict):
        p.add(where, f"must be an object, got {type(entry).__name__}")
        return False
    ok = True
    for key, valid in checks.items():
        if key not in entry:
            p.add(where, f"missing key '{key}'")
            ok = False
        elif not valid(entry[key]):
            p.add(where, f"invalid '{key}': {entry[key]!r}"[:200])
            ok = False
    return ok


def check_top_level(data: Any, source: Union[str, Path]) -> None:
    """The file is an object with ``images``, ``annotations`` and ``categories`` lists."""
    p = _problems(source)
    if not isinstance(data, dict):
        p.add("", f"top level must be an object, got {type(data).__name__}")
    else:
        for key in ("images", "annotations", "categories"):
            if key not in data:
                p.add("", f"missing top-level key '{key}'")
            elif not isinstance(data[key], list):
                p.add("", f"'{key}' must be a list, got {type(data[key]).__name__}")
    p.raise_if_any()


def check_image_paths(images: Iterable[dict], root: Union[str, Path], source: Union[str, Path]) -> None:
    """Every ``file_name`` stays inside the image root, so evaluation never opens another file."""
    p = _problems(source)
    real_root = os.path.realpath(root)
    for i, im in enumerate(images):
        if inside_root(real_root, im["file_name"]) is None:
            p.add(_where("images", i, im), f"file_name {im['file_name']!r} resolves outside the image root {real_root}")
    p.raise_if_any()


def _bbox_ok(b: Any) -> bool:
    return (type(b) is list and len(b) == 4 and ((type(b[0]) in _NUM and type(b[1]) in _NUM and type(b[2]) in _NUM
                                                  and type(b[3]) in _NUM) or all(_is_num(v) for v in b)))


def _finite_box_problem(b: list) -> Optional[str]:
    """Why a 4-number box is unusable as ground truth or a result, or None."""
    if not all(math.isfinite(v) for v in b):
        return f"bbox has a non-finite number: {b!r}"
    if b[2] < 0 or b[3] < 0:
        return f"bbox width and height must be >= 0, got {b!r}"
    return None


def validate_coco(data: Any, source: Union[str, Path], purpose: str = "gt") -> dict[str, int]:
    """Validates a COCO annotation dict for ``purpose`` "train" or "gt" (see the module docstring);
    raises CocoFormatError with every problem found. Returns counts: ``zero_size`` (finite boxes of
    zero width or height, "gt" only) and ``missing_area`` (annotations without ``area``, "gt" only)."""
    if purpose not in ("train", "gt"):
        raise ValueError(f"purpose must be 'train' or 'gt', got {purpose!r}")
    check_top_level(data, source)
    p = _problems(source)
    gt = purpose == "gt"
    cat_ids: set = set()
    for i, c in enumerate(data["categories"]):
        if _fields(p, f"categories[{i}]", c, {"id": _is_int, "name": lambda v: isinstance(v, str)}):
            if c["id"] in cat_ids:
                p.add(f"categories[{i}]", f"duplicate category id {c['id']}")
            cat_ids.add(c["id"])
    if not data["categories"]:
        p.add("", "'categories' is empty")

    # Image sizes are needed to clip training boxes; pycocotools does not read them.
    image_checks = {"id": _is_int, "file_name": _is_name}
    if not gt:
        image_checks.update(height=_is_pos_int, width=_is_pos_int)
    image_ids: set = set()
    for i, im in enumerate(data["images"]):
        if not _fields(p, f"images[{i}]", im, image_checks):
            continue
        where = _where("images", i, im)
        if gt and not all(_is_pos_int(im[k]) for k in ("height", "width") if k in im):
            p.add(where, f"height and width must be positive ints, got {im.get('height')!r}x{im.get('width')!r}")
        if im["id"] in image_ids:
            p.add(where, "duplicate image id")
        image_ids.add(im["id"])

    counts = {"zero_size": 0, "missing_area": 0}
    ann_ids: set = set()
    for i, a in enumerate(data["annotations"]):
        try:  # the fast path: one expression per annotation (COCO train has 860k)
            b = a["bbox"]
            ok = (_bbox_ok(b) and _is_int(a["image_id"]) and a["image_id"] in image_ids
                  and _is_int(a["category_id"]) and a["category_id"] in cat_ids
                  and _is_crowd_flag(a.get("iscrowd", 0)) and (not gt or _is_int(a["id"])))
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            _annotation_problems(p, i, a, image_ids, cat_ids, gt)
            continue
        if "id" in a:
            if a["id"] in ann_ids:
                p.add(_where("annotations", i, a), "duplicate annotation id")
            ann_ids.add(a["id"])
        if gt:
            why = _finite_box_problem(b)
            if why:
                p.add(_where("annotations", i, a), why)
            elif b[2] == 0 or b[3] == 0:
                counts["zero_size"] += 1
            if "area" not in a:
                counts["missing_area"] += 1
            elif not _is_num(a["area"]) or not math.isfinite(a["area"]) or a["area"] < 0:
                p.add(_where("annotations", i, a), f"invalid 'area': {a['area']!r}")
    p.raise_if_any()
    return counts


def _annotation_problems(p: Problems, i: int, a: Any, image_ids: set, cat_ids: set, gt: bool) -> None:
    """The slow path: says what is wrong with one annotation that failed the fast check."""
    where = _where("annotations", i, a)
    checks = {"image_id": _is_int, "category_id": _is_int}
    if gt:
        checks["id"] = _is_int
    if not _fields(p, where, a, checks):
        return
    if a["image_id"] not in image_ids:
        p.add(where, f"image_id {a['image_id']} is not in 'images'")
    if a["category_id"] not in cat_ids:
        p.add(where, f"category_id {a['category_id']} is not in 'categories'")
    if not _bbox_ok(a.get("bbox")):
        p.add(where, f"bbox must be 4 numbers [x, y, w, h], got {a.get('bbox')!r}"[:200])
    if not _is_crowd_flag(a.get("iscrowd", 0)):
        p.add(where, f"iscrowd must be 0 or 1 (an int), got {a.get('iscrowd')!r}")


def validate_results(results: Any, source: Union[str, Path], image_ids: Iterable[int],
                     category_ids: Iterable[int]) -> None:
    """A COCO results list: each entry an object with an ``image_id`` and a ``category_id`` of the
    ground truth, ``bbox`` [x, y, w, h] of finite numbers with w, h >= 0 and a finite ``score``."""
    p = _problems(source)
    if not isinstance(results, list):
        p.add("", f"expected a JSON list of COCO results, got {type(results).__name__}")
        p.raise_if_any()
    images, cats = set(image_ids), set(category_ids)
    for i, r in enumerate(results):
        where = f"entry {i}"
        if not _fields(p, where, r, {"image_id": _is_int, "category_id": _is_int, "bbox": _bbox_ok,
                                     "score": _is_num}):
            continue
        if r["image_id"] not in images:
            p.add(where, f"image_id {r['image_id']} is not in the annotations")
        if r["category_id"] not in cats:
            p.add(where, f"category_id {r['category_id']} is not in the annotations' categories")
        why = _finite_box_problem(r["bbox"])
        if why:
            p.add(where, why)
        if not math.isfinite(r["score"]):
            p.add(where, f"score is not finite: {r['score']!r}")
    p.raise_if_any()
