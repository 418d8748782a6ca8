"""Network time of exported ONNX files in onnxruntime, side by side (interleaved runs, one process),
with the session options ``load_exported`` uses. Post-processing is not included.

    python scripts/onnx_speed.py out/model.fp32.onnx out/model.int8.onnx --height 384 --width 512 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from retinanet.runtime import ort_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help=".onnx files written by `retinanet export`")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sessions = [ort_session(f, threads=args.threads) for f in args.files]
    batch = np.random.default_rng(0).random((1, 3, args.height, args.width), dtype=np.float32)
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(args.warmup + args.iters):
        for session, spent in zip(sessions, times):  # interleaved: load from other processes hits all alike
            start = time.perf_counter()
            session.run(None, {"images": batch})
            if i >= args.warmup:
                spent.append(time.perf_counter() - start)
    first = statistics.median(times[0])
    print(f"input 1x3x{args.height}x{args.width}, {args.threads} threads, median of {args.iters} runs")
    for f, spent in zip(args.files, times):
        median = statistics.median(spent)
        print(f"{median * 1e3:9.1f} ms  {first / median:5.2f}x of the first file  {f}")


if __name__ == "__main__":
    main()
