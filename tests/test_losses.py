from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops

from retinanet.fast import focal
from retinanet.fast.focal import sigmoid_focal_loss_sparse
from retinanet.losses import (alpha_balanced_bce, box_regression_loss, focal_loss_star, sigmoid_focal_loss,
                              softmax_focal_loss)
from retinanet.modulated import classification_loss


def _logits_targets(*shape: int, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype) * 3, (torch.rand(*shape) < 0.3).to(dtype)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 0.5), (-1.0, 2.0), (-1, 3.0)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sigmoid_focal_equals_torchvision(alpha, gamma, reduction):
    x, t = _logits_targets(4, 50, 3)
    expected = torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha, gamma, reduction), expected)


def test_sigmoid_focal_negative_alpha_is_unweighted():
    x, t = _logits_targets(100, dtype=torch.float64)  # float64: the naive log(p_t) below is exact enough
    unweighted = sigmoid_focal_loss(x, t, alpha=-1, gamma=2)
    p = torch.sigmoid(x)
    p_t = torch.where(t == 1, p, 1 - p)
    torch.testing.assert_close(unweighted, -(1 - p_t) ** 2 * torch.log(p_t))
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.5, gamma=2), 0.5 * unweighted)


def test_alpha_balanced_bce_is_focal_at_gamma_zero():
    x, t = _logits_targets(200)
    torch.testing.assert_close(alpha_balanced_bce(x, t, alpha=0.25), sigmoid_focal_loss(x, t, 0.25, 0.0))
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(alpha_balanced_bce(x, t, alpha=0.25), torch.where(t == 1, 0.25, 0.75) * bce)
    assert alpha_balanced_bce(x, t, 0.25, reduction="sum").shape == ()


def test_focal_loss_star_hand_values():
    x = torch.tensor([0.0, 1.0, -2.0, 3.0])
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gamma, beta = 2.0, 1.0
    x_t = torch.tensor([0.0, -1.0, -2.0, -3.0])  # x for positives, -x for negatives
    expected = -torch.log(torch.sigmoid(gamma * x_t + beta)) / gamma
    torch.testing.assert_close(focal_loss_star(x, t, gamma, beta), expected)
    assert focal_loss_star(torch.tensor([0.0]), torch.tensor([1.0]), 2.0, 1.0).item() == \
        pytest.approx(-torch.log(torch.sigmoid(torch.tensor(1.0))).item() / 2)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss_star(x, t, gamma=0.0)


@pytest.mark.parametrize("value", [100.0, -100.0])
def test_focal_loss_star_finite_at_extremes(value):
    x = torch.full((4,), value, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 0.0, 1.0])
    loss = focal_loss_star(x, t, 2.0, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    wrong = (t == 1) if value < 0 else (t == 0)  # a confidently wrong logit costs about |x|
    torch.testing.assert_close(loss[wrong], torch.full_like(loss[wrong], 100.0 - 0.5), rtol=0, atol=1e-4)


def test_softmax_focal_gamma_zero_is_cross_entropy():
    x = torch.randn(64, 5)
    t = torch.randint(0, 5, (64,))
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(softmax_focal_loss(x, t, gamma=0.0, reduction=reduction),
                                   F.cross_entropy(x, t, reduction=reduction))
    w = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.3])
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(softmax_focal_loss(x, t, gamma=0.0, alpha=w, reduction=reduction),
                                   F.cross_entropy(x, t, weight=w, reduction=reduction))
    torch.testing.assert_close(softmax_focal_loss(x, t, gamma=0.0, alpha=0.3, reduction="sum"),
                               0.3 * F.cross_entropy(x, t, reduction="sum"))


def test_softmax_focal_ignore_index_and_nd_inputs():
    x = torch.randn(2, 4, 5, 6)  # (N, C, d1, d2)
    t = torch.randint(0, 4, (2, 5, 6))
    t[0, 0, :3] = -100
    t[1, 2, 2] = -100
    w = torch.tensor([0.2, 1.0, 0.7, 1.5])
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(softmax_focal_loss(x, t, gamma=0.0, alpha=w, reduction=reduction),
                                   F.cross_entropy(x, t, weight=w, reduction=reduction))
    t7 = torch.where(t < 0, 7, t)
    torch.testing.assert_close(softmax_focal_loss(x, t7, gamma=0.0, ignore_index=7),
                               F.cross_entropy(x, t7, ignore_index=7))
    with pytest.raises(ValueError, match="alpha"):
        softmax_focal_loss(x, t7, alpha=[1.0, 2.0], ignore_index=7)


