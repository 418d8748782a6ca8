"""The evaluation report, written beside metrics.json by ``retinanet eval --output`` and by ``train``.

Files: ``pr_curves.png`` (per-class precision-recall at IoU 0.5 and 0.75, read from the accumulated
COCOeval, not recomputed), ``confusion_matrix.png`` (+ ``confusion_matrix.json`` with the counts;
layout in ``confusion.py``), ``per_class.csv`` (AP, AP50, ground-truth and detection counts) and
``report.html``: one self-contained page (every image a base64 data URI, no external resource) with
the summary, the table, the plots and a gallery of val images, ground truth left and predictions
right, worst first: lowest per-image F1 (a wrong-class match counts as a false positive and a miss),
then most missed objects.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torchvision.ops import box_convert

from ..jsonio import write_json
from .coco_evaluator import mean_defined
from .ground_truth import METRIC_NAMES
from .confusion import confusion_matrix, normalize_rows
from .report_plots import confusion_plot, pr_curves

logger = logging.getLogger(__name__)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _xyxy(bboxes: list) -> np.ndarray:
    """COCO [x, y, w, h] lists -> (N, 4) float32 xyxy."""
    return box_convert(torch.tensor(bboxes, dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy").numpy()


def per_class_table(coco, results: list[dict], coco_eval, image_ids: Sequence[int]) -> list[dict]:
    """One row per category: ``name``, ``id``, ``AP``, ``AP50`` (percent, from ``coco_eval.eval["precision"]``
    (T, R, K, A, M) at area "all" and the most detections; NaN without ground truth), ``gt`` (non-crowd
    boxes in ``image_ids``) and ``detections`` (all results of that class, any score)."""
    ids = set(int(i) for i in image_ids)
    rows = []
    precision = None if coco_eval is None else np.asarray(coco_eval.eval["precision"])
    cat_ids = list(coco_eval.params.catIds) if coco_eval is not None else sorted(coco.getCatIds())
    t50 = 0 if coco_eval is None else int(np.argmin(np.abs(np.asarray(coco_eval.params.iouThrs) - 0.5)))
    for k, cat_id in enumerate(cat_ids):
        gt = sum(1 for a in coco.dataset["annotations"]
                 if a["category_id"] == cat_id and a["image_id"] in ids and not a.get("iscrowd", 0))
        ap = ap50 = float("nan") if gt == 0 else 0.0
        if precision is not None:
            ap, ap50 = mean_defined(precision[:, :, k, 0, 2]), mean_defined(precision[t50, :, k, 0, 2])
        rows.append({"name": coco.cats[cat_id]["name"], "id": cat_id, "AP": ap, "AP50": ap50, "gt": gt,
                     "detections": sum(1 for r in results if r["category_id"] == cat_id)})
    return rows


def _gallery(images_root: Path, order: list[int], per_image: list[dict], image_infos: list[dict],
             gts: list[dict], dets: list[dict], names: list[str], limit: int) -> list[tuple[str, str]]:
    """(caption, data URI) of up to ``limit`` images in ``order``: ground truth | predictions, side by side."""
    from PIL import Image

    from ..preprocess import read_image
    from ..visualize import draw_detections
    out = []
    for i in order[:limit]:
        info = image_infos[i]
        try:
            image = read_image(images_root / info["file_name"])
        except OSError as e:
            logger.warning("report: skipping unreadable image %s", e)
            continue
        g, d = gts[i], dets[i]
        gt = draw_detections(image, g["boxes"], [names[int(c)] for c in g["labels"]], labels=g["labels"])
        pred = draw_detections(image, d["boxes"], [names[int(c)] for c in d["labels"]], d["scores"], d["labels"])
        gap = np.full((image.shape[0], 6, 3), 255, np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.concatenate([gt, gap, pred], 1)).save(buf, format="JPEG", quality=85)
        s = per_image[i]
        caption = (f"{info['file_name']}: F1 {s['f1']:.2f}, {s['tp']} correct, {s['fn']} missed, "
                   f"{s['fp']} false positive(s) ({s['confused']} wrong class)")
        out.append((caption, _data_uri(buf.getvalue(), "image/jpeg")))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.1f}"
    return html.escape(str(v))


def render_html(title: str, metrics: dict, table: list[dict], plots: dict[str, str],
                gallery: list[tuple[str, str]], notes: str) -> str:
    """The report page; ``plots`` maps a heading to a data URI, ``gallery`` holds (caption, data URI)."""
    keys = [k for k in METRIC_NAMES if k in metrics]
    cols = ["name", "id", "AP", "AP50", "gt", "detections"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#eee}"
             "figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-size:12px;max-width:520px}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><h2>Summary</h2><table><tr>"
             + "".join(f"<th>{k}</th>" for k in keys) + "</tr><tr>"
             + "".join(f"<td>{_fmt(metrics[k])}</td>" for k in keys) + "</tr></table>",
             "<h2>Per class</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>" for r in table)
             + "</table>"]
    for heading, uri in plots.items():
        parts.append(f"<h2>{html.escape(heading)}</h2><img alt='{html.escape(heading)}' src='{uri}'>")
    parts.append(f"<h2>Gallery: worst images first</h2><p>{html.escape(notes)}</p>")
    parts += [f"<figure><img alt='{html.escape(c)}' src='{uri}'><figcaption>{html.escape(c)}</figcaption></figure>"
              for c, uri in gallery]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Union[str, Path], coco, results: list[dict], coco_eval, images_root: Union[str, Path],
                 metrics: dict, categories: Optional[list[dict]] = None, eval_cfg=None,
                 image_ids: Optional[Sequence[int]] = None) -> Path:
    """Writes the report files into ``out_dir`` and returns the path of report.html.

    ``coco``: the ground truth (pycocotools COCO); ``results``: COCO results entries (xywh, dataset
    category ids); ``coco_eval``: their accumulated COCOeval (``compute_metrics(..., return_eval=True)``),
    or None when there were no detections; ``image_ids``: the images evaluated (default: all).
    ``eval_cfg`` (EvaluationConfig) gives ``report_score_thresh`` and ``report_images``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    score_thresh = getattr(eval_cfg, "report_score_thresh", 0.3)
    num_images = getattr(eval_cfg, "report_images", 24)
    cat_ids = sorted(coco.getCatIds()) if not categories else [c["id"] for c in categories]
    cat_ids = [c for c in cat_ids if c in coco.cats]
    names = [coco.cats[c]["name"] for c in cat_ids]
    label_of = {c: i for i, c in enumerate(cat_ids)}
    ids = sorted(int(i) for i in (image_ids if image_ids else coco.getImgIds()))
    infos = [coco.imgs[i] for i in ids]
    by_image: dict[int, list[dict]] = {i: [] for i in ids}
    for r in results:
        if r["image_id"] in by_image and r["category_id"] in label_of:
            by_image[r["image_id"]].append(r)
    gts, dets = [], []
    for i in ids:
        anns = [a for a in coco.imgToAnns[i] if not a.get("iscrowd", 0) and a["category_id"] in label_of]
        gts.append({"boxes": _xyxy([a["bbox"] for a in anns]),
                    "labels": np.array([label_of[a["category_id"]] for a in anns], np.int64)})
        rs = [r for r in by_image[i] if r["score"] >= score_thresh]
        dets.append({"boxes": _xyxy([r["bbox"] for r in rs]),
                     "scores": np.array([r["score"] for r in rs], np.float32),
                     "labels": np.array([label_of[r["category_id"]] for r in rs], np.int64)})
    counts, per_image = confusion_matrix(gts, dets, len(names), 0.5, score_thresh)
    normalized = normalize_rows(counts)
    write_json(out / "confusion_matrix.json",
               {"labels": names + ["background"], "rows": "ground truth (background: false positives)",
                "columns": "predicted (background: missed)", "score_thresh": score_thresh, "iou_thresh": 0.5,
                "counts": counts.tolist()}, indent=1)
    plots = {}
    cm_png = confusion_plot(counts, normalized, names, score_thresh)
    (out / "confusion_matrix.png").write_bytes(cm_png)
    if coco_eval is not None:
        p = coco_eval.params
        pr_png = pr_curves(np.asarray(coco_eval.eval["precision"]), np.asarray(p.iouThrs), np.asarray(p.recThrs),
                           [coco.cats[c]["name"] for c in p.catIds])
        (out / "pr_curves.png").write_bytes(pr_png)
        plots["Precision-recall curves (COCOeval, area all, 100 detections)"] = _data_uri(pr_png, "image/png")
    plots["Confusion matrix"] = _data_uri(cm_png, "image/png")
    table = per_class_table(coco, results, coco_eval, ids)
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["name"])
        writer.writeheader()
        writer.writerows(table)
    order = sorted(range(len(ids)), key=lambda i: (per_image[i]["f1"], -per_image[i]["fn"], ids[i]))
    gallery = _gallery(Path(images_root), order, per_image, infos, gts, dets, names, num_images)
    notes = (f"Left: ground truth; right: detections with score >= {score_thresh:g}. Sorted by per-image F1 "
             f"(a detection is correct when it matches a ground truth of its class at IoU >= 0.5), lowest first, "
             f"then by missed objects. {len(gallery)} of {len(ids)} images shown.")
    page = render_html("RetinaNet evaluation report", metrics, table, plots, gallery, notes)
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def report_from_evaluator(out_dir: Union[str, Path], evaluator, images_root: Union[str, Path], metrics: dict,
                          categories: Optional[list[dict]], cfg) -> Path:
    """``write_report`` from a COCOEvaluator after its ``evaluate()`` (the results it gathered from every
    rank and its COCOeval); ``cfg`` is the run's Config."""
    image_ids, results = evaluator.gathered
    return write_report(out_dir, evaluator.coco, results, evaluator.coco_eval, images_root, metrics, categories,
                        cfg.evaluation, image_ids)
