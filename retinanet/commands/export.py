"""``retinanet export``: ONNX or TorchScript with dynamic batch and image size (network only;
post-processing runs in Python, see retinanet/export.py), then a check against PyTorch. With --int8,
also a static int8 ONNX file (retinanet/quantize.py), accepted only if its AP is close to fp32's."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..quantize import METHODS
from . import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", help="checkpoint to export")
    p.add_argument("--format", choices=("onnx", "torchscript"), help="default: from the --output suffix (.onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx or model.pt")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--winograd", action="store_true",
                   help="ONNX: the wide 3x3 convs as Winograd F(4x4, 3x3) graphs (a 5x larger file; measure: on some "
                        "CPUs onnxruntime runs them faster than its own convs, on others slower)")
    p.add_argument("--no-winograd", action="store_true", help="plain 3x3 convs: the default")
    p.add_argument("--no-verify", action="store_true",
                   help="skip comparing the exported model with PyTorch (and, with --int8, the AP check)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX: also write a static int8 file (--output); the fp32 plain-conv file it is quantized "
                        "from goes beside it as NAME.fp32.onnx")
    p.add_argument("--calibration", help="--int8: a folder of images, or a YAML config whose data.train (else "
                                         "data.val) images calibrate and whose data.val set the AP check scores")
    p.add_argument("--calibration-images", type=positive_int, default=64, help="--int8: images to calibrate on")
    p.add_argument("--calibration-method", choices=METHODS, default="minmax", help="--int8: activation ranges")
    p.add_argument("--fp32-predictors", action="store_true",
                   help="--int8: keep the last class and box convs in fp32 (slower; by default they are int8 too)")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="NAME_PART",
                   help="--int8, repeatable: also keep in fp32 the nodes whose ONNX name contains this, e.g. /backbone/")
    p.add_argument("--max-ap-drop", type=float, default=1.0,
                   help="--int8: refuse (exit 1, files kept) when int8 AP is lower than fp32 AP by more than this")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from ..export import compare_detections, export_model
    from ..runtime import load_detector, load_exported
    fmt = args.format or ("onnx" if args.output.endswith(".onnx") else "torchscript")
    if not args.weights:
        raise ValueError("--weights is required (a checkpoint written by `retinanet train`, or a torchvision state dict)")
    if args.int8 and (fmt != "onnx" or not args.calibration):
        raise ValueError("--int8 needs --format onnx and --calibration DIR_OR_CONFIG")
    if args.int8 and args.winograd:
        raise ValueError("--int8 quantizes the plain-conv graph; drop --winograd (int8 Winograd transforms lose precision)")
    files = []
    if args.int8:  # a bad --calibration fails before anything is loaded or written
        from ..quantize import calibration_images
        files = calibration_images(args.calibration, args.calibration_images)
    detector = load_detector(args.weights, args.config, "cpu", args.overrides)
    if args.int8 and not args.no_verify:
        from ..quantize import val_set
        val = val_set(args.calibration, detector.cfg)
    out = Path(args.output)
    fp32 = out.with_name(out.name.removesuffix(".onnx").removesuffix(".int8") + ".fp32.onnx") if args.int8 else out
    path = export_model(detector, fp32, fmt, args.opset, winograd=args.winograd and not args.no_winograd)
    print(f"wrote {path} ({fmt}; outputs: per-level class logits and box deltas, post-processing in Python)",
          file=sys.stderr)
    if not args.no_verify:
        # A size that is not the traced one: checks that the image size really is dynamic.
        image = np.random.default_rng(0).integers(0, 256, (301, 419, 3), dtype=np.uint8)
        ref, got = detector.predict(image), load_exported(path).predict(image)
        ok, box, score = compare_detections(ref, got)
        print(f"verify on a 301x419 image: {len(got['boxes'])} vs {len(ref['boxes'])} detections, "
              f"max box diff {box:.2e} px, max score diff {score:.2e}: {'ok' if ok else 'MISMATCH'}", file=sys.stderr)
        if not ok:
            return 1
    if not args.int8:
        return 0
    from ..quantize import onnx_ap, quantize_onnx
    int8 = quantize_onnx(fp32, args.output, detector, files, args.calibration_method,
                         keep_predictors_fp32=args.fp32_predictors, keep_fp32=args.keep_fp32)
    print(f"wrote {int8} (int8, {args.calibration_method} calibration on {len(files)} images)", file=sys.stderr)
    if args.no_verify:
        return 0
    ap32, ap8 = onnx_ap(fp32, *val), onnx_ap(int8, *val)
    print(f"AP on {val[1]}: fp32 {ap32:.2f}, int8 {ap8:.2f} (drop {ap32 - ap8:.2f}, allowed {args.max_ap_drop})",
          file=sys.stderr)
    if ap32 - ap8 > args.max_ap_drop:
        print(f"error: int8 AP {ap8:.2f} is {ap32 - ap8:.2f} below fp32 AP {ap32:.2f} (--max-ap-drop "
              f"{args.max_ap_drop}); {int8} and {fp32} are kept but should not be deployed. Keep the most "
              f"sensitive layers in fp32 and export again, often the first block after the stem "
              f"(--keep-fp32 /backbone/features.1/ for MobileNetV2, /backbone/layer1/ for a ResNet); "
              f"the file's retinanet_int8 metadata lists every node by name", file=sys.stderr)
        return 1
    return 0
