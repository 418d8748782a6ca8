"""Trainer: evaluation leaves BN statistics and train mode alone; best checkpoint, early stop, resume of the best."""
from __future__ import annotations

import json

import pytest
import torch

from retinanet import detector as detector_module
from retinanet.checkpoint import load_checkpoint
from retinanet.config_loader import load_config
from retinanet.engine.best import BestTracker
from retinanet.engine.trainer import Trainer

from conftest import tiny_overrides


def _bn_state(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def test_evaluate_keeps_bn_statistics_and_train_mode(data_root, tmp_path):
    trainer = Trainer(load_config(None, tiny_overrides(data_root, tmp_path, **{
        "model.backbone.norm": "bn", "train.vis_images": 1, "evaluation.report": "false"})))
    trainer.model.train()
    before = _bn_state(trainer.model)
    assert before  # the backbone really has BatchNorm buffers
    trainer.evaluate(1)  # val inference and the drawn val image
    after = _bn_state(trainer.model)
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed: a val image updated BN statistics"
    assert all(m.training for m in trainer.model.modules())


def test_evaluate_in_train_mode_would_fail_the_check(data_root, tmp_path, monkeypatch):
    # The old behaviour (predictions drawn in train mode) must be caught by the test above.
    import contextlib
    monkeypatch.setattr(detector_module, "eval_mode", lambda model: contextlib.nullcontext())
    # and the model itself runs (model.fast: false), not the BatchNorm-folded copy (folding uses the running
    # statistics)
    trainer = Trainer(load_config(None, tiny_overrides(data_root, tmp_path, **{
        "model.backbone.norm": "bn", "train.vis_images": 1, "evaluation.report": "false", "model.fast": "false"})))
    trainer.model.train()
    before = _bn_state(trainer.model)
    trainer.evaluate(1)
    assert any(not torch.equal(before[k], v) for k, v in _bn_state(trainer.model).items())


def _scripted(monkeypatch, values: list[float]) -> list[int]:
    """Trainer.evaluate returns AP values from ``values`` in turn (no inference); returns the iterations seen."""
    seen: list[int] = []

    def fake(self, iteration, final=False):
        seen.append(iteration)
        ap = values[len(seen) - 1]
        return {"AP": ap, "AP50": ap * 2, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0, "per_category": {}}
    monkeypatch.setattr(Trainer, "evaluate", fake)
    return seen


def test_best_checkpoint_and_early_stop(data_root, tmp_path, monkeypatch):
    seen = _scripted(monkeypatch, [1.0, 3.0, 2.0, 2.5, 9.0, 9.0])
    out = tmp_path / "run"
    metrics = Trainer(load_config(None, tiny_overrides(data_root, out, **{
        "solver.max_iter": 12, "train.eval_period": 2, "train.patience": 2, "train.checkpoint_period": 0}))).train()
    # Evaluations at 2, 4 (best 3.0), 6, 8 (two without improvement: stop), then the final one at 8.
    assert seen == [2, 4, 6, 8, 8]
    assert metrics["best_iteration"] == 4 and metrics["best_value"] == 3.0 and metrics["best_metric"] == "AP"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_iteration"] == 4 and saved["best_value"] == 3.0
    best = load_checkpoint(out / "model_best.pth")
    assert best["iteration"] == 4 and best["best"]["value"] == 3.0
    assert load_checkpoint(out / "model_final.pth")["iteration"] == 8


def test_best_metric_is_configurable_and_final_eval_counts(data_root, tmp_path, monkeypatch):
    _scripted(monkeypatch, [1.0, 2.0, 5.0])
    out = tmp_path / "run"
    metrics = Trainer(load_config(None, tiny_overrides(data_root, out, **{
        "solver.max_iter": 6, "train.eval_period": 2, "train.best_metric": "AP50",
        "train.checkpoint_period": 0}))).train()
    assert metrics["best_metric"] == "AP50" and metrics["best_iteration"] == 6 and metrics["best_value"] == 10.0


def test_resume_keeps_the_best_so_far(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _scripted(monkeypatch, [5.0, 1.0])
    Trainer(load_config(None, tiny_overrides(data_root, out, **{
        "solver.max_iter": 4, "train.eval_period": 2, "train.checkpoint_period": 4}))).train()
    assert load_checkpoint(out / "checkpoints/last.pth")["best"]["value"] == 5.0
    _scripted(monkeypatch, [2.0, 3.0])  # worse than 5.0: the best stays the first run's
    metrics = Trainer(load_config(None, tiny_overrides(data_root, out, **{
        "solver.max_iter": 8, "train.eval_period": 2, "train.checkpoint_period": 4})), resume=True).train()
    assert metrics["best_iteration"] == 2 and metrics["best_value"] == 5.0
    assert load_checkpoint(out / "model_best.pth")["iteration"] == 2


def test_best_tracker_unit():
    t = BestTracker("AP", patience=1)
    assert t.update(1, {"AP": float("nan")}) is False and t.value is None
    assert t.update(2, {"AP": 1.0}) and not t.should_stop
    assert not t.update(3, {"AP": 1.0}) and t.should_stop  # equal is no improvement
    with pytest.raises(KeyError, match="train.best_metric"):
        t.update(4, {"AR": 1.0})
    other = BestTracker("AP50")
    other.load_state_dict(t.state_dict())  # another metric: the old best is not comparable
    assert other.value is None


def test_unknown_best_metric_fails_at_load():
    from retinanet.config import ConfigError
    with pytest.raises(ConfigError, match="train.best_metric"):
        load_config(None, ["train.best_metric=mAP"])
