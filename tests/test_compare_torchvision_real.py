"""scripts/compare_torchvision_real.py: both sides train and evaluate per seed; the table pairs them by seed."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retinanet.config_loader import load_config
from retinanet.data.synthetic import make_synthetic_coco

REPO = Path(__file__).resolve().parents[1]


def _overrides(root: Path) -> list[str]:
    """A random-weights MobileNetV2 at toy size: checks the plumbing, not the accuracy."""
    return [f"{k}={v}" for k, v in {
        "model.backbone.name": "mobilenet_v2", "model.backbone.weights": "", "model.backbone.freeze_at": 0,
        "model.fpn.channels": 32, "model.head.norm": "gn", "model.head.num_convs": 4,
        "model.anchors.sizes": "[16,32,64,128,256]",
        "input.min_size_train": 128, "input.max_size_train": 160, "input.min_size_test": 128,
        "input.max_size_test": 160, "solver.ims_per_batch": 2, "solver.warmup_iters": 1, "solver.steps": "[]",
        "train.device": "cpu", "train.checkpoint_period": 0, "train.vis_images": 0, "train.log_period": 1,
        "dataloader.num_workers": 0,
        "data.train.images": root / "images", "data.train.annotations": root / "annotations/train.json",
        "data.val.images": root / "images", "data.val.annotations": root / "annotations/val.json"}.items()]


# A script's test (scripts/compare_torchvision_real.py): run with -m slow.
@pytest.mark.slow
def test_two_seeds_both_sides_table_and_reuse(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=4, num_val=2, seed=0)
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(REPO / "scripts/compare_torchvision_real.py"), "--config",
           str(REPO / "configs/demo.yaml"), "--iters", "2", "--seeds", "3,4", "--threads", "1",
           "--output", str(out), *_overrides(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (3, 4):
        for side in ("ours", "torchvision"):
            r = json.loads((out / f"seed{seed}" / f"{side}.json").read_text())
            assert 0 <= r["metrics"]["AP"] <= 100 and r["s_per_iter"] > 0
        assert (out / f"seed{seed}" / "ours" / "model_final.pth").is_file()
    # The seed reaches our side: different seeds give different first losses.
    first = [json.loads((out / f"seed{s}" / "ours" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
             for s in (3, 4)]
    assert first[0] != first[1]
    table = (out / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| 3", "| 4", "| mean ± std (2 seeds)"]
    assert "ours − torchvision, paired by seed" in table and table.split("\n", 2)[2] in proc.stdout

    stamp = (out / "seed3" / "ours.json").stat().st_mtime_ns
    again = subprocess.run(cmd + ["--reuse"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "seed3" / "ours.json").stat().st_mtime_ns == stamp  # nothing retrained


def test_seed_draws_torchvision_initial_weights(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=2, num_val=1, seed=0)
    spec = importlib.util.spec_from_file_location("compare", REPO / "scripts/compare_torchvision_real.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    initial = []
    monkeypatch.setattr(compare, "train_torchvision", lambda cfg, dataset, model, device:
                        initial.append(model.head.classification_head.conv[0][0].weight.detach().clone()) or 1.0)
    monkeypatch.setattr(compare, "evaluate_torchvision", lambda *args: {})
    cfg = load_config(str(REPO / "configs/demo.yaml"), _overrides(root))
    for seed in (3, 3, 4):
        torch.manual_seed(0)  # whatever the global state, only the config's seed may decide
        compare.run_side(compare.dataclasses.replace(cfg, train=compare.dataclasses.replace(cfg.train, seed=seed)),
                         "torchvision", tmp_path)
    assert torch.equal(initial[0], initial[1]) and not torch.equal(initial[0], initial[2])
