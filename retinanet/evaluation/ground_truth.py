"""What the ground truth allows the metrics to say: undefined scores (no ground truth: null, never 0)
and capped ones (an image with more objects than ``evaluation.max_dets`` detections can find)."""
from __future__ import annotations

import logging
import math
from typing import Any, Union, get_args

from pycocotools.coco import COCO

from ..config import MetricName

logger = logging.getLogger(__name__)

METRIC_NAMES = get_args(MetricName)  # the standard COCO bbox metrics, in COCOeval.stats order


def warn_dense(gt: COCO, max_dets: int, image_ids: Union[list[int], None] = None) -> int:
    """Logs a warning when an image holds more ground-truth objects than ``max_dets`` detections can find
    (its recall, and so AP, is capped); returns how many images do."""
    ids = None if image_ids is None else set(int(i) for i in image_ids)
    counts: dict[int, int] = {}
    for a in gt.dataset.get("annotations", []):
        if not a.get("iscrowd", 0) and (ids is None or a["image_id"] in ids):
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    dense = sorted((n, i) for i, n in counts.items() if n > max_dets)
    if dense:
        n, image_id = dense[-1]
        logger.warning("%d val image(s) hold more ground-truth objects than evaluation.max_dets=%d (up to %d, image "
                       "id %d): recall and AP are capped there; raise evaluation.max_dets", len(dense), max_dets,
                       n, image_id)
    return len(dense)


def warn_if_undefined(metrics: dict[str, Any]) -> dict[str, Any]:
    if math.isnan(metrics["AP"]):
        logger.warning("AP is undefined (null): the evaluated images hold no ground-truth box (crowd regions "
                       "do not count)")
    return metrics
