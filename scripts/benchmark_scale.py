"""COCO scale, simulated: building the training dataset, data-loader worker memory, and scoring results.

    python scripts/benchmark_scale.py --out /tmp/coco_sim            # all three, COCO train2017 sizes
    python scripts/benchmark_scale.py --images 20000 --skip-eval     # smaller and faster

Generates (once, cached in --out) a COCO-format train file (118,287 images, ~750k boxes, 80
categories with COCO's long-tailed frequencies, COCO-like image and box sizes, ~1% crowd) and a val
file (5,000 images) with a results file of 5,000 x 100 detections near the ground truth. Then prints:
time and peak memory to build ``CocoDetection`` on the train file; the memory each of --workers
data-loader workers adds after --fetches record look-ups (private, i.e. copied, bytes); and the time
of ``retinanet eval --results`` with each backend, and whether their AP agree. Each measurement
runs in a fresh subprocess so that peak memory is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = [(480, 640), (427, 640), (640, 480), (640, 427), (375, 500), (424, 640), (640, 640), (360, 640)]


def _categories() -> list[dict]:
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids
    return [{"id": i, "name": f"class_{i}", "supercategory": "thing"} for i in ids]


def make_annotations(n_images: int, boxes_per_image: float, rng: np.random.Generator, start_id: int = 1) -> dict:
    """A COCO-format dict with realistic sizes; category frequencies ~ Zipf (person ~ 30%)."""
    cats = _categories()
    freq = 1.0 / np.arange(1, 81) ** 1.1
    freq /= freq.sum()
    hw = np.array(SIZES)[rng.integers(0, len(SIZES), n_images)]
    counts = np.minimum(rng.poisson(boxes_per_image, n_images), 100)
    img_of = np.repeat(np.arange(n_images), counts)
    m = len(img_of)
    h, w = hw[img_of, 0], hw[img_of, 1]
    area = np.exp(rng.normal(np.log(3000), 1.8, m)).clip(4, h * w * 0.9)  # many small, a few large
    aspect = np.exp(rng.normal(0, 0.6, m))
    bw = np.minimum(np.sqrt(area * aspect), w - 1)
    bh = np.minimum(area / bw, h - 1)
    x, y = rng.random(m) * (w - bw), rng.random(m) * (h - bh)
    cat = np.array([c["id"] for c in cats])[rng.choice(80, m, p=freq)]
    crowd = rng.random(m) < 0.009
    images = [{"id": start_id + i, "file_name": f"{start_id + i:012d}.jpg", "height": int(a), "width": int(b)}
              for i, (a, b) in enumerate(hw)]
    xywh = np.round(np.stack([x, y, bw, bh], 1), 2).tolist()
    anns = [{"id": k + 1, "image_id": start_id + int(i), "category_id": int(c), "bbox": b, "area": round(b[2] * b[3], 2),
             "iscrowd": int(z)} for k, (i, c, b, z) in enumerate(zip(img_of, cat, xywh, crowd))]
    return {"images": images, "annotations": anns, "categories": cats}


def make_results(gt: dict, per_image: int, rng: np.random.Generator) -> list[dict]:
    """``per_image`` detections per image: jittered ground truth (some right, some wrong class) and
    random boxes, scores uniform, as a trained detector's top-100 would look."""
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    cat_ids = [c["id"] for c in gt["categories"]]
    out = []
    for im in gt["images"]:
        anns = by_image.get(im["id"], [])
        for k in range(per_image):
            if anns and k < 3 * len(anns):
                a = anns[k % len(anns)]
                x, y, w, h = (v * (1 + rng.normal(0, 0.08)) for v in a["bbox"])
                c = a["category_id"] if rng.random() < 0.7 else int(rng.choice(cat_ids))
            else:
                w, h = rng.uniform(8, im["width"] / 2), rng.uniform(8, im["height"] / 2)
                x, y, c = rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h), int(rng.choice(cat_ids))
            out.append({"image_id": im["id"], "category_id": c, "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                        "score": round(float(rng.random()), 5)})
    return out


def generate(out: Path, n_train: int, n_val: int) -> None:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / f"train_{n_train}.json", "val": out / f"val_{n_val}.json", "results": out / f"results_{n_val}.json"}
    if all(p.exists() for p in paths.values()):
        return
    t = time.perf_counter()
    paths["train"].write_text(json.dumps(make_annotations(n_train, 6.4, rng)))
    val = make_annotations(n_val, 7.3, rng, start_id=10_000_000)
    paths["val"].write_text(json.dumps(val))
    paths["results"].write_text(json.dumps(make_results(val, 100, rng)))
    print(f"generated {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t:.0f} s", flush=True)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _private_mb() -> float:
    """Memory of this process that is its own (copied or allocated), not shared with the parent."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


class _Fetch:
    """What a worker does per sample minus decoding the image: look up the record and its targets."""

    def __init__(self, dataset, fetches: int):
        self.dataset, self.fetches = dataset, fetches

    def __len__(self) -> int:
        return self.fetches

    def __getitem__(self, i: int) -> float:
        ds = self.dataset
        k = (i * 7919) % len(ds)  # spread over the whole dataset
        info = ds.image_info(k)
        targets = ds._records.targets(ds._records.position(ds.ids[k])) if hasattr(ds, "_records") else ds._targets[ds.ids[k]]
        before = getattr(self, "_start", None)
        if before is None:
            self._start = before = _private_mb()
        return _private_mb() - before if i % 1000 == 999 or i == self.fetches - 1 else float(len(info) + len(targets))


def run_build(train: str, workers: int, fetches: int) -> None:
    import torch
    from retinanet.data.coco import CocoDetection
    t = time.perf_counter()
    ds = CocoDetection("/nonexistent", train)
    build = time.perf_counter() - t
    print(json.dumps({"build_s": round(build, 2), "peak_mb": round(_peak_mb()), "images": len(ds)}), flush=True)
    if workers:
        loader = torch.utils.data.DataLoader(_Fetch(ds, fetches), batch_size=None, num_workers=workers)
        growth = max(float(x) for j, x in enumerate(loader) if j % 1000 == 999 or j == fetches - 1)
        print(json.dumps({"worker_growth_mb": round(growth, 1), "workers": workers, "fetches": fetches}), flush=True)


def run_eval(results: str, val: str, backend: str) -> None:
    from retinanet.evaluation import evaluate_results_file
    t = time.perf_counter()
    metrics = evaluate_results_file(results, val, backend)
    print(json.dumps({"eval_s": round(time.perf_counter() - t, 1), "backend": backend, "AP": metrics["AP"],
                      "AP50": metrics["AP50"], "peak_mb": round(_peak_mb())}), flush=True)


def _child(*args: str, code: str = "") -> dict:
    """Runs this script's ``--child`` in a fresh process, importing ``retinanet`` from ``code`` (a
    checkout) when given, else from this one."""
    env = {**os.environ, "PYTHONPATH": code or str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env=env).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {k: v for r in rows for k, v in r.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/coco_sim", help="folder for the generated files (reused)")
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--val-images", type=int, default=5_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--fetches", type=int, default=20_000, help="record look-ups per worker")
    p.add_argument("--backends", default="faster_coco_eval,pycocotools")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--baseline", help="another checkout (e.g. ../main): measured too, alternating with this one")
    p.add_argument("--repeat", type=int, default=1, help="rounds of (baseline, ours); the median is printed")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        {"build": lambda a: run_build(a[0], int(a[1]), int(a[2])), "eval": lambda a: run_eval(*a)}[args.child[0]](args.child[1:])
        return
    out = Path(args.out)
    generate(out, args.images, args.val_images)
    train, val, results = out / f"train_{args.images}.json", out / f"val_{args.val_images}.json", out / f"results_{args.val_images}.json"
    codes = {"ours": ""} if not args.baseline else {"baseline": args.baseline, "ours": ""}
    runs: dict[str, list[dict]] = {k: [] for k in codes}
    for _ in range(args.repeat):  # alternating, so that load from other jobs hits both alike
        for name, code in codes.items():
            runs[name].append(_child("--child", "build", str(train), str(args.workers), str(args.fetches), code=code))
    print(f"\nCocoDetection on {train.name} ({train.stat().st_size / 2**20:.0f} MB JSON), median of {args.repeat}\n")
    print("| measurement | " + " | ".join(codes) + " |\n|---|" + "---:|" * len(codes))
    rows = [("build, s", "build_s"), ("peak memory of the build, MB", "peak_mb")]
    if args.workers:
        rows.append((f"memory each of {args.workers} workers copied after {args.fetches} look-ups, MB", "worker_growth_mb"))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(str(statistics.median(r[key] for r in runs[n])) for n in codes) + " |")
    if not args.skip_eval:
        print(f"\n| eval --results {args.val_images} x 100 | s | AP |\n|---|---:|---:|")
        aps = {}
        for backend in args.backends.split(","):
            for name, code in codes.items():
                e = _child("--child", "eval", str(results), str(val), backend, code=code)
                aps[(name, backend)] = e["AP"]
                print(f"| {backend} ({name}) | {e['eval_s']} | {e['AP']:.4f} |", flush=True)
        print(f"\nAP identical across backends: {len(set(aps.values())) == 1}")

if __name__ == "__main__":
    main()
