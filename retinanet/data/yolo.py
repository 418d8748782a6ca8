"""YOLO (Darknet / Ultralytics) detection labels -> ImageRecords.

Layout: every image under IMG_DIR (recursively) has its labels at the same relative path under
TXT_DIR with a ``.txt`` suffix (``images/a/b.jpg`` -> ``labels/a/b.txt``). An image without a label
file, or with an empty one, is an image without objects (YOLO's "background" images). Each line is
``class cx cy w h``: a 0-based index into the classes file and the box centre and size as fractions
of the image width and height. Boxes are converted with the real image size (file header, EXIF
rotation applied, as the loader reads it); corners that round a hair outside the image are clipped.

Bad lines (wrong field count, non-numbers, centre outside [0, 1], size outside (0, 1], unknown
class index) are collected over all files and reported together with file:line. They are fatal by
default, since a silently dropped box trains the detector to call that object background;
``skip_bad`` drops them instead and logs how many.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from .labels import (IMAGE_EXTENSIONS, Box, ConvertError, ImageRecord, Problems, clip_box, image_size,
                     require_dir)

logger = logging.getLogger(__name__)


def parse_line(text: str, num_classes: int) -> tuple[int, float, float, float, float]:
    """(class, cx, cy, w, h) from one label line; ValueError with a short reason when it is invalid."""
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(fields)}")
    try:
        cls_value = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise ValueError(f"not a number in {text.strip()!r}") from None
    if not cls_value.is_integer():  # some exporters write "3.0"; 3.5 is nonsense
        raise ValueError(f"class index {fields[0]!r} is not an integer")
    cls = int(cls_value)
    if not 0 <= cls < num_classes:
        raise ValueError(f"class index {cls} out of range: the classes file has {num_classes} (0..{num_classes - 1})")
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise ValueError(f"non-finite value in {text.strip()!r}")
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        raise ValueError(f"centre ({cx:g}, {cy:g}) outside [0, 1]: values must be normalised by the image size")
    if not (0 < w <= 1 and 0 < h <= 1):
        raise ValueError(f"size ({w:g}, {h:g}) outside (0, 1]: values must be normalised by the image size")
    return cls, cx, cy, w, h


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted by relative path."""
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                  key=lambda p: p.relative_to(root).as_posix())


def read_yolo(labels: str, images: str, classes: list[str], skip_bad: bool = False) -> list[ImageRecord]:
    """One record per image under ``images``; see the module docstring for the rules."""
    label_dir, img_dir = require_dir(labels, "labels"), require_dir(images, "images")
    problems, records, used = Problems(), [], set()
    for path in list_images(img_dir):
        rel = path.relative_to(img_dir)
        width, height = image_size(path)
        rec = ImageRecord(rel.as_posix(), width, height)
        records.append(rec)
        txt = label_dir / rel.with_suffix(".txt")
        if not txt.is_file():
            continue
        used.add(txt.resolve())
        try:
            lines = txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            problems.add(txt, f"cannot read: {e}")
            continue
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                cls, cx, cy, w, h = parse_line(line, len(classes))
            except ValueError as e:
                problems.add(txt, str(e), line=number)
                continue
            x, y, bw, bh = clip_box((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                    (cy + h / 2) * height, width, height)
            rec.boxes.append(Box(cls, x, y, bw, bh))
    if not skip_bad:
        problems.raise_if_any("bad label lines", "\n(--skip-bad drops bad lines and converts the rest)")
    elif len(problems):
        logger.warning("dropped %d bad label lines, e.g. %s", len(problems), problems.items[0])
    # Label files without an image are usually a mismatch of folders or extensions: say so, don't fail.
    orphans = [p for p in label_dir.rglob("*.txt") if p.resolve() not in used and p.name != "classes.txt"]
    if orphans:
        logger.warning("%d label files have no image in %s and were ignored, e.g. %s", len(orphans), img_dir,
                       orphans[0])
    if not records:
        raise ConvertError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {img_dir}")
    return records
