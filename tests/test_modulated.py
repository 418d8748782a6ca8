"""retinanet/modulated.py: the modulated-CE family, its softmax variant and Poly-1 focal."""
import math

import numpy as np
import pytest
import torch
import torchvision

from retinanet.config import ConfigError
from retinanet.config_loader import load_config
from retinanet.losses import sigmoid_focal_loss, softmax_focal_loss
from retinanet.modulated import (MODULATORS, classification_loss, modulated_bce, modulated_softmax_ce,
                                 poly1_focal_loss)

LN3 = math.log(3.0)
# Logits 0, ln 3, -ln 3 with labels 1, 1, 0 give p = 1/2, 3/4, 1/4, so p_t = 1/2, 3/4, 3/4.
X = torch.tensor([0.0, LN3, -LN3], dtype=torch.float64)
Y = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
P_T = np.array([0.5, 0.75, 0.75])
FORMULAS = {"cos": np.cos, "exp": lambda p: np.exp(-p), "exp_sq": lambda p: np.exp(-p ** 2),
            "power": lambda p: (1 - p) ** 2}
NAMES = list(FORMULAS)


@pytest.mark.parametrize("name", NAMES)
def test_bce_modulators_match_their_formula(name):
    expected = -FORMULAS[name](P_T) * np.log(P_T)
    got = modulated_bce(X, Y, name, gamma=2.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # alpha_t: 0.25 for the two positives, 0.75 for the negative.
    got_a = modulated_bce(X, Y, name, gamma=2.0, alpha=0.25)
    np.testing.assert_allclose(got_a.numpy(), np.array([0.25, 0.25, 0.75]) * expected, rtol=1e-12)
    assert modulated_bce(X, Y, name, reduction="sum").item() == pytest.approx(expected.sum(), rel=1e-12)
    assert modulated_bce(X, Y, name, reduction="mean").item() == pytest.approx(expected.mean(), rel=1e-12)
    if name in MODULATORS:  # power is the focal loss's own term, checked through modulated_bce above
        np.testing.assert_allclose(MODULATORS[name](torch.from_numpy(P_T)).numpy(), FORMULAS[name](P_T), rtol=1e-12)


def test_factor_values_by_hand():
    # The flat modulators never drop below ~0.37 on [0, 1]; (1 - p_t)^2 reaches 0.
    assert math.cos(1.0) == pytest.approx(0.5403, abs=1e-4)
    p1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert MODULATORS["cos"](p1).tolist() == pytest.approx([1.0, 0.540302306], rel=1e-8)
    assert MODULATORS["exp"](p1).tolist() == pytest.approx([1.0, 0.367879441], rel=1e-8)
    assert MODULATORS["exp_sq"](p1).tolist() == pytest.approx([1.0, 0.367879441], rel=1e-8)


def test_callable_modulator():
    got = modulated_bce(X, Y, lambda p_t: 1 - p_t)
    np.testing.assert_allclose(got.numpy(), -(1 - P_T) * np.log(P_T), rtol=1e-12)
    torch.testing.assert_close(got, sigmoid_focal_loss(X, Y, alpha=-1, gamma=1.0))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.25])
def test_power_is_the_focal_loss(gamma, alpha):
    torch.manual_seed(0)
    x, y = torch.randn(64, 5) * 4, (torch.rand(64, 5) < 0.2).float()
    got = modulated_bce(x, y, "power", gamma=gamma, alpha=alpha)
    assert torch.equal(got, sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma))
    torch.testing.assert_close(got, torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma))


def test_poly1_by_hand_and_at_epsilon_zero():
    torch.manual_seed(1)
    x, y = torch.randn(32, 4) * 3, (torch.rand(32, 4) < 0.3).float()
    assert torch.equal(poly1_focal_loss(x, y, epsilon=0.0), sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0))
    # p_t = 1/2, 3/4, 3/4: FL = alpha_t (1 - p_t)^2 (-log p_t), plus eps (1 - p_t)^3 without alpha (reference code).
    fl = np.array([0.25 * 0.5 ** 2 * math.log(2), 0.25 * 0.25 ** 2 * math.log(4 / 3),
                   0.75 * 0.25 ** 2 * math.log(4 / 3)])
    poly = 2.0 * np.array([0.5 ** 3, 0.25 ** 3, 0.25 ** 3])
    np.testing.assert_allclose(poly1_focal_loss(X, Y, epsilon=2.0).numpy(), fl + poly, rtol=1e-12)
    with pytest.raises(ValueError, match="gamma"):
        poly1_focal_loss(X, Y, gamma=-1.0)


def test_softmax_by_hand_with_alpha_and_ignore():
    # Rows: p_target = 3/4 (class 1), 1/2 (class 0), ignored.
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0], [5.0, -2.0]], dtype=torch.float64)
    target = torch.tensor([1, 0, -100])
    alpha = [0.2, 0.6]
    per_row = np.array([-np.cos(0.75) * np.log(0.75), -np.cos(0.5) * np.log(0.5), 0.0])
    weighted = per_row * np.array([0.6, 0.2, 0.0])
    got = modulated_softmax_ce(logits, target, "cos", alpha=alpha, reduction="none")
    np.testing.assert_allclose(got.numpy(), weighted, rtol=1e-12)
    mean = modulated_softmax_ce(logits, target, "cos", alpha=alpha)
    assert mean.item() == pytest.approx(weighted.sum() / 0.8, rel=1e-12)
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        modulated_softmax_ce(logits, target, "exp", alpha=[1, 2, 3])


