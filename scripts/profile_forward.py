"""Where the time of ``Detector.predict`` goes, and how far each part is from this CPU's multiply-add peak.

    python scripts/profile_forward.py --size 800 --threads 2 --iters 3

R50-FPN with torchvision's architecture (random weights, class bias 0, as in ``benchmark.py``) on a
real photo (or a generated one). One ``Detector.predict`` is split into preprocessing, the network and
post-processing; inside the network the operators are grouped into Winograd 3x3 convolutions (their
GEMMs, transforms and copies), direct 3x3 convolutions, 1x1 convolutions, the 7x7 stem, and the
memory-bound rest (copies, adds, ReLUs, pooling, upsampling). For each convolution group it prints
the multiply-adds of the direct convolution it computes, the rate reached, and that rate as a share of
the peak: the best of a few large fp32 GEMMs at the same thread count, the rate oneDNN reaches on
this CPU (Winograd groups can pass 100%: they do fewer multiply-adds than the direct ones counted).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmark import CONFIG, SHARED, sample_data, torchvision_model
from retinanet.build import build_model
from retinanet.checkpoint import load_model_state
from retinanet.config_loader import load_config
from retinanet.detector import Detector
from retinanet.fast import onednn, winograd

CONV_OPS = ("mkldnn::_convolution_pointwise", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
            "aten::thnn_conv2d", "aten::_convolution")


def peak_gflops(threads: int) -> float:
    """Best fp32 GEMM rate (GFLOP/s, 2 per multiply-add) over a few square sizes."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def conv_flops(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the reference model's convolutions by group, from their output sizes."""
    flops: dict[str, float] = defaultdict(float)

    def hook(conv: nn.Conv2d, _inputs: tuple, out: torch.Tensor) -> None:
        c = conv.in_channels // conv.groups
        kh, kw = conv.kernel_size
        group = {1: "1x1 conv", 7: "7x7 stem"}.get(kh, "3x3 conv")
        if (group == "3x3 conv" and winograd.winograd_eligible(conv) and conv.in_channels >= 256
                and out.shape[-2] * out.shape[-1] >= 100):
            group = "3x3 conv, Winograd"
        flops[group] += 2 * out.numel() * c * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(batch)
    for h in handles:
        h.remove()
    return flops


def scoped_winograd(fn):
    def run(*args, **kwargs):
        with record_function("winograd"):
            return fn(*args, **kwargs)
    return run


def group_of(event, parents: dict) -> str:
    """The group of one profiled operator, by its own name and the scopes around it."""
    scope, node = [], event
    while node is not None:
        scope.append(node.name)
        node = parents.get(id(node))
    if "preprocess" in scope:
        return "preprocessing"
    if "postprocess" in scope:
        return "post-processing"
    if event.name in CONV_OPS:  # the weight is the first square 4-d input after x ("other" comes first in .binary)
        kernel = next((s[-1] for s in event.input_shapes[1:3] if len(s) == 4 and s[-1] == s[-2] and s[-1] in (1, 3, 7)), 3)
        return {1: "1x1 conv", 7: "7x7 stem"}.get(kernel, "3x3 conv")
    if "winograd" in scope:
        return "3x3 conv, Winograd"
    return "memory-bound and other ops"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--photos", default=str(SHARED / "raccoon" / "images"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tv = torchvision_model(args.size)
    cfg = load_config(CONFIG, [f"input.min_size_test={args.size}", f"input.max_size_test={max(args.size, 1333)}"])
    model = build_model(cfg)
    load_model_state(model, tv.state_dict(), source="torchvision retinanet_resnet50_fpn")
    detector = Detector(model, cfg, "cpu")
    image = sample_data(torch.device("cpu"), args.photos)[0][0]
    batch, sizes, _ = detector.preprocess([image])
    flops = conv_flops(model, batch)
    # Scopes for the profile (the detector itself carries none).
    onednn.winograd_conv = scoped_winograd(onednn.winograd_conv)
    winograd.WinogradConv2d.forward = scoped_winograd(winograd.WinogradConv2d.forward)
    preprocess, postprocessor = detector.preprocess, detector.postprocessor
    detector.preprocess = lambda *a, **k: _scoped("preprocess", preprocess, *a, **k)
    detector.postprocessor = lambda *a, **k: _scoped("postprocess", postprocessor, *a, **k)
    detector.predict(image)
    walls = []
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.iters):
            start = time.perf_counter()
            detector.predict(image)
            walls.append(time.perf_counter() - start)
    events = prof.events()
    parents = {id(e): e.cpu_parent for e in events}
    times: dict[str, float] = defaultdict(float)
    for e in events:
        times[group_of(e, parents)] += e.self_cpu_time_total / 1e6 / args.iters
    total, peak = sum(times.values()), peak_gflops(args.threads)
    print(f"R50-FPN, input {tuple(batch.shape[-2:])}, {args.threads} threads: predict {statistics.median(walls):.3f} s "
          f"(wall, median of {args.iters}); profiled operator time {total:.3f} s; fp32 GEMM peak {peak:.0f} GFLOP/s\n")
    print("| part | time, s | share | GFLOP (direct conv) | GFLOP/s | of GEMM peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for group, t in sorted(times.items(), key=lambda kv: -kv[1]):
        f = flops.get(group, 0.0) / 1e9
        rate = f"| {f:.1f} | {f / t:.0f} | {100 * f / t / peak:.0f}% |" if f else "| | | |"
        print(f"| {group} | {t:.3f} | {100 * t / total:.1f}% {rate}")


def _scoped(name: str, fn, *args, **kwargs):
    with record_function(name):
        return fn(*args, **kwargs)


if __name__ == "__main__":
    main()
