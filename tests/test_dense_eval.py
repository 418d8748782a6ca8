"""Dense scenes: ``evaluation.max_dets`` raises COCO's 100-detection limit, warns when an image holds more
objects than the limit, and keeps the standard metric names (AP@N, AR@N are added)."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from retinanet.evaluation import COCOEvaluator, compute_metrics, load_coco
from retinanet.build import build_postprocessor
from retinanet.config_loader import load_config
from retinanet.config import ConfigError


def dense_gt(n_objects: int = 150) -> dict:
    """One 1000x1000 image with a grid of 20x20 boxes, one category."""
    anns = []
    for i in range(n_objects):
        x, y = 30 * (i % 30) + 5, 30 * (i // 30) + 5
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, 20, 20], "area": 400, "iscrowd": 0})
    return {"images": [{"id": 1, "file_name": "1.png", "width": 1000, "height": 1000}], "annotations": anns,
            "categories": [{"id": 1, "name": "cell"}]}


def perfect(gt: dict) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image_id": 1, "category_id": 1, "bbox": list(a["bbox"]), "score": float(s)}
            for a, s in zip(gt["annotations"], rng.uniform(0.5, 1, len(gt["annotations"])))]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_raising_max_dets_raises_recall_and_keeps_names(backend, caplog):
    gt = dense_gt(150)
    with caplog.at_level(logging.WARNING):
        at100 = compute_metrics(load_coco(copy.deepcopy(gt)), perfect(gt), backend)
    assert "1 val image(s) hold more ground-truth objects than evaluation.max_dets=100 (up to 150" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        at300 = compute_metrics(load_coco(copy.deepcopy(gt)), perfect(gt), backend, max_dets=300)
    assert "max_dets" not in caplog.text
    assert at100["AR100"] == pytest.approx(100 * 100 / 150, abs=0.5)  # capped: 100 of 150 found
    assert at300["AR@300"] == pytest.approx(100.0) and at300["AP@300"] == pytest.approx(100.0, abs=0.5)
    for k in ("AP", "AP50", "AR1", "AR10", "AR100"):  # standard names keep COCO's limits
        assert at300[k] == pytest.approx(at100[k]), k
    assert "AR@300" not in at100


def test_evaluator_and_postprocessor_follow_max_dets():
    gt = dense_gt(150)
    ev = COCOEvaluator(copy.deepcopy(gt), "faster_coco_eval", max_dets=200)
    boxes = torch.tensor([a["bbox"] for a in gt["annotations"]], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    ev.process([1], [{"boxes": boxes, "scores": torch.linspace(1, 0.5, 150), "labels": torch.ones(150, dtype=torch.int64)}])
    assert ev.evaluate()["AR@200"] == pytest.approx(100.0)
    cfg = load_config(None, ["evaluation.max_dets=500"])
    assert build_postprocessor(cfg).detections_per_img == 500
    with pytest.raises(ConfigError, match="evaluation.max_dets must be >= 100"):
        load_config(None, ["evaluation.max_dets=50"])
