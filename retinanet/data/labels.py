"""What the label readers (``voc.py``, ``yolo.py``), ``convert.py`` and the COCO validator share: the
label types, the image-file extensions, the check that a file name stays inside its image folder,
and the collector that reports a file's problems together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from PIL import Image

# Every image file name we read (PIL opens them all); ``retinanet infer`` and ``convert`` look for these.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
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
    """Collects ``where: message`` problems of one run or file so that they are reported together,
    in one line: the first MAX_REPORTED and the count, raised as ``error``."""

    def __init__(self, source: Union[str, Path] = "", error: type[Exception] = ConvertError):
        self.source, self.error = str(source), error
        self.items: list[str] = []

    def add(self, where: Union[str, Path], message: str, line: Optional[int] = None) -> None:
        where = f"{where}:{line}" if line is not None else str(where)
        self.items.append(f"{where}: {message}" if where else message)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, what: str = "problems", hint: str = "") -> None:
        n = len(self.items)
        if not n:
            return
        source = f"{self.source}: " if self.source else ""
        count = f"{n} {what}: " if n > 1 else ""
        more = f"; ... and {n - MAX_REPORTED} more" if n > MAX_REPORTED else ""
        raise self.error(f"{source}{count}{'; '.join(self.items[:MAX_REPORTED])}{more}{hint}")


def inside_root(root: Union[str, Path], name: str) -> Optional[Path]:
    """``root / name`` with '..' and symlinks resolved, or None when that leaves ``root`` (an absolute
    name, '..' past the top, a symlink out), so that no label file can make us open another file."""
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, name))
    if os.path.isabs(name) or os.path.commonpath([path, real_root]) != real_root:
        return None
    return Path(path)


def require_dir(path: Union[str, Path], what: str) -> Path:
    """``path`` as a Path, or a ConvertError saying which option points at a missing folder."""
    p = Path(path)
    if not p.is_dir():
        raise ConvertError(f"{what} folder not found: {p}")
    return p


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


def clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[float, ...]:
    """Corners clipped to the image, returned as (x, y, w, h)."""
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return x0, y0, x1 - x0, y1 - y0
