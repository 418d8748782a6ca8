"""The fast paths return the reference path's detections, compared as sets (export.compare_detections):
the BatchNorm-folded channels_last copy inside Detector, and exported files run as ``--weights``; and the
core reading path stays free of them."""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_coco

from retinanet.build import build_criterion, build_model
from retinanet.cli import main
from retinanet.detector import Detector
from retinanet.export import compare_detections, export_model
from retinanet.fast import for_training, weights_version
from retinanet.fast.fusion import fuse_for_inference
from retinanet.runtime import exported_format, load_detector

CORE = ("model", "backbone", "fpn", "head", "anchors", "outputs", "matcher", "box_coder", "criterion",
        "postprocess", "losses", "preprocess")


def _plain(cfg):
    """The same config with ``model.fast: false``: the reference path."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fast=False))


def _images() -> list[np.ndarray]:
    rng = np.random.RandomState(1)
    return [rng.randint(0, 255, shape).astype(np.uint8) for shape in ((100, 150, 3), (210, 90, 3), (64, 64, 3))]


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that folding them actually changes the conv weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _assert_same_sets(expected: list[dict], got: list[dict]) -> None:
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 0
        ok, box, score = compare_detections(e, g, box_tol=0.05, score_tol=1e-4)
        assert ok, (box, score)


@pytest.mark.parametrize("overrides", [(), ("model.backbone.name=mobilenet_v2",), ("model.backbone.norm=bn",),
                                       ("model.head.norm=gn", "model.fpn.channels=64")])
def test_fused_detector_matches_reference(tiny_cfg, overrides):
    cfg = tiny_cfg("model.head.prior_init=false", "model.test.detections_per_img=50", *overrides)
    model = build_model(cfg)
    _randomise_norms(model)
    model.eval()
    reference, fast = Detector(model, _plain(cfg), "cpu"), Detector(model, cfg, "cpu")
    keys = list(model.state_dict())
    _assert_same_sets(reference.predict(_images(), batch_size=2), fast.predict(_images(), batch_size=2))
    assert list(model.state_dict()) == keys  # the caller's model is untouched: folding works on a copy
    assert not any(isinstance(m, torch.nn.Identity) for m in model.modules())


def test_fused_copy_folds_every_norm_and_follows_weight_changes(tiny_cfg):
    photo = _images()[0]
    cfg = tiny_cfg("model.head.prior_init=false")
    model = build_model(cfg)
    fused = fuse_for_inference(model)
    assert not any("BatchNorm" in type(m).__name__ for m in fused.modules())
    detector = Detector(model, cfg, "cpu")
    before = detector.predict(photo)
    version = weights_version(model)
    with torch.no_grad():  # as an optimizer step would: in place
        model.head.cls_logits.bias.add_(0.5)
    assert weights_version(model) != version
    after, reference = detector.predict(photo), Detector(model, _plain(cfg), "cpu").predict(photo)
    assert not torch.equal(before["scores"], after["scores"])
    _assert_same_sets([reference], [after])


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_exported_file_as_weights(tmp_path, suffix, capsys):
    images, ann = make_coco(tmp_path / "data", 3)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    reference = Detector.from_config(config, ckpt, "cpu")
    path = export_model(reference, tmp_path / f"model{suffix}", "onnx" if suffix == ".onnx" else "torchscript")
    assert exported_format(path) == ("onnx" if suffix == ".onnx" else "torchscript")
    assert exported_format(ckpt) is None  # a torch.save checkpoint is a zip too, but not TorchScript
    exported = load_detector(path, None, "cpu")
    assert exported.categories == reference.categories
    _assert_same_sets(reference.predict(_images(), batch_size=2), exported.predict(_images(), batch_size=2))
    # overrides apply to the config stored in the file
    assert load_detector(path, overrides=["model.test.score_thresh=0.2"]).cfg.model.test.score_thresh == 0.2
    with pytest.warns(UserWarning, match="carries its own config"):
        load_detector(path, config, "cpu")

    # `retinanet infer` and `retinanet eval` take it as --weights without --config
    out = tmp_path / "pred"
    assert main(["infer", "--weights", str(path), "--input", str(images), "--output", str(out),
                 "--score-thresh", "0.0"]) == 0
    ref_out = tmp_path / "pred_ref"
    assert main(["infer", "--weights", str(ckpt), "--input", str(images), "--output", str(ref_out),
                 "--score-thresh", "0.0"]) == 0
    got, ref = (json.loads((d / "predictions.json").read_text()) for d in (out, ref_out))
    assert len(got) == len(ref) > 0
    assert main(["eval", "--weights", str(path), "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "AP" in metrics


def test_training_rewrite_keeps_losses_gradients_and_keys(tiny_cfg):
    cfg = tiny_cfg("model.head.prior_init=false", "model.backbone.freeze_at=2")
    reference = build_model(cfg)
    _randomise_norms(reference)
    fast = for_training(copy.deepcopy(reference), "cpu")
    assert list(fast.state_dict()) == list(reference.state_dict())
    criterion = build_criterion(cfg)
    x = torch.rand(2, 3, 128, 160)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 5.0, 60.0, 50.0], [0.0, 0.0, 128.0, 128.0]]), "labels": torch.tensor([0, 2])}]
    losses = []
    for model, batch in ((reference, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        model.train()
        out = criterion(model(batch), targets, gamma=2.0)
        (out["loss_cls"] + out["loss_box"]).backward()
        losses.append(out)
    for k in ("loss_cls", "loss_box"):
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    # inference from the rewritten model: the fused copy undoes the rewrite first
    reference.eval()
    _assert_same_sets(Detector(reference, _plain(cfg), "cpu").predict(_images()),
                      Detector(fast, cfg, "cpu").predict(_images()))


def test_core_reading_path_imports_no_fast_path_and_stays_short():
    package = Path(__file__).resolve().parents[1] / "retinanet"
    lines = 0
    for name in CORE:
        source = (package / f"{name}.py").read_text()
        lines += len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):  # from .fast.x import y, from . import fast, from retinanet...
                base = node.module or ""
                modules = [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            assert not any(m == "fast" or m.startswith(("fast.", "retinanet.fast")) for m in modules), \
                f"{name}.py imports the fast paths: {ast.unparse(node)}"
    assert lines <= 1300, f"the core reading path has {lines} lines"


def test_one_switch_turns_every_fast_path_off(tiny_cfg):
    cfg = tiny_cfg()
    fast_loss, plain_loss = build_criterion(cfg).class_loss, build_criterion(_plain(cfg)).class_loss
    assert fast_loss.func.__module__ == "retinanet.fast.focal" and plain_loss.func.__module__ == "retinanet.criterion"
    # old checkpoints' criterion state (the EMA normaliser) loads into either
    assert list(build_criterion(cfg).state_dict()) == list(build_criterion(_plain(cfg)).state_dict()) == ["ema_normalizer"]
    model = build_model(cfg)
    assert Detector(model, cfg, "cpu").fast and not Detector(model, _plain(cfg), "cpu").fast
