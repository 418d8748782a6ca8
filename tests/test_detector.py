from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.build import build_model, build_postprocessor
from retinanet.checkpoint import save_checkpoint
from retinanet.config_loader import to_dict
from retinanet.detector import Detector
from retinanet.postprocess import rescale_boxes
from retinanet.preprocess import preprocess


@pytest.fixture
def detector(tiny_cfg) -> Detector:
    # No prior bias: random weights then score ~0.5 everywhere, so there are detections to check.
    return Detector.from_config(tiny_cfg("model.head.prior_init=false"), device="cpu")


@pytest.fixture
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)


def _same(a: dict, b: dict) -> None:
    assert len(a["boxes"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    assert torch.equal(a["labels"], b["labels"]) and a["names"] == b["names"]


def test_every_input_type(detector, photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "p.png")
    ref = detector.predict(photo)
    assert isinstance(ref, dict) and set(ref) == {"boxes", "scores", "labels", "names"}
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    inputs = [tmp_path / "p.png", str(tmp_path / "p.png"), Image.fromarray(photo), chw, chw.float() / 255]
    batch = detector.predict(inputs, batch_size=len(inputs))
    assert isinstance(batch, list) and len(batch) == len(inputs)
    for r in batch:
        _same(r, ref)
    single = detector.predict(tmp_path / "p.png")
    assert isinstance(single, dict)
    _same(single, ref)
    assert isinstance(detector.predict([photo]), list)


def test_labels_names_and_original_pixel_boxes(detector, photo):
    out = detector.predict(photo)
    # The same pipeline by hand: preprocess, model, postprocess, rescale, then label -> category id.
    cfg = detector.cfg
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    batch, sizes = preprocess([image], cfg.input.min_size_test, cfg.input.max_size_test, cfg.input.pixel_mean,
                              cfg.input.pixel_std, cfg.input.size_divisible)
    assert sizes == [(96, 160)]  # short side 90 -> 128 would make the long side 213 > max_size 160
    with torch.no_grad():
        raw = build_postprocessor(cfg)(detector.model(batch), sizes)[0]
    ids, names = torch.tensor([1, 5, 9]), ["cat", "dog", "bird"]
    assert torch.equal(out["labels"], ids[raw["labels"]])
    assert out["names"] == [names[i] for i in raw["labels"].tolist()]
    assert set(out["labels"].tolist()) <= {1, 5, 9}
    h, w = sizes[0]
    torch.testing.assert_close(out["boxes"], raw["boxes"] * torch.tensor([150 / w, 90 / h, 150 / w, 90 / h]))
    assert (out["boxes"][:, 0::2] <= 150).all() and (out["boxes"][:, 1::2] <= 90).all()
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def test_score_threshold_filters(detector, photo):
    full = detector.predict(photo)
    cut = float(full["scores"].median())
    some = detector.predict(photo, score_thresh=cut)
    assert 0 < len(some["boxes"]) < len(full["boxes"]) and (some["scores"] > cut).all()
    assert len(some["names"]) == len(some["labels"])


def test_from_checkpoint_without_config(tiny_cfg, photo, tmp_path):
    cfg = tiny_cfg("model.head.prior_init=false")
    model = build_model(cfg)
    cats = [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}, {"id": 9, "name": "c"}]
    save_checkpoint(tmp_path / "m.pth", {"model": model.state_dict(), "config": to_dict(cfg), "categories": cats})
    det = Detector.from_config(None, weights=tmp_path / "m.pth", device="cpu")
    out = det.predict(photo)
    assert set(out["labels"].tolist()) <= {7, 8, 9} and set(out["names"]) <= {"a", "b", "c"}
    assert det.categories == cats and det.cfg.model.category_ids == (7, 8, 9)
    cfg_with_cats = tiny_cfg("model.head.prior_init=false", "model.category_ids=[7,8,9]", "model.class_names=[a,b,c]")
    _same(out, Detector(model, cfg_with_cats, "cpu").predict(photo))
    with pytest.raises(ValueError, match="a config is needed"):
        Detector.from_config(None)


def test_caller_model_keeps_its_mode(tiny_cfg, photo):
    """Prediction runs in eval mode (BatchNorm never learns val statistics) and hands the model
    back in the mode it had, submodule by submodule."""
    cfg = tiny_cfg("model.backbone.norm=bn", "model.backbone.freeze_at=0", "model.head.prior_init=false")
    model = build_model(cfg).train()
    model.head.eval()  # a mixed state must survive too
    bn = model.backbone.body.bn1
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    det = Detector(model, cfg, "cpu")
    assert model.training and not model.head.training
    a = det.predict(photo)
    assert model.training and bn.training and not model.head.training
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    _same(a, det.predict(photo))  # eval mode: deterministic, not batch statistics


def test_rescale_matches_hand_ratio():
    torch.testing.assert_close(rescale_boxes(torch.tensor([[64.0, 64, 128, 128]]), (128, 256), (64, 512)),
                               torch.tensor([[128.0, 32, 256, 64]]))
