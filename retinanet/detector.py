"""The inference object: ``Detector.from_config(cfg, weights).predict(images)``.

A Detector owns a network with its preprocessing, post-processing and category mapping. predict,
test-time augmentation, evaluation, export, analyze-loss, ``retinanet infer`` and the benchmark all
go through its public steps: ``preprocess`` -> ``network`` -> ``postprocessor`` -> ``to_results``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .build import (ConfigSource, build_model, build_postprocessor, build_preprocessor, categories_of,
                    resolve_config)
from .checkpoint import load_checkpoint, load_model_state
from .config import Config
from .fast import for_inference, weights_version
from .model import RetinaNet
from .outputs import DenseOutputs
from .postprocess import rescale_boxes
from .preprocess import ImageInput, to_float_tensor


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available; use train.device=cpu")
    return device


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm uses its running statistics and never updates them) for the block;
    then every submodule gets back the mode it had, so a caller's training model is left as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Detector:
    """A network (our RetinaNet, or an exported file's runtime) with the config it was built from,
    its preprocessing, post-processing and label -> category mapping."""

    def __init__(self, model: nn.Module, cfg: Config, device: Union[str, torch.device, None] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        # With model.fast, a RetinaNet runs as for_inference's copy (same outputs to float rounding):
        # built on first use, rebuilt when the model's weights change.
        self.fast = cfg.model.fast and isinstance(model, RetinaNet)
        self._fast_copy: Optional[tuple[tuple, nn.Module]] = None
        self.cfg = cfg
        self.categories = categories_of(cfg)
        self.preprocessor = build_preprocessor(cfg)
        self.postprocessor = build_postprocessor(cfg)
        # contiguous label -> dataset category id
        self.label_to_id = torch.tensor([c["id"] for c in self.categories], dtype=torch.int64)

    @classmethod
    def from_config(cls, config: ConfigSource = None, weights: Union[str, Path, None] = None,
                    device: Union[str, torch.device, None] = None, overrides: Sequence[str] = (),
                    classes_from_val: bool = False) -> "Detector":
        """Builds the model of ``config`` (a YAML path or a Config; None: the checkpoint's own, with
        ``overrides``) and loads ``weights`` (our checkpoint, or a torchvision RetinaNet state dict)
        from one read of the file. ``device`` None: the config's train.device. Files written by
        ``retinanet export`` open with ``retinanet.load_detector``."""
        ckpt = load_checkpoint(weights) if weights else {}
        cfg = resolve_config(config, overrides, ckpt, classes_from_val)
        model = build_model(cfg)
        if weights:
            load_model_state(model, ckpt["model"], source=str(weights))
        return cls(model, cfg, device if device is not None else cfg.train.device)

    # -- the steps --------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageInput], min_size: Optional[int] = None,
                   max_size: Optional[int] = None) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """Images -> padded normalised batch (N, 3, H, W) on the device, the resized (h, w) and the
        original (H, W) of each image. ``min_size``/``max_size`` override the test size (TTA)."""
        tensors = [to_float_tensor(x).to(self.device) for x in images]
        batch, sizes = self.preprocessor(tensors, min_size, max_size)
        return batch, sizes, [tuple(t.shape[-2:]) for t in tensors]

    @torch.no_grad()
    def network(self, batch: Tensor) -> DenseOutputs:
        """The network on a preprocessed batch, in eval mode (the model's own mode is restored)."""
        if not self.fast:
            with eval_mode(self.model):
                return self.model(batch)
        version = weights_version(self.model)
        if self._fast_copy is None or self._fast_copy[0] != version:
            self._fast_copy = (version, for_inference(self.model, self.device))
        return self._fast_copy[1](batch)

    def to_results(self, boxes: Tensor, scores: Tensor, labels: Tensor, resized_size: tuple[int, int],
                   original_size: tuple[int, int]) -> dict:
        """One image's detections in the resized image, boxes (D, 4), scores (D,), contiguous labels
        (D,) -> ``boxes`` in original pixels, ``scores``, ``labels`` as dataset category ids and
        ``names``, on the CPU."""
        labels = labels.cpu()
        return {"boxes": rescale_boxes(boxes, resized_size, original_size).cpu(), "scores": scores.cpu(),
                "labels": self.label_to_id[labels], "names": [self.categories[i]["name"] for i in labels.tolist()]}

    # -- the whole pipeline -----------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Union[ImageInput, Sequence[ImageInput]], batch_size: int = 4,
                score_thresh: Optional[float] = None, tta: Optional[bool] = None, tile: Optional[int] = None,
                tile_overlap: Optional[float] = None) -> Union[dict, list[dict]]:
        """Detects objects. One image gives one dict, a list or tuple of images a list of dicts (as
        torchvision's models take lists): ``boxes`` (D, 4) xyxy in original pixels, ``scores`` (D,),
        ``labels`` (D,) dataset category ids and ``names`` (D class names), sorted by decreasing score.
        ``score_thresh`` drops lower scores; ``tta`` (default: evaluation.tta) adds the flipped and
        rescaled views; ``tile`` px (default: evaluation.tile; 0 off) runs large images by overlapping
        native-resolution tiles (``tiling.py``), ``tile_overlap`` (default: evaluation.tile_overlap) apart."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        ev = self.cfg.evaluation
        use_tta = ev.tta if tta is None else tta
        tile = ev.tile if tile is None else tile
        results = []
        if tile:
            from .tiling import predict_tiled
            results = predict_tiled(self, items, tile, ev.tile_overlap if tile_overlap is None else tile_overlap,
                                    batch_size, ev.tile_merge, ev.tile_full_pass)
            items = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            if use_tta:
                from .tta import predict_tta
                results.extend(predict_tta(self, chunk))
                continue
            batch, sizes, originals = self.preprocess(chunk)
            for det, size, original in zip(self.postprocessor(self.network(batch), sizes), sizes, originals):
                results.append(self.to_results(det["boxes"], det["scores"], det["labels"], size, original))
        if score_thresh is not None:
            results = [_above(r, score_thresh) for r in results]
        return results[0] if single else results


def _above(result: dict, score_thresh: float) -> dict:
    keep = result["scores"] > score_thresh
    return {"boxes": result["boxes"][keep], "scores": result["scores"][keep], "labels": result["labels"][keep],
            "names": [n for n, k in zip(result["names"], keep.tolist()) if k]}
