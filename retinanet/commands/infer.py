"""``retinanet infer``: detect objects in image and video files, folders or globs; draw them and write JSON.

A video ``clip.mp4`` gives an annotated ``clip.mp4`` and per-frame detections ``clip.jsonl`` (``video.py``).

Writes one drawn image per readable input into --output (same name; .png for formats other than
JPEG/PNG) and ``predictions.json``: COCO results entries with ``file_name``; image ids are the
1-based positions of the image inputs in sorted order. An unreadable input is reported by path and
skipped; the exit status is 1 only when no input at all could be processed.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from ..data.labels import IMAGE_EXTENSIONS
from ..jsonio import write_json
from ..video import VIDEO_SUFFIXES
from . import add_tile_arguments, positive_int, setup_logging, with_tile_overrides

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--weights", help="checkpoint, or a .onnx / TorchScript file from `retinanet export` (carries its config)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image/video files, folders or globs")
    p.add_argument("--output", required=True, help="folder for the drawn images and predictions.json")
    p.add_argument("--score-thresh", type=float, default=0.3, help="drawn and written detections (default 0.3)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: train.device)")
    add_tile_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. evaluation.tta=true (before --input, or after --)")


def collect_inputs(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Sorted image paths from files, folders (their images, not recursive) and globs, each real file
    once (two links to one photo give one input); and the patterns that matched nothing. ``**`` does not
    descend into linked folders, so a link loop (``sub/up -> ..``) cannot make a glob endless."""
    found: dict[Path, Path] = {}  # real file -> the first path that named it
    unmatched = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            hits = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (*IMAGE_EXTENSIONS, *VIDEO_SUFFIXES)]
        elif p.exists():
            hits = [p]
        else:
            hits = [h for h in _glob(pattern) if h.is_file()]
        if not hits:
            unmatched.append(pattern)
        for h in sorted(hits):
            found.setdefault(h.resolve(), h)
    return sorted(found.values()), unmatched


def _glob(pattern: str) -> list[Path]:
    """``pattern``'s matches. pathlib's ``**`` skips linked folders (glob.glob's follows them, forever
    on a loop): the pattern is split into its literal folder and the wildcard rest."""
    parts = Path(pattern).parts
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    if first == len(parts):
        return []
    base = Path(*parts[:first]) if first else Path(".")
    return list(base.glob(str(Path(*parts[first:]))))


def _output_name(path: Path, used: set[str]) -> str:
    suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    name = path.stem + suffix
    n = 1
    while name in used:  # same file name in two input folders
        name, n = f"{path.stem}_{n}{suffix}", n + 1
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from ..runtime import load_detector
    from ..evaluation import to_coco_results
    from ..preprocess import read_image
    from ..visualize import draw_detections

    setup_logging()
    paths, unmatched = collect_inputs(args.input)
    for pattern in unmatched:
        hint = " (a config override? put key=value arguments before --input, or after --)" if "=" in pattern else ""
        print(f"retinanet infer: no image found at {pattern}{hint}", file=sys.stderr)
    if not paths:
        print("retinanet infer: error: no input images found", file=sys.stderr)
        return 1
    out = Path(args.output)
    if any(p.resolve().parent == out.resolve() for p in paths):  # drawn images keep their input's name
        print(f"retinanet infer: error: --output {out} holds input images; choose another folder", file=sys.stderr)
        return 2
    detector = load_detector(args.weights, args.config, args.device, with_tile_overrides(args))
    out.mkdir(parents=True, exist_ok=True)
    predictions, failed, used = [], [], set()
    from ..video import VideoError, infer_video, is_video
    video_dets = 0
    for path in [p for p in paths if is_video(p)]:
        try:
            frames, n = infer_video(detector, path, out, args.score_thresh, args.batch_size,
                                    Path(_output_name(path, used)).stem)
            print(f"{path}: {frames} frame(s), {n} detection(s)", file=sys.stderr)
            video_dets += n
        except VideoError as e:
            print(f"retinanet infer: skipping {path}: {e}", file=sys.stderr)
            failed.append(str(path))
    indexed = list(enumerate([p for p in paths if not is_video(p)], start=1))
    with tqdm(total=len(indexed), desc="infer", unit="img", dynamic_ncols=True, disable=not indexed) as bar:
        for start in range(0, len(indexed), args.batch_size):
            batch = []
            for image_id, path in indexed[start:start + args.batch_size]:
                try:
                    batch.append((image_id, path, read_image(path)))
                except OSError as e:
                    tqdm.write(f"retinanet infer: skipping {path}: {e}", file=sys.stderr)
                    failed.append(str(path))
            if batch:
                dets = detector.predict([b[2] for b in batch], batch_size=len(batch), score_thresh=args.score_thresh)
                for (image_id, path, image), det in zip(batch, dets):
                    drawn = draw_detections(image, det["boxes"], det["names"], det["scores"], det["labels"])
                    Image.fromarray(drawn).save(out / _output_name(path, used))
                    predictions += [{**r, "file_name": str(path)} for r in to_coco_results(image_id, det)]
            bar.update(len(indexed[start:start + args.batch_size]))
    write_json(out / "predictions.json", predictions, indent=1)
    done = len(paths) - len(failed)
    print(f"{done} input(s), {len(predictions) + video_dets} detection(s) above {args.score_thresh} -> {out}"
          + (f"; {len(failed)} unreadable: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 0 if done else 1
