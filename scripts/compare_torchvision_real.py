#!/usr/bin/env python
"""Train our RetinaNet and torchvision's on the same real data, backbone, size, batch and budget.

    python scripts/compare_torchvision_real.py --config configs/examples/raccoon_mobilenet.yaml \
        [--iters 600] [--output output/compare_raccoon] [key=value ...]

Both models get the MobileNetV2 ImageNet backbone named by the config, the same augmented batches
(our data pipeline, same seed), the same SGD/warmup/step schedule, and are scored by the same COCO
evaluator. torchvision's own resize is bypassed during training (the batches are already resized)
and restored, at the config's test size, for evaluation. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retinanet.backbone import load_backbone_weights  # noqa: E402
from retinanet.config import load_config  # noqa: E402
from retinanet.data.loader import build_dataset, build_train_loader  # noqa: E402
from retinanet.engine.solver import build_lr_scheduler, build_optimizer  # noqa: E402
from retinanet.engine.trainer import train  # noqa: E402
from retinanet.evaluation.coco_evaluator import COCOEvaluator  # noqa: E402
from retinanet.preprocess import read_image, to_float_tensor  # noqa: E402


def build_torchvision_model(cfg, num_classes: int) -> TVRetinaNet:
    mb = torchvision.models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    del mb.classifier  # detection uses the features only, like ours
    if cfg.model.backbone.weights:
        load_backbone_weights(mb, cfg.model.backbone.weights)
    for i in range(4):  # freeze_at=2: stem and the stride-4 stage, as in our config
        for p in mb.features[i].parameters():
            p.requires_grad_(False)
    backbone = BackboneWithFPN(mb.features, {"6": "0", "13": "1", "18": "2"}, [32, 96, 1280],
                               cfg.model.fpn.channels, extra_blocks=LastLevelP6P7(cfg.model.fpn.channels,
                                                                                  cfg.model.fpn.channels))
    if cfg.model.head.num_convs != 4:
        raise ValueError("torchvision's RetinaNet head has 4 convs per tower: use model.head.num_convs=4")
    norm = functools.partial(torch.nn.GroupNorm, 32) if cfg.model.head.norm == "gn" else None
    head = RetinaNetHead(cfg.model.fpn.channels, 9, num_classes,  # prior probability 0.01, as ours
                         norm_layer=norm)
    inp = cfg.input
    return TVRetinaNet(backbone, num_classes, head=head, min_size=inp.min_size_test, max_size=inp.max_size_test,
                       image_mean=list(inp.pixel_mean), image_std=list(inp.pixel_std), detections_per_img=100)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--iters", type=int, default=None, help="overrides solver.max_iter for both")
    p.add_argument("--output", default="output/compare_torchvision")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", choices=["ours", "torchvision"], default=None,
                   help="train one side only (run the two in parallel processes); the table joins "
                        "whatever results the output folder holds")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + [f"train.output_dir={args.output}/ours", "train.eval_period=0"]
    if args.iters:
        overrides.append(f"solver.max_iter={args.iters}")
    cfg = load_config(args.config, overrides)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "ours"):
        ours = train(cfg)
        records = [json.loads(line) for line in (out / "ours" / "metrics.jsonl").read_text().splitlines()]
        times = [r["time_per_iter"] for r in records if "time_per_iter" in r]
        (out / "ours.json").write_text(json.dumps({"metrics": ours, "s_per_iter": sum(times) / len(times)}))
    if args.only in (None, "torchvision"):
        dataset = build_dataset(cfg, "train", train=True)
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
        torch.manual_seed(cfg.train.seed)  # the seed draws torchvision's initial weights too, as ours
        tv = build_torchvision_model(cfg, len(dataset.categories))
        tv_sec = train_torchvision(cfg, dataset, tv, device)
        theirs = evaluate_torchvision(cfg, tv, dataset.categories, device)
        (out / "torchvision.json").write_text(json.dumps({"metrics": theirs, "s_per_iter": tv_sec}))
    results = {n: json.loads((out / f"{n}.json").read_text()) for n in ("ours", "torchvision")
               if (out / f"{n}.json").is_file()}
    table = ["| model | AP | AP50 | AP75 | s/iter |", "|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metrics"]
        table.append(f"| {name} | {m['AP']:.1f} | {m['AP50']:.1f} | {m['AP75']:.1f} | {r['s_per_iter']:.2f} |")
    text = "\n".join(table)
    print(text)
    (out / "comparison.md").write_text(f"config: {args.config}, iters {cfg.solver.max_iter}\n\n{text}\n")


if __name__ == "__main__":
    main()
