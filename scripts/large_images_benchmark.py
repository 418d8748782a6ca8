#!/usr/bin/env python
"""Crop training + tiled evaluation against shrinking the image, at the same budget, on one dataset.

    python scripts/large_images_benchmark.py --data generated --iters 300 --output output/large_bench \\
        --weights ../shared/weights/mobilenet_v2_imagenet_features.pth
    python scripts/large_images_benchmark.py --data ../shared/data/bccd --crop 320 --tile 320 ...

``--data generated`` writes a large-scene set (``scripts/large_scenes.py``: 1600x2000 images with
100-300 objects of 12-40 px) under --output first; otherwise it is a COCO folder with images/ and
annotations/{train,val}.json. Both runs start from configs/examples/large_images_mobilenet.yaml with the
same iterations, batch, seed and backbone weights:
- ``shrink``: no crops, no tiles; images resized to --shrink-size (short side), as a usual config does;
- ``crop+tile``: --crop px crops at native resolution for training, --tile px tiles for evaluation.
Prints AP, AP50, AR100 and AR at --max-dets for each, as a Markdown table, and writes results.json.
Trailing ``key=value`` arguments override both runs' configs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="generated")
    p.add_argument("--output", default="output/large_bench")
    p.add_argument("--weights", default="", help="MobileNetV2 ImageNet backbone weights (file or torchvision name)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--shrink-size", type=int, default=320, help="short side of the shrink run (train and test)")
    p.add_argument("--max-dets", type=int, default=300)
    p.add_argument("--runs", nargs="+", default=["shrink", "crop+tile"])
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from retinanet.config_loader import load_config
    from retinanet.engine.trainer import train

    out = Path(args.output)
    data = Path(args.data)
    if args.data == "generated":
        from large_scenes import make_large_scenes_coco
        data = out / "data"
        if not (data / "annotations" / "val.json").is_file():
            make_large_scenes_coco(data, num_train=8, num_val=3)
    common = {
        "data.train.images": data / "images", "data.train.annotations": data / "annotations" / "train.json",
        "data.val.images": data / "images", "data.val.annotations": data / "annotations" / "val.json",
        "model.backbone.weights": args.weights, "solver.max_iter": args.iters, "solver.ims_per_batch": args.batch,
        "solver.steps": f"[{int(args.iters * 0.8)}]", "solver.warmup_iters": min(100, args.iters // 5),
        "solver.base_lr": 0.01, "train.checkpoint_period": 0, "train.eval_period": 0, "train.vis_images": 0,
        "evaluation.max_dets": args.max_dets, "evaluation.report": False, "dataloader.num_workers": 2,
    }
    runs = {
        "shrink": {"input.crop_train": 0, "evaluation.tile": 0, "input.min_size_train": f"[{args.shrink_size}]",
                   "input.max_size_train": args.shrink_size * 5 // 3, "input.min_size_test": args.shrink_size,
                   "input.max_size_test": args.shrink_size * 5 // 3},
        "crop+tile": {"input.crop_train": args.crop, "evaluation.tile": args.tile,
                      "input.min_size_test": args.tile, "input.max_size_test": args.tile},
    }
    rows = []
    for name in args.runs:
        overrides = [f"{k}={v}" for k, v in {**common, **runs[name]}.items()] + args.overrides
        cfg = load_config(REPO / "configs" / "examples" / "large_images_mobilenet.yaml", overrides)
        start = time.perf_counter()
        metrics = train(cfg, str(out / name.replace("+", "_")), overwrite=True)
        rows.append({"run": name, "minutes": (time.perf_counter() - start) / 60,
                     **{k: metrics.get(k) for k in ("AP", "AP50", "AR100", f"AR@{args.max_dets}")}})
    print(f"\n{data}: {args.iters} iterations, batch {args.batch}\n")
    print("| run | AP | AP50 | AR100 | AR@%d | minutes |\n|---|---:|---:|---:|---:|---:|" % args.max_dets)
    for r in rows:
        vals = [r["AP"], r["AP50"], r["AR100"], r[f"AR@{args.max_dets}"]]
        print(f"| {r['run']} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in vals)
              + f" | {r['minutes']:.1f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
