"""Modulated cross-entropy: the focal loss's family -f(p_t) log(p_t), and Poly-1 focal.

Lin et al. 2017 (appendix A, with FL*) argue that the exact form of the focal term matters less
than its shape: a factor f(p_t) that is large for small p_t (hard examples) and small for large p_t
(easy ones) focuses the loss. Besides the paper's (1 - p_t)^gamma this module offers cos(p_t),
exp(-p_t) and exp(-p_t^2), or any callable. Poly-1 (Leng et al., ICLR 2022) adds the first
polynomial term epsilon (1 - p_t)^(gamma + 1) to the focal loss.

-log(p_t) comes from BCE-with-logits / log-softmax, and f(p_t) from the saturating sigmoid or
softmax: finite values and gradients at logits of +-1e4. ``classification_loss`` picks any class loss,
these or those of ``retinanet.losses``, by its config name.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ClassLoss
from .losses import (_reduce, _softmax_weighted, alpha_balanced_bce, focal_loss_star, sigmoid_focal_loss,
                     softmax_focal_loss)

Modulator = Union[str, Callable[[Tensor], Tensor]]

# f(p_t) for the fixed-form modulators; ``power`` is handled by the focal losses themselves (it needs
# gamma and their stable forms for gamma < 1). Values on p_t in [0, 1]: cos 1 -> 0.540,
# exp 1 -> 0.368, exp_sq 1 -> 0.368; all much flatter than (1 - p_t)^2, which reaches 0.
MODULATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "cos": torch.cos,
    "exp": lambda p_t: torch.exp(-p_t),
    "exp_sq": lambda p_t: torch.exp(-p_t * p_t),
}
MODULATOR_NAMES = ("power", *MODULATORS)


def _modulator_fn(modulator: Modulator) -> Callable[[Tensor], Tensor]:
    if callable(modulator):
        return modulator
    if modulator in MODULATORS:
        return MODULATORS[modulator]
    raise ValueError(f"modulator must be one of {', '.join(MODULATOR_NAMES)} or a callable, got {modulator!r}")


def _alpha_t(targets: Tensor, alpha: float) -> Tensor:
    """alpha for positives, 1 - alpha for negatives (interpolated for soft targets)."""
    return alpha * targets + (1 - alpha) * (1 - targets)


def modulated_bce(logits: Tensor, targets: Tensor, modulator: Modulator, gamma: float = 2.0, alpha: float = -1.0,
                  reduction: str = "none") -> Tensor:
    """-alpha_t f(p_t) log(p_t) for sigmoid outputs, elementwise over any shape.

    ``logits`` and ``targets`` (0/1 or soft labels) have the same shape; p = sigmoid(logits),
    p_t = p y + (1 - p)(1 - y). ``modulator``:

    * ``"power"``: f = (1 - p_t)^gamma; identical to ``sigmoid_focal_loss(logits, targets, alpha, gamma)``;
    * ``"cos"``: f = cos(p_t); ``"exp"``: f = exp(-p_t); ``"exp_sq"``: f = exp(-p_t^2)
      (``gamma`` is not used by these three);
    * a callable mapping the tensor p_t to the factor f(p_t) (same shape), differentiable by autograd.

    ``alpha >= 0`` multiplies by alpha_t (alpha for positives, 1 - alpha for negatives), as in FL;
    ``alpha < 0`` (default) leaves it out. The gradient flows through f as well, as in FL.
    """
    if isinstance(modulator, str) and modulator == "power":
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    f = _modulator_fn(modulator)
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t), stable
    p = torch.sigmoid(logits)  # saturates to exactly 0/1 at |x| >> 1 with a zero (not NaN) slope
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = f(p_t) * ce
    if alpha >= 0:
        loss = _alpha_t(targets, alpha) * loss
    return _reduce(loss, reduction)


def modulated_softmax_ce(logits: Tensor, target_index: Tensor, modulator: Modulator, gamma: float = 2.0,
                         alpha: Optional[Union[float, Sequence[float], Tensor]] = None, ignore_index: int = -100,
                         reduction: str = "mean") -> Tensor:
    """Multi-class -alpha_c f(p_c) log(p_c) over a softmax, with p_c the target class's probability.

    ``logits`` (N, C) or (N, C, d1, ...), ``target_index`` (N,) or (N, d1, ...) of class indices.
    ``modulator`` as in ``modulated_bce`` (``"power"`` is ``softmax_focal_loss``, exactly).
    ``alpha``, ``ignore_index`` and the reductions follow ``softmax_focal_loss``: ``alpha`` is None,
    one float or a per-class sequence (C,); ignored targets contribute nothing; ``mean`` divides by
    the summed alpha of the counted targets (the count of them when ``alpha`` is None).
    """
    if isinstance(modulator, str) and modulator == "power":
        return softmax_focal_loss(logits, target_index, gamma=gamma, alpha=alpha, ignore_index=ignore_index,
                                  reduction=reduction)
    f = _modulator_fn(modulator)
    valid = target_index != ignore_index
    safe_target = torch.where(valid, target_index, torch.zeros_like(target_index))
    log_p = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -log_p * f(log_p.exp())
    return _softmax_weighted(loss, safe_target, valid, alpha, logits.shape[1], reduction, "modulated_softmax_ce")


def poly1_focal_loss(logits: Tensor, targets: Tensor, epsilon: float = 1.0, alpha: float = 0.25,
                     gamma: float = 2.0, reduction: str = "none") -> Tensor:
    """Poly-1 focal loss (Leng et al. 2022): FL(p_t) + epsilon (1 - p_t)^(gamma + 1), elementwise.

    FL = -alpha_t (1 - p_t)^gamma log(p_t) is ``sigmoid_focal_loss``; ``epsilon = 0`` gives FL.
    Choice: alpha_t weights only the FL part, not the polynomial term, as in the paper's reference
    code (its appendix: ``Poly1 = FL + epsilon * pow(1 - pt, gamma + 1)``). ``logits`` and
    ``targets`` have the same shape; ``gamma >= 0``, so (1 - p_t)^(gamma + 1) has a finite slope.
    """
    if gamma < 0:
        raise ValueError(f"poly1_focal_loss needs gamma >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    fl = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    p = torch.sigmoid(logits)
    # 1 - p_t written as (1 - p) y + p (1 - y): no cancellation in 1 - p_t when p_t is near 1.
    q = (1 - p) * targets + p * (1 - targets)
    loss = fl + epsilon * q ** (gamma + 1)
    return _reduce(loss, reduction)


CLASS_LOSSES = get_args(ClassLoss)


def classification_loss(kind: str, logits: Tensor, targets: Tensor, alpha: float, gamma: float,
                        beta: float, modulator: str = "power", poly_epsilon: float = 1.0) -> Tensor:
    """Elementwise detector class loss selected by name (config ``model.loss.cls_loss``).

    ``modulator`` is used by ``modulated`` only, ``poly_epsilon`` by ``poly1_focal`` only.
    """
    if kind == "focal":
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    if kind == "focal_star":
        return focal_loss_star(logits, targets, gamma=gamma, beta=beta)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if kind == "alpha_bce":
        return alpha_balanced_bce(logits, targets, alpha=alpha)
    if kind == "modulated":
        return modulated_bce(logits, targets, modulator, gamma=gamma, alpha=alpha)
    if kind == "poly1_focal":
        return poly1_focal_loss(logits, targets, epsilon=poly_epsilon, alpha=alpha, gamma=gamma)
    raise ValueError(f"unknown class loss {kind!r}: expected one of {', '.join(CLASS_LOSSES)}")
