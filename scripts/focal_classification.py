#!/usr/bin/env python
"""The focal loss outside detection: a small MLP on a heavily imbalanced tabular problem.

    python scripts/focal_classification.py                      # generated data, ~1% positives
    python scripts/focal_classification.py --csv data.csv --target label

Trains the same network (same initial weights, optimizer and budget) with BCE, alpha-balanced BCE,
the sigmoid focal loss, the other modulated CEs -alpha_t f(p_t) log p_t with f = cos(p_t), exp(-p_t),
exp(-p_t^2), and Poly-1 focal, all from ``retinanet.losses``, for several seeds (``--losses`` picks
a subset), and compares them by the area under the precision-recall curve (average precision) on a
held-out stratified split. The CSV needs numeric feature columns and a 0/1 (or true/false) target column.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from retinanet.losses import alpha_balanced_bce, sigmoid_focal_loss  # noqa: E402
from retinanet.modulated import modulated_bce, poly1_focal_loss  # noqa: E402

LOSSES = ("bce", "alpha_bce", "focal", "cos", "exp", "exp_sq", "poly1")


def loss_sum(name: str, logits: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Summed loss ``name`` (one of LOSSES) over the batch; the modulated ones use the focal alpha."""
    if name == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    if name == "alpha_bce":
        return alpha_balanced_bce(logits, y, alpha=args.alpha_bce, reduction="sum")
    if name == "focal":
        return sigmoid_focal_loss(logits, y, alpha=args.alpha, gamma=args.gamma, reduction="sum")
    if name == "poly1":
        return poly1_focal_loss(logits, y, epsilon=args.epsilon, alpha=args.alpha, gamma=args.gamma, reduction="sum")
    return modulated_bce(logits, y, name, alpha=args.alpha, reduction="sum")


