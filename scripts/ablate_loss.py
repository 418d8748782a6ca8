#!/usr/bin/env python
"""Class-loss ablation: the same detector, budget and seeds under each loss of the paper's table 1.

    python scripts/ablate_loss.py --data ../shared/data/raccoon \\
        --weights ../shared/weights/mobilenet_v2_imagenet_features.pth --iters 200 --output output/ablate_loss

``--data`` is a COCO-format folder with images/ and annotations/{train,val}.json. Every run trains
in this process with ``retinanet.engine.trainer.train`` (its own folder under --output: config,
metrics.jsonl, TensorBoard, model_final.pth; one per seed: NAME/seedS), then is evaluated on the
val split. A run stopped by a NaN/Inf loss counts as diverged; AP and loss are means over the seeds
that did not diverge (± the sample std over seeds). Prints a Markdown table and writes results.md
and results.json.
Trailing ``key=value`` arguments override the config of every run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# name -> (config overrides, description, paper AP: Lin et al. 2017, R50 at 600 px on COCO, tables 1a/1b, app. A)
RUNS: dict[str, tuple[dict, str, str]] = {
    "ce_prior": ({"model.loss.cls_loss": "bce"}, "CE, prior init", "30.2 (α=.5)"),
    "ce_no_prior": ({"model.loss.cls_loss": "bce", "model.head.prior_init": False}, "CE, no prior init", "diverges"),
    "alpha_ce": ({"model.loss.cls_loss": "alpha_bce", "model.loss.alpha": 0.75}, "α-balanced CE, α=.75", "31.1"),
    "fl_g0.5": ({"model.loss.gamma": 0.5, "model.loss.alpha": 0.5}, "FL γ=0.5, α=.5", "32.9"),
    "fl_g1": ({"model.loss.gamma": 1.0, "model.loss.alpha": 0.25}, "FL γ=1, α=.25", "33.7"),
    "fl_g2": ({"model.loss.gamma": 2.0, "model.loss.alpha": 0.25}, "FL γ=2, α=.25", "34.0"),
    "fl_g5": ({"model.loss.gamma": 5.0, "model.loss.alpha": 0.25}, "FL γ=5, α=.25", "32.2"),
    "fl_star_g2_b1": ({"model.loss.cls_loss": "focal_star", "model.loss.gamma": 2.0, "model.loss.beta": 1.0},
                      "FL* γ=2, β=1", "33.8"),
    "fl_star_g4_b0": ({"model.loss.cls_loss": "focal_star", "model.loss.gamma": 4.0, "model.loss.beta": 0.0},
                      "FL* γ=4, β=0", "33.9"),
    # Other modulating factors f(p_t) of -α_t f(p_t) log p_t (does the form of the focal term matter?),
    # with FL γ=2's α=.25 so that only f changes; and Poly-1 focal (Leng et al. 2022).
    "fl_cos": ({"model.loss.cls_loss": "modulated", "model.loss.modulator": "cos", "model.loss.alpha": 0.25},
               "cos(p_t) CE, α=.25", "–"),
    "fl_exp": ({"model.loss.cls_loss": "modulated", "model.loss.modulator": "exp", "model.loss.alpha": 0.25},
               "exp(−p_t) CE, α=.25", "–"),
    "fl_exp_sq": ({"model.loss.cls_loss": "modulated", "model.loss.modulator": "exp_sq", "model.loss.alpha": 0.25},
                  "exp(−p_t²) CE, α=.25", "–"),
    "poly1": ({"model.loss.cls_loss": "poly1_focal", "model.loss.poly_epsilon": 1.0, "model.loss.gamma": 2.0,
               "model.loss.alpha": 0.25}, "Poly-1 FL ε=1, γ=2, α=.25", "–"),
    "fl_sched_4_1": ({"model.loss.alpha": 0.25, "model.loss.gamma_schedule": "linear", "model.loss.gamma": 4.0,
                      "model.loss.gamma_end": 1.0}, "FL, γ linear 4→1, α=.25", "–"),
    # The same without gradient clipping: does the loss (and the prior) keep training stable on its own?
    "ce_prior_noclip": ({"model.loss.cls_loss": "bce", "solver.clip_grad_norm": 0}, "CE, prior init, no clipping",
                        "30.2 (α=.5)"),
    "ce_no_prior_noclip": ({"model.loss.cls_loss": "bce", "model.head.prior_init": False, "solver.clip_grad_norm": 0},
                           "CE, no prior init, no clipping", "diverges"),
    "fl_g2_noclip": ({"model.loss.gamma": 2.0, "model.loss.alpha": 0.25, "solver.clip_grad_norm": 0},
                     "FL γ=2, α=.25, no clipping", "34.0"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="COCO folder: images/, annotations/train.json, annotations/val.json")
    p.add_argument("--iters", type=int, default=200, help="iterations per run (default 200)")
    p.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--lr", type=float, default=0.01, help="base learning rate (default 0.01)")
    p.add_argument("--min-size", type=int, default=320, help="short side for train and test (default 320)")
    p.add_argument("--backbone", default="mobilenet_v2", help="backbone name (default mobilenet_v2)")
    p.add_argument("--weights", default="", help="ImageNet backbone state dict (default: random init)")
    p.add_argument("--head-norm", default="gn", help="class/box tower norm: gn (default) or '' (paper: none)")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip, 0 = off (default 10)")
    p.add_argument("--seeds", default="42", help="comma-separated seeds; each run is repeated per seed (default 42)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(RUNS)}")
    p.add_argument("--reuse", action="store_true", help="keep the result of runs already in --output")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: join the runs already in --output (seeds without a result are left out)")
    p.add_argument("--output", default="output/ablate_loss", help="output folder")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides applied to every run")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace) -> dict:
    data = Path(args.data)
    for part in ("images", "annotations/train.json", "annotations/val.json"):
        if not (data / part).exists():
            raise FileNotFoundError(f"--data {data}: missing {part}")
    warmup = max(1, min(100, args.iters // 5))
    return {
        "model.backbone.name": args.backbone, "model.backbone.weights": args.weights,
        "model.backbone.freeze_at": 2 if args.weights else 0, "model.fpn.channels": 128,
        # Without GN and clipping, a 300-iteration CPU budget at batch 4 left most CE-type runs diverged
        # and the rest without detections: the ablation would compare noise.
        "model.head.norm": args.head_norm, "solver.clip_grad_norm": args.clip,
        "input.min_size_train": args.min_size, "input.max_size_train": args.min_size * 8 // 5,
        "input.min_size_test": args.min_size, "input.max_size_test": args.min_size * 8 // 5,
        "solver.ims_per_batch": args.batch, "solver.base_lr": args.lr, "solver.max_iter": args.iters,
        "solver.warmup_iters": warmup, "solver.steps": f"[{int(args.iters * 0.75)}]",
        "train.device": args.device, "train.log_period": 1,
        "train.checkpoint_period": 0, "train.eval_period": 0, "train.vis_images": 0,
        "dataloader.num_workers": 0,
        "data.train.images": str(data / "images"), "data.train.annotations": str(data / "annotations/train.json"),
        "data.val.images": str(data / "images"), "data.val.annotations": str(data / "annotations/val.json"),
    }


def run_one(name: str, overrides: list[str], out: Path) -> dict:
    """Trains one configuration; returns AP, AP50, final loss (mean of the last 10% of steps), diverged."""
    from retinanet.config_loader import load_config
    from retinanet.engine.trainer import NonFiniteLossError, train

    start = time.perf_counter()
    diverged, metrics, note = False, {}, ""
    try:
        metrics = train(load_config(None, overrides + [f"train.output_dir={out}"]))
    except NonFiniteLossError as e:
        diverged, note = True, str(e).split(".")[0]
    records = []
    if (out / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    tail = losses[-max(1, len(losses) // 10):] if losses else [math.nan]
    final_loss = sum(tail) / len(tail)
    diverged = diverged or not math.isfinite(final_loss)
    return {"AP": metrics.get("AP", math.nan), "AP50": metrics.get("AP50", math.nan), "final_loss": final_loss,
            "diverged": diverged, "iterations": len(losses), "seconds": time.perf_counter() - start, "note": note}


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean over the seeds that trained; ``diverged`` counts the seeds that did not."""
    ok = [r for r in per_seed.values() if not r["diverged"]]

    def mean(key: str) -> float:
        return sum(r[key] for r in ok) / len(ok) if ok else math.nan

    ap = mean("AP")
    ap_std = math.sqrt(sum((r["AP"] - ap) ** 2 for r in ok) / (len(ok) - 1)) if len(ok) > 1 else math.nan
    return {"AP": ap, "AP_std": ap_std, "AP50": mean("AP50"), "final_loss": mean("final_loss"),
            "diverged": len(per_seed) - len(ok), "runs": len(per_seed),
            "diverged_at": [r["iterations"] for r in per_seed.values() if r["diverged"]],
            "seconds": sum(r["seconds"] for r in per_seed.values()), "seeds": per_seed}


