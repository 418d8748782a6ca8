"""ONNX (onnxruntime) and TorchScript round trips with dynamic image sizes, and `retinanet export`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_coco

from retinanet.build import build_anchor_generator, build_model
from retinanet.cli import main
from retinanet.detector import Detector
from retinanet.export import ExportableRetinaNet, compare_detections, export_model
from retinanet.runtime import LevelOutputsModel, load_exported

CATS = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]


def _images() -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    return [rng.randint(0, 255, shape).astype(np.uint8) for shape in ((100, 150, 3), (210, 90, 3), (64, 64, 3))]


def _assert_same(expected: list[dict], got: list[dict]) -> None:
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == len(g["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-2, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
        assert g["labels"].tolist() == e["labels"].tolist() and g["names"] == e["names"]


@pytest.fixture
def detector(tiny_cfg) -> Detector:
    cfg = tiny_cfg("model.head.prior_init=false", "model.head.num_convs=1", "model.test.detections_per_img=50",
                   "model.test.topk_candidates=200", "model.category_ids=[1,5,9]", "model.class_names=[cat,dog,bird]")
    return Detector(build_model(cfg), cfg, "cpu")


def test_level_outputs_rebuild_dense_outputs(detector):
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        ref = detector.model(x)
        got = LevelOutputsModel(ExportableRetinaNet(detector.model), build_anchor_generator(detector.cfg))(x)
    torch.testing.assert_close(got.cls_logits, ref.cls_logits)
    torch.testing.assert_close(got.box_deltas, ref.box_deltas)
    torch.testing.assert_close(got.anchors, ref.anchors)
    assert got.level_sizes == ref.level_sizes


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_round_trip_dynamic_sizes(detector, tmp_path, fmt, suffix):
    detector.model.train()
    path = export_model(detector, tmp_path / f"model{suffix}", fmt)
    assert detector.model.training  # exporting traced a copy: the caller's model keeps its mode
    detector.model.eval()
    exported = load_exported(path)
    assert exported.categories == CATS and exported.cfg == detector.cfg
    images = _images()
    # a batch of two sizes (one padded shape), then a third size alone: sizes differ from the traced one
    _assert_same(detector.predict(images[:2], batch_size=2), exported.predict(images[:2], batch_size=2))
    _assert_same(detector.predict(images[2:]), exported.predict(images[2:]))


def test_export_command(tmp_path, capsys):
    images, ann = make_coco(tmp_path, 1)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    out = tmp_path / "m.onnx"
    # The Winograd graph (--winograd, ten times the export time) is test_winograd.py's.
    assert main(["export", "--config", str(config), "--weights", str(ckpt), "--format", "onnx", "--output", str(out)]) == 0
    assert "ok" in capsys.readouterr().err
    exported = load_exported(out)
    assert [c["id"] for c in exported.categories] == [3, 7]
    assert main(["export", "--weights", str(tmp_path / "none.pth"), "--output", str(out)]) == 2
    assert "none.pth" in capsys.readouterr().err
    with pytest.raises(ValueError, match="retinanet_config"):
        import onnx
        model = onnx.load(str(out))
        del model.metadata_props[:]
        onnx.save(model, str(tmp_path / "plain.onnx"))
        load_exported(tmp_path / "plain.onnx")


def test_compare_detections_allows_swapped_ties():
    boxes = torch.tensor([[0.0, 0, 10, 10], [300, 300, 400, 400], [5, 5, 50, 50]])
    ref = {"boxes": boxes, "scores": torch.tensor([0.9, 0.9, 0.5]), "labels": torch.tensor([1, 1, 2])}
    swapped = {"boxes": boxes[[1, 0, 2]] + 1e-3, "scores": torch.tensor([0.9, 0.9 + 6e-7, 0.5]),
               "labels": torch.tensor([1, 1, 2])}
    ok, box, score = compare_detections(ref, swapped)
    assert ok and box == pytest.approx(1e-3, abs=1e-5) and score < 1e-6
    assert not compare_detections(ref, {**swapped, "labels": torch.tensor([1, 2, 2])})[0]
    assert not compare_detections(ref, {k: v[:2] for k, v in swapped.items()})[0]
    moved = {**swapped, "boxes": swapped["boxes"] + torch.tensor([0.0, 0, 0, 0.5])}
    assert not compare_detections(ref, moved)[0]
