"""COCO-format data pipeline: dataset, box-aware transforms, samplers/loaders, built-in synthetic data."""
from .coco import CocoDetection, DatasetError
from .loader import TrainBatchSampler, build_dataset, build_train_loader, collate
from .synthetic import ensure_demo_dataset, make_synthetic_coco
from .transforms import build_transforms

__all__ = ["CocoDetection", "DatasetError", "TrainBatchSampler", "build_dataset", "build_train_loader",
           "build_transforms", "collate", "ensure_demo_dataset", "make_synthetic_coco"]
