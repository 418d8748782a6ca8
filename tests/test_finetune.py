"""Fine-tuning (``model.weights``): a detector trained on one class set starts a run on another; every
tensor that fits is loaded, the class layer is re-initialised with the prior."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torchvision

from conftest import TV_CONFIGS, tiny_overrides
from retinanet.build import build_model, checkpoint_payload
from retinanet.checkpoint import CheckpointError, save_checkpoint
from retinanet.config_loader import load_config
from retinanet.data.synthetic import make_synthetic_coco
from retinanet.engine.trainer import Trainer
from retinanet.finetune import load_matching, read_detector_weights


@pytest.fixture(scope="module")
def one_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_class")
    make_synthetic_coco(root, num_train=2, num_val=1, num_classes=1, image_size=(96, 128), seed=5)
    return root


def _three_class_checkpoint(path, overrides) -> dict:
    cfg = load_config(None, overrides + ["model.num_classes=3"])
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # "trained": differs from any fresh init
    save_checkpoint(path, checkpoint_payload(cfg, model.state_dict()))
    return model.state_dict()


def test_non_class_tensors_come_across_and_class_layer_is_reinitialised(one_class, tmp_path, caplog):
    overrides = tiny_overrides(one_class, tmp_path / "run")
    trained = _three_class_checkpoint(tmp_path / "three.pth", overrides)
    cfg = load_config(None, overrides + [f"model.weights={tmp_path / 'three.pth'}"])
    with caplog.at_level(logging.INFO, logger="retinanet"):
        trainer = Trainer(cfg)
    state = trainer.model.state_dict()
    assert trainer.cfg.model.num_classes == 1
    for key, value in state.items():
        if key.startswith("head.cls_logits."):
            assert value.shape != trained[key].shape
        else:
            assert torch.equal(value, trained[key]), key
    bias = state["head.cls_logits.bias"]
    assert torch.allclose(bias, torch.full_like(bias, -math.log(0.99 / 0.01)))
    assert state["head.cls_logits.weight"].std() < 0.02
    assert "class layer 0/2 (shape differs" in caplog.text and "re-initialised with the prior bias" in caplog.text
    assert "box head" in caplog.text and "FPN" in caplog.text


def test_torchvision_state_dict_file_loads_by_part(tmp_path):
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    cfg = load_config(TV_CONFIGS / "retinanet_resnet50_fpn_coco.yaml",
                      ["model.num_classes=2", "model.category_ids=[1,2]", "model.class_names=[a,b]"])
    model = build_model(cfg)
    summary = load_matching(model, read_detector_weights(str(tmp_path / "tv.pth")), "tv.pth")
    assert summary["class layer"][0] == 0
    assert all(loaded == total for part, (loaded, total) in summary.items() if part != "class layer"), summary
    assert torch.equal(model.state_dict()["head.box_pred.weight"], tv.state_dict()["head.regression_head.bbox_reg.weight"])


def test_unknown_name_and_missing_file_are_clear():
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        read_detector_weights("NoSuchWeights.V1")
    with pytest.raises(CheckpointError, match="file not found"):
        read_detector_weights("missing/model.pth")


def test_offline_download_says_how_to_pass_a_file(monkeypatch):
    weights = torchvision.models.get_weight("RetinaNet_ResNet50_FPN_Weights.COCO_V1")

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(ValueError, match="Offline.*set model.weights to that file"):
        read_detector_weights("RetinaNet_ResNet50_FPN_Weights.COCO_V1")
