"""Pascal VOC XML (one file per image, as written by the VOC devkit, LabelImg, CVAT) -> ImageRecords.

Pixel convention. VOC corners are integers in [1, W] x [1, H]: 1-based indices of the first and last
pixel *inside* the box, both inclusive, so (xmin=1, xmax=W) is the whole image row. In COCO's continuous
0-based coordinates that box spans [0, W]. We therefore convert as Detectron2's ``load_voc_instances``
does (it subtracts 1 from xmin and ymin and keeps xmax and ymax):

    x = xmin - 1,  y = ymin - 1,  w = xmax - xmin + 1,  h = ymax - ymin + 1

Tools that write 0-based corners (some exporters do) come out one pixel too far up-left and one pixel
too large, which is within labelling noise; a box that reaches x = -1 is clipped to the image.

``difficult`` objects: ``crowd`` (default) makes them ``iscrowd=1`` ignore regions, so the detector is
neither trained to find them nor punished for finding them (as VOC's own evaluation ignores them);
``keep`` trains on them as normal objects (Detectron2's choice); ``drop`` leaves them out.

The image size always comes from the image file (header only): the XML's ``<size>`` is often missing
or stale after resizing; a disagreement is counted and logged. ``<filename>`` is resolved inside the
image folder; a name that escapes it ('..', absolute paths, symlinks out) is rejected.

Hostile XML: files are parsed with ``xml.etree.ElementTree`` (expat), which never fetches external
entities; documents with a DOCTYPE or ENTITY declaration are refused outright, which also rules out
entity-expansion ("billion laughs") attacks. Annotation files have no use for either.
"""
from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from .labels import (IMAGE_EXTENSIONS, Box, ConvertError, ImageRecord, Problems, clip_box, image_size, inside_root,
                     require_dir)

logger = logging.getLogger(__name__)

DIFFICULT_MODES = ("crowd", "keep", "drop")
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parse(path: Path, problems: Problems) -> Optional[ET.Element]:
    """The root element, or None with the problem recorded."""
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.add(path, f"cannot read: {e}")
        return None
    if _DECLARATION.search(data):
        problems.add(path, "DOCTYPE/ENTITY declarations are not allowed in annotation files")
        return None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        problems.add(path, f"malformed XML: {e}", line=e.position[0])
        return None
    if root.tag != "annotation":
        problems.add(path, f"root element is <{root.tag}>, expected <annotation>")
        return None
    return root


def _image_path(root: ET.Element, xml_path: Path, images: Path, problems: Problems) -> Optional[str]:
    """The image's path relative to ``images`` (from <filename>, else the XML's stem), or None."""
    name = (root.findtext("filename") or "").strip()
    if not name:  # some exporters omit <filename>: look for an image with the XML's name
        hits = [xml_path.stem + ext for ext in IMAGE_EXTENSIONS if (images / (xml_path.stem + ext)).is_file()]
        if not hits:
            problems.add(xml_path, f"no <filename> and no image named {xml_path.stem}.* in {images}")
            return None
        name = hits[0]
    path = inside_root(images, name)
    if path is None:  # raised at once: never skippable
        raise ConvertError(f"{xml_path}: file name {name!r} points outside the image folder {images}")
    if not path.is_file():
        problems.add(xml_path, f"image {name!r} not found in {images}")
        return None
    return name.replace("\\", "/")


def _number(obj: ET.Element, tag: str) -> float:
    text = obj.findtext(tag)
    if text is None:
        raise ValueError(f"missing <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"<{tag}> is not a number: {text.strip()!r}") from None


def read_voc(annotations: str, images: str, classes: Optional[list[str]] = None, difficult: str = "crowd",
             skip_bad: bool = False) -> tuple[list[ImageRecord], list[str]]:
    """Reads every ``*.xml`` under ``annotations`` (recursively); returns (records, class names).

    Class names are the sorted set found in the files, unless ``classes`` fixes the order (then an
    unknown name is a problem). File-level problems (unparseable XML, missing image, path escaping
    the image folder) are always fatal; bad objects are fatal unless ``skip_bad`` drops them.
    """
    if difficult not in DIFFICULT_MODES:
        raise ConvertError(f"--difficult must be one of {', '.join(DIFFICULT_MODES)}, got {difficult!r}")
    ann_dir, img_dir = require_dir(annotations, "annotations"), require_dir(images, "images")
    xml_files = sorted(ann_dir.rglob("*.xml"))
    if not xml_files:
        raise ConvertError(f"no .xml files in {ann_dir}")
    fatal, bad = Problems(), Problems()
    raw: list[tuple[ImageRecord, list[tuple[str, Box]]]] = []
    size_mismatch: list[str] = []
    for xml_path in xml_files:
        root = _parse(xml_path, fatal)
        name = _image_path(root, xml_path, img_dir, fatal) if root is not None else None
        if name is None:
            continue
        width, height = image_size(img_dir / name)
        try:
            xml_size = (int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0))
        except ValueError:
            xml_size = (0, 0)
        if xml_size != (width, height):
            size_mismatch.append(f"{xml_path} says {xml_size[0]}x{xml_size[1]}, {name} is {width}x{height}")
        objects = []
        for i, obj in enumerate(root.findall("object"), 1):
            label = (obj.findtext("name") or "").strip()
            where = f"{xml_path}: object {i}" + (f" ({label})" if label else "")
            try:
                if not label:
                    raise ValueError("missing <name>")
                if classes is not None and label not in classes:
                    raise ValueError(f"unknown class {label!r} (not in the --classes file)")
                box = obj.find("bndbox")
                if box is None:
                    raise ValueError("missing <bndbox>")
                xmin, ymin, xmax, ymax = (_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
                if xmax < xmin or ymax < ymin:
                    raise ValueError(f"xmax < xmin or ymax < ymin: ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
                x, y, w, h = clip_box(xmin - 1, ymin - 1, xmax, ymax, width, height)
                if w <= 0 or h <= 0:
                    raise ValueError(f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the "
                                     f"{width}x{height} image")
                is_difficult = _number(obj, "difficult") if obj.find("difficult") is not None else 0
                if is_difficult not in (0, 1):
                    raise ValueError(f"<difficult> must be 0 or 1, got {is_difficult:g}")
            except ValueError as e:
                bad.add(where, str(e))
                continue
            if is_difficult and difficult == "drop":
                continue
            objects.append((label, Box(-1, x, y, w, h, int(bool(is_difficult) and difficult == "crowd"))))
        raw.append((ImageRecord(name, width, height), objects))
    fatal.raise_if_any("unusable annotation files")
    if not skip_bad:
        bad.raise_if_any("bad objects", "\n(--skip-bad drops bad objects and converts the rest)")
    elif len(bad):
        logger.warning("dropped %d bad objects, e.g. %s", len(bad), bad.items[0])
    if size_mismatch:
        logger.warning("%d XML files give a <size> that disagrees with the image (the image's size is used), "
                       "e.g. %s", len(size_mismatch), size_mismatch[0])
    if classes is None:
        classes = sorted({label for _, objs in raw for label, _ in objs})
        if not classes:
            raise ConvertError(f"no objects in {ann_dir}: cannot infer class names (give --classes)")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for rec, objs in raw:
        for label, box in objs:
            box.label = index[label]
            rec.boxes.append(box)
        records.append(rec)
    names = [r.file_name for r in records]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConvertError(f"several XML files name the same image {dup!r}")
    return records, classes
