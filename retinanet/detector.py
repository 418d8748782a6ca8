"""High-level inference API: ``Detector.from_config(...).predict(images)``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .checkpoint import categories_from, load_checkpoint, load_model_state
from .config import Config, from_dict, load_config, merge_dict, parse_overrides
from .model import RetinaNet, build_model, build_postprocessor
from .postprocess import rescale_boxes
from .preprocess import ImageInput, preprocess, to_float_tensor


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available; use train.device=cpu")
    return device


class Detector:
    """A model in eval mode with its preprocessing, post-processing and label mapping."""

    def __init__(self, model: RetinaNet, cfg: Config, categories: list[dict], device: torch.device):
        self.model = model.eval().to(device)
        self.cfg, self.categories, self.device = cfg, categories, device
        self.postprocess = build_postprocessor(cfg)
        self._label_to_id = torch.tensor([c["id"] for c in categories], dtype=torch.int64)

    @classmethod
    def from_config(cls, config: Union[str, Path, Config, None] = None, weights: Union[str, Path, None] = None,
                    device: Union[str, torch.device, None] = "auto", overrides: Sequence[str] = ()) -> "Detector":
        """Builds the model of ``config`` (a YAML path or a Config; None: the checkpoint's own) and
        loads ``weights`` (our checkpoint, or a torchvision RetinaNet state dict)."""
        ckpt = load_checkpoint(weights) if weights else {}
        if isinstance(config, Config):
            cfg = merge_dict(config, parse_overrides(list(overrides)))
        elif config:
            cfg = load_config(config, list(overrides))
        elif "config" in ckpt:
            cfg = merge_dict(from_dict(ckpt["config"]), parse_overrides(list(overrides)))
        else:
            raise ValueError("Detector.from_config needs a config, or a checkpoint that stores one")
        if cfg.model.num_classes is None:
            stored = ckpt.get("categories") or ckpt.get("config", {}).get("model", {}).get("category_ids")
            if not stored:
                raise ValueError("model.num_classes is unset and the checkpoint does not say it")
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(stored)))
        # Pretrained backbone weights are irrelevant when a full checkpoint follows (and may be offline).
        if weights:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(
                cfg.model, backbone=dataclasses.replace(cfg.model.backbone, weights="")))
        model = build_model(cfg)
        if weights:
            load_model_state(model, ckpt["model"], source=str(weights))
        categories = categories_from(ckpt, cfg.model.num_classes, cfg.model.category_ids, cfg.model.class_names)
        return cls(model, cfg, categories, resolve_device(device))

    @torch.no_grad()
    def predict(self, images: Union[ImageInput, Sequence[ImageInput]], batch_size: int = 4,
                score_thresh: Optional[float] = None) -> Union[dict, list[dict]]:
        """Detects objects. One input gives one dict; a list gives a list of dicts with
        ``boxes`` (D, 4) xyxy in original pixels, ``scores`` (D,), ``labels`` (D,) dataset category
        ids and ``names`` (list of D class names), sorted by decreasing score."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = []
        for start in range(0, len(items), batch_size):
            results.extend(self._predict_batch([to_float_tensor(x) for x in items[start:start + batch_size]]))
        if score_thresh is not None:
            results = [_filter(r, r["scores"] > score_thresh) for r in results]
        return results[0] if single else results

    def _predict_batch(self, images: list[Tensor]) -> list[dict]:
        inp = self.cfg.input
        batch, sizes = preprocess([im.to(self.device) for im in images], inp.min_size_test, inp.max_size_test,
                                  inp.pixel_mean, inp.pixel_std, inp.size_divisible)
        dets = self.postprocess(self.model(batch), sizes)
        out = []
        for det, im, size in zip(dets, images, sizes):
            labels = det["labels"].cpu()
            out.append({
                "boxes": rescale_boxes(det["boxes"], size, tuple(im.shape[-2:])).cpu(),
                "scores": det["scores"].cpu(),
                "labels": self._label_to_id[labels],
                "names": [self.categories[i]["name"] for i in labels.tolist()],
            })
        return out


def _filter(result: dict, keep: Tensor) -> dict:
    idx = keep.nonzero().flatten().tolist()
    return {"boxes": result["boxes"][keep], "scores": result["scores"][keep], "labels": result["labels"][keep],
            "names": [result["names"][i] for i in idx]}
