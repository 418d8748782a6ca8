"""The one place where a config (and a checkpoint) become objects.

Components take plain constructor arguments; these functions read the config for them. The class
list (``model.num_classes``, ``category_ids``, ``class_names``) is settled once, by ``with_categories``
or ``resolve_config``, and every later reader takes it from the config.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .anchors import AnchorGenerator
from .backbone import build_backbone
from .box_coder import BoxCoder
from .config import Config, ConfigError
from .config_loader import load_config, to_dict
from .criterion import RetinaNetLoss, dense_class_loss
from .fast.focal import sparse_focal_loss
from .fast.topk import topk_rows
from .fpn import FPN
from .head import RetinaNetHead
from .matcher import Matcher
from .model import RetinaNet
from .postprocess import PostProcessor
from .preprocess import Preprocessor

ConfigSource = Union[str, Path, Config, None]


def build_anchor_generator(cfg: Config) -> AnchorGenerator:
    a = cfg.model.anchors
    return AnchorGenerator(a.sizes, a.scales, a.ratios, a.strides, a.torchvision_compat)


def build_model(cfg: Config) -> RetinaNet:
    m = cfg.model
    if not m.num_classes or m.num_classes < 1:
        raise ValueError(f"model.num_classes must be a positive int (got {m.num_classes}); "
                         f"set it, or let train/eval take it from the dataset")
    backbone = build_backbone(m.backbone.name, m.backbone.norm, m.backbone.freeze_at, m.backbone.weights)
    fpn = FPN(backbone.out_channels, m.fpn.channels, m.fpn.p6_from)
    anchors = build_anchor_generator(cfg)
    head = RetinaNetHead(m.fpn.channels, anchors.num_anchors, m.num_classes, m.head.num_convs, m.head.norm,
                         m.head.prior_prob, m.head.prior_init)
    return RetinaNet(backbone, fpn, head, anchors)


def build_criterion(cfg: Config) -> RetinaNetLoss:
    """The loss of ``model.loss``. With ``model.fast`` the focal loss runs without its one-hot targets
    (``fast/focal.py``): the same values and gradients, with less memory traffic."""
    m, lc = cfg.model, cfg.model.loss
    class_loss = dense_class_loss(lc.cls_loss, lc.alpha, lc.beta, lc.modulator, lc.poly_epsilon)
    if m.fast and lc.cls_loss == "focal":
        class_loss = functools.partial(sparse_focal_loss, alpha=lc.alpha)
    return RetinaNetLoss(Matcher(m.matcher.fg_iou, m.matcher.bg_iou, m.matcher.allow_low_quality),
                         BoxCoder(m.box_weights), class_loss, lc.box_loss, lc.smooth_l1_beta, lc.box_weight,
                         lc.normalize, lc.ema_momentum)


def build_postprocessor(cfg: Config) -> PostProcessor:
    t = cfg.model.test
    # An evaluation raised above COCO's 100 detections must get that many per image to score.
    limit = max(t.detections_per_img, cfg.evaluation.max_dets) if cfg.evaluation.max_dets > 100 else t.detections_per_img
    return PostProcessor(BoxCoder(cfg.model.box_weights), t.score_thresh, t.topk_candidates, t.nms_thresh, limit,
                         topk_rows if cfg.model.fast else None)


def build_preprocessor(cfg: Config) -> Preprocessor:
    """The test-time input pipeline (training resizes in data/transforms.py)."""
    i = cfg.input
    return Preprocessor(i.min_size_test, i.max_size_test, i.pixel_mean, i.pixel_std, i.size_divisible)


def with_categories(cfg: Config, categories: Sequence[dict], source: str = "the dataset") -> Config:
    """Sets model.num_classes, category_ids and class_names from ``categories`` ([{"id", "name"}]
    in label order). A num_classes the config already sets must agree."""
    m = cfg.model
    if not categories:
        raise ValueError(f"{source} has no categories")
    if m.num_classes is not None and m.num_classes != len(categories):
        raise ValueError(f"model.num_classes is {m.num_classes} but {source} has {len(categories)} categories; "
                         f"remove model.num_classes to take it from there")
    return dataclasses.replace(cfg, model=dataclasses.replace(
        m, num_classes=len(categories), category_ids=tuple(int(c["id"]) for c in categories),
        class_names=tuple(str(c["name"]) for c in categories)))


def categories_of(cfg: Config) -> list[dict]:
    """[{"id", "name"}] per contiguous label: the config's category_ids and class_names, where unset
    the label itself as id and ``class_<id>`` as name (e.g. torchvision's 91 COCO ids)."""
    k = cfg.model.num_classes
    ids = list(cfg.model.category_ids) or list(range(k or 0))
    names = list(cfg.model.class_names) or [f"class_{i}" for i in ids]
    if len(ids) != k or len(names) != k:
        raise ConfigError(f"model.category_ids ({len(ids)}) and model.class_names ({len(names)}) must both have "
                          f"model.num_classes ({k}) entries")
    return [{"id": int(i), "name": str(n)} for i, n in zip(ids, names)]


def resolve_config(config: ConfigSource, overrides: Sequence[str] = (), checkpoint: Optional[dict] = None,
                   classes_from_val: bool = False) -> Config:
    """The config of a model to run: ``config`` (a YAML path or a Config; None: the one stored in
    ``checkpoint``) plus ``overrides``, with its classes settled: the checkpoint's categories, else
    the config's own, else (with ``classes_from_val``) those of data.val.annotations."""
    checkpoint = checkpoint or {}
    if config or "config" in checkpoint:
        cfg = load_config(config or checkpoint["config"], overrides)
    else:
        raise ValueError("a config is needed: pass --config, or a checkpoint written by `retinanet train`")
    stored = checkpoint.get("categories")
    if cfg.model.num_classes is None and classes_from_val and cfg.data.val.annotations:
        from .evaluation import load_coco
        cats = sorted(load_coco(cfg.data.val.annotations).dataset.get("categories", []), key=lambda c: c["id"])
        cfg = with_categories(cfg, cats, cfg.data.val.annotations)
    if stored:
        if cfg.model.num_classes not in (None, len(stored)):
            raise ValueError(f"the checkpoint was trained for another number of classes ({len(stored)}) than the "
                             f"config or the val annotations give ({cfg.model.num_classes})")
        cfg = with_categories(cfg, stored, "the checkpoint")
    if cfg.model.num_classes is None:
        raise ValueError("model.num_classes is unset and neither the checkpoint nor the annotations say it")
    categories_of(cfg)  # ids and names must fit num_classes
    if checkpoint.get("model"):  # a full checkpoint follows: pretrained backbone weights are not needed
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, backbone=dataclasses.replace(cfg.model.backbone, weights="")))
    return cfg


def checkpoint_payload(cfg: Config, model_state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds besides training state: weights, the resolved config, the categories."""
    return {"model": model_state, "config": to_dict(cfg), "categories": categories_of(cfg), **extra}
