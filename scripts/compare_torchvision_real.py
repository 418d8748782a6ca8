#!/usr/bin/env python
"""Train our RetinaNet and torchvision's on the same real data, backbone, size, batch and budget.

    python scripts/compare_torchvision_real.py --config configs/examples/raccoon_mobilenet.yaml \
        [--iters 600] [--seeds 42,1,2] [--output output/compare_raccoon] [--only ours|torchvision] [key=value ...]

Both models get the MobileNetV2 ImageNet backbone named by the config, the same augmented batches
(our data pipeline, same seed), the same SGD/warmup/step schedule, and are scored by the same COCO
evaluator. torchvision's own resize is bypassed during training (the batches are already resized)
and restored, at the config's test size, for evaluation. Prints a Markdown table: one row per
seed, then the mean ± std over seeds and the paired difference ours − torchvision.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retinanet.backbone import MobileNetV2Backbone, load_backbone_weights  # noqa: E402
from retinanet.config_loader import load_config  # noqa: E402
from retinanet.data.loader import build_dataset, build_train_loader  # noqa: E402
from retinanet.engine.solver import build_lr_scheduler, build_optimizer  # noqa: E402
from retinanet.engine.trainer import train  # noqa: E402
from retinanet.evaluation.coco_evaluator import COCOEvaluator  # noqa: E402
from retinanet.preprocess import read_image, to_float_tensor  # noqa: E402


def build_torchvision_model(cfg, num_classes: int) -> TVRetinaNet:
    if cfg.model.backbone.name != "mobilenet_v2":
        raise ValueError(f"this comparison builds torchvision's side on mobilenet_v2; the config has "
                         f"model.backbone.name={cfg.model.backbone.name}")
    mb = torchvision.models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    del mb.classifier  # detection uses the features only, like ours
    if cfg.model.backbone.weights:
        load_backbone_weights(mb, cfg.model.backbone.weights)
    for stage in MobileNetV2Backbone._STAGES[:cfg.model.backbone.freeze_at]:  # the same blocks as ours
        for i in stage:
            mb.features[i].requires_grad_(False)
    backbone = BackboneWithFPN(mb.features, {"6": "0", "13": "1", "18": "2"}, [32, 96, 1280],
                               cfg.model.fpn.channels, extra_blocks=LastLevelP6P7(cfg.model.fpn.channels,
                                                                                  cfg.model.fpn.channels))
    if cfg.model.head.num_convs != 4:
        raise ValueError("torchvision's RetinaNet head has 4 convs per tower: use model.head.num_convs=4")
    norm = functools.partial(torch.nn.GroupNorm, 32) if cfg.model.head.norm == "gn" else None
    head = RetinaNetHead(cfg.model.fpn.channels, len(cfg.model.anchors.scales) * len(cfg.model.anchors.ratios),
                         num_classes,  # prior probability 0.01, as ours
                         norm_layer=norm)
    a, inp = cfg.model.anchors, cfg.input
    # torchvision's own anchor convention (int sizes) on the config's sizes, scales and ratios.
    anchors = AnchorGenerator(tuple(tuple(int(size * sc) for sc in a.scales) for size in a.sizes),
                              (tuple(a.ratios),) * len(a.sizes))
    return TVRetinaNet(backbone, num_classes, head=head, anchor_generator=anchors, min_size=inp.min_size_test,
                       max_size=inp.max_size_test, image_mean=list(inp.pixel_mean), image_std=list(inp.pixel_std),
                       detections_per_img=100)


def train_torchvision(cfg, dataset, model: TVRetinaNet, device: torch.device) -> float:
    """Same batches as our trainer sees; returns seconds per iteration."""
    torch.manual_seed(cfg.train.seed)
    model.to(device).train()
    resize = model.transform.resize
    model.transform.resize = lambda image, target=None: (image, target)  # batches are already resized
    opt = build_optimizer(cfg.solver, model)
    sched = build_lr_scheduler(cfg.solver, opt)
    mean = torch.tensor(cfg.input.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.input.pixel_std).view(3, 1, 1)
    loader = iter(build_train_loader(cfg, dataset))
    start = time.perf_counter()
    for it in range(cfg.solver.max_iter):
        batch = next(loader)
        images = [(batch["images"][i, :, :h, :w] * std + mean).to(device) for i, (h, w) in
                  enumerate(batch["image_sizes"])]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch["targets"]]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"torchvision: non-finite loss at iteration {it}: {losses}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.solver.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
        opt.step()
        sched.step()
        if (it + 1) % cfg.train.log_period == 0:
            print(f"torchvision it {it + 1}: loss {loss.item():.4f}", flush=True)
    seconds = (time.perf_counter() - start) / cfg.solver.max_iter
    model.transform.resize = resize
    return seconds


@torch.no_grad()
def evaluate_torchvision(cfg, model: TVRetinaNet, categories: list[dict], device: torch.device) -> dict:
    model.eval()
    val = cfg.data.val
    ann = json.loads(Path(val.annotations).read_text())
    evaluator = COCOEvaluator(val.annotations, backend=cfg.evaluation.backend)
    label_to_id = torch.tensor([c["id"] for c in categories])
    for info in ann["images"]:
        image = to_float_tensor(read_image(Path(val.images) / info["file_name"])).to(device)
        out = model([image])[0]
        evaluator.process([info["id"]], [{"boxes": out["boxes"].cpu(), "scores": out["scores"].cpu(),
                                          "labels": label_to_id[out["labels"].cpu()]}])
    return evaluator.evaluate()


SIDES = ("ours", "torchvision")
METRICS = ("AP", "AP50", "AP75")


def run_side(cfg, side: str, run_dir: Path) -> dict:
    """Trains and evaluates one side in ``run_dir``; returns {"metrics", "s_per_iter"}."""
    if side == "ours":
        metrics = train(cfg, output_dir=str(run_dir / "ours"))
        records = [json.loads(line) for line in (run_dir / "ours" / "metrics.jsonl").read_text().splitlines()]
        times = [r["time_per_iter"] for r in records if "time_per_iter" in r]
        return {"metrics": metrics, "s_per_iter": sum(times) / len(times)}
    dataset = build_dataset(cfg, "train")
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    torch.manual_seed(cfg.train.seed)  # the seed draws torchvision's initial weights too, as ours
    tv = build_torchvision_model(cfg, len(dataset.categories))
    seconds = train_torchvision(cfg, dataset, tv, device)
    return {"metrics": evaluate_torchvision(cfg, tv, dataset.categories, device), "s_per_iter": seconds}


def summary_table(results: dict[str, dict[str, dict]]) -> str:
    """Per-seed rows, then the mean ± sample std over seeds that have both sides, and their paired difference."""
    cols = [f"{side} {m}" for m in METRICS for side in SIDES] + [f"{side} s/iter" for side in SIDES]
    lines = ["| seed | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def cell(r: dict | None, key: str) -> str:
        if r is None:
            return "–"
        return f"{r['s_per_iter']:.2f}" if key == "s/iter" else f"{r['metrics'][key]:.1f}"

    for seed, sides in results.items():
        row = [cell(sides.get(side), m) for m in METRICS for side in SIDES]
        row += [cell(sides.get(side), "s/iter") for side in SIDES]
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    paired = [sides for sides in results.values() if all(side in sides for side in SIDES)]
    if len(paired) > 1:
        def stats(values: list[float]) -> str:
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            return f"{mean:.1f} ± {std:.1f}"

        row = [stats([r[side]["metrics"][m] for r in paired]) for m in METRICS for side in SIDES]
        lines.append(f"| mean ± std ({len(paired)} seeds) | " + " | ".join(row) + " | | |")
        diffs = [stats([r["ours"]["metrics"][m] - r["torchvision"]["metrics"][m] for r in paired]) for m in METRICS]
        lines.append("\nours − torchvision, paired by seed (mean ± std): "
                     + ", ".join(f"{m} {d}" for m, d in zip(METRICS, diffs)))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--iters", type=int, default=None, help="overrides solver.max_iter for both")
    p.add_argument("--output", default="output/compare_torchvision")
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds (default: train.seed); seed S runs in OUTPUT/seedS")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", choices=SIDES, default=None,
                   help="train one side only (run the two in parallel processes); the table joins "
                        "whatever results the output folder holds")
    p.add_argument("--reuse", action="store_true", help="keep results already in the output folder")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ["train.eval_period=0"]
    if args.iters:
        overrides.append(f"solver.max_iter={args.iters}")
    cfg = load_config(args.config, overrides)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()] or [cfg.train.seed]

    out = Path(args.output)
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        seed_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        for side in ([args.only] if args.only else SIDES):
            if not (args.reuse and (run_dir / f"{side}.json").is_file()):
                (run_dir / f"{side}.json").write_text(json.dumps(run_side(seed_cfg, side, run_dir)))
    results = {}
    for run_dir in sorted((d for d in out.glob("seed*") if d.name[4:].isdigit()), key=lambda d: int(d.name[4:])):
        sides = {side: json.loads((run_dir / f"{side}.json").read_text()) for side in SIDES
                 if (run_dir / f"{side}.json").is_file()}
        if sides:
            results[run_dir.name[4:]] = sides
    text = summary_table(results)
    print(text)
    (out / "comparison.md").write_text(f"config: {args.config}, iters {cfg.solver.max_iter}, "
                                       f"overrides: {' '.join(args.overrides)}\n\n{text}")


if __name__ == "__main__":
    main()
