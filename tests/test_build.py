"""Config + checkpoint -> objects, in one place; and checkpoints of the earlier layout still load."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retinanet.build import build_model, categories_of, resolve_config, with_categories
from retinanet.checkpoint import save_checkpoint
from retinanet.config import ConfigError
from retinanet.config_loader import load_config, to_dict
from retinanet.detector import Detector

# Written by the code as of commit 3e32510 (before the build/config_loader split): the resolved config
# and every state_dict key with its shape, of a small model with a linear gamma schedule and train.sync_bn.
LEGACY = Path(__file__).parent / "data" / "checkpoint_v1_layout.json"


def _legacy_checkpoint(path: Path) -> dict:
    layout = json.loads(LEGACY.read_text())
    state = {k: torch.randn(shape) if layout["state_dtypes"][k] == "torch.float32" else torch.zeros(shape, dtype=torch.int64)
             for k, shape in layout["state_shapes"].items()}
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]
    save_checkpoint(path, {"model": state, "config": layout["config"], "categories": cats, "iteration": 7})
    return layout


def test_legacy_checkpoint_loads(tmp_path):
    layout = _legacy_checkpoint(tmp_path / "old.pth")
    det = Detector.from_config(None, tmp_path / "old.pth", "cpu")
    # state_dict key names are a file format: exactly the same keys and shapes as before
    assert {k: list(v.shape) for k, v in det.model.state_dict().items()} == layout["state_shapes"]
    loss = det.cfg.model.loss
    assert (loss.gamma_schedule, loss.gamma, loss.gamma_end) == ("linear", 4.0, 1.0)  # gamma_start -> gamma
    assert det.cfg.model.backbone.norm == "syncbn"  # train.sync_bn + norm bn -> one key
    assert det.categories == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]
    out = det.predict(np.zeros((64, 80, 3), dtype=np.uint8))
    assert set(out) == {"boxes", "scores", "labels", "names"}


def test_legacy_step_schedule_is_upgraded():
    old = copy.deepcopy(json.loads(LEGACY.read_text())["config"])
    old["model"]["loss"].update(gamma_schedule="step", gamma_steps=[10, 20], gamma_values=[5.0, 3.0, 1.0])
    loss = load_config(old).model.loss
    assert loss.gamma == 5.0 and loss.gamma_values == (3.0, 1.0) and loss.gamma_steps == (10, 20)
    assert "gamma_start" not in to_dict(loss) and "sync_bn" not in to_dict(load_config(old).train)


def test_categories_of_and_with_categories(tiny_cfg):
    assert categories_of(tiny_cfg()) == [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    plain = tiny_cfg("model.category_ids=[]", "model.class_names=[]", "model.num_classes=2")
    assert categories_of(plain) == [{"id": 0, "name": "class_0"}, {"id": 1, "name": "class_1"}]
    with pytest.raises(ConfigError, match="model.category_ids"):
        categories_of(tiny_cfg("model.category_ids=[1,2]"))
    cfg = with_categories(tiny_cfg("model.num_classes=null"), [{"id": 4, "name": "x"}], "train.json")
    assert (cfg.model.num_classes, cfg.model.category_ids, cfg.model.class_names) == (1, (4,), ("x",))
    with pytest.raises(ValueError, match="model.num_classes is 3 but train.json has 1"):
        with_categories(tiny_cfg(), [{"id": 4, "name": "x"}], "train.json")


def test_resolve_config_order(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.num_classes=null", "model.category_ids=[]", "model.class_names=[]")
    with pytest.raises(ValueError, match="num_classes is unset"):
        resolve_config(cfg)
    ckpt = {"config": to_dict(tiny_cfg()), "categories": [{"id": 7, "name": "p"}, {"id": 8, "name": "q"},
                                                          {"id": 9, "name": "r"}], "model": {"x": torch.zeros(1)}}
    got = resolve_config(None, ["input.min_size_test=96"], ckpt)
    assert got.model.category_ids == (7, 8, 9) and got.input.min_size_test == 96
    assert got.model.backbone.weights == ""  # full weights follow: no pretrained download
    val = tmp_path / "val.json"
    val.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 3, "name": "b"},
                                                                              {"id": 2, "name": "a"}]}))
    got = resolve_config(cfg, [f"data.val.annotations={val}"], classes_from_val=True)
    assert got.model.category_ids == (2, 3) and got.model.class_names == ("a", "b")


def test_checkpoint_is_read_once(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg()
    save_checkpoint(tmp_path / "m.pth", {"model": build_model(cfg).state_dict(), "config": to_dict(cfg)})
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    Detector.from_config(None, tmp_path / "m.pth", "cpu")
    assert len(calls) == 1
