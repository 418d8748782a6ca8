"""Box-aware train/test transforms (albumentations): shortest-edge resize, flip, optional colour jitter.

Padding is not done here: ``loader.collate`` pads the batch with ``preprocess.pad_batch``.
"""
from __future__ import annotations

import math
import os
import random
from typing import Any, Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from ..config import InputConfig
from ..preprocess import resize_scale

MIN_AUGMENTED_SIZE = 1e-2  # pixels; boxes thinner than this after a transform are dropped (zero-area)


class ResizeShortestEdge(A.DualTransform):
    """Scale so the short side is ``min_size`` (drawn from ``min_sizes``) and the long side at most
    ``max_size``: scale = min(min_size / short, max_size / long), output floor(H * scale) x floor(W * scale),
    the same sizes as torchvision's GeneralizedRCNNTransform and ``preprocess.resize``."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(p=p)
        self.min_sizes, self.max_size = tuple(min_sizes), max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        min_size = self.min_sizes[0] if len(self.min_sizes) == 1 else self.py_random.choice(self.min_sizes)
        scale = resize_scale(h, w, min_size, self.max_size)
        return {"out_size": (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))}

    def apply(self, img: np.ndarray, out_size: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == out_size:
            return img
        return cv2.resize(img, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalised to [0, 1]: resizing leaves them unchanged

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size")


def crop_ops(size: int, scale: float, background_prob: float, fill: np.ndarray) -> list:
    """Albumentations' box-aware crops of ``size`` px from the image scaled by ``scale``: with probability
    1 - ``background_prob`` a crop holding at least one object, else one drawn anywhere. Smaller images are
    padded (bottom right) with the mean pixel, which normalises to the 0 that batch padding uses."""
    ops: list = [A.RandomScale(scale_limit=(scale - 1, scale - 1), p=1.0)] if scale != 1 else []
    ops.append(A.PadIfNeeded(min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                             fill=tuple(float(v) for v in fill)))
    crops = [A.AtLeastOneBBoxRandomCrop(size, size, p=1 - background_prob), A.RandomCrop(size, size, p=background_prob)]
    return ops + [A.OneOf([c for c in crops if c.p > 0], p=1.0)]


class DetectionTransform:
    """``(image (H, W, 3) uint8, boxes (G, 4), labels (G,), crowd_boxes (C, 4), seed)`` ->
    ``(image (3, h, w) float32 normalised, boxes (G', 4) float32, labels (G',) int64, crowd_boxes (C', 4))``.

    With a ``seed`` the random choices (scale, flip, jitter) depend on it alone; without one a train
    transform draws a fresh seed from the OS, so forked DataLoader workers do not repeat each other.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, mean: Sequence[float], std: Sequence[float],
                 flip_prob: float = 0.0, color_jitter: float = 0.0, crop: int = 0, crop_scale: float = 1.0,
                 crop_min_visibility: float = 0.5, crop_background_prob: float = 0.1):
        self.mean = np.asarray(mean, np.float32) * 255
        self.std = np.asarray(std, np.float32) * 255
        ops: list = []
        if color_jitter > 0:  # on uint8 before resizing: same result, cheaper at small input sizes
            ops.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=color_jitter))
        ops += crop_ops(crop, crop_scale, crop_background_prob, self.mean) if crop else [
            ResizeShortestEdge(min_sizes, max_size)]
        if flip_prob > 0:
            ops.append(A.HorizontalFlip(p=flip_prob))
        self.random = color_jitter > 0 or flip_prob > 0 or len(set(min_sizes)) > 1 or crop > 0
        self.compose = A.Compose(ops, bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True,
            min_visibility=crop_min_visibility if crop else 0.0))

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, crowd_boxes: np.ndarray,
                 seed: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        crowd_boxes = np.asarray(crowd_boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if self.random:
            seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
            # One shared stream for all ops: set_random_seed would give each op its own copy of the
            # same stream, and so correlate e.g. the flip decision with the chosen scale.
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        # Crowd regions travel with the boxes under label -1 so that they get the same geometry.
        out = self.compose(image=image, bboxes=np.concatenate([boxes, crowd_boxes]),
                           labels=np.concatenate([labels, np.full(len(crowd_boxes), -1, np.int64)]))
        all_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        all_labels = np.asarray(out["labels"], np.int64).reshape(-1)
        keep = ((all_boxes[:, 2:] - all_boxes[:, :2]) > MIN_AUGMENTED_SIZE).all(1)
        all_boxes, all_labels = all_boxes[keep], all_labels[keep]
        crowd = all_labels < 0
        img = (out["image"].astype(np.float32) - self.mean) / self.std  # == ((x / 255) - mean) / std
        return (torch.from_numpy(img.transpose(2, 0, 1).copy()), torch.from_numpy(all_boxes[~crowd]),
                torch.from_numpy(all_labels[~crowd]), torch.from_numpy(all_boxes[crowd]))


def build_transforms(input_cfg: InputConfig) -> DetectionTransform:
    """The training transform: random short side from ``min_size_train``, at most ``max_size_train`` (or
    with ``crop_train``, box-aware crops of the unshrunk image), flip, optional colour jitter. (Evaluation
    and inference resize in ``preprocess.py``.)"""
    m: Union[int, tuple[int, ...]] = input_cfg.min_size_train
    return DetectionTransform((m,) if isinstance(m, int) else m, input_cfg.max_size_train, input_cfg.pixel_mean,
                              input_cfg.pixel_std, input_cfg.flip_prob, input_cfg.color_jitter, input_cfg.crop_train,
                              input_cfg.crop_scale, input_cfg.crop_min_visibility, input_cfg.crop_background_prob)
