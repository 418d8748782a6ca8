"""COCO box AP with pycocotools or faster-coco-eval, behind a reset / process / evaluate protocol.

Metrics are in percent, as in Detectron2's tables. Categories or area ranges without ground truth
give NaN (pycocotools reports -1 there), which ``save_metrics`` writes as JSON ``null``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Union, get_args

import numpy as np
import torch
import torch.distributed as dist
from torchvision.ops import box_convert
from pycocotools.coco import COCO

from ..config import EvalBackend
from ..fast.records import load_json
from ..data.validate import validate_coco, validate_results
from ..jsonio import write_json
from .ground_truth import METRIC_NAMES, warn_dense, warn_if_undefined

logger = logging.getLogger(__name__)

BACKENDS = get_args(EvalBackend)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def load_coco(annotations: Union[str, Path, dict, COCO], source: Optional[str] = None) -> COCO:
    """A pycocotools COCO from a JSON path, a dataset dict or a COCO; quietly. The ground truth is
    validated first (``data.validate``, purpose "gt": a malformed entry is an error, since AP must not
    move silently); a missing ``area`` is set to w*h in memory. A COCO we built is returned as is."""
    if isinstance(annotations, COCO):
        if getattr(annotations, "_retinanet_validated", False):
            return annotations
        annotations = annotations.dataset
    if isinstance(annotations, (str, Path)):
        source = source or str(annotations)
        annotations = _read_json(Path(annotations), "annotations")
    source = source or "the ground-truth annotations"
    counts = validate_coco(annotations, source, "gt")
    if counts["missing_area"]:
        # COCOeval reads 'area' for its small/medium/large ranges; copy, so the caller's dict is unchanged.
        annotations = dict(annotations, annotations=[
            a if "area" in a else dict(a, area=float(a["bbox"][2] * a["bbox"][3])) for a in annotations["annotations"]])
        logger.warning("%s: %d annotation(s) have no 'area'; using bbox width * height", source,
                       counts["missing_area"])
    if counts["zero_size"]:
        logger.warning("%s: %d ground-truth box(es) of zero width or height kept (no detection can match them)",
                       source, counts["zero_size"])
    coco = COCO()
    coco.dataset = annotations
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco._retinanet_validated, coco._retinanet_source = True, source  # later checks name the file
    return coco


def to_coco_results(image_id: int, detection: dict) -> list[dict]:
    """One image's detections (``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) dataset
    category ids) -> COCO results entries with xywh boxes."""
    boxes = torch.as_tensor(detection["boxes"], dtype=torch.float64).reshape(-1, 4)
    xywh = box_convert(boxes, "xyxy", "xywh").tolist()
    scores = torch.as_tensor(detection["scores"]).tolist()
    labels = torch.as_tensor(detection["labels"]).tolist()
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(v, 3) for v in b], "score": round(s, 5)}
            for b, s, c in zip(xywh, scores, labels)]


def _eval_class(backend: str):
    # faster_coco_eval is the default: the same AP as pycocotools (tests/test_evaluation.py checks) in C++.
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval
        return COCOeval, lambda gt: gt
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ImportError:
            raise ValueError("evaluation.backend=faster_coco_eval needs `pip install faster-coco-eval`") from None
        # Its COCOeval wants its own COCO class; it reads the same dataset dict.
        return faster_coco_eval.COCOeval_faster, lambda gt: faster_coco_eval.COCO(gt.dataset)
    raise ValueError(f"evaluation.backend: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def compute_metrics(gt: COCO, results: list[dict], backend: str = "faster_coco_eval",
                    image_ids: Union[list[int], None] = None, return_eval: bool = False,
                    max_dets: int = 100) -> Any:
    """COCO bbox metrics of ``results`` (COCO results entries) against ``gt``, restricted to
    ``image_ids`` when given (the images that were actually run). The standard names (AP ... AR100) keep
    COCO's limits; with ``max_dets`` > 100 ``AP@<max_dets>`` and ``AR@<max_dets>`` are added.

    With ``return_eval`` returns ``(metrics, coco_eval)``: the accumulated COCOeval of either backend
    (``coco_eval.eval["precision"]`` is (T iou thresholds, R recall points, K categories, A area
    ranges, M max dets), -1 where undefined; ``coco_eval.params`` names the axes), None when
    ``results`` is empty."""
    eval_cls, convert_gt = _eval_class(backend)
    names = {c["id"]: c["name"] for c in gt.dataset.get("categories", [])}
    known = set(gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        raise ValueError(f"results hold image ids that are not in the annotations: {unknown[:10]}")
    warn_dense(gt, max_dets, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        gt_b = convert_gt(gt)
        # loadRes adds fields (id, area, segmentation) to each dict: shallow copies keep the caller's
        # intact (a deepcopy of 500k results took longer than the evaluation itself). pycocotools'
        # loadRes fails on an empty list; no detections is the ground truth without its annotations.
        dt = gt_b.loadRes([dict(r) for r in results]) if results else _without_annotations(gt_b)
        kwargs = {"print_function": lambda *a, **k: None} if backend == "faster_coco_eval" else {}
        ev = eval_cls(gt_b, dt, "bbox", **kwargs)
        if image_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        if max_dets > 100:  # after COCO's three: summarize() reads AP at 100 by value, AR100 at index 2
            ev.params.maxDets = [1, 10, 100, max_dets]
        ev.evaluate()
        ev.accumulate()
    # precision: (iou thresholds T, recall points, categories, area ranges, max dets); recall: (T, K, A, M).
    # Read here, as COCOeval.summarize() does, because the backends' summarize() differ on a 4th maxDets.
    precision, recall = np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])
    t50, t75 = (int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - t))) for t in (0.5, 0.75))
    metrics: dict[str, Any] = {
        "AP": mean_defined(precision[..., 0, 2]), "AP50": mean_defined(precision[t50, ..., 0, 2]),
        "AP75": mean_defined(precision[t75, ..., 0, 2]), "APs": mean_defined(precision[..., 1, 2]),
        "APm": mean_defined(precision[..., 2, 2]), "APl": mean_defined(precision[..., 3, 2]),
        "AR1": mean_defined(recall[..., 0, 0]), "AR10": mean_defined(recall[..., 0, 1]),
        "AR100": mean_defined(recall[..., 0, 2])}
    if max_dets > 100:
        metrics[f"AP@{max_dets}"] = mean_defined(precision[..., 0, 3])
        metrics[f"AR@{max_dets}"] = mean_defined(recall[..., 0, 3])
    metrics["per_category"] = {names[cat_id]: mean_defined(precision[:, :, k, 0, 2])
                               for k, cat_id in enumerate(ev.params.catIds)}
    warn_if_undefined(metrics)
    return (metrics, ev if results else None) if return_eval else metrics


def _without_annotations(gt: Any) -> Any:
    """A COCO (of ``gt``'s class) with ``gt``'s images and categories and no annotations."""
    empty = type(gt)()
    empty.dataset = dict(gt.dataset, annotations=[])
    empty.createIndex()
    return empty


def mean_defined(values: np.ndarray) -> float:
    """Percent mean of the entries COCOeval defines (> -1); NaN when none is."""
    v = values[values > -1]
    return float(np.mean(v)) * 100 if v.size else float("nan")


class COCOEvaluator:
    """Collects detections image by image (on every DDP rank) and scores them on rank 0.

    ``process(image_ids, detections)`` takes ``Detector.predict`` outputs: ``boxes`` (D, 4) xyxy in
    original pixels, ``scores`` (D,), ``labels`` (D,) dataset category ids.
    """

    def __init__(self, annotations: Union[str, Path, dict, COCO], backend: str = "faster_coco_eval",
                 max_dets: int = 100):
        _eval_class(backend)  # fail now, not after an hour of inference
        self.coco, self.backend, self.max_dets = load_coco(annotations), backend, max_dets
        self.reset()

    def reset(self) -> None:
        self._image_ids: list[int] = []
        self._seen: set[int] = set()
        self.results: list[dict] = []  # COCO results entries of this rank
        self.coco_eval = None  # the accumulated COCOeval of the last evaluate() (rank 0), for reports
        self.gathered: tuple[list[int], list[dict]] = ([], [])  # all ranks' (image ids, results) of evaluate()

    def process(self, image_ids: list[int], detections: list[dict]) -> None:
        if len(image_ids) != len(detections):
            raise ValueError(f"process: {len(image_ids)} image ids but {len(detections)} detections")
        for image_id, det in zip(image_ids, detections):
            if int(image_id) in self._seen:  # a padded sampler repeats images; count each once
                continue
            self._seen.add(int(image_id))
            self._image_ids.append(int(image_id))
            self.results.extend(to_coco_results(image_id, det))

    def gather(self) -> tuple[list[int], list[dict]]:
        """All ranks' image ids and results (on every rank); an image run twice (a padded
        distributed sampler) counts once."""
        parts = [(self._image_ids, self.results)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self._image_ids, self.results))
        image_ids: list[int] = []
        results: list[dict] = []
        seen: set[int] = set()
        for ids, res in parts:
            new = set(ids) - seen
            image_ids.extend(i for i in ids if i in new)
            results.extend(r for r in res if r["image_id"] in new)
            seen |= new
        return image_ids, results

    def evaluate(self) -> dict[str, Any]:
        """Metrics in percent plus ``per_category`` {name: AP%} on rank 0; ``{}`` on other ranks."""
        image_ids, results = self.gathered = self.gather()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return {}
        metrics, self.coco_eval = compute_metrics(self.coco, results, self.backend, image_ids or None,
                                                  return_eval=True, max_dets=self.max_dets)
        return metrics


def evaluate_results_file(results_json: Union[str, Path], annotations_json: Union[str, Path, COCO],
                          backend: str = "faster_coco_eval", max_dets: int = 100) -> dict[str, Any]:
    """Scores a COCO results file (a JSON list of {image_id, category_id, bbox xywh, score}) over
    every image of the annotations."""
    _eval_class(backend)
    path = Path(results_json)
    results = _read_json(path, "results")
    gt = load_coco(annotations_json)
    # A NaN box would match every ground truth, an unknown category would be scored against nothing.
    validate_results(results, path, gt.getImgIds(), gt.getCatIds())
    return compute_metrics(gt, results, backend, max_dets=max_dets)


def format_metrics_table(metrics: dict[str, Any], columns: int = 3) -> str:
    """The summary metrics as one table, then per-category AP in ``columns`` (name, AP) pairs."""
    def fmt(v: float) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    keys = [k for k in METRIC_NAMES if k in metrics] + [k for k in metrics if k.startswith(("AP@", "AR@"))]
    widths = [max(len(k), len(fmt(metrics[k]))) for k in keys]
    lines = [" | ".join(k.rjust(w) for k, w in zip(keys, widths)),
             "-+-".join("-" * w for w in widths),
             " | ".join(fmt(metrics[k]).rjust(w) for k, w in zip(keys, widths))]
    per_cat = list(metrics.get("per_category", {}).items())
    if per_cat:
        name_w = max(8, *(len(n) for n, _ in per_cat))
        cells = [f"{n:<{name_w}} | {fmt(v):>6}" for n, v in per_cat]
        head = f"{'category':<{name_w}} | {'AP':>6}"
        cols = min(columns, len(cells))
        lines += ["", "Per-category AP:", " || ".join([head] * cols), "-++-".join(["-" * len(head)] * cols)]
        lines += [" || ".join(cells[i:i + cols]) for i in range(0, len(cells), cols)]
    return "\n".join(lines)


def save_metrics(metrics: dict[str, Any], path: Union[str, Path]) -> None:
    """Writes metrics as strict JSON (NaN -> null)."""
    write_json(path, metrics, indent=2)
