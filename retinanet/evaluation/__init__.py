"""COCO evaluation and dataset-level inference."""
from .coco_evaluator import (BACKENDS, METRIC_NAMES, COCOEvaluator, compute_metrics, evaluate_results_file,
                             format_metrics_table, load_coco, save_metrics, to_coco_results)
from .inference import inference_on_coco

__all__ = ["BACKENDS", "METRIC_NAMES", "COCOEvaluator", "compute_metrics", "evaluate_results_file",
           "format_metrics_table", "inference_on_coco", "load_coco", "save_metrics", "to_coco_results"]
