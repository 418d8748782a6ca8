from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from retinanet.config import InputConfig
from retinanet.data import CocoDetection, DatasetError, build_transforms

LOGGER = "retinanet.data.coco"


def write_coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None,
               categories: list[dict] | None = None, make_images: bool = True) -> tuple[Path, Path]:
    """Writes tmp_path/images/*.png (random pixels) and tmp_path/ann.json; returns (image root, json)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
                                                {"id": 2, "file_name": "b.png", "height": 50, "width": 30}]
    categories = categories if categories is not None else [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"},
                                                            {"id": 40, "name": "bird"}]
    rng = np.random.default_rng(0)
    for im in images if make_images else []:
        pixels = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / im["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root, path


def ann(id: int, image_id: int, cat: int, bbox: list, **kw) -> dict:
    return {"id": id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0, **kw}


def test_category_mapping_round_trip_matches_pycocotools(tmp_path):
    anns = [ann(1, 1, 7, [1, 2, 10, 20]), ann(2, 1, 40, [5.5, 6, 30, 10]), ann(3, 2, 2, [0, 0, 30, 50]),
            ann(4, 2, 7, [3, 4, 5, 6])]
    root, path = write_coco(tmp_path, anns)
    ds = CocoDetection(str(root), str(path))
    coco = COCO(str(path))
    assert [c["id"] for c in ds.categories] == sorted(coco.getCatIds()) == [2, 7, 40]
    assert [c["name"] for c in ds.categories] == ["cat", "dog", "bird"]
    assert ds.cat_id_to_label == {2: 0, 7: 1, 40: 2}
    assert ds.ids == [1, 2] and len(ds) == 2
    for i, image_id in enumerate(ds.ids):
        s = ds[i]
        assert s["image_id"] == image_id and s["file_name"] == coco.imgs[image_id]["file_name"]
        ref = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in ref], dtype=torch.float32)
        torch.testing.assert_close(s["boxes"], expected)
        assert [ds.categories[k]["id"] for k in s["labels"].tolist()] == [a["category_id"] for a in ref]
        assert s["labels"].dtype == torch.int64 and s["boxes"].dtype == torch.float32
        assert s["orig_size"] == s["size"] == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"])
        assert s["image"].shape == (3, *s["size"]) and 0 <= s["image"].min() and s["image"].max() <= 1
    assert ds.image_info(1) == {"file_name": "b.png", "height": 50, "width": 30}
    assert ds.stats["images"] == 2 and ds.stats["annotations"] == 4


def test_crowd_annotations_become_ignore_regions(tmp_path):
    anns = [ann(1, 1, 7, [1, 2, 10, 20]), ann(2, 1, 2, [20, 5, 30, 30], iscrowd=1)]
    root, path = write_coco(tmp_path, anns)
    ds = CocoDetection(str(root), str(path))
    s = ds[0]
    torch.testing.assert_close(s["boxes"], torch.tensor([[1.0, 2, 11, 22]]))
    torch.testing.assert_close(s["crowd_boxes"], torch.tensor([[20.0, 5, 50, 35]]))
    assert s["labels"].tolist() == [1] and ds.stats["crowd"] == 1
    assert ds[1]["crowd_boxes"].shape == (0, 4) and ds[1]["boxes"].shape == (0, 4) and ds[1]["labels"].shape == (0,)


def test_empty_images_kept_or_filtered(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "height": 20, "width": 20} for i in (10, 11, 12)]
    anns = [ann(1, 11, 7, [1, 1, 5, 5]), ann(2, 12, 7, [1, 1, 5, 5], iscrowd=1)]  # only a crowd: empty too
    root, path = write_coco(tmp_path, anns, images)
    kept = CocoDetection(str(root), str(path))
    assert kept.ids == [10, 11, 12] and kept.stats["empty_images"] == 2 and kept.stats["filtered_empty"] == 0
    assert kept[0]["boxes"].shape == (0, 4)
    filtered = CocoDetection(str(root), str(path), filter_empty=True)
    assert filtered.ids == [11] and filtered.stats["filtered_empty"] == 2
    assert filtered.image_info(0)["file_name"] == "11.png"


def test_boxes_clipped_and_degenerate_boxes_dropped_with_one_warning(tmp_path, caplog):
    anns = [ann(1, 1, 7, [-5, -5, 20, 20]),  # clipped to [0, 0, 15, 15]
            ann(2, 1, 7, [50, 30, 100, 100]),  # clipped to [50, 30, 60, 40]
            ann(17, 1, 7, [3, 3, 0, 10]), ann(18, 1, 7, [3, 3, 10, 0.5]), ann(19, 1, 7, [3, 3, -4, 10]),
            ann(20, 1, 7, [70, 3, 5, 5]),  # entirely outside: empty after clipping
            ann(21, 2, 2, [1, 1, math.nan, 4])]
    root, path = write_coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = CocoDetection(str(root), str(path))
    records = [r for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "dropped 5 degenerate boxes" in msg and "id 17" in msg and "'a.png'" in msg and str(path) in msg
    assert ds.stats["degenerate_dropped"] == 5
    torch.testing.assert_close(ds[0]["boxes"], torch.tensor([[0.0, 0, 15, 15], [50, 30, 60, 40]]))
    assert ds[1]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_file_name_outside_image_root_is_rejected(tmp_path, kind):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (20, 20)).save(outside)
    root = tmp_path / "images"
    root.mkdir()
    name = {"dotdot": "sub/../../secret.png", "absolute": str(outside), "symlink": "link.png"}[kind]
    if kind == "symlink":
        os.symlink(outside, root / "link.png")
    images = [{"id": 1, "file_name": "ok.png", "height": 20, "width": 20},
              {"id": 5, "file_name": name, "height": 20, "width": 20}]
    _, path = write_coco(tmp_path, [], images, make_images=False)
    with pytest.raises(DatasetError) as e:
        CocoDetection(str(root), str(path))
    assert str(path) in str(e.value) and "images[1] (id 5)" in str(e.value) and name in str(e.value)
    assert "outside the image root" in str(e.value)


GOOD_IMAGE = {"id": 1, "file_name": "a.png", "height": 40, "width": 60}


@pytest.mark.parametrize("data, expected", [
    ({"images": [{"id": 1, "file_name": "a.png", "height": 40}], "annotations": []}, "images[0]: missing key 'width'"),
    ({"images": [dict(GOOD_IMAGE, id="1")], "annotations": []}, "images[0]: invalid 'id': '1'"),
    ({"annotations": [ann(1, 1, 7, [1, 2, 3, 4]), ann(57, 1, 7, "1,2,3,4")]},
     "annotations[1] (id 57): bbox must be 4 numbers"),
    ({"annotations": [ann(3, 1, 7, [1, 2, 3])]}, "annotations[0] (id 3): bbox must be 4 numbers"),
    ({"annotations": [{"id": 4, "image_id": 1, "bbox": [1, 2, 3, 4]}]},
     "annotations[0] (id 4): missing key 'category_id'"),
    ({"annotations": [ann(1, 1, 7, [1, 1, 2, 2]), ann(9, 99, 7, [1, 2, 3, 4])]},
     "annotations[1] (id 9): image_id 99 is not in 'images'"),
    ({"annotations": [ann(9, 1, 8, [1, 2, 3, 4])]}, "annotations[0] (id 9): category_id 8 is not in 'categories'"),
    ({"annotations": [ann(9, 1, 7, [1, 2, 3, 4], iscrowd="yes")]}, "annotations[0] (id 9): iscrowd must be 0 or 1"),
    ({"annotations": [ann(9, 1, 7, [1, 2, 3, 4], iscrowd=1.0)]}, "annotations[0] (id 9): iscrowd must be 0 or 1"),
    ({"categories": [{"id": 1}]}, "categories[0]: missing key 'name'"),
    ({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "categories[1]: duplicate category id 1"),
    ({"images": [GOOD_IMAGE, GOOD_IMAGE], "annotations": []}, "images[1] (id 1): duplicate image id"),
    ({"categories": None}, "missing top-level key 'categories'"),
    ({"annotations": {"a": 1}}, "'annotations' must be a list"),
])
def test_malformed_json_names_file_and_entry(tmp_path, data, expected):
    full = {"images": [GOOD_IMAGE], "annotations": [], "categories": [{"id": 7, "name": "dog"}]}
    full.update(data)
    full = {k: v for k, v in full.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(full))
    with pytest.raises(DatasetError) as e:
        CocoDetection(str(tmp_path), str(path))
    assert str(path) in str(e.value) and expected in str(e.value)


def test_unparsable_or_missing_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"bad\.json: invalid JSON at line 1"):
        CocoDetection(str(tmp_path), str(path))
    with pytest.raises(DatasetError, match="annotation file not found: .*nope.json"):
        CocoDetection(str(tmp_path), str(tmp_path / "nope.json"))


def _write_bad_images(root: Path) -> dict[str, Path]:
    good = root / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(good)
    paths = {"garbage": root / "garbage.jpg", "empty": root / "empty.jpg", "truncated": root / "trunc.jpg",
             "missing": root / "missing.jpg"}
    paths["garbage"].write_bytes(os.urandom(500))
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(good.read_bytes()[:300])
    return paths


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "missing", "wrong_size"])
def test_bad_image_is_skipped_with_one_warning_or_raises(tmp_path, caplog, kind):
    root = tmp_path / "images"
    root.mkdir()
    paths = _write_bad_images(root)
    paths["wrong_size"] = root / "good.jpg"
    images = [{"id": 1, "file_name": paths[kind].name, "height": 40 if kind != "wrong_size" else 41, "width": 60}]
    _, path = write_coco(tmp_path, [ann(1, 1, 7, [1, 1, 5, 5])], images, make_images=False)
    ds = CocoDetection(str(root), str(path))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert ds[0] is None and ds[(0, 3)] is None
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and str(paths[kind]) in records[0].getMessage()
    assert ds.stats["skipped_images"] == 1
    strict = CocoDetection(str(root), str(path), skip_bad_images=False)
    with pytest.raises(OSError) as e:
        strict[0]
    assert str(paths[kind]) in str(e.value)


def _exif_rotated(path: Path) -> None:
    """Stored 60 wide x 40 high, left half red; EXIF orientation 6 means 'rotate 90 degrees clockwise'."""
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:, :30] = (255, 0, 0)
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("mode", ["exif", "L", "RGBA", "P", "CMYK", "I;16"])
def test_image_modes_are_read_as_rgb(tmp_path, mode):
    root = tmp_path / "images"
    root.mkdir()
    h, w = (60, 40) if mode == "exif" else (40, 60)
    name = "x.jpg" if mode in ("exif", "CMYK") else "x.png"
    if mode == "exif":
        _exif_rotated(root / name)
    elif mode == "I;16":
        Image.fromarray(np.full((h, w), 40000, np.uint16)).save(root / name)
    else:
        Image.new("RGB", (w, h), (200, 100, 50)).convert(mode).save(root / name)
    images = [{"id": 1, "file_name": name, "height": h, "width": w}]
    _, path = write_coco(tmp_path, [ann(1, 1, 7, [1, 1, 5, 5])], images, make_images=False)
    s = CocoDetection(str(root), str(path), skip_bad_images=False)[0]
    assert s["image"].shape == (3, h, w) and s["orig_size"] == (h, w) and s["image"].dtype == torch.float32
    if mode == "exif":  # rotated clockwise: the red left half is now the top half
        assert s["image"][0, :25].mean() > 0.9 and s["image"][0, 35:].mean() < 0.1
    elif mode == "I;16":
        torch.testing.assert_close(s["image"], torch.full((3, h, w), (40000 >> 8) / 255))
    elif mode in ("RGBA", "P"):
        torch.testing.assert_close(s["image"][:, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=0.02, rtol=0)


def test_seeded_sample_is_reproducible(tmp_path):
    root, path = write_coco(tmp_path, [ann(1, 1, 7, [1, 2, 10, 20]), ann(2, 1, 2, [30, 5, 20, 20], iscrowd=1)])
    cfg = InputConfig(min_size_train=(32, 48, 64), max_size_train=100, flip_prob=0.5, color_jitter=0.5)
    ds = CocoDetection(str(root), str(path), transform=build_transforms(cfg))
    outcomes = set()
    for seed in range(12):
        a, b = ds[(0, seed)], ds[(0, seed)]
        for key in ("image", "boxes", "labels", "crowd_boxes"):
            assert torch.equal(a[key], b[key])
        assert a["size"] == tuple(a["image"].shape[-2:]) and a["orig_size"] == (40, 60)
        outcomes.add((a["size"], a["boxes"][0, 0].item()))
    assert len(outcomes) >= 4  # sizes and flips really vary with the seed
