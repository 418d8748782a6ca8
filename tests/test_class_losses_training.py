"""The detector trains with each selectable class loss and a gamma schedule; the ablation runner's table."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet.config_loader import load_config
from retinanet.engine.trainer import train

from conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _overrides(root: Path, out: Path, extra: dict) -> list[str]:
    return tiny_overrides(root, out, **{"input.flip_prob": 0.0, "solver.max_iter": 3, "solver.warmup_iters": 1,
                                        "train.checkpoint_period": 0, "data.val.annotations": "", **extra})


RUNS = {
    "focal": {"model.loss.cls_loss": "focal"},
    "focal_star": {"model.loss.cls_loss": "focal_star", "model.loss.gamma": 4.0, "model.loss.beta": 0.0},
    "bce": {"model.loss.cls_loss": "bce"},
    "bce_no_prior": {"model.loss.cls_loss": "bce", "model.head.prior_init": False},
    "alpha_bce": {"model.loss.cls_loss": "alpha_bce", "model.loss.alpha": 0.75},
    "modulated_cos": {"model.loss.cls_loss": "modulated", "model.loss.modulator": "cos"},
    "modulated_exp": {"model.loss.cls_loss": "modulated", "model.loss.modulator": "exp"},
    "modulated_exp_sq": {"model.loss.cls_loss": "modulated", "model.loss.modulator": "exp_sq"},
    "poly1_focal": {"model.loss.cls_loss": "poly1_focal", "model.loss.poly_epsilon": 1.0},
    "focal_linear_schedule": {"model.loss.cls_loss": "focal", "model.loss.gamma_schedule": "linear",
                              "model.loss.gamma": 4.0, "model.loss.gamma_end": 1.0},
}


@pytest.fixture(scope="module")
def records(data_root, tmp_path_factory):
    """Each run's metrics.jsonl records; same seed, same data, same initial weights (up to the bias)."""
    out = {}
    for name, extra in RUNS.items():
        run_dir = tmp_path_factory.mktemp(name)
        train(load_config(None, _overrides(data_root, run_dir, extra)))
        out[name] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return out


def test_every_class_loss_trains_with_finite_losses(records):
    for name, recs in records.items():
        assert [r["iteration"] for r in recs] == [1, 2, 3], name
        for r in recs:
            assert all(math.isfinite(r[k]) for k in ("loss", "loss_cls", "loss_box")), (name, r)
    # The selected loss is what is optimised: identical first batches give a different class loss.
    first = {name: recs[0]["loss_cls"] for name, recs in records.items() if name != "focal_linear_schedule"}
    assert len({round(v, 6) for v in first.values()}) == len(first), first
    # Box loss does not depend on the class loss at the first step (same weights, same batch).
    assert records["focal"][0]["loss_box"] == pytest.approx(records["bce"][0]["loss_box"], rel=1e-5)


def test_flat_modulators_focus_less_than_the_focal_term(records):
    # At the prior init every negative has p_t = 0.99: (1 - p_t)^2 = 1e-4, but cos, exp and exp_sq
    # still weigh it 0.55, 0.37 and 0.38, and Poly-1 adds (1 - p_t)^3 > 0: a larger first class loss.
    first = {name: recs[0]["loss_cls"] for name, recs in records.items()}
    for name in ("modulated_cos", "modulated_exp", "modulated_exp_sq", "poly1_focal"):
        assert first[name] > first["focal"], (name, first)


def test_prior_init_switch_changes_the_initial_ce_loss(records):
    # Without the prior, every anchor starts at p = 0.5 and the background swamps the loss.
    assert records["bce_no_prior"][0]["loss_cls"] > 10 * records["bce"][0]["loss_cls"]


def test_gamma_schedule_is_applied_and_logged(records):
    assert [r["gamma"] for r in records["focal_linear_schedule"]] == pytest.approx([4.0, 3.0, 2.0])
    assert all(r["gamma"] == 2.0 for r in records["focal"])
    # gamma 4 at the first step down-weights the (easy, prior-initialised) negatives more than gamma 2.
    assert records["focal_linear_schedule"][0]["loss_cls"] < records["focal"][0]["loss_cls"]


# A script's test (scripts/ablate_loss.py), as costly as the slow ones: run with -m slow.
@pytest.mark.slow
def test_ablation_runner_subset_writes_table(data_root, tmp_path):
    out = tmp_path / "ablate"
    extra = [f"{k}={v}" for k, v in {
        "model.backbone.name": "resnet18", "model.backbone.freeze_at": 0, "model.fpn.channels": 32,
        "model.head.num_convs": 2, "model.anchors.sizes": "[16,32,64,128,256]", "input.min_size_train": 128,
        "input.max_size_train": 160, "input.min_size_test": 128, "input.max_size_test": 160,
        "solver.ims_per_batch": 2}.items()]
    proc = subprocess.run([sys.executable, str(REPO / "scripts/ablate_loss.py"), "--data", str(data_root),
                           "--iters", "2", "--only", "ce_no_prior,fl_g2", "--seeds", "3,4", "--threads", "1",
                           "--output", str(out),
                           *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert table in proc.stdout
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| run |") and len(lines) == 4  # header, separator, two runs
    assert any(line.startswith("| ce_no_prior |") for line in lines)
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"ce_no_prior", "fl_g2"}
    for name, r in results.items():
        assert set(r) >= {"AP", "AP_std", "AP50", "final_loss", "diverged", "seconds"}
        assert r["runs"] == 2 and set(r["seeds"]) == {"3", "4"}
        assert r["diverged"] == 2 or (math.isfinite(r["final_loss"]) and 0 <= r["AP"] <= 100)
        assert any(line.startswith(f"| {name} |") and f"| {r['diverged']}/2" in line for line in lines)
        trained = [s for s in r["seeds"].values() if not s["diverged"]]
        if trained:  # the summary is the mean over the seeds that trained
            assert r["AP"] == pytest.approx(sum(s["AP"] for s in trained) / len(trained))
    for seed in (3, 4):
        assert (out / "fl_g2" / f"seed{seed}" / "metrics.jsonl").is_file()
    # --table-only trains nothing: the missing row (fl_cos) and seed (5) are left out of the joined table.
    joined = subprocess.run([sys.executable, str(REPO / "scripts/ablate_loss.py"), "--data", str(data_root),
                             "--only", "ce_no_prior,fl_g2,fl_cos", "--seeds", "3,4,5", "--table-only",
                             "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0 and "==" not in joined.stdout, joined.stderr[-3000:]
    rejoined = json.loads((out / "results.json").read_text())
    assert set(rejoined) == {"ce_no_prior", "fl_g2"} and all(r["runs"] == 2 for r in rejoined.values())
    assert rejoined["fl_g2"]["AP"] == results["fl_g2"]["AP"] or math.isnan(results["fl_g2"]["AP"])
    assert not (out / "fl_cos").exists()
    bad = subprocess.run([sys.executable, str(REPO / "scripts/ablate_loss.py"), "--data", str(data_root),
                          "--only", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nope" in bad.stderr
