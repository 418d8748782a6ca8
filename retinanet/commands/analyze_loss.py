"""retinanet analyze-loss --weights CKPT [--config CFG] [--gammas 0,0.5,1,2] [--num-images N] --output DIR

The paper's figure 4: the cumulative distribution of the normalised focal loss over foreground
and background anchors of a trained model on the val images, one curve per gamma. Writes
``loss_cdf.png`` (two panels), ``loss_cdf.csv`` (the curves on an even grid of fractions) and
``summary.json`` (counts and the share of the loss carried by the hardest 1% / 10%), and prints the
headline numbers. See docs/focal_loss.md.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from ..jsonio import write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", required=True, help="checkpoint of a trained model")
    p.add_argument("--gammas", default="0,0.5,1,2", help="comma-separated focal gammas (default 0,0.5,1,2)")
    p.add_argument("--num-images", type=int, default=100, help="val images to use (default 100; 0: all)")
    p.add_argument("--max-negatives-per-image", type=int, default=100_000,
                   help="uniform random subsample of background anchors per image, to bound memory")
    p.add_argument("--points", type=int, default=1001, help="points per curve in the CSV (default 1001)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative subsampling")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides (e.g. data.val.images=...)")


def _parse_gammas(text: str) -> list[float]:
    try:
        gammas = [float(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise ValueError(f"--gammas: expected comma-separated numbers, got {text!r}") from None
    if not gammas or any(not math.isfinite(g) or g < 0 for g in gammas):
        raise ValueError(f"--gammas: expected non-negative numbers, got {text!r}")
    return gammas


def collect_losses(detector, gammas: list[float], num_images: int, max_neg: int, seed: int):
    """Runs ``detector.model`` over the val set; returns ({gamma: [pos tensors]}, {gamma: [neg tensors]}, n)."""
    import torch

    from ..analysis import anchor_losses
    from ..data.coco import CocoDetection
    from ..build import build_criterion
    from ..matcher import BACKGROUND, IGNORE

    cfg = detector.cfg
    val = cfg.data.val
    if not (val.images and val.annotations):
        raise ValueError("data.val.images and data.val.annotations must be set (in the config or as overrides)")
    dataset = CocoDetection(val.images, val.annotations)
    # The val file's contiguous labels -> the model's labels, through the dataset category ids.
    model_label = {c["id"]: i for i, c in enumerate(detector.categories)}
    unknown = [c["id"] for c in dataset.categories if c["id"] not in model_label]
    if unknown:
        raise ValueError(f"{val.annotations}: category ids {unknown} are not among the model's "
                         f"{sorted(model_label)}")
    remap = torch.tensor([model_label[c["id"]] for c in dataset.categories], dtype=torch.int64)
    criterion = build_criterion(cfg).to(detector.device)
    gen = torch.Generator().manual_seed(seed)
    pos = {g: [] for g in gammas}
    neg = {g: [] for g in gammas}
    used = 0
    count = len(dataset) if num_images <= 0 else min(num_images, len(dataset))
    for i in range(count):
        sample = dataset[i]
        if sample is None:  # unreadable image, already warned about
            continue
        batch, sizes, _ = detector.preprocess([sample["image"]])
        (h0, w0), (h, w) = sample["orig_size"], sizes[0]
        scale = torch.tensor([w / w0, h / h0, w / w0, h / h0])
        target = {"boxes": (sample["boxes"] * scale).to(detector.device),
                  "labels": remap[sample["labels"]].to(detector.device),
                  "crowd_boxes": (sample["crowd_boxes"] * scale).to(detector.device)}
        out = detector.network(batch)
        matched = criterion.match(out.anchors, [target])[0]
        labels = matched.clone()  # class for foreground, BACKGROUND (-1) or IGNORE (-2)
        fg = matched >= 0
        labels[fg] = target["labels"][matched[fg]]
        bg_idx = (labels == BACKGROUND).nonzero().flatten().cpu()
        if bg_idx.numel() > max_neg > 0:  # same anchors for every gamma, so the curves stay comparable
            drop = bg_idx[torch.randperm(bg_idx.numel(), generator=gen)[max_neg:]]
            labels[drop.to(labels.device)] = IGNORE
        for g in gammas:
            p, n = anchor_losses(out.cls_logits[0], labels, g)
            pos[g].append(p.cpu())
            neg[g].append(n.cpu())
        used += 1
    if used == 0:
        raise ValueError(f"{val.annotations}: no readable val images")
    return ({g: torch.cat(v) for g, v in pos.items()}, {g: torch.cat(v) for g, v in neg.items()}, used)


def write_outputs(pos: dict, neg: dict, out_dir: Path, points: int, title: str = "") -> dict:
    """CSV + PNG of the curves, summary.json; returns the summary."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis import cumulative_loss_curve, hardest_share, resample_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    gammas = list(pos)
    columns, curves = {}, {}
    for name, group in (("positive", pos), ("negative", neg)):
        for g in gammas:
            grid, y = resample_curve(*cumulative_loss_curve(group[g]), num_points=points)
            columns[f"{name}_gamma_{g:g}"] = y
            curves[(name, g)] = (grid, y)
    with open(out_dir / "loss_cdf.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fraction", *columns])
        for j in range(points):
            w.writerow([f"{grid[j]:.6g}", *(f"{c[j]:.6g}" for c in columns.values())])

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, name in zip(axes, ("positive", "negative")):
        for g in gammas:
            ax.plot(*curves[(name, g)], label=f"γ = {g:g}")
        n = (pos if name == "positive" else neg)[gammas[0]].numel()
        ax.set(title=f"{name} anchors (n = {n:,})", xlabel=f"fraction of {'fore' if name == 'positive' else 'back'}"
               "ground examples", ylabel="cumulative normalized loss", xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_dir / "loss_cdf.png", dpi=120)
    plt.close(fig)

    summary = {"num_positive": pos[gammas[0]].numel(), "num_negative": neg[gammas[0]].numel(), "gammas": {
        f"{g:g}": {"neg_hardest_1pct": hardest_share(neg[g], 0.01), "neg_hardest_10pct": hardest_share(neg[g], 0.10),
                   "pos_hardest_10pct": hardest_share(pos[g], 0.10), "pos_hardest_50pct": hardest_share(pos[g], 0.50)}
        for g in gammas}}
    write_json(out_dir / "summary.json", summary, indent=2)
    return summary


def run(args: argparse.Namespace) -> int:
    from ..runtime import load_detector

    gammas = _parse_gammas(args.gammas)
    detector = load_detector(args.weights, args.config, args.device, args.overrides)
    pos, neg, used = collect_losses(detector, gammas, args.num_images, args.max_negatives_per_image, args.seed)
    out = Path(args.output)
    summary = write_outputs(pos, neg, out, args.points, title=f"{Path(args.weights).name}, {used} val images")
    print(f"{used} images: {summary['num_positive']:,} foreground and {summary['num_negative']:,} background anchors")
    print("| gamma | hardest 1% of negatives | hardest 10% of negatives | hardest 10% of positives |")
    print("|---|---|---|---|")
    for g, s in summary["gammas"].items():
        print(f"| {g} | {s['neg_hardest_1pct']:.1%} | {s['neg_hardest_10pct']:.1%} | {s['pos_hardest_10pct']:.1%} |")
    if summary["num_positive"] == 0:
        print("warning: no foreground anchors in these images; the positive curves are empty (NaN)")
    print(f"wrote {out / 'loss_cdf.png'}, {out / 'loss_cdf.csv'}, {out / 'summary.json'}")
    return 0
