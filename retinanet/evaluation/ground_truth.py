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

# COCOeval's area ranges (px^2) of AP/AR, APs, APm, APl.
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}


def metrics_of_nothing(gt: COCO, names: dict, image_ids: Union[list[int], None],
                        max_dets: int = 100) -> dict[str, Any]:
    """The metrics of an empty result set, as COCOeval defines them: 0 where some ground truth could have
    been found, NaN (undefined, written as null) where there is none, as when something was detected."""
    ids = None if image_ids is None else set(int(i) for i in image_ids)
    anns = [a for a in gt.dataset.get("annotations", []) if not a.get("iscrowd", 0)
            and (ids is None or a["image_id"] in ids)]  # crowd regions are never to be found

    def score(cats=None, area="all") -> float:
        lo, hi = AREA_RANGES[area]
        found = any(lo <= a["area"] <= hi and (cats is None or a["category_id"] in cats) for a in anns)
        return 0.0 if found else float("nan")

    areas = {"APs": "small", "APm": "medium", "APl": "large"}
    metrics: dict[str, Any] = {k: score(area=areas.get(k, "all")) for k in METRIC_NAMES}
    if max_dets > 100:
        metrics[f"AP@{max_dets}"] = metrics[f"AR@{max_dets}"] = score()
    metrics["per_category"] = {name: score({cat}) for cat, name in names.items()}
    return metrics


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