def table(results: dict) -> str:
    def num(v: float) -> str:
        return "–" if not math.isfinite(v) else f"{v:.1f}"

    lines = ["| run | loss | AP | AP50 | final loss | diverged | paper AP |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ap = num(r["AP"]) + (f" ± {r['AP_std']:.1f}" if math.isfinite(r["AP_std"]) else "")
        loss = "–" if not math.isfinite(r["final_loss"]) else f"{r['final_loss']:.3f}"
        diverged = f"{r['diverged']}/{r['runs']}"
        if r["diverged"]:
            diverged += f" (iter {', '.join(map(str, r['diverged_at']))})"
        lines.append(f"| {name} | {RUNS[name][1]} | {ap} | {num(r['AP50'])} | {loss} | {diverged} | "
                     f"{RUNS[name][2]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"ablate_loss: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    import torch
    torch.set_num_threads(args.threads)
    base = [f"{k}={v}" for k, v in base_overrides(args).items()] + list(args.overrides)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    results = {}
    for name in names:
        per_seed = {}
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            cached = run_dir / "result.json"
            if (args.reuse or args.table_only) and cached.is_file():
                per_seed[seed] = json.loads(cached.read_text())
            elif args.table_only:
                continue
            else:
                print(f"== {name}, seed {seed}: {RUNS[name][1]}", flush=True)
                overrides = base + [f"{k}={v}" for k, v in RUNS[name][0].items()] + [f"train.seed={seed}"]
                per_seed[seed] = run_one(name, overrides, run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(per_seed[seed], indent=2))
            r = per_seed[seed]
            print(f"   {name}, seed {seed}: AP {r['AP']:.1f}, AP50 {r['AP50']:.1f}, final loss "
                  f"{r['final_loss']:.3f}, diverged {r['diverged']}, {r['seconds']:.0f} s", flush=True)
        if per_seed:
            results[name] = summarize(per_seed)
    md = table(results)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
