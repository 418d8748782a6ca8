from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torchvision.ops
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead as TVHead

from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder
from retinanet.config_loader import load_config
from retinanet.criterion import RetinaNetLoss, dense_class_loss
from retinanet.fast.focal import sparse_focal_loss
from retinanet.matcher import Matcher
from retinanet.build import build_criterion, build_model
from retinanet.outputs import DenseOutputs

from conftest import TV_CONFIGS

K = 4


def _criterion(cls_loss: str = "focal", **kw) -> RetinaNetLoss:
    return RetinaNetLoss(Matcher(0.5, 0.4, True), BoxCoder(), dense_class_loss(cls_loss), **kw)


def _dense(n: int, size=(160, 224), scale: float = 1.0) -> DenseOutputs:
    grids = [(-(-size[0] // s), -(-size[1] // s)) for s in (8, 16, 32, 64, 128)]
    anchors = AnchorGenerator(torchvision_compat=True)(size, grids, torch.device("cpu"))
    r = anchors.shape[0]
    return DenseOutputs(torch.randn(n, r, K) * 2 * scale, torch.randn(n, r, 4) * 0.3 * scale, anchors,
                        [h * w * 9 for h, w in grids])


def _targets() -> list[dict]:
    return [
        {"boxes": torch.tensor([[10.0, 20, 60, 90], [100, 40, 200, 150], [30, 30, 45, 50]]), "labels": torch.tensor([1, 3, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[0.0, 0, 224, 160]]), "labels": torch.tensor([2])},
    ]


def _torchvision_loss(out: DenseOutputs, targets: list[dict], loss_type: str) -> dict:
    head = TVHead(8, 9, K)
    head.regression_head._loss_type = loss_type
    fake = SimpleNamespace(proposal_matcher=TVMatcher(0.5, 0.4, True), head=head)
    head_outputs = {"cls_logits": out.cls_logits, "bbox_regression": out.box_deltas}
    return TVRetinaNet.compute_loss(fake, targets, head_outputs, [out.anchors] * len(targets))


@pytest.mark.parametrize("box_loss", ["l1", "giou"])  # torchvision v1 and v2
def test_equals_torchvision_compute_loss(box_loss):
    out, targets = _dense(3), _targets()
    expected = _torchvision_loss(out, targets, box_loss)
    got = _criterion(box_loss=box_loss, normalize="image")(out, targets, gamma=2.0)
    torch.testing.assert_close(got["loss_cls"], expected["classification"])
    torch.testing.assert_close(got["loss_box"], expected["bbox_regression"])
    assert got["num_fg"].item() > 0


@pytest.mark.parametrize("name, box_loss", [("retinanet_resnet50_fpn_coco", "l1"), ("retinanet_resnet50_fpn_v2_coco", "giou")])
def test_build_criterion_from_torchvision_configs(name, box_loss):
    cfg = load_config(TV_CONFIGS / f"{name}.yaml", ["model.num_classes=4", "model.category_ids=[]", "model.class_names=[]"])
    crit = build_criterion(cfg)
    assert (crit.box_loss, crit.normalize) == (box_loss, "image")
    out, targets = _dense(3), _targets()
    expected = _torchvision_loss(out, targets, box_loss)
    got = crit(out, targets, gamma=2.0)
    torch.testing.assert_close(got["loss_cls"] + got["loss_box"], expected["classification"] + expected["bbox_regression"])


@pytest.mark.parametrize("normalize", ["batch", "image", "ema"])
def test_empty_image(normalize):
    out = _dense(1)
    got = _criterion(normalize=normalize)(out, [_targets()[1]], gamma=2.0)
    assert got["loss_box"].item() == 0.0 and torch.isfinite(got["loss_cls"]) and got["loss_cls"] > 0
    assert got["num_fg"].item() == 0


def test_empty_image_gradient_is_finite():
    out = _dense(1)
    out.cls_logits.requires_grad_(True)
    out.box_deltas.requires_grad_(True)
    loss = _criterion()(out, [_targets()[1]], gamma=2.0)
    (loss["loss_cls"] + loss["loss_box"]).backward()
    assert torch.isfinite(out.cls_logits.grad).all() and torch.all(out.box_deltas.grad == 0)


def _hand_setup():
    """4 anchors; image 0: one gt on anchor 0; image 1: gts on anchors 1 and 2; anchor 3 is background."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [100, 100, 110, 110]])
    out = DenseOutputs(torch.randn(2, 4, K), torch.randn(2, 4, 4) * 0.1, anchors, [4])
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 11]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[20.0, 0, 31, 10], [40, 0, 50, 10]]), "labels": torch.tensor([0, 3])}]
    one_hot = torch.zeros(2, 4, K)
    one_hot[0, 0, 2] = one_hot[1, 1, 0] = one_hot[1, 2, 3] = 1
    cls = torchvision.ops.sigmoid_focal_loss(out.cls_logits, one_hot).sum(dim=(1, 2))  # per image
    coder = BoxCoder()
    box = torch.stack([  # L1, the default box loss
        (out.box_deltas[0, :1] - coder.encode(anchors[:1], targets[0]["boxes"])).abs().sum(),
        (out.box_deltas[1, 1:3] - coder.encode(anchors[1:3], targets[1]["boxes"])).abs().sum(),
    ])
    return out, targets, cls, box, torch.tensor([1.0, 2.0])


def test_batch_and_image_normalisation_by_hand():
    out, targets, cls, box, num_fg = _hand_setup()
    batch = _criterion(normalize="batch")(out, targets, gamma=2.0)
    torch.testing.assert_close(batch["loss_cls"], cls.sum() / 3)
    torch.testing.assert_close(batch["loss_box"], box.sum() / 3)
    image = _criterion(normalize="image")(out, targets, gamma=2.0)
    torch.testing.assert_close(image["loss_cls"], (cls / num_fg).mean())
    torch.testing.assert_close(image["loss_box"], (box / num_fg).mean())
    weighted = _criterion(normalize="batch", box_weight=2.5)(out, targets, gamma=2.0)
    torch.testing.assert_close(weighted["loss_box"], 2.5 * box.sum() / 3)


def test_smooth_l1_box_loss_by_hand():
    out, targets, _, _, _ = _hand_setup()
    coder = BoxCoder()
    pred = torch.cat([out.box_deltas[0, :1], out.box_deltas[1, 1:3]])
    target = torch.cat([coder.encode(out.anchors[:1], targets[0]["boxes"]),
                        coder.encode(out.anchors[1:3], targets[1]["boxes"])])
    for beta in (0.1, 0.5):
        got = _criterion(box_loss="smooth_l1", smooth_l1_beta=beta)(out, targets, gamma=2.0)["loss_box"]
        diff = (pred - target).abs()
        expected = torch.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).sum() / 3
        torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, _criterion()(out, targets, gamma=2.0)["loss_box"])  # differs from the L1 default


def test_ema_normaliser():
    out, targets, cls, box, _ = _hand_setup()
    crit = _criterion(normalize="ema", ema_momentum=0.9)
    assert crit.ema_normalizer.item() == 100.0
    first = crit(out, targets, gamma=2.0)  # training mode: 0.9 * 100 + 0.1 * 3 = 90.3
    torch.testing.assert_close(crit.ema_normalizer, torch.tensor(90.3))
    torch.testing.assert_close(first["loss_cls"], cls.sum() / 90.3)
    torch.testing.assert_close(first["loss_box"], box.sum() / 90.3)
    crit(out, targets, gamma=2.0)
    torch.testing.assert_close(crit.ema_normalizer, torch.tensor(0.9 * 90.3 + 0.3))
    crit.eval()
    before = crit.ema_normalizer.clone()
    crit(out, targets, gamma=2.0)
    assert torch.equal(crit.ema_normalizer, before)  # evaluation does not move the running count
    assert "ema_normalizer" in crit.state_dict()  # resumed with the checkpoint


def test_crowd_anchors_are_ignored():
    out, targets, *_ = _hand_setup()
    crowd = [dict(targets[0], crowd_boxes=torch.tensor([[95.0, 95, 120, 120]])), targets[1]]
    base = _criterion()(out, crowd, gamma=2.0)
    changed = DenseOutputs(out.cls_logits.clone(), out.box_deltas, out.anchors, out.level_sizes)
    changed.cls_logits[0, 3] += 5.0  # anchor 3 of image 0 lies inside the crowd box
    assert torch.equal(_criterion()(changed, crowd, gamma=2.0)["loss_cls"], base["loss_cls"])
    crit = _criterion()
    assert not torch.equal(crit(changed, targets, gamma=2.0)["loss_cls"], crit(out, targets, gamma=2.0)["loss_cls"])


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="cls_loss"):
        _criterion(cls_loss="softmax")
    with pytest.raises(ValueError, match="box_loss"):
        _criterion(box_loss="iou")
    with pytest.raises(ValueError, match="normalize"):
        _criterion(normalize="images")


@pytest.mark.parametrize("cls_loss", ["focal", "focal_star", "bce", "alpha_bce"])
def test_every_class_loss_runs(cls_loss):
    out, targets, *_ = _hand_setup()
    got = _criterion(cls_loss=cls_loss)(out, targets, gamma=2.0)
    assert torch.isfinite(got["loss_cls"]) and got["loss_cls"] > 0


def test_gamma_per_call():
    out, targets, *_ = _hand_setup()
    crit = _criterion()
    ce = _criterion(cls_loss="alpha_bce")(out, targets, gamma=2.0)["loss_cls"]  # alpha-CE ignores gamma
    torch.testing.assert_close(crit(out, targets, gamma=0.0)["loss_cls"], ce)
    assert not torch.allclose(crit(out, targets, gamma=2.0)["loss_cls"], ce)


def test_bf16_autocast_gives_fp32_finite_losses(tiny_cfg):
    cfg = tiny_cfg()
    model, crit = build_model(cfg), build_criterion(cfg)
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 128, 128))
        assert out.cls_logits.dtype == torch.bfloat16  # autocast is active in the model
        losses = crit(out, targets, gamma=2.0)
    assert losses["loss_cls"].dtype == losses["loss_box"].dtype == torch.float32
    assert torch.isfinite(losses["loss_cls"]) and torch.isfinite(losses["loss_box"])
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("normalize", ["batch", "image", "ema"])
def test_sparse_focal_equals_dense_path(normalize, gamma):
    """The default focal loss runs sparse; the dense one-hot path it replaced gives the same losses and gradients."""
    targets = _targets()
    targets[0]["crowd_boxes"] = torch.tensor([[150.0, 100, 220, 160]])  # ignored anchors
    base = _dense(3, scale=2.0)
    results = []
    for class_loss in (sparse_focal_loss, dense_class_loss("focal")):
        out = DenseOutputs(base.cls_logits.clone().requires_grad_(True), base.box_deltas.clone().requires_grad_(True),
                           base.anchors, base.level_sizes)
        crit = RetinaNetLoss(Matcher(0.5, 0.4, True), BoxCoder(), class_loss, normalize=normalize)
        losses = [crit(out, targets, gamma=gamma) for _ in range(2)]  # twice: the EMA moves
        sum(v["loss_cls"] + v["loss_box"] for v in losses).backward()
        results.append(([v[k] for v in losses for k in ("loss_cls", "loss_box", "num_fg")],
                        out.cls_logits.grad, out.box_deltas.grad, crit.ema_normalizer))
    (values, g_cls, g_box, ema), (values_ref, g_cls_ref, g_box_ref, ema_ref) = results
    assert values[2] > 0
    for got, expected in zip(values, values_ref):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_cls, g_cls_ref)
    torch.testing.assert_close(g_box, g_box_ref)
    torch.testing.assert_close(ema, ema_ref)
