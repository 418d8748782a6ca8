"""retinanet train --config CFG [--output-dir DIR] [--resume | --overwrite] [key=value ...]"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pth")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an output folder that holds one (its files are replaced as the new "
                        "run writes them; its metrics.jsonl is moved aside; none is deleted)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")


def run(args: argparse.Namespace) -> int:
    from ..config_loader import load_config
    from ..engine.trainer import NonFiniteLossError, train

    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg, args.output_dir, args.resume, args.overwrite)
    except NonFiniteLossError as e:
        print(f"retinanet train: stopped: {e}")
        return 3
    return 0
