"""The paper's loss-distribution analysis (Lin et al. 2017, figure 4), as pure tensor functions.

Each anchor's focal loss is computed separately for foreground anchors (the loss of the true
class entry) and background anchors (the loss summed over the K class entries: one number per
negative anchor, as in the paper). Within each group the losses are sorted from lowest to highest
and their cumulative sum is divided by the total, which gives a curve from (0, 0) to (1, 1):
x = fraction of anchors, y = fraction of the group's total loss. Alpha is a constant factor within
each group, so it cancels in the normalisation and is not applied.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .losses import sigmoid_focal_loss


def anchor_losses(logits: Tensor, anchor_labels: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Per-anchor focal losses (no alpha) of one image or a batch flattened to rows.

    ``logits`` (R, K); ``anchor_labels`` (R,) int64: a class in [0, K) for foreground anchors,
    -1 for background, any other negative value (ignore) is skipped.
    Returns (positive (P,), negative (M,)) float32: the true-class entry's loss of each foreground
    anchor, and the summed loss over classes of each background anchor.
    """
    logits = logits.float()
    fg = anchor_labels >= 0
    bg = anchor_labels == -1
    pos_logits = logits[fg].gather(1, anchor_labels[fg].unsqueeze(1)).squeeze(1)
    pos = sigmoid_focal_loss(pos_logits, torch.ones_like(pos_logits), alpha=-1, gamma=gamma)
    neg_logits = logits[bg]
    neg = sigmoid_focal_loss(neg_logits, torch.zeros_like(neg_logits), alpha=-1, gamma=gamma).sum(-1)
    return pos, neg


def cumulative_loss_curve(losses: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted (ascending) cumulative normalised loss of ``losses`` (n,).

    Returns x, y, both (n + 1,) float64, starting at (0, 0) and ending at (1, 1): ``y[i]`` is the
    share of the total loss carried by the ``i`` lowest-loss examples. When every loss is 0 the
    share is spread evenly (y = x). Empty input gives empty curves.
    """
    losses = losses.detach().flatten().double().cpu()
    n = losses.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    if not torch.isfinite(losses).all() or (losses < 0).any():
        raise ValueError("cumulative_loss_curve: losses must be finite and non-negative")
    x = torch.arange(n + 1, dtype=torch.float64) / n
    running = torch.cumsum(losses.sort().values, 0)
    if running[-1] <= 0:
        return x, x.clone()
    # Dividing by the running sum's own last value (not losses.sum(), which adds in another order)
    # makes the curve end at exactly 1 and stay monotone under rounding.
    return x, torch.cat([torch.zeros(1, dtype=torch.float64), running / running[-1]])


def resample_curve(x: Tensor, y: Tensor, num_points: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of a curve from ``cumulative_loss_curve`` on ``num_points`` evenly
    spaced fractions in [0, 1] (for a compact CSV/plot of millions of anchors)."""
    grid = np.linspace(0.0, 1.0, num_points)
    if x.numel() == 0:
        return grid, np.full(num_points, np.nan)
    return grid, np.interp(grid, x.numpy(), y.numpy())


def hardest_share(losses: Tensor, fraction: float) -> float:
    """Share of the total loss carried by the hardest ``fraction`` of examples (at least one).

    E.g. ``fraction=0.01``: the ceil(1%) highest losses divided by the sum of all. NaN when empty
    or when every loss is 0.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"hardest_share: fraction must be in (0, 1], got {fraction}")
    losses = losses.detach().flatten().double()
    n = losses.numel()
    total = losses.sum().item() if n else 0.0
    if n == 0 or total <= 0:
        return math.nan
    k = max(1, math.ceil(fraction * n - 1e-9))
    return losses.topk(k).values.sum().item() / total