def test_softmax_focal_direct_formula():
    x = torch.randn(40, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (40,))
    alpha = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    p = torch.softmax(x, 1)[torch.arange(40), t]
    per = -alpha[t] * (1 - p) ** 2 * torch.log(p)
    torch.testing.assert_close(softmax_focal_loss(x, t, gamma=2.0, alpha=alpha, reduction="none"), per)
    torch.testing.assert_close(softmax_focal_loss(x, t, gamma=2.0, alpha=alpha), per.sum() / alpha[t].sum())
    per = -(1 - p) ** 0.5 * torch.log(p)
    torch.testing.assert_close(softmax_focal_loss(x, t, gamma=0.5, reduction="none"), per)


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_float64():
    x, t = _logits_targets(6, 3, dtype=torch.float64)
    x.requires_grad_(True)
    _gradcheck(lambda z: sigmoid_focal_loss(z, t, 0.25, 2.0, "sum"), x)
    _gradcheck(lambda z: sigmoid_focal_loss(z, t, -1, 1.5, "mean"), x)
    _gradcheck(lambda z: alpha_balanced_bce(z, t, 0.25, "sum"), x)
    _gradcheck(lambda z: focal_loss_star(z, t, 2.0, 1.0, reduction="sum"), x)
    xs = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0, 1, 2, 3, -100, 1, 2, 0])
    _gradcheck(lambda z: sigmoid_focal_loss(z, t, 0.25, 0.5, "sum"), x)
    _gradcheck(lambda z: softmax_focal_loss(z, ts, 2.0, alpha=[0.1, 0.2, 0.3, 0.4]), xs)
    _gradcheck(lambda z: softmax_focal_loss(z, ts, 0.5), xs)
    pred, target = torch.randn(5, 4, dtype=torch.float64, requires_grad=True), torch.randn(5, 4, dtype=torch.float64)
    _gradcheck(lambda z: box_regression_loss(z, target, beta=0.1), pred)
    _gradcheck(lambda z: box_regression_loss(z, target), pred)


