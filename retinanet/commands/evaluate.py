"""``retinanet eval``: COCO AP of a checkpoint on the config's val set, or of a results file.

    retinanet eval --config CFG --weights CKPT [--output DIR] [key=value ...]
    retinanet eval --results detections.json --annotations gt.json [evaluation.backend=faster_coco_eval]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config_loader import load_config
from ..jsonio import write_json
from . import add_tile_arguments, positive_int, setup_logging, with_tile_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", help="checkpoint, or a .onnx / TorchScript file from `retinanet export` (carries its config)")
    p.add_argument("--output", help="folder for metrics.json and detections.json (default: <train.output_dir>/eval)")
    p.add_argument("--results", help="score this COCO results file instead of running a model")
    p.add_argument("--annotations", help="ground truth for --results (default: data.val.annotations)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--max-images", type=positive_int, help="evaluate only the first N images (by id)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: train.device)")
    add_tile_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. evaluation.tta=true")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_results_file, format_metrics_table, inference_on_coco, save_metrics
    setup_logging()
    if args.results:
        cfg = load_config(args.config, args.overrides)
        annotations = args.annotations or cfg.data.val.annotations
        if not annotations:
            raise ValueError("--results needs --annotations (or data.val.annotations in --config)")
        metrics = evaluate_results_file(args.results, annotations, cfg.evaluation.backend, cfg.evaluation.max_dets)
        print(format_metrics_table(metrics))
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            save_metrics(metrics, Path(args.output) / "metrics.json")
        return 0

    from ..runtime import load_detector
    if not args.weights:
        raise ValueError("--weights is required (a checkpoint written by `retinanet train`, or a torchvision state dict)")
    detector = load_detector(args.weights, args.config, args.device, with_tile_overrides(args), classes_from_val=True)
    cfg = detector.cfg
    val = cfg.data.val
    for key, value in (("data.val.images", val.images), ("data.val.annotations", val.annotations)):
        if not value:
            raise ValueError(f"{key} is not set; set it in the config or pass {key}=PATH")
    from ..evaluation import load_coco
    coco = load_coco(val.annotations)
    _check_categories(detector.categories, coco, val.annotations)
    results, evaluator = inference_on_coco(detector, val.images, coco, batch_size=args.batch_size,
                                           max_images=args.max_images)
    metrics = evaluator.evaluate()
    out = Path(args.output or Path(cfg.train.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    save_metrics(metrics, out / "metrics.json")
    write_json(out / "detections.json", results)
    if cfg.evaluation.report:  # PR curves, confusion matrix, per-class table, report.html
        from ..evaluation.report import write_report
        image_ids, _ = evaluator.gathered
        page = write_report(out, coco, results, evaluator.coco_eval, val.images, metrics, detector.categories,
                            cfg.evaluation, image_ids)
        print(f"wrote {page}", file=sys.stderr)
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
