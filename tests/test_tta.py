"""Test-time augmentation: merge of flipped and rescaled views before NMS."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder
from retinanet.build import build_model
from retinanet.detector import Detector
from retinanet.outputs import DenseOutputs
from retinanet.tta import hflip_boxes, predict_tta, tta_views


class BrightBoxModel(nn.Module):
    """An exact, flip-equivariant 'detector' of the one bright rectangle in the image: every anchor's
    deltas decode to the rectangle's box and its class-0 score rises with its IoU with that box."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.anchors, self.coder, self.num_classes = AnchorGenerator(), BoxCoder(), num_classes

    def forward(self, images: torch.Tensor) -> DenseOutputs:
        n, _, h, w = images.shape
        grids = [(-(-h // s), -(-w // s)) for s in self.anchors.strides]
        anchors = self.anchors((h, w), grids, images.device)
        boxes = []
        for im in images:
            ys, xs = torch.nonzero(im[0] > 0.06, as_tuple=True)  # halfway between black and white, normalised
            boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
        boxes = torch.stack(boxes)  # (N, 4)
        deltas = self.coder.encode(anchors[None].expand(n, -1, -1), boxes[:, None].expand(-1, len(anchors), -1))
        logits = torch.full((n, len(anchors), self.num_classes), -10.0)
        logits[..., 0] = 20 * (box_iou(boxes, anchors) - 0.5)
        return DenseOutputs(logits, deltas, anchors, [gh * gw * self.anchors.num_anchors for gh, gw in grids])


def _image(x1: int, x2: int, h: int = 80, w: int = 100) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[20:60, x1:x2] = 255
    return img


def _oracle(tiny_cfg, *overrides):
    cfg = tiny_cfg("input.min_size_test=128", "input.max_size_test=200", "evaluation.tta_min_sizes=[96,128,160]",
                   *overrides)
    return Detector(BrightBoxModel(), cfg, "cpu")


def test_views():
    assert tta_views(800, 1333, [640, 1000]) == [(640, 1333, False), (640, 1333, True), (1000, 1667, False),
                                                 (1000, 1667, True)]
    assert tta_views(128, 160, (), flip=False) == [(128, 160, False)]


def test_hflip_boxes_is_an_involution():
    b = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    assert hflip_boxes(b, 100).tolist() == [[70.0, 5.0, 90.0, 25.0]]
    torch.testing.assert_close(hflip_boxes(hflip_boxes(b, 100), 100), b)


def test_symmetric_input_keeps_box_coordinates(tiny_cfg):
    detector = _oracle(tiny_cfg)
    image = _image(30, 70)  # symmetric about the vertical centre line
    plain = detector.predict(image)
    merged = predict_tta(detector, [image])[0]
    _same(detector.predict(image, tta=True), merged)  # the Detector's switch: the same TTA and return type
    _same(detector.predict([image], tta=True)[0], merged)
    assert len(plain["boxes"]) == len(merged["boxes"]) == 1
    torch.testing.assert_close(plain["boxes"], torch.tensor([[30.0, 20.0, 70.0, 60.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(merged["boxes"], plain["boxes"], atol=1.0, rtol=0)
    assert merged["labels"].tolist() == [1] and merged["names"] == ["cat"]
    # The flipped view alone, mapped back, gives the same box: resize and flip commute exactly.
    flipped = predict_tta(detector, [image], views=[(128, 200, True)])[0]
    torch.testing.assert_close(flipped["boxes"], plain["boxes"], atol=0.1, rtol=0)


def test_flipped_views_are_mapped_back(tiny_cfg):
    # A box off-centre: a view that is not un-flipped would add a mirrored detection at x 60..90.
    detector = _oracle(tiny_cfg)
    merged = predict_tta(detector, [_image(10, 40), _image(55, 95, w=120)], batch_size=2)
    torch.testing.assert_close(merged[0]["boxes"], torch.tensor([[10.0, 20.0, 40.0, 60.0]]), atol=1.0, rtol=0)
    torch.testing.assert_close(merged[1]["boxes"], torch.tensor([[55.0, 20.0, 95.0, 60.0]]), atol=1.0, rtol=0)


def test_single_view_equals_predict(tiny_cfg):
    cfg = tiny_cfg("model.head.prior_init=false", "model.head.num_convs=1", "evaluation.tta_flip=false",
                   "model.test.topk_candidates=300")
    detector = Detector(build_model(cfg), cfg, "cpu")
    images = [np.random.RandomState(i).randint(0, 255, (90 + 20 * i, 120, 3)).astype(np.uint8) for i in range(2)]
    expected, got = detector.predict(images), predict_tta(detector, images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == len(g["boxes"]) == cfg.model.test.detections_per_img
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"])
        assert g["labels"].tolist() == e["labels"].tolist() and g["names"] == e["names"]


def _same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    assert a["labels"].tolist() == b["labels"].tolist() and a["names"] == b["names"]
