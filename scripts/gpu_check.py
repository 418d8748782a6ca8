"""GPU check: our RetinaNet R50-FPN against torchvision's on one CUDA GPU, at COCO size (800x1333).

    python scripts/gpu_check.py [--iters 10] [--warmup 3] [--batch 8] [--size 800x1333] [--images DIR]
                                [--skip ddp_nccl onnx_cuda] [--json rows.json]

Checks (see docs/gpu.md): train_amp (training step, AMP fp16: time, peak memory, finite losses),
infer (batch 1 and --batch, time per image), ddp_nccl (one-process DDP over NCCL), cudnn_benchmark and
channels_last (each off and on), onnx_cuda (the exported ONNX file in onnxruntime's CUDA provider).
Prints one markdown table: check, ours, torchvision, ratio (ours / torchvision: below 1 is ours faster
or smaller), note. A failing check becomes a row with its error and the others still run; the exit
status is then 1. Without CUDA it says so and exits 0. Models: torchvision's as built for its pretrained
weights (FrozenBN, 3 trainable stages; ``benchmark.torchvision_model``) and ours from --config, both
randomly initialised, no download; the same weights when --config is torchvision's geometry.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_runs import CHECK_FNS, Row, Value, build_bench  # noqa: E402  (scripts/ is not a package)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "coco" / "retinanet_R50_FPN_1x.yaml"
CHECKS = tuple(CHECK_FNS)


def ratio(ours: Value, tv: Value) -> Optional[float]:
    """ours / torchvision for two numbers (torchvision's positive), else None: below 1, ours is faster or smaller."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (ours, tv))
    return ours / tv if ok and tv > 0 else None


def fmt(v: Value) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table (check, ours, torchvision, ratio, note); '|' in notes escaped."""
    lines = ["| check | ours | torchvision | ratio | note |", "|---|---:|---:|---:|---|"]
    for r in rows:
        note = ("FAILED: " if r.failed else "") + r.note.replace("|", "/").replace("\n", " ")
        cells = (r.check, fmt(r.ours), fmt(r.torchvision), fmt(ratio(r.ours, r.torchvision)), note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_json(rows: Sequence[Row]) -> list[dict]:
    return [{**asdict(r), "ratio": ratio(r.ours, r.torchvision)} for r in rows]


def parse_size(text: str) -> tuple[int, int]:
    """'800x1333' -> (800, 1333); '512' -> (512, 512)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW or N, got {text!r}")
    return int(parts[0]), int(parts[-1])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations before each measurement")
    p.add_argument("--batch", type=int, default=8, help="batch of the training step and of batched inference")
    p.add_argument("--size", type=parse_size, default=(800, 1333), help="HxW of the generated images")
    p.add_argument("--images", default="", help="folder of .jpg/.png images to use instead of generated ones")
    p.add_argument("--skip", nargs="*", default=[], choices=CHECKS, metavar="CHECK", help=f"of {', '.join(CHECKS)}")
    p.add_argument("--config", default=str(CONFIG), help="our model's config")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu only to try the script's code)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--iters and --batch must be >= 1, --warmup >= 0")
    return args


def selected_checks(skip: Sequence[str]) -> list[str]:
    return [c for c in CHECKS if c not in set(skip)]


def error_row(name: str, e: BaseException) -> Row:
    """A failed row naming the exception and the first line of its message."""
    msg = str(e).splitlines()[0] if str(e) else ""
    return Row(name, note=f"{type(e).__name__}: {msg}"[:300], failed=True)


def guarded(name: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """fn's rows, or one failed row with its error, so that the other checks still run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- any failure is a result here
        return [error_row(name, e)]


def cuda_missing(device: str, cuda_available: Callable[[], bool] = torch.cuda.is_available) -> Optional[str]:
    """The line to print when ``device`` asks for CUDA and there is none; None when the check can run."""
    if torch.device(device).type != "cuda" or cuda_available():
        return None
    return (f"gpu_check: CUDA is not available on this machine (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); nothing was measured. Run it on a machine with an NVIDIA GPU.")


def run_checks(names: Sequence[str], setup: Callable[[], object],
               fns: Optional[dict[str, Callable[[object], list[Row]]]] = None) -> list[Row]:
    """Builds the models once (``setup``), then runs each named check; a failure is a row, not an exit."""
    fns = fns or CHECK_FNS
    try:
        bench = setup()
    except Exception as e:  # noqa: BLE001
        return [error_row("setup", e)]
    rows: list[Row] = []
    for name in names:
        rows += guarded(name, lambda name=name: fns[name](bench))
    return rows


def header(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device {device} (not a GPU: this only exercises the code), torch {torch.__version__}"
    p = torch.cuda.get_device_properties(device)
    return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}")


def main(argv: Optional[Sequence[str]] = None, cuda_available: Callable[[], bool] = torch.cuda.is_available) -> int:
    """Runs the checks and prints the table; 0 when all ran (or there is no CUDA), 1 when one failed."""
    args = parse_args(argv)
    missing = cuda_missing(args.device, cuda_available)
    if missing:
        print(missing)
        return 0
    device = torch.device(args.device)
    names = selected_checks(args.skip)
    print(f"gpu_check: {header(device)}; images {args.size[0]}x{args.size[1]}, batch {args.batch}, "
          f"median of {args.iters} after {args.warmup} warm-up; checks: {', '.join(names) or 'none'}")
    rows = run_checks(names, lambda: build_bench(args, device))
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows_json(rows), indent=2) + "\n")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
