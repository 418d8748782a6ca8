"""The measurements of scripts/gpu_check.py: the two models, the data, and one function per check,
each returning table rows. Runs on CUDA; on a CPU too (fp32, tiny sizes), so that tests can run its code."""
from __future__ import annotations

import argparse
import copy
import socket
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import timed, torchvision_model  # noqa: E402  (scripts/ is not a package)

from retinanet.build import build_criterion, build_model  # noqa: E402
from retinanet.checkpoint import load_model_state  # noqa: E402
from retinanet.config_loader import load_config  # noqa: E402
from retinanet.detector import Detector  # noqa: E402
from retinanet.engine.amp import grad_scaler, uses_channels_last, uses_winograd  # noqa: E402
from retinanet.engine.distributed import backend_for  # noqa: E402
from retinanet import fast  # noqa: E402
from retinanet.preprocess import read_image, to_float_tensor  # noqa: E402

Value = Union[float, str, None]


@dataclass
class Row:
    """One table row: ``ours`` and ``torchvision`` are seconds, GiB or text; ``failed`` marks an error."""
    check: str
    ours: Value = None
    torchvision: Value = None
    note: str = ""
    failed: bool = False


# -- the models and data -------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    device: torch.device
    cfg: object
    tv: torch.nn.Module
    ours: torch.nn.Module
    criterion: torch.nn.Module
    detector: Detector
    images: list[torch.Tensor]
    targets: list[dict]
    amp: Optional[torch.dtype]  # fp16 on CUDA as train.amp=fp16; fp32 on a CPU (no fp16 autocast worth timing)
    ours_nhwc: bool
    same_weights: bool


def make_images(n: int, size: tuple[int, int], device: torch.device, folder: str = "") -> list[torch.Tensor]:
    """n float images (3, H, W) in [0, 1]: the folder's first files (cycled), else smooth random ones."""
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder else []
    if folder and not files:
        raise FileNotFoundError(f"--images {folder}: no .jpg/.png files")
    if files:
        return [to_float_tensor(read_image(files[i % len(files)])).to(device) for i in range(n)]
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, max(1, size[0] // 32), max(1, size[1] // 32), generator=g)
    return list(torch.nn.functional.interpolate(low, size=size, mode="bilinear").to(device))


def make_targets(images: Sequence[torch.Tensor], num_labels: int, seed: int = 0) -> list[dict]:
    """Four random boxes (xyxy, image pixels) per image, labels in 1..num_labels-1 (valid for both models)."""
    g, out = torch.Generator().manual_seed(seed), []
    for im in images:
        h, w = im.shape[-2:]
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35]) + 8
        out.append({"boxes": torch.cat([xy, xy + wh], 1).to(im.device),
                    "labels": torch.randint(1, num_labels, (4,), generator=g).to(im.device)})
    return out


def build_bench(args: argparse.Namespace, device: torch.device, tv: Optional[torch.nn.Module] = None,
                overrides: Sequence[str] = ()) -> Bench:
    """Both models on ``device`` (torchvision's R50-FPN unless ``tv``; ours from args.config with
    ``overrides``), ours rewritten as the trainer does, and the images and targets."""
    torch.manual_seed(0)
    (h, w), amp = args.size, torch.float16 if device.type == "cuda" else None
    tv = tv if tv is not None else torchvision_model(min(h, w))
    tv.transform.min_size, tv.transform.max_size = (min(h, w),), max(h, w)
    sizes = ["model.backbone.weights=", f"input.min_size_test={min(h, w)}", f"input.max_size_test={max(h, w)}"]
    cfg = load_config(args.config, [*sizes, *overrides])
    if cfg.model.num_classes is None:  # COCO configs take it from the annotations
        cfg = load_config(args.config, [*sizes, "model.num_classes=80", *overrides])
    ours = build_model(cfg)
    try:
        load_model_state(ours, tv.state_dict(), source="torchvision retinanet_resnet50_fpn")
        same = True
    except (RuntimeError, ValueError, KeyError):
        # Another geometry: its own random init, with the class bias zeroed as torchvision's is, so
        # that every level yields its full top-k candidates, as a trained model's do.
        same = False
        torch.nn.init.zeros_(ours.head.cls_logits.bias)
    nhwc = uses_channels_last(device, "fp16" if amp else "")
    fast.for_training(ours, device, amp=amp)  # what the trainer runs
    ours.to(device)
    images = make_images(args.batch, (h, w), device, args.images)
    return Bench(args, device, cfg, tv.to(device), ours, build_criterion(cfg).to(device), Detector(ours, cfg, device),
                 images, make_targets(images, min(91, cfg.model.num_classes)), amp, nhwc, same)


