"""Training data-loader throughput (images/s) for several worker counts, on a COCO-format folder.

    python scripts/loader_speed.py --data ../shared/data/raccoon --workers 0 1 2

Uses a config's train transform (default: the raccoon example: short side 288-352, flip) and its batch size;
one batch is drawn first (workers started), then ``--batches`` are timed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from retinanet.config_loader import load_config
from retinanet.data.loader import build_dataset, build_train_loader

REPO = Path(__file__).resolve().parents[1]


def images_per_s(cfg, dataset, workers: int, batches: int) -> float:
    cfg_w = load_config(cfg, [f"dataloader.num_workers={workers}"])
    loader = iter(build_train_loader(cfg_w, dataset))
    next(loader)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(loader)["images"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "raccoon"),
                        help="COCO folder: images/ and annotations/train.json")
    parser.add_argument("--config", default=str(REPO / "configs" / "examples" / "raccoon_mobilenet.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--parent-reads", action="store_true",
                        help="read one sample in this process first, as the trainer's check does")
    args = parser.parse_args()
    data = Path(args.data)
    cfg = load_config(args.config, [f"data.train.images={data / 'images'}",
                                    f"data.train.annotations={data / 'annotations' / 'train.json'}"])
    dataset = build_dataset(cfg, "train")
    if args.parent_reads:
        dataset[(0, 0)]
    print(f"{data.name}: batch {cfg.solver.ims_per_batch}, short side {cfg.input.min_size_train}")
    for w in args.workers:
        print(f"  num_workers={w}: {images_per_s(cfg, dataset, w, args.batches):6.1f} images/s")


if __name__ == "__main__":
    main()
