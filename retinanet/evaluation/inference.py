"""Runs a Detector over a COCO-format image set and feeds a COCOEvaluator."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
from pycocotools.coco import COCO

from ..data.validate import check_image_paths
from ..preprocess import read_image
from .coco_evaluator import COCOEvaluator, load_coco

logger = logging.getLogger(__name__)


def _read_batch(paths: list[Path]) -> list[Optional[np.ndarray]]:
    """Images (H, W, 3) uint8, or None (with a warning naming the path) for unreadable ones."""
    out = []
    for p in paths:
        try:
            out.append(read_image(p))
        except OSError as e:  # FileNotFoundError included
            logger.warning("skipping unreadable image: %s", e)
            out.append(None)
    return out


def inference_on_coco(detector, images_root: Union[str, Path], annotations: Union[str, Path, dict, COCO],
                      batch_size: int = 2, progress: bool = True, rank: int = 0,
                      world_size: int = 1, max_images: Optional[int] = None,
                      backend: Optional[str] = None) -> tuple[list[dict], COCOEvaluator]:
    """Detects objects in every image of ``annotations`` (sorted by id; this rank's share
    ``images[rank::world_size]``, of the first ``max_images``), reading files under ``images_root``.

    Returns this rank's COCO results entries and a COCOEvaluator that has processed them; call
    ``evaluator.evaluate()`` on every rank (it gathers, and scores on rank 0). Unreadable images
    are skipped with a warning and left out of the score. ``backend`` defaults to the detector
    config's ``evaluation.backend``; ``evaluation.tta`` switches test-time augmentation on.
    """
    coco = load_coco(annotations)
    evaluator = COCOEvaluator(coco, backend or detector.cfg.evaluation.backend, detector.cfg.evaluation.max_dets)
    root = Path(images_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    # A file_name such as '../../etc/x' must not make evaluation open files outside the image folder.
    source = getattr(coco, "_retinanet_source", "the ground-truth annotations")
    check_image_paths(coco.dataset["images"], root, source)
    images = sorted(coco.dataset["images"], key=lambda im: im["id"])[:max_images][rank::world_size]
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(images), desc="eval", unit="img", dynamic_ncols=True)
    skipped = 0
    # Decode the next batch on a thread while the model runs on this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_read_batch, [root / im["file_name"] for im in batches[0]]) if batches else None
        for i, batch in enumerate(batches):
            arrays = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(_read_batch, [root / im["file_name"] for im in batches[i + 1]])
            ok = [(im["id"], a) for im, a in zip(batch, arrays) if a is not None]
            skipped += len(batch) - len(ok)
            if ok:
                ids, arrays = [o[0] for o in ok], [o[1] for o in ok]
                dets = detector.predict(arrays, batch_size=len(arrays))
                evaluator.process(ids, dets)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d", skipped, len(images))
    return evaluator.results, evaluator