@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_power_is_softmax_focal_loss(gamma, reduction):
    torch.manual_seed(2)
    logits, target = torch.randn(6, 4, 3) * 3, torch.randint(0, 4, (6, 3))
    target[0, 0] = -100
    alpha = [0.1, 0.2, 0.3, 0.4]
    got = modulated_softmax_ce(logits, target, "power", gamma=gamma, alpha=alpha, reduction=reduction)
    assert torch.equal(got, softmax_focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction=reduction))


def test_unknown_modulator_rejected():
    with pytest.raises(ValueError, match="cos, exp, exp_sq"):
        modulated_bce(X, Y, "tanh")
    with pytest.raises(ValueError, match="modulator"):
        modulated_softmax_ce(X.view(1, 3), torch.tensor([0]), "tanh")


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    torch.manual_seed(3)
    x = (torch.randn(5, 3, dtype=torch.float64) * 2).requires_grad_()
    y = (torch.rand(5, 3) < 0.4).double()
    soft = torch.rand(5, 3, dtype=torch.float64)  # soft labels too
    assert torch.autograd.gradcheck(lambda v: modulated_bce(v, y, name, gamma=2.0, alpha=0.25), (x,))
    assert torch.autograd.gradcheck(lambda v: modulated_bce(v, soft, name, gamma=2.0), (x,))
    t = torch.tensor([0, 2, 1, -100, 2])
    assert torch.autograd.gradcheck(lambda v: modulated_softmax_ce(v, t, name, alpha=[0.5, 1.0, 2.0]), (x,))
    assert torch.autograd.gradcheck(lambda v: poly1_focal_loss(v, y, epsilon=1.0), (x,))
    assert torch.autograd.gradcheck(lambda v: poly1_focal_loss(v, soft, epsilon=-0.5, gamma=0.5), (x,))


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extreme_logits(name):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])  # easy, easy, wrong by 1e4, wrong by 1e4
    for loss in (modulated_bce(x, y, name, alpha=0.25), poly1_focal_loss(x, y)):
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
        assert loss[0].item() == pytest.approx(0.0, abs=1e-6) and loss[2].item() > 1e3
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = modulated_softmax_ce(logits, torch.tensor([0, 0]), name, reduction="sum")
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and loss > 1e3


def test_classification_loss_dispatch():
    torch.manual_seed(4)
    x, y = torch.randn(8, 3), (torch.rand(8, 3) < 0.3).float()
    torch.testing.assert_close(classification_loss("modulated", x, y, 0.25, 2.0, 1.0, modulator="exp_sq"),
                               modulated_bce(x, y, "exp_sq", alpha=0.25))
    assert torch.equal(classification_loss("modulated", x, y, 0.25, 2.0, 1.0),
                       classification_loss("focal", x, y, 0.25, 2.0, 1.0))  # default modulator: power
    torch.testing.assert_close(classification_loss("poly1_focal", x, y, 0.25, 2.0, 1.0, poly_epsilon=0.5),
                               poly1_focal_loss(x, y, epsilon=0.5))


def test_config_validates_modulator_and_reaches_the_criterion():
    from retinanet.build import build_criterion
    with pytest.raises(ConfigError, match=r"model\.loss\.modulator.*'tanh'"):
        load_config(None, ["model.loss.modulator=tanh"])
    with pytest.raises(ConfigError, match=r"model\.loss\.cls_loss"):
        load_config(None, ["model.loss.cls_loss=poly2"])
    cfg = load_config(None, ["model.num_classes=2", "model.backbone.name=resnet18", "model.loss.cls_loss=modulated",
                             "model.loss.modulator=exp", "model.loss.poly_epsilon=0.5"])
    assert cfg.model.loss.modulator == "exp" and load_config().model.loss.modulator == "power"
    crit = build_criterion(cfg)
    chosen = crit.class_loss.keywords  # build_criterion's dense_class_loss(...)
    assert (chosen["kind"], chosen["modulator"], chosen["poly_epsilon"]) == ("modulated", "exp", 0.5)


def test_criterion_uses_the_modulator_and_epsilon():
    from retinanet.box_coder import BoxCoder
    from retinanet.criterion import RetinaNetLoss, dense_class_loss
    from retinanet.matcher import Matcher
    from retinanet.outputs import DenseOutputs
    # 3 anchors, one gt of class 1 on anchor 0; anchors 1 and 2 are background. 2 classes.
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]])
    out = DenseOutputs(torch.tensor([[[0.0, LN3], [-LN3, 0.0], [1.0, -1.0]]]), torch.zeros(1, 3, 4), anchors, [3])
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    one_hot = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])

    def cls(cls_loss: str, **kw) -> float:
        crit = RetinaNetLoss(Matcher(0.5, 0.4, True), BoxCoder(), dense_class_loss(cls_loss, **kw))
        return crit(out, targets, gamma=2.0)["loss_cls"].item()

    # One foreground anchor: the normaliser is 1, so loss_cls is the plain sum over the 6 entries.
    expected_cos = modulated_bce(out.cls_logits, one_hot, "cos", alpha=0.25).sum().item()
    assert cls(cls_loss="modulated", modulator="cos") == pytest.approx(expected_cos, rel=1e-6)
    # Default modulator: power, the focal loss (equal up to float rounding).
    assert cls(cls_loss="modulated") == pytest.approx(cls(cls_loss="focal"), rel=1e-6)
    expected_poly = poly1_focal_loss(out.cls_logits, one_hot, epsilon=0.5).sum().item()
    assert cls(cls_loss="poly1_focal", poly_epsilon=0.5) == pytest.approx(expected_poly, rel=1e-6)
    assert cls(cls_loss="poly1_focal", poly_epsilon=0.5) > cls(cls_loss="focal")
