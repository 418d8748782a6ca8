"""Large images: crop training (albumentations' box-aware crops, visibility threshold, scale), and the
large-image example config from the CLI: train on crops, evaluate by tiles."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides
from retinanet.cli import main
from retinanet.config_loader import load_config
from retinanet.data.transforms import build_transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from large_scenes import make_large_scenes_coco  # noqa: E402


def _transform(*overrides: str):
    return build_transforms(load_config(None, ["input.flip_prob=0", *overrides]).input)


@pytest.mark.parametrize("background_prob", [0.0, 1.0])
def test_crops_keep_boxes_by_visible_fraction(background_prob):
    t = _transform("input.crop_train=128", "input.crop_min_visibility=0.6",
                   f"input.crop_background_prob={background_prob}")
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    boxes = np.array([[100, 100, 180, 160], [200, 150, 240, 210], [300, 20, 390, 110]], np.float32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cut = 0
    for seed in range(60):
        img, b, labels, _ = t(image, boxes, np.array([0, 1, 2]), np.zeros((0, 4)), seed)
        assert tuple(img.shape) == (3, 128, 128)
        assert len(b) >= 1 or background_prob > 0  # otherwise every crop holds an object
        b = b.numpy()
        assert (b >= 0).all() and (b <= 128).all()
        kept = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / areas[labels.numpy()]
        assert (kept >= 0.6 - 1e-3).all() and (kept <= 1 + 1e-3).all()
        cut += int((kept < 0.999).sum())
    assert cut > 0 or background_prob == 0  # boxes cut at the crop border are kept when enough is visible


def test_crop_scale_and_background_crops():
    image = np.zeros((400, 400, 3), np.uint8)
    box = np.array([[100, 100, 160, 140]], np.float32)
    t = _transform("input.crop_train=256", "input.crop_scale=0.5", "input.crop_background_prob=0")
    _, b, _, _ = t(image, box, np.array([0]), np.zeros((0, 4)), 0)
    assert (b[0, 2:] - b[0, :2]).tolist() == pytest.approx([30, 20], abs=1)  # half size; 200 px image padded
    t = _transform("input.crop_train=64", "input.crop_background_prob=1.0")
    empty = sum(len(t(np.zeros((600, 600, 3), np.uint8), box, np.array([0]), np.zeros((0, 4)), s)[1]) == 0
                for s in range(20))
    assert empty >= 10  # drawn anywhere: most 64 px crops of a 600 px image miss the one box


def test_large_image_config_trains_on_crops_and_evaluates_by_tiles(tmp_path, capsys, caplog, monkeypatch):
    root = tmp_path / "large"
    make_large_scenes_coco(root, num_train=2, num_val=1, image_size=(500, 700), objects=(120, 150), seed=1)
    import retinanet.tiling as tiling
    grids, grid = [], tiling.tile_grid
    monkeypatch.setattr(tiling, "tile_grid", lambda *a: grids.append(a) or grid(*a))
    overrides = [o for o in tiny_overrides(root, tmp_path / "run", **{"solver.max_iter": 3})
                 if not o.startswith(("input.min_size", "input.max_size", "model.anchors"))]
    with caplog.at_level(logging.WARNING):
        rc = main(["train", "--config", str(REPO / "configs" / "examples" / "large_images_mobilenet.yaml"), *overrides,
                   "input.crop_train=256", "evaluation.tile=256", "input.min_size_test=256", "input.max_size_test=256",
                   "evaluation.max_dets=100", "model.backbone.weights="])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "AP" in metrics
    assert any(g[:2] == (500, 700) and g[2] == 256 for g in grids)  # the val image ran by tiles
    assert "evaluation.max_dets=100" in caplog.text  # 120+ objects in a val image: the warning
