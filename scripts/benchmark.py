"""Speed of our RetinaNet against torchvision's retinanet_resnet50_fpn, same weights, same inputs.

Both models run in one process, interleaved iteration by iteration (so that a busy machine slows
both alike), with torchvision's architecture as shipped with pretrained weights: FrozenBatchNorm,
stem and res2 frozen. Our model is built from configs/torchvision/retinanet_resnet50_fpn_coco.yaml
and gets a copy of torchvision's state dict. The class bias is zeroed so that every level yields
its full top-k candidates, i.e. post-processing does the work it does for a trained model.

    python scripts/benchmark.py --size 512 --iters 3 --warmup 1 --threads 2

Measures, per model: a training step (batch 2: preprocessing, forward, loss, backward; no
optimizer) with the share of it spent in our loss and anchor matching; inference per image
(preprocessing, forward, post-processing, rescaling) with ``Detector.predict`` (the default fast
path) and, unless --no-onnx, through ONNX Runtime (``runtime.load_exported(path).predict``) in fp32
(the default plain-conv graph, and the ``--winograd`` graph) and static int8 (``quantize.quantize_onnx``
on the plain graph, calibrated on the benchmark's images; its detections are not compared: int8
rounds); and the training data loader's images/s with the default workers on --data (a COCO-format folder). It checks
that both models give the same losses (our torchvision config uses normalize=image, box_loss=l1) and
that every fast path returns torchvision's detections (as sets: boxes within 0.05 px, scores 1e-4).
Inputs are real photos from --photos when present, else generated ones. The CPU's int8 and bf16
flags (VNNI, AMX) are printed beside the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torchvision
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from retinanet.build import build_criterion, build_model
from retinanet.checkpoint import load_model_state
from retinanet.config_loader import load_config
from retinanet.data.loader import build_dataset, build_train_loader
from retinanet.detector import Detector
from retinanet.export import compare_detections, export_model
from retinanet.quantize import quantize_onnx
from retinanet.runtime import load_exported
from retinanet.fast import for_training
from retinanet.preprocess import read_image, to_float_tensor

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "torchvision" / "retinanet_resnet50_fpn_coco.yaml"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def torchvision_model(size: int) -> torchvision.models.detection.RetinaNet:
    """retinanet_resnet50_fpn as built for pretrained weights (FrozenBN, 3 trainable stages), random init."""
    body = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = torchvision.models.detection.RetinaNet(backbone, 91, anchor_generator=_default_anchorgen(),
                                                   min_size=size, max_size=max(size, 1333))
    torch.nn.init.zeros_(model.head.classification_head.cls_logits.bias)
    return model


def sample_data(device: torch.device, photos: str = "") -> tuple[list[torch.Tensor], list[dict]]:
    """Two images with a few boxes each (original pixels): the first landscape and first portrait
    photo of ``photos`` if it has them, else smooth random images (landscape, portrait)."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    files = sorted(Path(photos).glob("*.jpg")) if photos and Path(photos).is_dir() else []
    loaded = [to_float_tensor(read_image(f)) for f in files[:40]]
    picked = [next((im for im in loaded if im.shape[2] > im.shape[1]), None),
              next((im for im in loaded if im.shape[1] > im.shape[2]), None)]
    for k, (h, w) in enumerate([(480, 640), (600, 450)]):
        if picked[k] is not None:
            images.append(picked[k].to(device))
            h, w = picked[k].shape[1:]
        else:
            low = torch.rand(3, h // 32, w // 32, generator=g)
            images.append(torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear")[0].to(device))
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(1, 91, (4,), generator=g).to(device)})
    return images, targets


