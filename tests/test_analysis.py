"""Loss-distribution analysis: curves, headline shares, per-anchor losses, and `retinanet analyze-loss`."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from retinanet.analysis import anchor_losses, cumulative_loss_curve, hardest_share, resample_curve
from retinanet.checkpoint import save_checkpoint
from retinanet.cli import main as cli_main
from retinanet.config_loader import load_config, to_dict
from retinanet.data.synthetic import make_synthetic_coco
from retinanet.build import build_model


def _assert_curve(x, y):
    assert x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == 1
    assert (np.diff(np.asarray(x)) >= 0).all() and (np.diff(np.asarray(y)) >= 0).all()


def test_curve_is_sorted_cumulative_share():
    losses = torch.tensor([3.0, 0.0, 1.0, 6.0])
    x, y = cumulative_loss_curve(losses)
    _assert_curve(x, y)
    assert torch.allclose(x, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([0, 0, 0.1, 0.4, 1], dtype=torch.float64))


def test_curve_random_large_and_degenerate_inputs():
    losses = torch.rand(100_000) ** 8 * 1e3  # heavy tail: rounding stress for the running sum
    x, y = cumulative_loss_curve(losses)
    _assert_curve(x, y)
    grid, yy = resample_curve(x, y, num_points=11)
    _assert_curve(grid, yy)
    assert len(grid) == 11
    # A convex curve: the lowest-loss half carries less than half of the loss.
    assert yy[5] < 0.5
    x0, y0 = cumulative_loss_curve(torch.zeros(5))
    assert torch.equal(x0, y0)
    assert cumulative_loss_curve(torch.empty(0))[0].numel() == 0
    with pytest.raises(ValueError, match="non-negative"):
        cumulative_loss_curve(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        cumulative_loss_curve(torch.tensor([1.0, float("nan")]))


def test_hardest_share_on_hand_made_vector():
    losses = torch.cat([torch.ones(99), torch.tensor([101.0])])  # total 200
    assert hardest_share(losses, 0.01) == pytest.approx(101 / 200)  # the single hardest example
    assert hardest_share(losses, 0.10) == pytest.approx((101 + 9) / 200)  # the hardest ten
    assert hardest_share(losses[torch.randperm(100)], 0.10) == pytest.approx(0.55)  # order-free
    assert hardest_share(losses, 1.0) == pytest.approx(1.0)
    assert hardest_share(torch.tensor([2.0, 1.0, 1.0]), 0.01) == pytest.approx(0.5)  # at least one example
    assert math.isnan(hardest_share(torch.empty(0), 0.1))
    with pytest.raises(ValueError, match="fraction"):
        hardest_share(losses, 0.0)
    # Consistent with the curve: the hardest 10% carry 1 - y at x = 0.9.
    x, y = cumulative_loss_curve(losses)
    assert 1 - y[90].item() == pytest.approx(hardest_share(losses, 0.10))


def test_anchor_losses_against_torchvision():
    r, k = 50, 4
    logits = torch.randn(r, k) * 3
    labels = torch.randint(-2, k, (r,))
    labels[:3] = torch.tensor([0, -1, -2])  # every kind present
    for gamma in (0.0, 2.0):
        pos, neg = anchor_losses(logits, labels, gamma)
        fg, bg = labels >= 0, labels == -1
        onehot = torch.zeros(r, k)
        onehot[fg, labels[fg]] = 1
        full = tv_focal(logits, onehot, alpha=-1, gamma=gamma)
        assert torch.allclose(pos, full[fg, labels[fg]], atol=1e-6)
        assert torch.allclose(neg, full[bg].sum(-1), atol=1e-6)
    # A higher gamma puts a larger share of the loss on the hardest examples.
    shares = [hardest_share(anchor_losses(logits, labels, g)[1], 0.1) for g in (0.0, 1.0, 2.0, 5.0)]
    assert shares == sorted(shares) and shares[-1] > shares[0]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    make_synthetic_coco(root / "data", num_train=1, num_val=3, seed=0)
    cats = json.loads((root / "data/annotations/val.json").read_text())["categories"]
    cfg = load_config(None, [
        "model.backbone.name=resnet18", "model.fpn.channels=32", "model.head.num_convs=1",
        f"model.num_classes={len(cats)}", "model.anchors.sizes=[16,32,64,128,256]",
        "input.min_size_test=128", "input.max_size_test=160",
        f"data.val.images={root / 'data/images'}", f"data.val.annotations={root / 'data/annotations/val.json'}"])
    path = root / "model.pth"
    save_checkpoint(path, {"model": build_model(cfg).state_dict(), "config": to_dict(cfg),
                           "categories": [{"id": c["id"], "name": c["name"]} for c in cats]})
    return path


def test_analyze_loss_cli_writes_png_and_monotone_csv(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(["analyze-loss", "--weights", str(tiny_checkpoint), "--gammas", "0,1,2", "--device", "cpu",
                   "--points", "101", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert (out / "loss_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "loss_cdf.csv") as f:
        rows = list(csv.reader(f))
    header, values = rows[0], np.array(rows[1:], dtype=float)
    assert header == ["fraction"] + [f"{s}_gamma_{g}" for s in ("positive", "negative") for g in (0, 1, 2)]
    assert values.shape == (101, 7)
    for col in range(1, 7):
        _assert_curve(values[:, 0], values[:, col])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_positive"] > 0 and summary["num_negative"] > 1000
    for g in ("0", "1", "2"):
        assert f"| {g} | {summary['gammas'][g]['neg_hardest_1pct']:.1%} |" in text
    # One loss entry per foreground anchor: the share of the hardest grows with gamma.
    pos_shares = [summary["gammas"][g]["pos_hardest_10pct"] for g in ("0", "1", "2")]
    assert pos_shares == sorted(pos_shares)


def test_analyze_loss_subsamples_negatives_and_rejects_bad_input(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sub"
    assert cli_main(["analyze-loss", "--weights", str(tiny_checkpoint), "--gammas", "2", "--device", "cpu",
                     "--num-images", "2", "--max-negatives-per-image", "100", "--output", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["num_negative"] == 200
    assert cli_main(["analyze-loss", "--weights", str(tiny_checkpoint), "--gammas", "2,x", "--output", str(out)]) == 2
    assert "--gammas" in capsys.readouterr().err
    assert cli_main(["analyze-loss", "--weights", str(tiny_checkpoint), "--output", str(out),
                     "data.val.annotations="]) == 2
    assert "data.val.annotations" in capsys.readouterr().err
