"""``retinanet export``: ONNX or TorchScript with dynamic batch and image size (network only;
post-processing runs in Python, see retinanet/export.py), then a check against PyTorch."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", help="checkpoint to export")
    p.add_argument("--format", choices=("onnx", "torchscript"), help="default: from the --output suffix (.onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx or model.pt")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-winograd", action="store_true",
                   help="ONNX: plain 3x3 convs (for GPU runtimes, which pick their own conv algorithms); "
                        "by default the wide ones are Winograd F(4x4, 3x3) graphs, faster in onnxruntime on a CPU")
    p.add_argument("--no-verify", action="store_true", help="skip comparing the exported model with PyTorch")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from ..export import compare_detections, export_model
    from ..runtime import load_detector, load_exported
    fmt = args.format or ("onnx" if args.output.endswith(".onnx") else "torchscript")
    if not args.weights:
        raise ValueError("--weights is required (a checkpoint written by `retinanet train`, or a torchvision state dict)")
    detector = load_detector(args.weights, args.config, "cpu", args.overrides)
    path = export_model(detector, args.output, fmt, args.opset, winograd=not args.no_winograd)
    print(f"wrote {path} ({fmt}; outputs: per-level class logits and box deltas, post-processing in Python)",
          file=sys.stderr)
    if not args.no_verify:
        # A size that is not the traced one: checks that the image size really is dynamic.
        image = np.random.default_rng(0).integers(0, 256, (301, 419, 3), dtype=np.uint8)
        ref, got = detector.predict(image), load_exported(path).predict(image)
        ok, box, score = compare_detections(ref, got)
        print(f"verify on a 301x419 image: {len(got['boxes'])} vs {len(ref['boxes'])} detections, "
              f"max box diff {box:.2e} px, max score diff {score:.2e}: {'ok' if ok else 'MISMATCH'}", file=sys.stderr)
        return 0 if ok else 1
    return 0