# -- measurement ---------------------------------------------------------------------------------
def measure(fns: dict[str, Callable[[], object]], b: Bench, iters: Optional[int] = None) -> dict[str, float]:
    """Median seconds per call of each fn, interleaved call by call so that drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(b.args.warmup + (iters or b.args.iters)):
        for k, fn in fns.items():
            t = timed(fn, b.device)
            if i >= b.args.warmup:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def train_steps(b: Bench, ours: torch.nn.Module, tv: torch.nn.Module, nhwc: Optional[bool] = None) -> dict:
    """Training-step closures (preprocess, forward under autocast, loss, scaled backward, SGD step) for
    ``ours`` and ``tv``, each with its own optimizer and GradScaler; they record their losses."""
    nhwc = b.ours_nhwc if nhwc is None else nhwc
    # lr 0: the whole SGD update runs, but the weights stay put, so that every step and every later
    # check sees the same model (random weights at a real learning rate soon give NaN).
    opt = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
           for k, m in (("ours", ours), ("tv", tv))}
    scaler = {k: grad_scaler(b.device, b.amp) for k in opt}
    losses: dict[str, list[dict]] = {"ours": [], "tv": []}

    def update(k: str, loss: torch.Tensor) -> None:
        opt[k].zero_grad(set_to_none=True)
        scaler[k].scale(loss).backward()
        scaler[k].step(opt[k])
        scaler[k].update()

    def autocast():
        return torch.autocast(b.device.type, dtype=b.amp or torch.float32, enabled=b.amp is not None)

    def step_ours() -> None:
        ours.train()
        batch, sizes, _ = b.detector.preprocess(b.images)
        batch = batch.contiguous(memory_format=torch.channels_last) if nhwc else batch
        scaled = [{"boxes": t["boxes"] * torch.tensor([w / im.shape[-1], h / im.shape[-2]] * 2, device=b.device),
                   "labels": t["labels"]} for t, im, (h, w) in zip(b.targets, b.images, sizes)]
        with autocast():
            out = ours(batch)
        parts = b.criterion(out, scaled, gamma=b.cfg.model.loss.gamma)  # fp32 inside, as in the trainer
        update("ours", parts["loss_cls"] + parts["loss_box"])
        losses["ours"].append({k: float(parts[k].detach()) for k in ("loss_cls", "loss_box")})

    def step_tv() -> None:
        tv.train()
        with autocast():
            parts = tv(b.images, b.targets)
        update("tv", sum(parts.values()))
        losses["tv"].append({k: float(v.detach()) for k, v in parts.items()})

    return {"ours": step_ours, "tv": step_tv, "losses": losses}


def peak_gib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory of one call above what was allocated before it (GiB); None off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


# -- the checks: each takes the Bench and returns rows -------------------------------------------
def _finite(losses: list[dict]) -> bool:
    return bool(losses) and all(torch.isfinite(torch.tensor(list(d.values()))).all() for d in losses)


def check_train_amp(b: Bench) -> list[Row]:
    steps = train_steps(b, b.ours, b.tv)
    t = measure({k: steps[k] for k in ("ours", "tv")}, b)
    mem = {k: peak_gib(steps[k], b.device) for k in ("ours", "tv")}
    fin = {k: _finite(steps["losses"][k]) for k in ("ours", "tv")}
    amp = "fp16" if b.amp else "fp32"
    last = {k: ", ".join(f"{n}={v:.4g}" for n, v in steps["losses"][k][-1].items()) for k in ("ours", "tv")}
    return [Row(f"train step b{len(b.images)} {amp}, s", t["ours"], t["tv"],
                f"SGD step, GradScaler; ours channels_last={b.ours_nhwc}, torchvision NCHW; "
                f"{'same weights' if b.same_weights else 'each its own random init'}"),
            Row(f"train step b{len(b.images)} {amp}, peak GiB", mem["ours"], mem["tv"],
                "above the memory held before the step (both models' weights and optimizer state)"),
            Row("train losses finite", "yes" if fin["ours"] else "NO", "yes" if fin["tv"] else "NO",
                f"last: ours {last['ours']}; torchvision {last['tv']}", failed=not all(fin.values()))]


def _infer_fns(b: Bench, n: int) -> dict[str, Callable[[], object]]:
    @torch.no_grad()
    def tv() -> None:
        b.tv.eval()
        b.tv(b.images[:n])
    return {"ours": lambda: b.detector.predict(b.images[:n], batch_size=n), "tv": tv}


def check_infer(b: Bench) -> list[Row]:
    rows = []
    for n in sorted({1, len(b.images)}):
        t = measure(_infer_fns(b, n), b)
        rows.append(Row(f"inference b{n} fp32, s/image", t["ours"] / n, t["tv"] / n,
                        "pre + forward + post; ours Detector.predict (folded BN, NCHW on CUDA)"))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ddp(b: Bench) -> list[Row]:
    backend = backend_for(b.device.type)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        probe = torch.full((1,), 3.0, device=b.device)
        dist.all_reduce(probe)
        if probe.item() != 3.0:
            raise RuntimeError(f"all_reduce of 3 over 1 process gave {probe.item()}")
        ids = [b.device.index or 0] if b.device.type == "cuda" else None
        ours, tv = (torch.nn.parallel.DistributedDataParallel(copy.deepcopy(m), device_ids=ids) for m in (b.ours, b.tv))
        steps = train_steps(b, ours, tv)  # our criterion all-reduces its normaliser: the process group is up
        iters = min(b.args.iters, 3)
        t = measure({k: steps[k] for k in ("ours", "tv")}, b, iters)
        ok = all(_finite(steps["losses"][k]) for k in ("ours", "tv"))
        return [Row(f"DDP {backend} 1 process, train step b{len(b.images)}, s", t["ours"], t["tv"],
                    f"{iters} iterations; all_reduce ok; losses finite: {ok}", failed=not ok)]
    finally:
        dist.destroy_process_group()


def check_cudnn_benchmark(b: Bench) -> list[Row]:
    rows, before = [], torch.backends.cudnn.benchmark
    try:
        for on in (False, True):
            torch.backends.cudnn.benchmark = on
            steps, n = train_steps(b, b.ours, b.tv), len(b.images)
            t = measure({k: steps[k] for k in ("ours", "tv")}, b)
            rows.append(Row(f"train step b{n}, cudnn.benchmark={'on' if on else 'off'}, s", t["ours"], t["tv"]))
            t = measure(_infer_fns(b, n), b)
            rows.append(Row(f"inference b{n}, cudnn.benchmark={'on' if on else 'off'}, s/image", t["ours"] / n,
                            t["tv"] / n))
    finally:
        torch.backends.cudnn.benchmark = before
    return rows


def check_channels_last(b: Bench) -> list[Row]:
    rows = []
    try:
        for on in (False, True):
            fmt = torch.channels_last if on else torch.contiguous_format
            b.ours.to(memory_format=fmt)
            b.tv.to(memory_format=fmt)
            steps = train_steps(b, b.ours, b.tv, nhwc=on)
            t = measure({k: steps[k] for k in ("ours", "tv")}, b)
            rows.append(Row(f"train step b{len(b.images)}, channels_last={'on' if on else 'off'}, s", t["ours"],
                            t["tv"], "weights and input; the trainer uses it with AMP" if on else ""))
    finally:  # back to what the trainer runs
        b.ours.to(memory_format=torch.channels_last if b.ours_nhwc else torch.contiguous_format)
        b.tv.to(memory_format=torch.contiguous_format)
    return rows


def check_onnx_cuda(b: Bench) -> list[Row]:
    try:
        import onnxruntime
    except ImportError:
        return [Row("ONNX Runtime CUDA b1, s/image", note="skipped: onnxruntime is not installed")]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return [Row("ONNX Runtime CUDA b1, s/image", note="skipped: onnxruntime has no CUDAExecutionProvider "
                    f"(providers: {', '.join(onnxruntime.get_available_providers())}; install onnxruntime-gpu)")]
    from retinanet.export import export_model, load_exported
    with tempfile.TemporaryDirectory() as tmp:
        # Winograd graphs only pay in onnxruntime on a CPU; GPU runtimes choose their own conv algorithms.
        path = export_model(b.detector, Path(tmp) / "ours.onnx", winograd=uses_winograd(b.device))
        exported = load_exported(path, b.device)
        t = measure({"ours": lambda: exported.predict(b.images[0]), "tv": _infer_fns(b, 1)["tv"]}, b)
    return [Row("ONNX Runtime CUDA b1, s/image", t["ours"], t["tv"],
                "fp32 graph; torchvision column: its PyTorch model; inputs go through host memory")]


CHECK_FNS: dict[str, Callable[[Bench], list[Row]]] = {
    "train_amp": check_train_amp, "infer": check_infer, "ddp_nccl": check_ddp,
    "cudnn_benchmark": check_cudnn_benchmark, "channels_last": check_channels_last, "onnx_cuda": check_onnx_cuda}
