from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from retinanet.config import DataConfig, DatasetConfig
from retinanet.data import CocoDetection, DatasetError, ensure_demo_dataset, make_synthetic_coco
from retinanet.data import synthetic


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root, make_synthetic_coco(root, num_train=40, num_val=8, image_size=(96, 128), seed=3)


def test_generator_is_deterministic(synth, tmp_path):
    root, out = synth
    again = make_synthetic_coco(tmp_path / "a", num_train=40, num_val=8, image_size=(96, 128), seed=3)
    for split in ("train", "val"):
        assert Path(out[split]).read_text() == Path(again[split]).read_text()
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) and len(names) == 48
    assert all((root / "images" / n).read_bytes() == (tmp_path / "a" / "images" / n).read_bytes() for n in names)
    make_synthetic_coco(tmp_path / "b", num_train=3, num_val=0, image_size=(96, 128), seed=4)
    name = "train_000001.jpg"
    assert (tmp_path / "b" / "images" / name).read_bytes() != (root / "images" / name).read_bytes()
    # Images depend on (seed, split, index) only: a smaller dataset is a prefix of a larger one.
    prefix = make_synthetic_coco(tmp_path / "c", num_train=3, num_val=2, image_size=(96, 128), seed=3)
    assert json.loads(Path(prefix["train"]).read_text())["images"] == \
        json.loads(Path(out["train"]).read_text())["images"][:3]
    fixed = make_synthetic_coco(tmp_path / "d", num_train=6, num_val=0, image_size=(48, 64), vary_size=False)
    assert {(im["height"], im["width"]) for im in json.loads(Path(fixed["train"]).read_text())["images"]} == {(48, 64)}


def test_valid_coco_with_tight_boxes_inside_images(synth):
    root, out = synth
    for split in ("train", "val"):
        coco = COCO(out[split])
        assert sorted(coco.getCatIds()) == [1, 3, 5, 7, 9]
        for ann in coco.dataset["annotations"]:
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w >= 1 and h >= 1
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            # Tight: the box is the pixel extent of the drawn polygon, within a pixel of its vertices.
            assert np.allclose([x, y], poly.min(0), atol=1.01) and np.allclose([x + w, y + h], poly.max(0), atol=1.01)
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        for img in coco.dataset["images"]:
            with Image.open(root / "images" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
    ds = CocoDetection(str(root / "images"), out["train"])
    assert ds.stats["degenerate_dropped"] == 0 and ds.stats["annotations"] == out["num_annotations"]["train"]


def test_variety_of_sizes_shapes_and_layouts(synth):
    _, out = synth
    data = json.loads(Path(out["train"]).read_text())
    sides = np.array([a["bbox"][2:] for a in data["annotations"]])
    assert sides.max(1).min() < 20 and sides.max(1).max() > 35  # ~12 px up to about half the image
    aspect = sides[:, 0] / sides[:, 1]
    assert aspect.min() < 0.6 and aspect.max() > 1.7
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 5, 7, 9}
    assert any(im["height"] > im["width"] for im in data["images"])
    assert len({(im["height"], im["width"]) for im in data["images"]}) > 10
    per_image = {im["id"]: 0 for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]] += 1
    assert max(per_image.values()) >= 4


def test_objects_stand_out_from_the_background(synth):
    from PIL import ImageDraw
    root, out = synth
    coco = COCO(out["train"])
    contrast = []
    for ann in coco.dataset["annotations"]:
        info = coco.imgs[ann["image_id"]]
        img = np.asarray(Image.open(root / "images" / info["file_name"]), np.float32)
        mask = Image.new("1", (info["width"], info["height"]))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in np.reshape(ann["segmentation"][0], (-1, 2))], fill=1)
        inside = np.asarray(mask)
        x, y, w, h = (int(v) for v in ann["bbox"])
        ring = np.zeros_like(inside)
        ring[max(0, y - 3): y + h + 3, max(0, x - 3): x + w + 3] = True
        ring[y: y + h, x: x + w] = False
        if ring.any():
            contrast.append(np.abs(img[inside].mean(0) - img[ring].mean(0)).sum())
    assert np.mean(np.asarray(contrast) > 60) > 0.85
    assert any(len(coco.getAnnIds(imgIds=[i])) == 0 for i in coco.getImgIds())  # a few empty images


def test_ensure_demo_dataset(tmp_path, monkeypatch):
    calls = []

    def small(root, **kw):
        calls.append(Path(root))
        return make_synthetic_coco(root, num_train=2, num_val=1, image_size=(32, 32))

    monkeypatch.setattr(synthetic, "make_synthetic_coco", small)
    root = tmp_path / "datasets" / "demo"
    cfg = DataConfig(train=DatasetConfig(f"{root}/images", f"{root}/annotations/train.json"),
                     val=DatasetConfig(f"{root}/images", f"{root}/annotations/val.json"), demo=True)
    ensure_demo_dataset(cfg)
    assert calls == [root] and (root / "annotations" / "val.json").is_file()
    ensure_demo_dataset(cfg)  # present: not generated again
    assert calls == [root]
    bad = DataConfig(train=DatasetConfig(f"{root}/imgs", f"{root}/annotations/train.json"), demo=True)
    with pytest.raises(DatasetError, match="data.train must point at <root>/images"):
        ensure_demo_dataset(bad)
    with pytest.raises(DatasetError, match="annotations/val.json"):
        ensure_demo_dataset(DataConfig(val=DatasetConfig(f"{root}/images", f"{root}/val.json")))


def test_demo_preset_class_colours_and_fewer_classes(tmp_path):
    from PIL import ImageDraw
    from retinanet.data.synthetic import CLASS_COLOURS
    out = make_synthetic_coco(tmp_path, num_train=6, num_val=0, image_size=(96, 112), num_classes=3,
                              min_object=24, max_objects=4, class_colours=True)
    coco = COCO(out["train"])
    assert sorted(coco.getCatIds()) == [1, 3, 5]
    sides = np.array([a["bbox"][2:] for a in coco.dataset["annotations"]])
    assert sides.max(1).min() >= 22  # long side from min_object (a pixel or two lost to rasterising)
    right = []
    for ann in coco.dataset["annotations"]:
        info = coco.imgs[ann["image_id"]]
        img = np.asarray(Image.open(tmp_path / "images" / info["file_name"]), np.float32)
        mask = Image.new("1", (info["width"], info["height"]))
        ImageDraw.Draw(mask).polygon([tuple(p) for p in np.reshape(ann["segmentation"][0], (-1, 2))], fill=1)
        median = np.median(img[np.asarray(mask)], 0)
        right.append([1, 3, 5][int(np.abs(CLASS_COLOURS[:3] - median).sum(1).argmin())] == ann["category_id"])
    assert np.mean(right) > 0.9  # the colour tells the class (a shape partly drawn over may not)
