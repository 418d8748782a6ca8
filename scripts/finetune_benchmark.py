#!/usr/bin/env python
"""Fine-tuning from a detector against training from the ImageNet backbone alone, at the same short budget.

    python scripts/finetune_benchmark.py --weights ../shared/weights/mobilenet_v2_imagenet_features.pth \\
        --source-iters 300 --iters 100 --output output/finetune_bench

Two generated data sets (``retinanet.data.synthetic``, 160x192 images) with different class sets:
the source has five shapes (circle, rectangle, triangle, cross, star), the target two (circle, rectangle),
drawn from other seeds. A MobileNetV2 RetinaNet is trained on the source, then two runs train on the
target for ``--iters`` iterations with the same settings and seed: ``backbone`` (ImageNet backbone only) and
``finetune`` (``model.weights`` = the source detector: all but its 5-class layer). Prints target AP per run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="", help="MobileNetV2 ImageNet backbone weights (file or torchvision name)")
    p.add_argument("--source-iters", type=int, default=300)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--target-images", type=int, default=60)
    p.add_argument("--output", default="output/finetune_bench")
    args = p.parse_args()
    from retinanet.config_loader import load_config
    from retinanet.data.synthetic import make_synthetic_coco
    from retinanet.engine.trainer import train

    out = Path(args.output)
    sets = {"source": dict(num_train=300, num_val=30, num_classes=5, seed=0),
            "target": dict(num_train=args.target_images, num_val=50, num_classes=2, seed=11)}
    for name, kw in sets.items():
        if not (out / name / "annotations" / "val.json").is_file():
            make_synthetic_coco(out / name, image_size=(160, 192), min_object=20, max_objects=4, **kw)

    def run(data: str, folder: str, iters: int, extra: dict) -> dict:
        d = out / data
        o = {"data.train.images": d / "images", "data.train.annotations": d / "annotations" / "train.json",
             "data.val.images": d / "images", "data.val.annotations": d / "annotations" / "val.json",
             "model.backbone.weights": args.weights, "model.anchors.sizes": "[24,48,96,192,384]",
             "input.min_size_train": "[144,160,176]", "input.max_size_train": 224, "input.min_size_test": 160,
             "input.max_size_test": 224, "input.size_divisible": 32, "solver.ims_per_batch": 8,
             "solver.max_iter": iters, "solver.steps": f"[{int(iters * 0.8)}]", "solver.warmup_iters": iters // 5,
             "train.checkpoint_period": 0, "train.eval_period": 0, "train.vis_images": 0,
             "evaluation.report": False, "dataloader.num_workers": 2, **extra}
        cfg = load_config(REPO / "configs" / "examples" / "raccoon_mobilenet.yaml", [f"{k}={v}" for k, v in o.items()])
        return train(cfg, str(out / folder), overwrite=True)

    if not (out / "source_run" / "model_final.pth").is_file():
        run("source", "source_run", args.source_iters, {})
    rows = {"backbone": run("target", "backbone", args.iters, {}),
            "finetune": run("target", "finetune", args.iters, {"model.weights": out / "source_run" / "model_final.pth"})}
    print(f"\ntarget: {args.target_images} train images, 2 classes; {args.iters} iterations each\n")
    print("| start | AP | AP50 | AR100 |\n|---|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['AP']:.1f} | {m['AP50']:.1f} | {m['AR100']:.1f} |")
    (out / "results.json").write_text(json.dumps({k: {m: v[m] for m in ("AP", "AP50", "AR100")} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
