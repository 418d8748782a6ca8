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
from torch.autograd.function import once_differentiable


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


def sigmoid_focal_loss_sparse(logits: Tensor, weight: Tensor, positives: tuple[Tensor, Tensor, Tensor],
                              alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-image ``sigmoid_focal_loss`` summed over weighted anchors, for 0/1 targets given by their few 1s.

    ``logits`` (N, R, K); ``weight`` (N, R), e.g. 0 for ignored anchors and 1 otherwise (a constant: it
    gets no gradient); ``positives`` = (image, anchor, class), three int64 tensors (P,) naming the
    distinct entries whose target is 1 (as ``nonzero(as_tuple=True)`` gives them). Returns (N,) float32::

        (sigmoid_focal_loss(logits, targets, alpha, gamma).sum(-1) * weight).sum(-1)

    with the same values and gradient, also for 0 < gamma < 1, without building the (N, R, K) targets and
    with one elementwise pass instead of a dozen autograd ones: every entry is scored as a negative,
    the gradient is computed alongside, then the P positives are corrected by gathering. Backward scales
    that saved gradient in place, so the graph can be backpropagated through once only.
    """
    if gamma < 0:
        raise ValueError(f"sigmoid_focal_loss_sparse needs gamma >= 0, got {gamma}")
    if weight.requires_grad:
        raise ValueError("sigmoid_focal_loss_sparse: weight is a constant and gets no gradient")
    need_grad = torch.is_grad_enabled() and logits.requires_grad  # (needs_input_grad ignores no_grad mode)
    return _SparseSigmoidFocal.apply(logits.float().contiguous(), weight.float(), *positives, float(alpha),
                                     float(gamma), need_grad)


# Rows per block on CPU: about 2^18 elements, so that the block-sized temporaries stay in cache and the
# cheap elementwise passes run from there instead of from memory (2.4x faster than whole-tensor passes).
_CPU_BLOCK_ELEMENTS = 1 << 18


class _SparseSigmoidFocal(torch.autograd.Function):
    """See sigmoid_focal_loss_sparse; the gradient is computed in forward and saved (N, R, K)."""

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, image: Tensor, anchor: Tensor, cls: Tensor, alpha: float,
                gamma: float, need_grad: bool) -> Tensor:
        n, r, k = logits.shape
        neg_w, pos_w = (1 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
        grad = torch.empty_like(logits) if need_grad else None
        rows = max(1, n * r if logits.device.type != "cpu" else _CPU_BLOCK_ELEMENTS // k)
        flat = logits.view(n * r, k)
        per_anchor = logits.new_empty(n * r)
        scratch = [logits.new_empty(min(rows, n * r), k) for _ in range(4)]
        for a in range(0, n * r, rows):
            b = min(a + rows, n * r)
            g = grad.view(n * r, k)[a:b] if need_grad else None
            per_anchor[a:b] = _negative_focal(flat[a:b], gamma, g, *(t[: b - a] for t in scratch))

        # The positives were scored as negatives above: swap in f_pos(x) = f(-x) (f_neg(x) = f(x)), per
        # anchor, where the sums are small; corrections added one by one to an image's total would round.
        x = logits[image, anchor, cls][:, None]
        both = torch.cat([x, -x])  # (2P, 1)
        g_both = torch.empty_like(both)
        f = _negative_focal(both, gamma, g_both, *(torch.empty_like(both) for _ in range(4)))
        per_anchor = per_anchor.view(n, r).mul_(neg_w)
        per_anchor.index_put_((image, anchor), pos_w * f[len(x):] - neg_w * f[: len(x)], accumulate=True)
        loss = (per_anchor * weight).sum(1)
        if need_grad:
            ctx.grad = grad
            ctx.neg_scale = neg_w * (gamma or 1.0)  # _negative_focal leaves out the factor gamma
            d_pos = -pos_w * (gamma or 1.0) * g_both[len(x):, 0]  # d/dx f(-x) = -f'(-x)
            ctx.save_for_backward(weight, image, anchor, cls, d_pos)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("sigmoid_focal_loss_sparse: its saved gradient is scaled in place by the first "
                               "backward, so a second one (retain_graph=True) is not supported")
        ctx.grad = None
        weight, image, anchor, cls, d_pos = ctx.saved_tensors
        scale = grad_out[:, None] * weight  # (N, R)
        grad.mul_((scale * ctx.neg_scale)[..., None])
        grad[image, anchor, cls] = scale[image, anchor] * d_pos
        return grad, None, None, None, None, None, None, None


def _negative_focal(x: Tensor, gamma: float, grad: Optional[Tensor], e: Tensor, u: Tensor, s: Tensor,
                    t: Tensor) -> Tensor:
    """sum_k f(x) (M,) of f(x) = sigmoid(x)^gamma softplus(x), the focal loss of a negative without alpha.

    ``x`` (M, K); writes f'(x) / gamma (f'(x) at gamma = 0) into ``grad`` (M, K) unless it is None;
    ``e``, ``u``, ``s``, ``t`` are (M, K) scratch. Built from exp and log only: the CPU kernels of log1p
    and softplus ran 5-10x slower than these vectorised ones.
    """
    torch.clamp(x, max=80.0, out=e).exp_()  # E = e^x, finite; softplus(x) rounds to x long before 80
    torch.add(e, 1, out=u)  # 1 + E, rounded
    torch.div(e, u, out=s)  # sigmoid(x) = E / (1 + E)
    # softplus(x) = log1p(E) = log(u) + (E - (u - 1)) / u: u - 1 is exact, and the correction gives back
    # what rounding 1 + E dropped (all of E when E < 2^-24).
    e.sub_(torch.sub(u, 1, out=t))
    sp = torch.maximum(torch.addcdiv(torch.log(u, out=t), e, u, out=u), x, out=u)  # = x beyond the clamp
    if gamma == 0:
        if grad is not None:
            grad.copy_(s)
        return sp.sum(-1)
    sg = s if gamma == 1 else torch.pow(s, gamma, out=e)
    loss = torch.mul(sg, sp, out=t).sum(-1)
    if grad is not None:
        # f' = s^g (g (1 - s) sp + s) = g s^g lerp(sp, 1/g, s): one pass, and no s^(g-1), which is infinite
        # at s = 0 when g < 1 (sigmoid_focal_loss avoids it too).
        torch.mul(sg, sp.lerp_(x.new_tensor(1 / gamma), s), out=grad)
    return loss


def alpha_balanced_bce(logits: Tensor, targets: Tensor, alpha: float = 0.25, reduction: str = "none") -> Tensor:
    """-alpha_t log(p_t): the focal loss at gamma = 0 (the paper's alpha-balanced CE baseline)."""
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0, reduction=reduction)


def focal_loss_star(logits: Tensor, targets: Tensor, gamma: float = 2.0, beta: float = 1.0,
                    alpha: float = -1.0, reduction: str = "none") -> Tensor:
    """FL* (paper, appendix A): -log(sigmoid(gamma * x_t + beta)) / gamma.

    x_t = x for positives and -x for negatives. Finite for any logit: -log(sigmoid(z)) is
    computed as softplus(-z). ``alpha >= 0`` adds alpha_t weighting (off by default, as in the paper).
    """
    if gamma <= 0:
        raise ValueError(f"focal_loss_star needs gamma > 0, got {gamma}")
    targets = targets.to(logits.dtype)
    x_t = logits * (2 * targets - 1)
    loss = F.softplus(-(gamma * x_t + beta)) / gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
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
