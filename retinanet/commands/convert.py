"""retinanet convert --format voc|yolo ... --output OUT.json: Pascal VOC or YOLO labels -> COCO JSON.

  VOC:  retinanet convert --format voc --annotations XML_DIR --images IMG_DIR --output OUT.json
            [--classes FILE] [--difficult crowd|keep|drop]
  YOLO: retinanet convert --format yolo --labels TXT_DIR --images IMG_DIR --classes classes.txt --output OUT.json
  Both: [--skip-bad] [--split-val 0.2 --seed 0]  (with --split-val, --output is a folder: train.json, val.json)

The rules (pixel conventions, difficult objects, bad lines) are in retinanet/data/{convert,voc,yolo}.py.
"""
from __future__ import annotations

import argparse

from . import setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n")[1]
    p.add_argument("--format", required=True, choices=("voc", "yolo"), help="input label format")
    p.add_argument("--annotations", "--labels", dest="labels", required=True, metavar="DIR",
                   help="folder of VOC .xml files (--annotations) or YOLO .txt files (--labels)")
    p.add_argument("--images", required=True, metavar="DIR", help="image folder; COCO file_names are relative to it")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line, in this order (YOLO: required, index order; "
                        "VOC: default is the sorted names found in the files)")
    p.add_argument("--output", required=True, help="COCO JSON file; with --split-val, a folder")
    p.add_argument("--difficult", default="crowd", choices=("crowd", "keep", "drop"),
                   help="VOC difficult objects: ignore regions (iscrowd=1, default), normal objects, or dropped")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop bad objects / label lines (counted and logged) instead of failing")
    p.add_argument("--split-val", type=float, default=None, metavar="FRACTION",
                   help="also split by image: write OUTPUT/train.json and OUTPUT/val.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the --split-val draw (default 0)")


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert

    setup_logging()
    convert(args.format, args.labels, args.images, args.output, classes=args.classes, difficult=args.difficult,
            skip_bad=args.skip_bad, split_val=args.split_val, seed=args.seed)
    return 0