def loss_label(name: str, args: argparse.Namespace) -> str:
    return {"bce": "BCE", "alpha_bce": f"α-balanced BCE (α={args.alpha_bce:g})",
            "focal": f"focal (γ={args.gamma:g}, α={args.alpha:g})",
            "cos": f"cos(p_t) CE (α={args.alpha:g})", "exp": f"exp(−p_t) CE (α={args.alpha:g})",
            "exp_sq": f"exp(−p_t²) CE (α={args.alpha:g})",
            "poly1": f"Poly-1 focal (ε={args.epsilon:g}, γ={args.gamma:g}, α={args.alpha:g})"}[name]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as sum_i (R_i - R_{i-1}) P_i over distinct score
    thresholds (ties form one step), i.e. sklearn's ``average_precision_score``."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order].astype(np.float64)
    if labels.sum() == 0:
        return math.nan
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each distinct score
    tp = np.cumsum(labels)[last]
    precision, recall = tp / (last + 1), tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def make_dataset(n: int, dim: int, pos_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features; labels from a noisy nonlinear score thresholded to ``pos_rate`` positives."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w = rng.standard_normal(dim) / math.sqrt(dim)
    score = x @ w + 0.7 * x[:, 0] * x[:, 1] + 0.5 * np.abs(x[:, 2]) + 0.5 * rng.standard_normal(n)
    y = (score > np.quantile(score, 1 - pos_rate)).astype(np.float32)
    return x, y


def read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"--csv: file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise ValueError(f"{path}: no column {target!r}; columns: {', '.join(header)}")
    t = header.index(target)
    truth = {"0": 0.0, "1": 1.0, "false": 0.0, "true": 1.0, "0.0": 0.0, "1.0": 1.0}
    x, y = [], []
    for i, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
        label = row[t].strip().lower()
        if label not in truth:
            raise ValueError(f"{path}: line {i}: target {target!r} must be 0/1 or true/false, got {row[t]!r}")
        y.append(truth[label])
        feats = []
        for j, value in enumerate(row):
            if j == t:
                continue
            try:
                feats.append(float(value))
            except ValueError:
                raise ValueError(f"{path}: line {i}, column {header[j]!r}: not a number: {value!r}") from None
        x.append(feats)
    x_arr, y_arr = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if not np.isfinite(x_arr).all():
        raise ValueError(f"{path}: features contain NaN or Inf")
    if y_arr.sum() < 2 or y_arr.sum() > len(y_arr) - 2:
        raise ValueError(f"{path}: target {target!r} needs at least 2 examples of each class")
    return x_arr, y_arr


def stratified_split(y: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices with the same positive rate in both (at least one positive in each)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.nonzero(y == cls)[0])
        k = min(len(idx) - 1, max(1, round(len(idx) * test_frac)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.concatenate(train), np.concatenate(test)


def train_mlp(x: torch.Tensor, y: torch.Tensor, loss_name: str, args: argparse.Namespace, seed: int) -> nn.Module:
    """Full-batch Adam on a 2-layer MLP. The output bias starts at the prior log-odds (paper sec. 4.1),
    so that no loss starts from a background-swamped p = 0.5."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1))
    nn.init.constant_(model[2].bias, -math.log((1 - args.prior) / args.prior))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    for _ in range(args.epochs):
        logits = model(x).squeeze(1)
        loss = loss_sum(loss_name, logits, y, args)
        # Normalise by the number of positives, as the detector does, so the step size is comparable.
        loss = loss / y.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=None, help="CSV file (default: generated data)")
    p.add_argument("--target", default="label", help="0/1 target column of the CSV (default 'label')")
    p.add_argument("--samples", type=int, default=20000, help="generated samples (default 20000)")
    p.add_argument("--dim", type=int, default=16, help="generated features (default 16)")
    p.add_argument("--pos-rate", type=float, default=0.01, help="generated positive rate (default 0.01)")
    p.add_argument("--test-frac", type=float, default=0.3)
    p.add_argument("--seeds", type=int, default=3, help="training seeds per loss (default 3)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--prior", type=float, default=0.01, help="initial positive probability (default 0.01)")
    p.add_argument("--alpha", type=float, default=0.25,
                   help="alpha of focal, the modulated CEs and Poly-1 (default 0.25, the paper's)")
    p.add_argument("--gamma", type=float, default=2.0, help="focal loss gamma (default 2)")
    p.add_argument("--epsilon", type=float, default=1.0, help="Poly-1 epsilon (default 1)")
    p.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated subset of {', '.join(LOSSES)}")
    p.add_argument("--alpha-bce", type=float, default=0.75, help="alpha of the balanced BCE (default 0.75)")
    p.add_argument("--seed", type=int, default=0, help="data and split seed")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    if not names or any(n not in LOSSES for n in names):
        print(f"focal_classification: error: --losses must be a subset of {', '.join(LOSSES)}", file=sys.stderr)
        return 2
    try:
        x, y = read_csv(args.csv, args.target) if args.csv else make_dataset(args.samples, args.dim, args.pos_rate,
                                                                             args.seed)
    except (OSError, ValueError) as e:
        print(f"focal_classification: error: {e}", file=sys.stderr)
        return 2
    tr, te = stratified_split(y, args.test_frac, args.seed)
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6  # train statistics only
    xt, xe = torch.from_numpy((x[tr] - mean) / std), torch.from_numpy((x[te] - mean) / std)
    yt, ye = torch.from_numpy(y[tr]), y[te]
    source = str(args.csv) if args.csv else f"generated (seed {args.seed})"
    print(f"data: {source}, {len(y)} rows, {x.shape[1]} features, {y.mean():.2%} positive; "
          f"test {len(te)} rows ({int(ye.sum())} positive)")
    print("| loss | PR AUC (mean ± std over seeds) | per seed |")
    print("|---|---|---|")
    for name in names:
        label = loss_label(name, args)
        aps = []
        for s in range(args.seeds):
            model = train_mlp(xt, yt, name, args, seed=s)
            with torch.no_grad():
                aps.append(average_precision(model(xe).squeeze(1).numpy(), ye))
        print(f"| {label} | {np.mean(aps):.4f} ± {np.std(aps):.4f} | {', '.join(f'{a:.4f}' for a in aps)} |")
    print(f"(chance level = positive rate = {ye.mean():.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