def cpu_flags() -> str:
    """Which of the int8 / bf16 instruction sets the CPU reports (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    names = ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in names)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def loader_images_per_s(root: str, size: int, batches: int = 20) -> Optional[tuple[float, int]]:
    """(images/s, workers) of the training loader with the default dataloader settings on the COCO
    folder ``root`` (images/, annotations/train.json), resizing to ``size``; None if absent."""
    ann, images = Path(root) / "annotations" / "train.json", Path(root) / "images"
    if not ann.is_file():
        return None
    cfg = load_config(CONFIG, [f"input.min_size_train=[{size}]", f"data.train.images={images}",
                               f"data.train.annotations={ann}"])
    loader = iter(build_train_loader(cfg, build_dataset(cfg, "train")))
    next(loader)  # workers started
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(loader)["images"])
    return n / (time.perf_counter() - start), cfg.dataloader.num_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800, help="shortest image side after resizing")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--photos", default=str(SHARED / "raccoon" / "images"), help="folder of .jpg photos")
    parser.add_argument("--data", default=str(SHARED / "raccoon"), help="COCO folder (images/, annotations/train.json) "
                        "for the data-loader row; '' skips it")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows (fp32 and int8)")
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
    images, targets = sample_data(device, args.photos)
    onnx = onnx_winograd = int8 = None
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_winograd = load_exported(export_model(detector, Path(tmp) / "tv.onnx", winograd=True), device)
            plain = export_model(detector, Path(tmp) / "tv.fp32.onnx", winograd=False)
            onnx = load_exported(plain, device)
            int8 = load_exported(quantize_onnx(plain, Path(tmp) / "tv.int8.onnx", detector, images), device)
    loss_time: list[float] = []

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
        outputs = ours(batch)
        start = time.perf_counter()  # loss and anchor matching (the CPU runs them synchronously)
        losses = criterion(outputs, scaled, gamma=cfg.model.loss.gamma)
        loss_time.append(time.perf_counter() - start)
        (losses["loss_cls"] + losses["loss_box"]).backward()
        return losses

    @torch.no_grad()
    def tv_infer() -> None:
        tv.eval()
        for im in images:
            tv([im])

    def per_image(d: Detector) -> Callable[[], None]:
        def run() -> None:
            for im in images:
                d.predict(im)
        return run

    # Every fast path gives torchvision's detections, as sets (ties may come out in either order).
    with torch.no_grad():
        tv.eval()
        ref = [{**r, "labels": detector.label_to_id[r["labels"].cpu()]} for r in tv(images)]
    # Our reference path (no folding) too: with random weights, scores tie in float32 after the sigmoid,
    # and at the top-k boundary torchvision (top-k on scores) and we (on logits) may keep another tie.
    reference = Detector(ours, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fast=False)), device)
    refs = {"torchvision": ref, "our reference path": [reference.predict(im) for im in images]}
    exact = {(name, against): all(compare_detections({k: v.cpu() for k, v in r.items() if k != "names"},
                                                     d.predict(im), 0.05, 1e-4)[0] for r, im in zip(rs, images))
             for name, d in (("Detector.predict", detector), ("ONNX Runtime, Winograd", onnx_winograd),
                             ("ONNX Runtime", onnx), ("reference path", reference))
             if d is not None for against, rs in refs.items() if d is not reference or against == "torchvision"}
    # What the trainer does: conv + FrozenBN folded on the fly, channels_last, Winograd on a CPU.
    for_training(ours, device)

    # Same weights, same data, same loss definition: the losses must agree.
    ref, got = tv_train(), ours_train()
    tv.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    loss_rows = [(k, ref[k].item(), got[k].item()) for k in ("loss_cls", "loss_box")]

    times: dict[str, list[float]] = {k: [] for k in ("tv_train", "ours_train", "tv_infer", "ours_infer", "winograd_infer",
                                                "onnx_infer", "int8_infer")}
    shares: list[float] = []
    for i in range(args.warmup + args.iters):
        # Interleaved, so that load from other processes hits both models alike.
        loss_time.clear()
        step = {"tv_train": timed(tv_train, device), "ours_train": timed(ours_train, device)}
        shares.append(loss_time[0] / step["ours_train"])
        step.update({"tv_infer": timed(tv_infer, device) / len(images),
                     "ours_infer": timed(per_image(detector), device) / len(images)})
        if onnx is not None:
            for key, d in (("onnx_infer", onnx), ("winograd_infer", onnx_winograd), ("int8_infer", int8)):
                step[key] = timed(per_image(d), device) / len(images)
        tv.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
        if i >= args.warmup:
            for k, v in step.items():
                times[k].append(v)

    med = {k: statistics.median(v) for k, v in times.items() if v}
    loader_rate = loader_images_per_s(args.data, args.size) if args.data else None
    print(f"\nRetinaNet R50-FPN, size {args.size}, device {device}, threads {torch.get_num_threads()}, "
          f"median of {args.iters} iterations after {args.warmup} warm-up\nCPU flags: {cpu_flags()}\n")
    print("| measurement | torchvision | ours | ours / torchvision |")
    print("|---|---:|---:|---:|")
    print(f"| training step, batch 2 (fwd + loss + bwd), s | {med['tv_train']:.3f} | {med['ours_train']:.3f} | "
          f"{med['ours_train'] / med['tv_train']:.3f} |")
    print(f"| inference per image (pre + fwd + post), s | {med['tv_infer']:.3f} | {med['ours_infer']:.3f} | "
          f"{med['ours_infer'] / med['tv_infer']:.3f} |")
    if "onnx_infer" in med:
        print(f"| inference per image, ONNX Runtime, s | {med['tv_infer']:.3f} | {med['onnx_infer']:.3f} | "
              f"{med['onnx_infer'] / med['tv_infer']:.3f} |")
        print(f"| inference per image, ONNX Runtime, Winograd graph (export --winograd), s | {med['tv_infer']:.3f} | "
              f"{med['winograd_infer']:.3f} | {med['winograd_infer'] / med['tv_infer']:.3f} |")
        print(f"| inference per image, ONNX Runtime int8, s | {med['tv_infer']:.3f} | {med['int8_infer']:.3f} | "
              f"{med['int8_infer'] / med['tv_infer']:.3f} |")
    print(f"\nspeed-up (torchvision time / ours): training step {med['tv_train'] / med['ours_train']:.2f}x, "
          f"Detector.predict {med['tv_infer'] / med['ours_infer']:.2f}x"
          + (f", ONNX Runtime {med['tv_infer'] / med['onnx_infer']:.2f}x (Winograd graph "
             f"{med['tv_infer'] / med['winograd_infer']:.2f}x), ONNX Runtime int8 "
             f"{med['tv_infer'] / med['int8_infer']:.2f}x" if "onnx_infer" in med else ""))
    print(f"loss + anchor matching: {100 * statistics.median(shares):.1f}% of our training step")
    print(f"training step: {2 / med['ours_train']:.2f} images/s (ours), {2 / med['tv_train']:.2f} (torchvision)"
          + (f"; data loader ({loader_rate[1]} workers, default): {loader_rate[0]:.1f} images/s" if loader_rate else ""))
    for (name, against), ok in exact.items():
        print(f"{name} detections equal {against}'s (as sets, 0.05 px, 1e-4): {'YES' if ok else 'NO'}")
    print("\n| loss | torchvision | ours | abs diff |")
    print("|---|---:|---:|---:|")
    for name, a, b in loss_rows:
        print(f"| {name} | {a:.6f} | {b:.6f} | {abs(a - b):.2e} |")
    worst = max(abs(a - b) / max(abs(a), 1e-8) for _, a, b in loss_rows)
    print(f"\nlosses {'EQUAL' if worst < 1e-4 else 'DIFFER'} (max relative difference {worst:.1e})")


if __name__ == "__main__":
    main()
