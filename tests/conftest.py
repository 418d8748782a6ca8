"""Shared fixtures and helpers: one thread, seeding, a tiny config factory, one generated dataset, the
location of the optional shared data, and the checks several test files make."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from retinanet.build import build_model
from retinanet.checkpoint import save_checkpoint
from retinanet.config import Config
from retinanet.config_loader import load_config, to_dict
from retinanet.data.synthetic import make_synthetic_coco

# The tests' models are tiny: a second intra-op thread mostly waits for the first (and spins on a shared
# machine), costing about twice the CPU time for the same wall time. Subprocesses keep their own default.
torch.set_num_threads(1)

# The folder beside the repo (real photos, backbone weights); tests needing it skip when absent.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]
TV_CONFIGS = REPO / "configs" / "torchvision"

# resnet18, 32-channel FPN/head (GN needs channels divisible by 32), 3 classes, 128-px test images.
TINY = [
    "model.num_classes=3", "model.category_ids=[1,5,9]", "model.class_names=[cat,dog,bird]",
    "model.backbone.name=resnet18", "model.fpn.channels=32",
    "input.min_size_test=128", "input.max_size_test=160", "input.min_size_train=128", "input.max_size_train=160",
]

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]  # non-contiguous on purpose
# resnet18 with a narrow FPN/head at 128 px; no prior bias so that a random model detects things
# (every anchor scores ~0.5: fewer top-k candidates keep NMS cheap).
TINY_MODEL = {"backbone": {"name": "resnet18", "weights": ""}, "fpn": {"channels": 32},
              "head": {"num_convs": 1, "prior_init": False}, "test": {"topk_candidates": 100}}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> Callable[..., Config]:
    """``tiny_cfg("model.head.norm=gn", ...)``: the tiny config with extra ``key=value`` overrides."""
    def make(*overrides: str) -> Config:
        return load_config(None, TINY + list(overrides))
    return make


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A small generated COCO dataset (4 train, 2 val images of about 96x128, 5 classes); read-only."""
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(root, num_train=4, num_val=2, seed=0, image_size=(96, 128))
    return root


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path: to show a command left files unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_error(rc: int, err: str, *words: str) -> None:
    """The CLI's bad-input contract: exit status 2, one line on stderr naming ``words``, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_images(dataset: str, n: int) -> list[Path]:
    """Up to ``n`` photos of /work/shared/data/<dataset>/images with distinct sizes, or []."""
    from PIL import Image
    folder = SHARED / "data" / dataset / "images"
    if not folder.is_dir():
        return []
    picked, sizes = [], set()
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as im:
            if im.size in sizes:
                continue
            sizes.add(im.size)
        picked.append(path)
        if len(picked) == n:
            break
    return picked


def tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """``key=value`` overrides for a tiny, fast CPU training run on a generated dataset at ``root``."""
    base = {
        "model.backbone.name": "resnet18", "model.backbone.freeze_at": 0, "model.fpn.channels": 32,
        "model.head.num_convs": 2, "model.anchors.sizes": "[16,32,64,128,256]",
        "input.min_size_train": 128, "input.max_size_train": 160, "input.min_size_test": 128,
        "input.max_size_test": 160, "solver.ims_per_batch": 2, "solver.base_lr": 0.01, "solver.max_iter": 6,
        "solver.warmup_iters": 2, "solver.steps": "[]", "train.checkpoint_period": 3, "train.log_period": 1,
        "train.device": "cpu", "train.vis_images": 0, "dataloader.num_workers": 0,
        "data.train.images": str(root / "images"), "data.train.annotations": str(root / "annotations/train.json"),
        "data.val.images": str(root / "images"), "data.val.annotations": str(root / "annotations/val.json"),
        "train.output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def make_coco(root: Path, n_images: int = 3) -> tuple[Path, Path]:
    """Writes PNGs of coloured shapes on noise and their COCO JSON; returns (images dir, json)."""
    rng = np.random.RandomState(0)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    gt = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(1, n_images + 1):
        h, w = (96, 128) if i % 2 else (120, 100)
        img = rng.randint(0, 60, (h, w, 3)).astype(np.uint8)
        img[20:60, 20:60] = (230, 40, 40)
        img[70:85, 10:90] = (40, 200, 40)
        Image.fromarray(img).save(images_dir / f"img_{i}.png")
        gt["images"].append({"id": i, "file_name": f"img_{i}.png", "width": w, "height": h})
        for cat, box in ((3, [20, 20, 40, 40]), (7, [10, 70, 80, 15])):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    ann = root / "val.json"
    ann.write_text(json.dumps(gt))
    return images_dir, ann


def make_checkpoint(root: Path, images: Path, ann: Path, categories=CATEGORIES) -> tuple[Path, Path]:
    """A randomly initialised tiny model saved as our checkpoint, and a YAML config; returns (yaml, ckpt)."""
    data = {"model": TINY_MODEL, "input": {"min_size_test": 128, "max_size_test": 160},
            "data": {"val": {"images": str(images), "annotations": str(ann)}},
            "train": {"device": "cpu", "output_dir": str(root / "out")}}
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config, [f"model.num_classes={len(categories)}"])
    torch.manual_seed(0)
    ckpt = root / f"model_{len(categories)}.pth"
    save_checkpoint(ckpt, {"model": build_model(cfg).state_dict(), "config": to_dict(cfg), "categories": categories})
    return config, ckpt
