"""The focal loss without its (N, R, K) one-hot targets, which are nearly all zeros (``sparse_focal_loss``):
the criterion's class loss under ``model.fast``. It equals ``criterion.dense_class_loss("focal")``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..criterion import dense_class_loss


def sparse_focal_loss(logits: Tensor, labels: Tensor, weight: Tensor, gamma: float, alpha: float = 0.25) -> Tensor:
    """The criterion's class loss (``criterion.ClassLoss``) for ``cls_loss: focal``: per-image (N,) sums of
    the focal loss over anchors of ``weight`` (N, R), for ``logits`` (N, R, K) and anchor ``labels`` (N, R)
    in [0, K] (K: background). A negative gamma (a schedule may pass one) runs the dense reference."""
    if gamma < 0:
        return dense_class_loss("focal", alpha)(logits, labels, weight, gamma)
    image, anchor = (labels < logits.shape[-1]).nonzero(as_tuple=True)
    return sigmoid_focal_loss_sparse(logits, weight, (image, anchor, labels[image, anchor]), alpha, gamma)


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
# cheap elementwise passes run from there instead of from memory.
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
    and softplus are not vectorised, these are.
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
