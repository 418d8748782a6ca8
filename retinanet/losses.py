"""The focal-loss family (Lin et al. 2017) and box-regression losses.

Every classification loss works on any shape, takes ``reduction`` in {"none", "sum", "mean"}, and
is written with log-sigmoid / log-softmax so that there is no log(0) and no epsilon clamp biasing
the gradient. They are useful for any imbalanced classification, not only detection.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    """FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), elementwise over any shape.

    ``targets`` holds 0/1 (or soft) labels of the same shape as ``logits``; ``alpha < 0`` disables
    the alpha weighting. Equals ``torchvision.ops.sigmoid_focal_loss``.
    """
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # = -log(p_t), stable
    if gamma == 0:
        loss = ce
    elif gamma >= 1:
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t) ** gamma
    else:
        # q^gamma (q = 1 - p_t) has an infinite slope at q = 0 when gamma < 1, so a confident logit
        # gets a NaN gradient (0 * inf). exp(gamma * log q), with log q from log-sigmoids, has slope 0 there.
        log_q = torch.logaddexp(F.logsigmoid(-logits) + torch.log(targets), F.logsigmoid(logits) + torch.log1p(-targets))
        loss = ce * torch.exp(gamma * log_q)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def alpha_balanced_bce(logits: Tensor, targets: Tensor, alpha: float = 0.25, reduction: str = "none") -> Tensor:
    """-alpha_t log(p_t): the focal loss at gamma = 0 (the paper's alpha-balanced CE baseline)."""
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0, reduction=reduction)


def focal_loss_star(logits: Tensor, targets: Tensor, gamma: float = 2.0, beta: float = 1.0,
                    reduction: str = "none") -> Tensor:
    """FL* (paper, appendix A): -log(sigmoid(gamma * x_t + beta)) / gamma, without alpha weighting.

    x_t = x for positives and -x for negatives. Finite for any logit: -log(sigmoid(z)) is
    computed as softplus(-z).
    """
    if gamma <= 0:
        raise ValueError(f"focal_loss_star needs gamma > 0, got {gamma}")
    targets = targets.to(logits.dtype)
    x_t = logits * (2 * targets - 1)
    loss = F.softplus(-(gamma * x_t + beta)) / gamma
    return _reduce(loss, reduction)


def softmax_focal_loss(logits: Tensor, target_index: Tensor, gamma: float = 2.0,
                       alpha: Optional[Union[float, Sequence[float], Tensor]] = None,
                       ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Multi-class focal loss -alpha_c (1 - p_c)^gamma log(p_c) over a softmax.

    ``logits`` (N, C) or (N, C, d1, ...), ``target_index`` (N,) or (N, d1, ...) of class indices.
    ``alpha``: None, one float for every class, or a per-class sequence (C,). Targets equal to
    ``ignore_index`` contribute nothing. ``mean`` divides by the summed alpha of the counted targets,
    so that at gamma = 0 this is exactly ``F.cross_entropy(logits, t, weight=alpha)``.
    """
    num_classes = logits.shape[1]
    valid = target_index != ignore_index
    safe_target = torch.where(valid, target_index, torch.zeros_like(target_index))
    log_p = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -log_p
    if gamma >= 1:
        loss = loss * (-torch.expm1(log_p)) ** gamma  # 1 - p_c, exact for p_c near 1
    elif gamma > 0:
        # As in sigmoid_focal_loss: (1 - p_c)^gamma has an infinite slope at p_c = 1 when gamma < 1.
        # log(1 - p_c) = logsumexp over the other classes - logsumexp over all: finite slope everywhere.
        is_target = F.one_hot(safe_target, num_classes).movedim(-1, 1).bool()
        log_q = torch.logsumexp(logits.masked_fill(is_target, float("-inf")), 1) - torch.logsumexp(logits, 1)
        loss = loss * torch.exp(gamma * log_q)
    return _softmax_weighted(loss, safe_target, valid, alpha, num_classes, reduction, "softmax_focal_loss")


def _softmax_weighted(loss: Tensor, safe_target: Tensor, valid: Tensor,
                      alpha: Optional[Union[float, Sequence[float], Tensor]], num_classes: int, reduction: str,
                      name: str) -> Tensor:
    """Per-class alpha, ignore mask and reduction shared by the softmax losses (``mean``: by summed alpha)."""
    if alpha is None:
        weight = torch.ones_like(loss)
    else:
        a = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if a.dim() == 0:
            a = a.expand(num_classes)
        if a.shape != (num_classes,):
            raise ValueError(f"{name}: alpha has {a.numel()} values for {num_classes} classes")
        weight = a[safe_target]
    weight = weight * valid.to(loss.dtype)
    loss = loss * weight
    if reduction == "mean":
        return loss.sum() / weight.sum()
    return _reduce(loss, reduction)


def box_regression_loss(pred_deltas: Tensor, target_deltas: Tensor, beta: float = 0.0,
                        reduction: str = "sum") -> Tensor:
    """Smooth-L1 over (M, 4) box deltas; ``beta`` below 1e-5 is plain L1 (Detectron2's default, beta 0).
    With ``reduction="none"``: (M, 4)."""
    if beta >= 1e-5:
        loss = F.smooth_l1_loss(pred_deltas, target_deltas, beta=beta, reduction="none")
    else:  # smooth_l1 at beta -> 0 is L1; torch's smooth_l1 divides by beta
        loss = F.l1_loss(pred_deltas, target_deltas, reduction="none")
    return _reduce(loss, reduction)
