from __future__ import annotations

import os
import re

import pytest
import torch
import torchvision
from torchvision.models.detection.retinanet import RetinaNetHead as TVHead

from retinanet.checkpoint import (CheckpointError, convert_torchvision_state_dict, load_checkpoint,
                                  load_model_state, save_checkpoint)
from retinanet.config_loader import load_config, to_dict
from retinanet.build import build_model


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_round_trip_is_atomic(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    cats = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    path = tmp_path / "out" / "model_final.pth"
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg), "categories": cats, "iteration": 12})
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg), "categories": cats, "iteration": 13})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_final.pth"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "retinanet-v1" and ckpt["iteration"] == 13 and ckpt["categories"] == cats
    assert load_config(ckpt["config"]) == cfg
    other = build_model(cfg)
    load_model_state(other, ckpt["model"])
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_failed_save_leaves_no_temp_file(tmp_path):
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "x.pth", {"model": {}, "bad": lambda: 0})  # a lambda cannot be pickled
    assert list(tmp_path.iterdir()) == []


def test_bare_state_dict_loads(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg())
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    ckpt = load_checkpoint(tmp_path / "bare.pth")
    assert set(ckpt) == {"model"}
    load_model_state(build_model(tiny_cfg()), ckpt["model"])


def test_class_count_mismatch_names_the_key(tiny_cfg, tmp_path):
    save_checkpoint(tmp_path / "m.pth", {"model": build_model(tiny_cfg()).state_dict()})
    other = build_model(tiny_cfg("model.num_classes=5", "model.category_ids=[]", "model.class_names=[]"))
    with pytest.raises(CheckpointError) as e:
        load_model_state(other, load_checkpoint(tmp_path / "m.pth")["model"], source="m.pth")
    msg = str(e.value)
    assert "m.pth" in msg and "head.cls_logits.weight" in msg and "(27, 32, 3, 3)" in msg and "number of classes" in msg


def test_missing_and_unexpected_keys_are_named(tiny_cfg):
    model = build_model(tiny_cfg())
    state = model.state_dict()
    state["extra.weight"] = state.pop("fpn.p7.weight")
    with pytest.raises(CheckpointError, match=r"missing keys \['fpn.p7.weight'\].*unexpected keys \['extra.weight'\]"):
        load_model_state(model, state)


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused to load") as e:
        load_checkpoint(path)
    assert "evil.pth" in str(e.value)
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="no 'model'"):
        load_checkpoint(tmp_path / "nomodel.pth")


def _legacy(state: dict) -> dict:
    """torchvision < 0.13 head layout: conv.0/2/4/6 (conv, ReLU pairs) instead of conv.i.0."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(head\.\w+_head\.conv)\.(\d)\.0\.(weight|bias)$", k)
        out[f"{m[1]}.{2 * int(m[2])}.{m[3]}" if m else k] = v
    return out


def test_torchvision_head_conversion_including_legacy_layout():
    state = {f"head.{k}": v for k, v in TVHead(32, 9, 4).state_dict().items()}
    legacy = _legacy(state)
    assert "head.classification_head.conv.6.weight" in legacy and "head.classification_head.conv.3.0.weight" not in legacy
    new, old = convert_torchvision_state_dict(state), convert_torchvision_state_dict(legacy)
    assert set(new) == set(old) and "head.cls_tower.3.conv.weight" in new and "head.box_pred.bias" in new
    assert all(torch.equal(new[k], old[k]) for k in new)
    with pytest.raises(CheckpointError, match="roi_heads.box_predictor.weight"):
        convert_torchvision_state_dict({**state, "roi_heads.box_predictor.weight": torch.zeros(1)})


def test_full_torchvision_model_loads(tiny_cfg):
    # A torchvision RetinaNet with a resnet18 FPN backbone: every key of a real model, cheaply.
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    backbone = _resnet_fpn_extractor(torchvision.models.resnet18(), 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    tv = torchvision.models.detection.RetinaNet(backbone, num_classes=3)
    cfg = tiny_cfg("model.fpn.channels=256", "model.fpn.p6_from=p5", "model.anchors.torchvision_compat=true")
    model = build_model(cfg)
    load_model_state(model, tv.state_dict())
    load_model_state(model, _legacy(tv.state_dict()))
    assert torch.equal(model.head.cls_logits.weight, tv.head.classification_head.cls_logits.weight)
    assert torch.equal(model.fpn.p6.weight, tv.backbone.fpn.extra_blocks.p6.weight)
    assert torch.equal(model.backbone.body.layer4[1].bn2.running_var, tv.backbone.body.layer4[1].bn2.running_var)
