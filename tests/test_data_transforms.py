from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from retinanet.config import InputConfig
from retinanet.data import build_transforms
from retinanet.preprocess import resize_scale

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    # Smooth content: bilinear resizers then agree closely, whatever their rounding.
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in rng.uniform(0, 3, 3)], -1)
    return ((img + 1) * 127.5).astype(np.uint8)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


@pytest.mark.parametrize("hw, min_size, max_size", [
    ((480, 640), 800, 1333), ((640, 480), 800, 1333), ((300, 1000), 800, 1333), ((1000, 200), 600, 1000),
    ((37, 59), 128, 160), ((123, 77), 100, 1000), ((800, 1333), 800, 1333), ((500, 375), 640, 1333)])
def test_transform_at_one_size_matches_torchvision_resize(hw, min_size, max_size):
    h, w = hw
    cfg = InputConfig(min_size_train=min_size, max_size_train=max_size, flip_prob=0.0, pixel_mean=MEAN, pixel_std=STD)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9]], np.float32)
    crowd = np.array([[1, 2, 3, 4]], np.float32)
    img = _image(h, w)
    out, out_boxes, labels, out_crowd = build_transforms(cfg)(img, boxes, np.array([3, 1]), crowd, None)

    ref_t = GeneralizedRCNNTransform(min_size, max_size, list(MEAN), list(STD)).eval()
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    ref, target = ref_t.resize(ref_t.normalize(x), {"boxes": torch.from_numpy(boxes)})
    assert out.shape == ref.shape and out.dtype == torch.float32
    scale = resize_scale(h, w, min_size, max_size)
    assert out.shape[-2:] == (int(h * scale), int(w * scale))
    # cv2 on uint8 vs torch on float: same bilinear sampling, up to uint8 rounding (~0.5/255/std).
    assert (out - ref).abs().mean() < 0.008 and (out - ref).abs().max() < 0.03
    torch.testing.assert_close(out_boxes, target["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out_crowd, torch.from_numpy(crowd) * torch.tensor(
        [out.shape[2] / w, out.shape[1] / h] * 2), atol=1e-3, rtol=1e-4)
    assert labels.tolist() == [3, 1] and labels.dtype == torch.int64


def test_normalisation_uses_pixel_mean_and_std():
    img = np.full((32, 32, 3), (255, 0, 51), np.uint8)
    cfg = InputConfig(min_size_train=32, max_size_train=32, flip_prob=0.0, pixel_mean=(0.5, 0.25, 0.2),
                      pixel_std=(0.5, 0.25, 0.1))
    out = build_transforms(cfg)(img, *_empty(), np.zeros((0, 4), np.float32), None)[0]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, 0.0]), atol=1e-5, rtol=0)


def test_train_sizes_follow_the_rule_for_every_min_size():
    cfg = InputConfig(min_size_train=(64, 80, 96), max_size_train=180, flip_prob=0.0)
    t = build_transforms(cfg)
    h, w = 50, 100  # max_size binds only for 96: long side would be 192 > 180
    expected = {(int(h * s), int(w * s)) for s in (resize_scale(h, w, m, 180) for m in (64, 80, 96))}
    seen = {tuple(t(_image(h, w), *_empty(), np.zeros((0, 4), np.float32), seed)[0].shape[-2:]) for seed in range(40)}
    assert seen == expected == {(64, 128), (80, 160), (90, 180)}


def test_flip_moves_image_and_boxes():
    h, w = 40, 60
    img = _image(h, w)
    cfg = InputConfig(min_size_train=40, max_size_train=60, flip_prob=1.0, pixel_mean=MEAN, pixel_std=STD)
    boxes = np.array([[5, 4, 20, 30], [40, 0, 60, 10]], np.float32)
    crowd = np.array([[0, 0, 10, 40]], np.float32)
    out, out_boxes, labels, out_crowd = build_transforms(cfg)(img, boxes, np.array([0, 2]), crowd, 0)
    ref = (torch.from_numpy(img[:, ::-1].copy()).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]) \
        / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_boxes, torch.tensor([[40.0, 4, 55, 30], [0, 0, 20, 10]]))
    torch.testing.assert_close(out_crowd, torch.tensor([[50.0, 0, 60, 40]]))
    assert labels.tolist() == [0, 2]


def test_transform_without_random_ops_is_deterministic():
    cfg = InputConfig(min_size_train=48, max_size_train=100, flip_prob=0.0, color_jitter=0.0)
    t = build_transforms(cfg)
    img, boxes = _image(40, 60), np.array([[5, 4, 20, 30]], np.float32)
    a = t(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), None)
    b = t(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), 123)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    torch.testing.assert_close(a[1], torch.tensor([[6.0, 4.8, 24, 36]]))  # scale 1.2, no flip


def test_seeded_train_transform_is_reproducible_and_varies():
    cfg = InputConfig(min_size_train=(32, 40, 48), max_size_train=100, flip_prob=0.5, color_jitter=0.8)
    img, boxes = _image(40, 60), np.array([[5, 4, 20, 30]], np.float32)
    t1, t2 = build_transforms(cfg), build_transforms(cfg)
    results = []
    for seed in range(16):
        a = t1(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), seed)
        t2(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), seed + 100)  # other state in between
        b = t2(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), seed)
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        results.append(a)
    assert len({r[0].shape for r in results}) == 3  # every scale drawn
    assert len({r[1][0, 0].item() > 20 for r in results}) == 2  # flipped and not flipped


def test_boxes_degenerate_after_transform_are_dropped_with_their_labels():
    cfg = InputConfig(min_size_train=20, max_size_train=30, flip_prob=0.0)  # scale 0.5
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5.01, 20], [20, 20, 30, 30]], np.float32)
    crowd = np.array([[1, 1, 1.001, 9], [2, 2, 8, 8]], np.float32)
    _, out_boxes, labels, out_crowd = build_transforms(cfg)(_image(40, 60), boxes, np.array([0, 1, 2]),
                                                                         crowd, None)
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 0, 5, 5], [10, 10, 15, 15]]))
    assert labels.tolist() == [0, 2]
    torch.testing.assert_close(out_crowd, torch.tensor([[1.0, 1, 4, 4]]))


def test_colour_jitter_changes_pixels_not_boxes():
    base = InputConfig(min_size_train=40, max_size_train=60, flip_prob=0.0)
    jitter = InputConfig(min_size_train=40, max_size_train=60, flip_prob=0.0, color_jitter=1.0)
    img, boxes = _image(40, 60), np.array([[5, 4, 20, 30]], np.float32)
    a = build_transforms(base)(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), 3)
    b = build_transforms(jitter)(img, boxes, np.array([1]), np.zeros((0, 4), np.float32), 3)
    assert torch.equal(a[1], b[1]) and a[0].shape == b[0].shape and not torch.allclose(a[0], b[0])
