"""Speed of our RetinaNet against torchvision's retinanet_resnet50_fpn, same weights, same inputs.

Both models run in one process, interleaved iteration by iteration (so that a busy machine slows
both alike), with torchvision's architecture as shipped with pretrained weights: FrozenBatchNorm,
stem and res2 frozen. Our model is built from configs/torchvision/retinanet_resnet50_fpn_coco.yaml
and gets a copy of torchvision's state dict. The class bias is zeroed so that every level yields
its full top-k candidates, i.e. post-processing does the work it does for a trained model.

    python scripts/benchmark.py --size 512 --iters 3 --warmup 1 --threads 2

Measures, per model: a training step (batch 2: preprocessing, forward, loss, backward; no
optimizer) and inference per image (preprocessing, forward, post-processing, rescaling). It also
checks that both give the same losses (our torchvision config uses normalize=image, box_loss=l1).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from retinanet.build import build_criterion, build_model
from retinanet.checkpoint import load_model_state
from retinanet.config_loader import load_config
from retinanet.detector import Detector

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "torchvision" / "retinanet_resnet50_fpn_coco.yaml"


def torchvision_model(size: int) -> torchvision.models.detection.RetinaNet:
    """retinanet_resnet50_fpn as built for pretrained weights (FrozenBN, 3 trainable stages), random init."""
    body = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = torchvision.models.detection.RetinaNet(backbone, 91, anchor_generator=_default_anchorgen(),
                                                   min_size=size, max_size=max(size, 1333))
    torch.nn.init.zeros_(model.head.classification_head.cls_logits.bias)
    return model


def sample_data(device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Two smooth random images (landscape, portrait) with a few boxes each, original pixels."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for h, w in [(480, 640), (600, 450)]:
        low = torch.rand(3, h // 32, w // 32, generator=g)
        images.append(torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear")[0].to(device))
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(1, 91, (4,), generator=g).to(device)})
    return images, targets


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800, help="shortest image side after resizing")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    tv = torchvision_model(args.size).to(device)
    cfg = load_config(CONFIG, [f"input.min_size_test={args.size}", f"input.max_size_test={max(args.size, 1333)}"])
    ours = build_model(cfg)
    load_model_state(ours, tv.state_dict(), source="torchvision retinanet_resnet50_fpn")
    ours.to(device)
    criterion = build_criterion(cfg).to(device)
    detector = Detector(ours, cfg, device)
    images, targets = sample_data(device)

    def tv_train() -> dict:
        tv.train()
        losses = tv(images, targets)
        sum(losses.values()).backward()
        return {"loss_cls": losses["classification"], "loss_box": losses["bbox_regression"]}

    def ours_train() -> dict:
        ours.train()
        criterion.train()
        batch, sizes, _ = detector.preprocess(images)
        scaled = []
        for t, im, (h, w) in zip(targets, images, sizes):
            scale = torch.tensor([w / im.shape[-1], h / im.shape[-2]] * 2, device=device)
            scaled.append({"boxes": t["boxes"] * scale, "labels": t["labels"]})
        losses = criterion(ours(batch), scaled, gamma=cfg.model.loss.gamma)
        (losses["loss_cls"] + losses["loss_box"]).backward()
        return losses

    @torch.no_grad()
    def tv_infer() -> None:
        tv.eval()
        for im in images:
            tv([im])

    def ours_infer() -> None:
        for im in images:
            detector.predict(im)

    # Same weights, same data, same loss definition: the losses must agree.
    ref, got = tv_train(), ours_train()
    tv.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    loss_rows = [(k, ref[k].item(), got[k].item()) for k in ("loss_cls", "loss_box")]

    times: dict[str, list[float]] = {k: [] for k in ("tv_train", "ours_train", "tv_infer", "ours_infer")}
    for i in range(args.warmup + args.iters):
        # Interleaved, so that load from other processes hits both models alike.
        step = {"tv_train": timed(tv_train, device), "ours_train": timed(ours_train, device),
                "tv_infer": timed(tv_infer, device) / len(images), "ours_infer": timed(ours_infer, device) / len(images)}
        tv.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
        if i >= args.warmup:
            for k, v in step.items():
                times[k].append(v)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nRetinaNet R50-FPN, size {args.size}, device {device}, threads {torch.get_num_threads()}, "
          f"median of {args.iters} iterations after {args.warmup} warm-up\n")
    print("| measurement | torchvision | ours | ours / torchvision |")
    print("|---|---:|---:|---:|")
    print(f"| training step, batch 2 (fwd + loss + bwd), s | {med['tv_train']:.3f} | {med['ours_train']:.3f} | "
          f"{med['ours_train'] / med['tv_train']:.3f} |")
    print(f"| inference per image (pre + fwd + post), s | {med['tv_infer']:.3f} | {med['ours_infer']:.3f} | "
          f"{med['ours_infer'] / med['tv_infer']:.3f} |")
    print("\n| loss | torchvision | ours | abs diff |")
    print("|---|---:|---:|---:|")
    for name, a, b in loss_rows:
        print(f"| {name} | {a:.6f} | {b:.6f} | {abs(a - b):.2e} |")
    worst = max(abs(a - b) / max(abs(a), 1e-8) for _, a, b in loss_rows)
    print(f"\nlosses {'EQUAL' if worst < 1e-4 else 'DIFFER'} (max relative difference {worst:.1e})")


if __name__ == "__main__":
    main()
