"""``retinanet browse-data``: drawn images as stored and augmented, the box summary, the histogram."""
from __future__ import annotations

import json

from PIL import Image

from retinanet.cli import main as cli_main
from retinanet.commands.browse_data import box_summary
from retinanet.data.synthetic import make_synthetic_coco

from conftest import tiny_overrides


def test_browse_data_as_stored_and_augmented(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=3, num_val=1, image_size=(64, 80), seed=0)
    common = ["--config", "configs/demo.yaml", "--num", "2"]
    overrides = tiny_overrides(root, tmp_path / "o", **{"input.min_size_train": 128, "input.flip_prob": 1.0})
    assert cli_main(["browse-data", *common, "--output", str(tmp_path / "plain"), *overrides]) == 0
    assert cli_main(["browse-data", *common, "--augment", "--output", str(tmp_path / "aug"), *overrides]) == 0
    plain = sorted((tmp_path / "plain" / "images").glob("*.jpg"))
    aug = sorted((tmp_path / "aug" / "images").glob("*.jpg"))
    assert [p.name for p in plain] == [p.name for p in aug] == ["train_000000.jpg", "train_000001.jpg"]
    with Image.open(plain[0]) as a, Image.open(aug[0]) as b:
        stored = json.loads((root / "annotations/train.json").read_text())["images"][0]
        assert a.size == (stored["width"], stored["height"])  # as stored: original pixels
        assert min(b.size) == 128  # after the training resize
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    ann = json.loads((root / "annotations/train.json").read_text())
    assert summary["boxes"] == len(ann["annotations"]) == sum(summary["per_class"].values())
    assert sum(summary["per_size"].values()) == summary["boxes"]
    assert (tmp_path / "aug" / "histogram.png").stat().st_size > 1000


def test_box_summary_buckets():
    ann = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 3, "name": "a"}, {"id": 4, "name": "b"}],
           "annotations": [
               {"image_id": 1, "category_id": 3, "bbox": [0, 0, 31, 33], "area": 31 * 33},   # 1023 < 1024: small
               {"image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 32]},                    # 1024: medium
               {"image_id": 1, "category_id": 4, "bbox": [0, 0, 96, 96], "area": 9216},      # large
               {"image_id": 1, "category_id": 4, "bbox": [0, 0, 50, 50], "iscrowd": 1}]}
    s = box_summary(ann)
    assert s["per_class"] == {"a": 2, "b": 1} and s["per_size"] == {"small": 1, "medium": 1, "large": 1}
    assert s["crowd"] == 1 and s["empty_images"] == 1 and s["boxes"] == 3
