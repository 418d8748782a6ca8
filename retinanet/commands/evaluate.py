"""``retinanet eval``: COCO AP of a checkpoint on the config's val set, or of a results file.

    retinanet eval --config CFG --weights CKPT [--output DIR] [key=value ...]
    retinanet eval --results detections.json --annotations gt.json [evaluation.backend=faster_coco_eval]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..checkpoint import load_checkpoint
from ..config import Config, from_dict, load_config, merge_dict, parse_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", help="checkpoint to evaluate")
    p.add_argument("--output", help="folder for metrics.json and detections.json (default: <train.output_dir>/eval)")
    p.add_argument("--results", help="score this COCO results file instead of running a model")
    p.add_argument("--annotations", help="ground truth for --results (default: data.val.annotations)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-images", type=int, help="evaluate only the first N images (by id)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: train.device)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. evaluation.tta=true")


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def with_dataset_categories(cfg: Config, annotations: Optional[str]) -> Config:
    """Fills an unset model.num_classes (and ids, names) from the annotations' categories."""
    if cfg.model.num_classes is not None or not annotations:
        return cfg
    from ..evaluation import load_coco
    cats = sorted(load_coco(annotations).dataset.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise ValueError(f"{annotations}: has no categories")
    model = dataclasses.replace(cfg.model, num_classes=len(cats),
                                category_ids=cfg.model.category_ids or tuple(c["id"] for c in cats),
                                class_names=cfg.model.class_names or tuple(c["name"] for c in cats))
    return dataclasses.replace(cfg, model=model)


def load_detector(config: Optional[str], weights: Optional[str], overrides: Sequence[str], device: Optional[str],
                  annotations_key: bool = False):
    """Detector from ``--config`` (or the checkpoint's stored config) plus overrides and ``--weights``,
    on ``device`` (default: train.device); with ``annotations_key`` an unset num_classes comes from
    data.val.annotations."""
    from ..detector import Detector
    if not weights:
        raise ValueError("--weights is required (a checkpoint written by `retinanet train`, or a torchvision state dict)")
    if config:
        cfg = load_config(config, list(overrides))
    else:  # the training config stored in the checkpoint
        ckpt = load_checkpoint(weights)
        if "config" not in ckpt:
            raise ValueError(f"{weights} stores no config: pass --config")
        cfg = merge_dict(from_dict(ckpt["config"]), parse_overrides(list(overrides)))
    if annotations_key:
        cfg = with_dataset_categories(cfg, cfg.data.val.annotations)
    return Detector.from_config(cfg, weights, device or cfg.train.device)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_results_file, format_metrics_table, inference_on_coco, save_metrics
    setup_logging()
    if args.results:
        cfg = load_config(args.config, args.overrides)
        annotations = args.annotations or cfg.data.val.annotations
        if not annotations:
            raise ValueError("--results needs --annotations (or data.val.annotations in --config)")
        metrics = evaluate_results_file(args.results, annotations, cfg.evaluation.backend)
        print(format_metrics_table(metrics))
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            save_metrics(metrics, Path(args.output) / "metrics.json")
        return 0

    detector = load_detector(args.config, args.weights, args.overrides, args.device, annotations_key=True)
    cfg = detector.cfg
    val = cfg.data.val
    for key, value in (("data.val.images", val.images), ("data.val.annotations", val.annotations)):
        if not value:
            raise ValueError(f"{key} is not set; set it in the config or pass {key}=PATH")
    from ..evaluation import load_coco
    coco = load_coco(val.annotations)
    _check_categories(detector.categories, coco, val.annotations)
    results, evaluator = inference_on_coco(detector, val.images, coco, batch_size=args.batch_size,
                                           tta=cfg.evaluation.tta, max_images=args.max_images)
    metrics = evaluator.evaluate()
    out = Path(args.output or Path(cfg.train.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    save_metrics(metrics, out / "metrics.json")
    (out / "detections.json").write_text(json.dumps(results))
    print(format_metrics_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'detections.json'} ({len(results)} detections)"
          + (" with TTA" if cfg.evaluation.tta else ""), file=sys.stderr)
    return 0


def _check_categories(categories: list[dict], coco, source: str) -> None:
    """The model's category ids must be the dataset's, or every detection would count as wrong."""
    model_ids = {c["id"] for c in categories}
    data_ids = set(coco.getCatIds())
    if not model_ids & data_ids:
        raise ValueError(f"the checkpoint's category ids {sorted(model_ids)[:10]} do not overlap the category ids "
                         f"of {source} {sorted(data_ids)[:10]}: wrong checkpoint or annotations?")
    missing = data_ids - model_ids
    if missing:
        logging.getLogger(__name__).warning("%d categories of %s are not predicted by the model: ids %s",
                                            len(missing), source, sorted(missing)[:10])
