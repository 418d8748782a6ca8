"""Training loss: match anchors per image, then class and box losses vectorised over the batch."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from .box_coder import BoxCoder
from .losses import box_regression_loss
from .modulated import CLASS_LOSSES, classification_loss
from .matcher import IGNORE, Matcher
from .outputs import DenseOutputs

NORMALIZERS = ("batch", "ema", "image")
# l1 and smooth_l1 on (dx, dy, dw, dh) deltas; giou on decoded boxes (torchvision v2).
BOX_LOSSES = ("l1", "smooth_l1", "giou")

# A class loss: (logits (N, R, K) float32, anchor labels (N, R) int64 in [0, K] where K is background,
# weight (N, R) float32 (0 for ignored anchors), focal gamma) -> per-image sum over anchors and classes (N,).
ClassLoss = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def dense_class_loss(kind: str = "focal", alpha: float = 0.25, beta: float = 1.0, modulator: str = "power",
                     poly_epsilon: float = 1.0) -> ClassLoss:
    """The ClassLoss of ``losses.classification_loss(kind, ...)`` on one-hot targets (config ``model.loss``)."""
    if kind not in CLASS_LOSSES:
        raise ValueError(f"model.loss.cls_loss: unknown {kind!r}; expected one of {', '.join(CLASS_LOSSES)}")
    return functools.partial(_dense_class_loss, kind=kind, alpha=alpha, beta=beta, modulator=modulator,
                             poly_epsilon=poly_epsilon)


def _dense_class_loss(logits: Tensor, labels: Tensor, weight: Tensor, gamma: float, *, kind: str, alpha: float,
                      beta: float, modulator: str, poly_epsilon: float) -> Tensor:
    target = F.one_hot(labels, logits.shape[-1] + 1)[..., :-1].to(logits.dtype)  # background: all zeros
    cls = classification_loss(kind, logits, target, alpha, gamma, beta, modulator, poly_epsilon)
    return (cls.sum(-1) * weight).sum(-1)


class RetinaNetLoss(nn.Module):
    """A class loss over non-ignored anchors + box loss over foreground anchors.

    ``class_loss``: a ClassLoss, e.g. ``dense_class_loss("focal")``; ``build_criterion`` picks it from the
    config. ``normalize``:
      * ``batch``: both losses summed over the batch and divided by max(1, #foreground anchors in
        the batch); under DDP the count is all-reduced so every rank uses the global mean.
      * ``ema``: Detectron2's running mean of that count (momentum ``ema_momentum``, starts at 100).
      * ``image``: torchvision's per-image normalisation, then the mean over images.
    Targets are dicts with ``boxes`` (G, 4) xyxy in padded-image pixels, ``labels`` (G,) in [0, K),
    and optionally ``crowd_boxes`` (C, 4), which become ignore regions. The focal ``gamma`` comes
    with every call, because a gamma schedule changes it during training.
    """

    def __init__(self, matcher: Matcher, box_coder: BoxCoder, class_loss: ClassLoss = dense_class_loss(),
                 box_loss: str = "l1", smooth_l1_beta: float = 0.1, box_weight: float = 1.0,
                 normalize: str = "batch", ema_momentum: float = 0.9):
        super().__init__()
        for key, value, allowed in (("box_loss", box_loss, BOX_LOSSES), ("normalize", normalize, NORMALIZERS)):
            if value not in allowed:
                raise ValueError(f"model.loss.{key}: unknown {value!r}; expected one of {', '.join(allowed)}")
        self.matcher, self.box_coder, self.class_loss = matcher, box_coder, class_loss
        self.box_loss, self.smooth_l1_beta, self.box_weight = box_loss, smooth_l1_beta, box_weight
        self.normalize, self.ema_momentum = normalize, ema_momentum
        self.register_buffer("ema_normalizer", torch.tensor(100.0))

    @torch.no_grad()
    def match(self, anchors: Tensor, targets: list[dict]) -> Tensor:
        """(N, R) matched gt index per anchor, or BACKGROUND / IGNORE. The only per-image loop."""
        return torch.stack([self.matcher(t["boxes"], anchors, t.get("crowd_boxes")) for t in targets])

    def forward(self, outputs: DenseOutputs, targets: list[dict], gamma: float) -> dict[str, Tensor]:
        """Returns {"loss_cls", "loss_box", "num_fg"} (scalars); fp32 throughout."""
        logits, deltas, anchors = outputs.cls_logits.float(), outputs.box_deltas.float(), outputs.anchors
        n, r, k = logits.shape
        matched = self.match(anchors, targets)
        fg = matched >= 0
        valid = matched != IGNORE

        # Pad the ragged ground truth once, then gather per anchor for the whole batch.
        g = max(1, max(len(t["labels"]) for t in targets))
        gt_boxes = logits.new_zeros(n, g, 4)
        gt_labels = torch.full((n, g), k, dtype=torch.int64, device=logits.device)
        for i, t in enumerate(targets):
            gt_boxes[i, : len(t["labels"])] = t["boxes"].float()
            gt_labels[i, : len(t["labels"])] = t["labels"]
        img_idx, anchor_idx = fg.nonzero(as_tuple=True)
        gt_idx = matched[img_idx, anchor_idx]
        anchor_labels = torch.where(fg, gt_labels.gather(1, matched.clamp(min=0)), k)  # k = background
        cls_per_image = self.class_loss(logits, anchor_labels, valid.to(logits.dtype), gamma)  # (N,)

        box_rows = self._box_loss(deltas[img_idx, anchor_idx], anchors[anchor_idx], gt_boxes[img_idx, gt_idx])
        box_per_image = logits.new_zeros(n).index_add_(0, img_idx, box_rows)

        num_fg_per_image = fg.sum(1).float()
        if self.normalize == "image":
            denom = num_fg_per_image.clamp(min=1)
            loss_cls, loss_box = (cls_per_image / denom).mean(), (box_per_image / denom).mean()
        else:
            denom = self._normalizer(num_fg_per_image.sum())
            loss_cls, loss_box = cls_per_image.sum() / denom, box_per_image.sum() / denom
        return {"loss_cls": loss_cls, "loss_box": self.box_weight * loss_box, "num_fg": num_fg_per_image.sum()}

    def _box_loss(self, pred: Tensor, anchors: Tensor, gt: Tensor) -> Tensor:
        """Per-row box loss (M,) for M foreground anchors."""
        if self.box_loss == "giou":
            return generalized_box_iou_loss(self.box_coder.decode(pred, anchors), gt, reduction="none", eps=1e-7)
        beta = self.smooth_l1_beta if self.box_loss == "smooth_l1" else 0.0
        return box_regression_loss(pred, self.box_coder.encode(anchors, gt), beta, reduction="none").sum(-1)

    def _normalizer(self, num_fg: Tensor) -> Tensor:
        if dist.is_available() and dist.is_initialized():
            num_fg = num_fg.clone()
            dist.all_reduce(num_fg)
            num_fg = num_fg / dist.get_world_size()
        num_fg = num_fg.clamp(min=1)
        if self.normalize == "ema":
            if self.training:
                self.ema_normalizer.mul_(self.ema_momentum).add_((1 - self.ema_momentum) * num_fg.detach())
            return self.ema_normalizer.clamp(min=1)
        return num_fg
