"""The RetinaNet network, and ``build_model`` that reads the config explicitly."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .anchors import AnchorGenerator
from .backbone import build_backbone
from .box_coder import BoxCoder
from .config import Config
from .criterion import RetinaNetLoss
from .fpn import FPN
from .head import RetinaNetHead
from .matcher import Matcher
from .postprocess import PostProcessor


@dataclass
class DenseOutputs:
    """Raw dense predictions of one padded batch.

    cls_logits (N, R, K), box_deltas (N, R, 4), anchors (R, 4) xyxy in padded-image pixels,
    level_sizes: anchors per level (sums to R).
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    level_sizes: list[int]


class RetinaNet(nn.Module):
    """backbone -> FPN -> shared head, over multi-scale anchors. Loss and decoding live elsewhere."""

    def __init__(self, backbone: nn.Module, fpn: FPN, head: RetinaNetHead, anchor_generator: AnchorGenerator):
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.anchor_generator = anchor_generator

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: Tensor) -> DenseOutputs:
        """``images`` (N, 3, H, W): normalised, zero-padded batch."""
        feats = self.fpn(self.backbone(images))
        cls_logits, box_deltas = self.head(feats)
        grids = [tuple(f.shape[-2:]) for f in feats]
        anchors = self.anchor_generator(tuple(images.shape[-2:]), grids, images.device)
        level_sizes = [h * w * self.head.num_anchors for h, w in grids]
        return DenseOutputs(cls_logits, box_deltas, anchors, level_sizes)


def build_model(cfg: Config) -> RetinaNet:
    m = cfg.model
    if not m.num_classes or m.num_classes < 1:
        raise ValueError(f"model.num_classes must be a positive int (got {m.num_classes}); "
                         f"set it, or let train/eval take it from the dataset")
    backbone = build_backbone(m.backbone.name, m.backbone.norm, m.backbone.freeze_at, m.backbone.weights)
    fpn = FPN(backbone.out_channels, m.fpn.channels, m.fpn.p6_from)
    a = m.anchors
    anchors = AnchorGenerator(a.sizes, a.scales, a.ratios, a.strides, a.torchvision_compat)
    head = RetinaNetHead(m.fpn.channels, anchors.num_anchors, m.num_classes, m.head.num_convs, m.head.norm,
                         m.head.prior_prob, m.head.prior_init)
    return RetinaNet(backbone, fpn, head, anchors)


def build_criterion(cfg: Config) -> RetinaNetLoss:
    m, lc = cfg.model, cfg.model.loss
    return RetinaNetLoss(
        num_classes=m.num_classes,
        matcher=Matcher(m.matcher.fg_iou, m.matcher.bg_iou, m.matcher.allow_low_quality),
        box_coder=BoxCoder(m.box_weights),
        cls_loss=lc.cls_loss, alpha=lc.alpha, gamma=lc.gamma, beta=lc.beta,
        box_loss=lc.box_loss, smooth_l1_beta=lc.smooth_l1_beta, box_weight=lc.box_weight,
        normalize=lc.normalize, ema_momentum=lc.ema_momentum, modulator=lc.modulator, poly_epsilon=lc.poly_epsilon,
    )


def build_postprocessor(cfg: Config) -> PostProcessor:
    t = cfg.model.test
    return PostProcessor(BoxCoder(cfg.model.box_weights), t.score_thresh, t.topk_candidates, t.nms_thresh,
                         t.detections_per_img)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


__all__ = ["RetinaNet", "DenseOutputs", "build_model", "build_criterion", "build_postprocessor", "count_parameters"]
