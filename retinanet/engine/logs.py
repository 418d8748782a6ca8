"""Run logs: the ``retinanet`` logger's handlers, and val images drawn with their predictions."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("retinanet")


def setup_logging(output_dir: Optional[Path]) -> None:
    """Logs of the ``retinanet`` logger go to stdout and OUTPUT/log.txt (replacing a previous run's)."""
    log.setLevel(logging.INFO)
    for h in [h for h in log.handlers if getattr(h, "_retinanet", False)]:
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir is not None:
        handlers.append(logging.FileHandler(output_dir / "log.txt"))
    for h in handlers:
        h.setFormatter(fmt)
        h._retinanet = True  # type: ignore[attr-defined]
        log.addHandler(h)


def draw_val_predictions(detector: Any, images: list[dict], root: Path, writer: Any, iteration: int,
                         save_dir: Optional[Path] = None) -> None:
    """Draws each COCO image entry of ``images`` (under ``root``) with the detector's predictions
    above 0.3 into TensorBoard (``writer``) and, with ``save_dir``, as JPEGs named after the image.
    Unreadable images are skipped: training already reported them."""
    from PIL import Image

    from ..preprocess import read_image
    from ..visualize import draw_detections
    for i, im in enumerate(images):
        try:
            image = read_image(root / im["file_name"])
        except OSError:
            continue
        det = detector.predict(image, score_thresh=0.3)
        drawn = draw_detections(image, det["boxes"], det["names"], det["scores"], det["labels"])
        writer.add_image(f"val/{i}", drawn, iteration, dataformats="HWC")
        if save_dir is not None:
            save_dir.mkdir(exist_ok=True)
            Image.fromarray(drawn).save(save_dir / (Path(im["file_name"]).stem + ".jpg"))
