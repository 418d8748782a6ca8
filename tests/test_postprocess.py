from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet

from retinanet.anchors import AnchorGenerator
from retinanet.box_coder import BoxCoder
from retinanet.outputs import DenseOutputs
from retinanet.postprocess import PostProcessor, rescale_boxes

K = 5


def _dense(n: int = 2, padded=(192, 256), logit_shift: float = -3.0) -> DenseOutputs:
    grids = [(-(-padded[0] // s), -(-padded[1] // s)) for s in (8, 16, 32, 64, 128)]
    anchors = AnchorGenerator(torchvision_compat=True)(padded, grids, torch.device("cpu"))
    r = anchors.shape[0]
    return DenseOutputs(torch.randn(n, r, K) * 2 + logit_shift, torch.randn(n, r, 4) * 0.5, anchors,
                        [h * w * 9 for h, w in grids])


def _torchvision(out: DenseOutputs, sizes, score_thresh=0.05, topk=1000, nms=0.5, per_img=300) -> list[dict]:
    # As RetinaNet.forward does: split head outputs and anchors by level, one anchor list per image.
    fake = SimpleNamespace(score_thresh=score_thresh, topk_candidates=topk, nms_thresh=nms, detections_per_img=per_img,
                           box_coder=TVBoxCoder(weights=(1.0, 1.0, 1.0, 1.0)))
    split = {"cls_logits": list(out.cls_logits.split(out.level_sizes, dim=1)),
             "bbox_regression": list(out.box_deltas.split(out.level_sizes, dim=1))}
    anchors = [list(out.anchors.split(out.level_sizes))] * out.cls_logits.shape[0]
    return TVRetinaNet.postprocess_detections(fake, split, anchors, sizes)


@pytest.mark.parametrize("score_thresh, topk, per_img", [(0.05, 1000, 300), (0.2, 50, 100), (0.5, 1000, 7)])
def test_equals_torchvision(score_thresh, topk, per_img):
    out, sizes = _dense(), [(180, 250), (192, 130)]
    expected = _torchvision(out, sizes, score_thresh, topk, 0.5, per_img)
    got = PostProcessor(BoxCoder(), score_thresh, topk, 0.5, per_img)(out, sizes)
    for g, e in zip(got, expected):
        assert len(g["boxes"]) == len(e["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])


def test_score_threshold_topk_and_limit():
    out, sizes = _dense(logit_shift=0.0), [(192, 256), (192, 256)]
    dets = PostProcessor(BoxCoder(), 0.3, 1000, 0.5, 100)(out, sizes)
    for d in dets:
        assert (d["scores"] > 0.3).all() and len(d["boxes"]) <= 100
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])  # sorted by decreasing score
    assert len(PostProcessor(BoxCoder(), 0.3, 1000, 0.5, 5)(out, sizes)[0]["boxes"]) == 5
    assert all(len(d["boxes"]) == 0 for d in PostProcessor(BoxCoder(), 0.9999, 1000, 0.5, 100)(out, sizes))
    boxes, scores, labels, keep = PostProcessor(BoxCoder(), 0.05, 20, 0.5, 100).candidates(out, sizes)
    assert boxes.shape == (2, 20 * 5, 4) and scores.shape == labels.shape == keep.shape == (2, 100)
    for level in range(5):  # each level contributes its own top 20 (anchor, class) pairs
        start, stop = sum(out.level_sizes[:level]), sum(out.level_sizes[: level + 1])
        level_scores = torch.sigmoid(out.cls_logits[0, start:stop]).flatten()
        torch.testing.assert_close(scores[0, level * 20:(level + 1) * 20], level_scores.topk(20).values)
    assert labels.min() >= 0 and labels.max() < K


def test_boxes_clipped_to_each_image():
    out = _dense(logit_shift=2.0)
    out.box_deltas[..., 2:] += 3.0  # huge boxes, certainly outside the image
    sizes = [(100, 150), (192, 60)]
    dets = PostProcessor(BoxCoder(), 0.05, 100, 0.5, 1000)(out, sizes)
    for d, (h, w) in zip(dets, sizes):
        b = d["boxes"]
        assert (b >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()
        assert (b[:, 2] == w).any() and (b[:, 3] == h).any()


def test_nms_is_class_aware():
    anchors = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10]])
    logits = torch.tensor([[[5.0, -9.0], [4.0, -9.0]]])  # two overlapping boxes of class 0
    out = DenseOutputs(logits, torch.zeros(1, 2, 4), anchors, [2])
    assert len(PostProcessor(BoxCoder())(out, [(20, 20)])[0]["boxes"]) == 1
    logits = torch.tensor([[[5.0, -9.0], [-9.0, 4.0]]])  # different classes: both kept
    out = DenseOutputs(logits, torch.zeros(1, 2, 4), anchors, [2])
    assert PostProcessor(BoxCoder())(out, [(20, 20)])[0]["labels"].tolist() == [0, 1]


def test_bf16_outputs_decode_in_fp32():
    out = _dense()
    out = DenseOutputs(out.cls_logits.bfloat16(), out.box_deltas.bfloat16(), out.anchors, out.level_sizes)
    d = PostProcessor(BoxCoder())(out, [(192, 256)] * 2)[0]
    assert d["boxes"].dtype == d["scores"].dtype == torch.float32


def test_rescale_boxes():
    boxes = torch.tensor([[10.0, 20, 30, 40]])
    torch.testing.assert_close(rescale_boxes(boxes, (100, 200), (50, 400)), torch.tensor([[20.0, 10, 60, 20]]))