@pytest.mark.parametrize("gamma", [2.0, 0.5])  # gamma < 1: (1 - p_t)^gamma has an infinite slope at 0
@pytest.mark.parametrize("value", [1e4, -1e4, 30.0])
def test_no_nan_for_huge_logits(value, gamma):
    t = torch.tensor([0.0, 1.0])
    for fn in (lambda z: sigmoid_focal_loss(z, t, 0.25, gamma), lambda z: alpha_balanced_bce(z, t),
               lambda z: focal_loss_star(z, t), lambda z: classification_loss("bce", z, t, 0.25, 2.0, 1.0)):
        x = torch.full((2,), value, requires_grad=True)
        loss = fn(x)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    x = torch.tensor([[value, 0.0, -value], [-value, value, 0.0]], requires_grad=True)
    loss = softmax_focal_loss(x, torch.tensor([0, 2]), gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_box_regression_losses():
    pred, target = torch.randn(20, 4), torch.randn(20, 4)
    torch.testing.assert_close(box_regression_loss(pred, target, beta=0.11),
                               F.smooth_l1_loss(pred, target, beta=0.11, reduction="sum"))
    torch.testing.assert_close(box_regression_loss(pred, target, beta=0.0), (pred - target).abs().sum())
    assert box_regression_loss(pred, target, reduction="none").shape == (20, 4)
    torch.testing.assert_close(box_regression_loss(pred, target, reduction="mean"), (pred - target).abs().mean())
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(pred, target, reduction="avg")


def test_classification_loss_by_name():
    x, t = _logits_targets(10, 3)
    torch.testing.assert_close(classification_loss("focal", x, t, 0.25, 2.0, 1.0), sigmoid_focal_loss(x, t))
    torch.testing.assert_close(classification_loss("focal_star", x, t, 0.25, 2.0, 1.0), focal_loss_star(x, t, 2.0, 1.0))
    torch.testing.assert_close(classification_loss("alpha_bce", x, t, 0.25, 2.0, 1.0), alpha_balanced_bce(x, t))
    with pytest.raises(ValueError, match="focal"):
        classification_loss("ce", x, t, 0.25, 2.0, 1.0)


def _sparse_case(seed: int = 0, extreme: bool = True):
    """Logits (3, 40, 6) float64, with ``extreme`` 4 saturated anchors per image (+-50, +-1e4); weights with
    ignored (0) and fractional anchors; 6 positives per image, 5 of them on the anchors that can saturate
    (anchor 3 has two classes; anchor 7 of image 2 is ignored)."""
    g = torch.Generator().manual_seed(seed)
    n, r, k = 3, 40, 6
    x = torch.randn(n, r, k, generator=g, dtype=torch.float64) * 4
    if extreme:
        x[:, :4] = torch.tensor([50.0, -50.0, 1e4, -1e4], dtype=torch.float64)[:, None]  # every class saturated
    weight = (torch.rand(n, r, generator=g) > 0.25).double()
    weight[:, 20] = 0.5
    image = torch.arange(n).repeat_interleave(6)
    anchor = torch.tensor([0, 1, 2, 3, 7, 3]).repeat(n)
    cls = torch.randint(0, k, (n, 6), generator=g)
    cls[:, 5] = (cls[:, 3] + 1) % k  # a second class on anchor 3 (multi-label)
    cls = cls.flatten()
    weight[image, anchor] = 1.0
    weight[2, 7] = 0.0
    target = torch.zeros(n, r, k, dtype=torch.float64)
    target[image, anchor, cls] = 1
    return x, weight, (image, anchor, cls), target


@pytest.mark.parametrize("extreme", [False, True])  # with saturated logits the sums are ~1e4 larger
@pytest.mark.parametrize("block", [None, 50])  # 50 elements: 8-row blocks, the last one partial
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_sparse_focal_equals_torchvision(gamma, alpha, block, extreme, monkeypatch):
    if block is not None:
        monkeypatch.setattr(focal, "_CPU_BLOCK_ELEMENTS", block)
    x, weight, positives, target = _sparse_case(extreme=extreme)
    grad_out = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    # Reference in float64. Torchvision's gradient is 0 * inf = NaN at saturated logits for gamma < 1, where
    # our dense sigmoid_focal_loss (its values equal torchvision's) is the reference for the gradient.
    dense = torchvision.ops.sigmoid_focal_loss if gamma == 0 or gamma >= 1 else sigmoid_focal_loss
    x_ref = x.clone().requires_grad_(True)
    expected = (dense(x_ref, target, alpha=alpha, gamma=gamma).sum(-1) * weight).sum(-1)
    torch.testing.assert_close(expected, (torchvision.ops.sigmoid_focal_loss(x, target, alpha, gamma).sum(-1)
                                          * weight).sum(-1))
    expected.backward(grad_out)

    x32 = x.float().requires_grad_(True)
    got = sigmoid_focal_loss_sparse(x32, weight.float(), positives, alpha, gamma)
    got.backward(grad_out.float())
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.isfinite(x32.grad).all()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(x32.grad.double(), x_ref.grad, rtol=1e-5, atol=1e-6)


def test_sparse_focal_small_softplus_keeps_its_digits():
    # At gamma = 0 the loss of a negative is softplus(x) = log1p(e^x): for x << 0 log(1 + e^x) rounds 1 + e^x
    # and loses the relative precision (all of it below x = -17).
    x = torch.linspace(-30, -8, 600, dtype=torch.float64).view(1, 100, 6)
    expected = F.softplus(x).sum((1, 2))
    got = sigmoid_focal_loss_sparse(x.float(), torch.ones(1, 100), (torch.zeros(0, dtype=torch.int64),) * 3, -1, 0.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0.0)


def test_sparse_focal_edge_cases():
    x, weight, positives, target = _sparse_case(1)
    x = x.float()
    no_pos = (torch.zeros(0, dtype=torch.int64),) * 3
    # No positives: every entry a negative.
    x1 = x.clone().requires_grad_(True)
    sigmoid_focal_loss_sparse(x1, weight, no_pos).sum().backward()
    x2 = x.clone().requires_grad_(True)
    (sigmoid_focal_loss(x2, torch.zeros_like(x2)).sum(-1) * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    # bf16 logits: the loss is computed in float32, the gradient comes back in bf16.
    xb = x.bfloat16().requires_grad_(True)
    loss = sigmoid_focal_loss_sparse(xb, weight, positives)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()
    # Without a gradient to compute (evaluation), the same values.
    with_grad = sigmoid_focal_loss_sparse(x.clone().requires_grad_(True), weight, positives)
    assert with_grad.requires_grad
    with torch.no_grad():
        assert torch.equal(sigmoid_focal_loss_sparse(x.clone().requires_grad_(True), weight, positives), with_grad.detach())
    assert torch.equal(sigmoid_focal_loss_sparse(x, weight, positives), with_grad.detach())
    # The saved gradient is scaled in place: a second backward must fail, not return a wrong gradient.
    x3 = x.detach().clone().requires_grad_(True)
    loss = sigmoid_focal_loss_sparse(x3, weight, positives).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second"):
        loss.backward()
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss_sparse(x, weight, positives, gamma=-1.0)
    with pytest.raises(ValueError, match="constant"):
        sigmoid_focal_loss_sparse(x, weight.requires_grad_(True), positives)
