"""Tiled inference: the tile grid, SAHI-style greedy merging, batching, coordinates, and the CLI keys."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retinanet.build import build_model
from retinanet.cli import main
from retinanet.detector import Detector
from retinanet.tiling import greedy_nmm, tile_grid


@pytest.mark.parametrize("h,w,tile,overlap", [(1000, 1500, 400, 0.2), (400, 401, 400, 0.0), (333, 2000, 256, 0.5)])
def test_tile_grid_covers_the_image_with_the_overlap(h, w, tile, overlap):
    tiles = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for y0, x0, y1, x1 in tiles:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w and y1 - y0 == min(tile, h) and x1 - x0 == min(tile, w)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[1] for t in tiles})
    assert all(b - a <= int(tile * (1 - overlap)) for a, b in zip(xs, xs[1:]))  # neighbours overlap enough
    assert tile_grid(300, 200, 400, 0.2) == [(0, 0, 300, 200)]


def test_greedy_nmm_joins_a_cut_object_and_keeps_classes_apart():
    boxes = torch.tensor([[60., 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [300, 300, 340, 340]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    b, s, l = greedy_nmm(boxes, scores, labels, 0.5)
    assert b.tolist() == [[0, 0, 100, 100], [0, 0, 100, 100], [300, 300, 340, 340]]
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6]) and l.tolist() == [1, 2, 1]


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    from retinanet.config_loader import load_config
    cfg = load_config(None, ["model.num_classes=2", "model.backbone.name=resnet18", "model.fpn.channels=32",
                             "input.min_size_test=128", "input.max_size_test=160", "model.test.score_thresh=0.0",
                             "model.head.prior_prob=0.2", "train.device=cpu"])
    torch.manual_seed(0)
    return Detector(build_model(cfg), cfg, "cpu")


def test_an_image_within_one_tile_gives_the_untiled_detections(detector):
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    plain, tiled = detector.predict(image), detector.predict(image, tile=160)
    assert len(plain["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(plain[k], tiled[k])


@pytest.mark.parametrize("merge", ["nms", "nmm"])
def test_tiles_run_batched_at_native_size_and_boxes_land_in_the_image(detector, monkeypatch, merge):
    image = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    shapes = []
    network = detector.network
    monkeypatch.setattr(detector, "network", lambda batch: (shapes.append(tuple(batch.shape)), network(batch))[1])
    from dataclasses import replace
    monkeypatch.setattr(detector, "cfg", replace(detector.cfg, evaluation=replace(detector.cfg.evaluation,
                                                                                    tile_merge=merge)))
    out = detector.predict(image, tile=128, tile_overlap=0.25, batch_size=4)
    n_tiles = len(tile_grid(300, 500, 128, 0.25))
    assert len(shapes) == -(-n_tiles // 4) and all(s[0] <= 4 for s in shapes)
    assert all(s[2] == 128 and s[3] == 128 for s in shapes)  # unresized tiles (128 is a multiple of 128)
    b = out["boxes"]
    assert len(b) > 0 and len(b) <= detector.postprocessor.detections_per_img
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 500).all() and (b[:, 3] <= 300).all()
    assert b[:, 2].max() > 250  # detections from tiles beyond the first column came back shifted


def test_cli_tile_flags(tmp_path, capsys, detector, monkeypatch):
    from PIL import Image

    import retinanet.tiling as tiling
    grids = []
    monkeypatch.setattr(tiling, "tile_grid", lambda *a: grids.append(a) or tile_grid(*a))

    from retinanet.build import checkpoint_payload
    from retinanet.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "m.pth", checkpoint_payload(detector.cfg, detector.model.state_dict()))
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rc = main(["infer", "--weights", str(tmp_path / "m.pth"), "--input", str(tmp_path / "a.png"), "--output",
               str(tmp_path / "o"), "--tile", "128", "--tile-overlap", "0.2", "--score-thresh", "0"])
    assert rc == 0, capsys.readouterr().err
    boxes = [p["bbox"] for p in json.loads((tmp_path / "o" / "predictions.json").read_text())]
    assert boxes and max(x + w for x, _, w, _ in boxes) > 200
    assert grids == [(300, 400, 128, 0.2)]
