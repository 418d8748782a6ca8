"""The acceptance test: torchvision RetinaNet weights give torchvision's detections through our Detector.

Random torchvision weights with the class bias set to 0 (so that scores sit near 0.5 and every image
has hundreds of detections to compare), saved as a plain torchvision state dict, loaded by
``Detector.from_config(<torchvision config>, weights=...)``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from retinanet.detector import Detector
from retinanet.export import compare_detections
from retinanet.preprocess import read_image, to_float_tensor

from conftest import TV_CONFIGS, shared_images


def _images() -> list[torch.Tensor]:
    """Real photos of different sizes when /work/shared is there, else generated ones."""
    paths = shared_images("raccoon", 3) + shared_images("bccd", 1)
    if len(paths) >= 3:
        return [to_float_tensor(read_image(p)) for p in paths]
    g = torch.Generator().manual_seed(0)
    images = []
    for h, w in [(480, 640), (333, 500), (500, 281), (256, 256)]:
        # smooth blobs rather than white noise: closer to a photo's statistics
        low = torch.rand(3, h // 16 + 1, w // 16 + 1, generator=g)
        images.append(torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear")[0].clamp(0, 1))
    return images


def _tie_order(d: dict) -> torch.Tensor:
    """Order by decreasing score, then box and label: only reorders detections whose scores are
    exactly equal, which NMS may emit in either order."""
    keys = torch.cat([d["boxes"], d["labels"][:, None].float()], 1).T.flip(0).numpy()
    return torch.from_numpy(np.lexsort(np.concatenate([keys, -d["scores"][None].numpy()]))).long()


def _compare(ours: list[dict], ref: list[dict], category_ids: torch.Tensor) -> None:
    for o, r in zip(ours, ref):
        assert len(o["boxes"]) == len(r["boxes"]) > 0
        assert (o["scores"] - r["scores"]).abs().max().item() <= 1e-5  # in order, ties or not
        io, ir = _tie_order(o), _tie_order(r)
        assert torch.equal(o["labels"][io], category_ids[r["labels"][ir]])
        assert (o["boxes"][io] - r["boxes"][ir]).abs().max().item() <= 0.01


def _compare_sets(ours: list[dict], ref: list[dict], category_ids: torch.Tensor) -> None:
    """The fast default path (BatchNorm folded, channels_last: float rounding differs by ~1e-7, so
    near-ties may swap): the same detections as sets, boxes within 0.05 px, scores within 1e-4."""
    for o, r in zip(ours, ref):
        ok, box, score = compare_detections({**r, "labels": category_ids[r["labels"]]}, o, 0.05, 1e-4)
        assert ok and len(o["boxes"]) > 0, (box, score)


def _check(det: Detector, images: list[torch.Tensor], ref: list[dict], category_ids: torch.Tensor,
           batch_size: int = 1) -> None:
    """The reference path (``model.fast: false``) bit for bit up to tie order; the default path as sets."""
    _compare_sets(det.predict(images, batch_size=batch_size), ref, category_ids)
    det.fast = False
    _compare(det.predict(images, batch_size=batch_size), ref, category_ids)


def _detector(tv: torch.nn.Module, config, tmp_path, overrides=()) -> Detector:
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    return Detector.from_config(config, weights=path, device="cpu", overrides=list(overrides))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet50_fpn_equals_torchvision(version, tmp_path):
    if version == "v1":
        tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
        config = TV_CONFIGS / "retinanet_resnet50_fpn_coco.yaml"
    else:
        tv = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)
        config = TV_CONFIGS / "retinanet_resnet50_fpn_v2_coco.yaml"
    tv.eval()
    torch.nn.init.zeros_(tv.head.classification_head.cls_logits.bias)
    ids = torch.arange(91)
    images = _images()
    # The most nearly square image for the default size: the cheapest 800-px forward.
    images.sort(key=lambda im: max(im.shape[1:]) / min(im.shape[1:]))
    with torch.no_grad():
        # One default-size (800 / 1333) forward...
        det = _detector(tv, config, tmp_path)
        _check(det, images[:1], tv(images[:1]), ids)
        # ...and one smaller batch of different sizes and aspect ratios (one padded batch each side).
        tv.transform.min_size, tv.transform.max_size = (288,), 480
        det = _detector(tv, config, tmp_path, ["input.min_size_test=288", "input.max_size_test=480"])
        _check(det, images[1:], tv(images[1:]), ids, batch_size=len(images))


@pytest.mark.parametrize("min_size, max_size", [(128, 200), (96, 300)])
def test_resnet18_fpn_equals_torchvision(tiny_cfg, tmp_path, min_size, max_size):
    # The same check with a small backbone and a 64-channel FPN/head, at more sizes and aspect ratios
    # (v1 geometry: P6 from P5). FrozenBN as in torchvision's pretrained models.
    body = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 64,
                               extra_blocks=LastLevelP6P7(64, 64))
    tv = torchvision.models.detection.RetinaNet(backbone, num_classes=3, min_size=min_size, max_size=max_size).eval()
    torch.nn.init.zeros_(tv.head.classification_head.cls_logits.bias)
    # This small random net's logits spread only ~1e-3: scores then tie exactly in float32 and tied
    # detections may come out in either order. A wider class layer makes the order well defined.
    torch.nn.init.normal_(tv.head.classification_head.cls_logits.weight, std=0.5)
    cfg = tiny_cfg("model.fpn.channels=64", "model.fpn.p6_from=p5", "model.anchors.torchvision_compat=true",
                   "model.test.detections_per_img=300", "input.size_divisible=32",
                   f"input.min_size_test={min_size}", f"input.max_size_test={max_size}")
    g = np.random.default_rng(min_size)
    images = [torch.from_numpy(g.random((3, h, w), dtype=np.float32)) for h, w in [(120, 170), (97, 61), (200, 200)]]
    det = _detector(tv, cfg, tmp_path)
    with torch.no_grad():
        _check(det, images, tv(images), torch.tensor([1, 5, 9]), batch_size=3)
        det.fast = True
        _check(det, images[1:2], tv(images[1:2]), torch.tensor([1, 5, 9]))
