"""`retinanet convert`: VOC and YOLO labels written from known COCO boxes come back as the same boxes."""
from __future__ import annotations

import json
import re
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

from retinanet.cli import main as cli_main
from retinanet.data.coco import CocoDetection

# file name -> (width, height, [(class name, x, y, w, h, difficult)]); boxes in COCO 0-based pixels.
SCENE = {
    "a.jpg": (64, 48, [("dog", 3.2, 5.0, 20.6, 30.1, 0), ("cat", 30.0, 10.5, 33.0, 37.5, 0)]),
    "sub/b.png": (80, 60, [("cat", 0.0, 0.0, 80.0, 60.0, 0), ("bird", 10.0, 12.0, 8.0, 9.0, 1)]),
    "c.jpg": (50, 40, []),  # no objects
    "d.jpg": (40, 72, [("bird", 12.4, 40.2, 15.3, 20.7, 0)]),
}


def _make_images(root: Path, scene: dict = SCENE) -> Path:
    rng = np.random.default_rng(0)
    for name, (w, h, _) in scene.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def _voc_xml(name: str, w: int, h: int, objects: list, size: bool = True) -> str:
    """A VOC annotation in the devkit's 1-based inclusive convention (the inverse of the converter's)."""
    objs = "".join(
        f"<object><name>{escape(c)}</name><difficult>{d}</difficult><bndbox><xmin>{round(x + 1)}</xmin>"
        f"<ymin>{round(y + 1)}</ymin><xmax>{round(x + bw)}</xmax><ymax>{round(y + bh)}</ymax></bndbox></object>"
        for c, x, y, bw, bh, d in objects)
    size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><folder>VOC</folder><filename>{escape(name)}</filename>{size_xml}{objs}</annotation>"


def _write_voc(root: Path, scene: dict = SCENE) -> Path:
    xml_dir = root / "xml"
    xml_dir.mkdir(parents=True, exist_ok=True)
    for name, (w, h, objects) in scene.items():
        (xml_dir / (Path(name).stem + ".xml")).write_text(_voc_xml(name, w, h, objects))
    return xml_dir


def _write_yolo(root: Path, classes: list[str], scene: dict = SCENE, skip: tuple = ("c.jpg",)) -> Path:
    lab = root / "labels"
    for name, (w, h, objects) in scene.items():
        if name in skip:  # YOLO's background images have no label file at all
            continue
        txt = lab / Path(name).with_suffix(".txt")
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"{classes.index(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} "
                               f"{bh / h:.6f}\n" for c, x, y, bw, bh, _ in objects))
    return lab


def _convert(*args: str) -> int:
    return cli_main(["convert", *[str(a) for a in args]])


def _boxes_by_file(coco: dict) -> dict[str, list[tuple[str, list[float], int]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"], a["iscrowd"]))
    return out


def _check_same_boxes(coco: dict, tol: float, crowd_difficult: bool) -> None:
    got = _boxes_by_file(coco)
    assert sorted(got) == sorted(SCENE)
    for name, (_, _, objects) in SCENE.items():
        assert len(got[name]) == len(objects), name
        for (c, *box, d), (gc, gbox, crowd) in zip(objects, got[name]):
            assert gc == c and crowd == (d if crowd_difficult else 0)
            assert np.abs(np.array(gbox) - box).max() <= tol, (name, box, gbox)


def _check_coco_conventions(coco: dict) -> None:
    ims = coco["images"]
    assert [im["id"] for im in ims] == list(range(1, len(ims) + 1))
    assert [im["file_name"] for im in ims] == sorted(im["file_name"] for im in ims)
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(coco["categories"]) + 1))
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for a in coco["annotations"]:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=1e-2)
    for im in ims:
        assert (im["width"], im["height"]) == SCENE[im["file_name"]][:2]


def test_voc_round_trip_within_one_pixel_and_loads(tmp_path):
    images = _make_images(tmp_path / "images")
    xml_dir = _write_voc(tmp_path)
    out = tmp_path / "out.json"
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out) == 0
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["bird", "cat", "dog"]  # sorted names from the files
    _check_coco_conventions(coco)
    _check_same_boxes(coco, tol=1.0, crowd_difficult=True)
    ds = CocoDetection(str(images), str(out))
    assert len(ds) == 4 and ds.stats["empty_images"] == 1 and ds.stats["crowd"] == 1
    sample = ds[[i for i in range(len(ds)) if ds.image_info(i)["file_name"] == "sub/b.png"][0]]
    np.testing.assert_allclose(sample["boxes"].numpy(), [[0, 0, 80, 60]], atol=1.0)
    np.testing.assert_allclose(sample["crowd_boxes"].numpy(), [[10, 12, 18, 21]], atol=1.0)


def test_voc_whole_image_box_is_exact(tmp_path):
    """(1, 1, W, H) in VOC is the whole image: [0, 0, W, H] in COCO, exactly (Detectron2's convention)."""
    scene = {"x.jpg": (30, 20, [("cat", 0.0, 0.0, 30.0, 20.0, 0)])}
    images, xml_dir = _make_images(tmp_path / "images", scene), _write_voc(tmp_path, scene)
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", tmp_path / "o.json") == 0
    assert json.loads((tmp_path / "o.json").read_text())["annotations"][0]["bbox"] == [0, 0, 30, 20]


@pytest.mark.parametrize("mode,expected", [("keep", (2, 0)), ("drop", (1, 0)), ("crowd", (2, 1))])
def test_voc_difficult_modes(tmp_path, mode, expected):
    scene = {"b.png": SCENE["sub/b.png"]}
    images, xml_dir = _make_images(tmp_path / "images", scene), _write_voc(tmp_path, scene)
    out = tmp_path / "o.json"
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out,
                    "--difficult", mode) == 0
    anns = json.loads(out.read_text())["annotations"]
    assert (len(anns), sum(a["iscrowd"] for a in anns)) == expected


def test_voc_class_order_from_file_and_unknown_class(tmp_path, capsys):
    images, xml_dir = _make_images(tmp_path / "images"), _write_voc(tmp_path)
    (tmp_path / "classes.txt").write_text("dog\ncat\n\nbird\nhorse\n")
    out = tmp_path / "o.json"
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out,
                    "--classes", tmp_path / "classes.txt") == 0
    coco = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird"), (4, "horse")]
    _check_same_boxes(coco, tol=1.0, crowd_difficult=True)
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out,
                    "--classes", tmp_path / "classes.txt") == 2
    err = capsys.readouterr().err
    assert err.startswith("retinanet convert: error: 2 bad objects")
    assert "b.xml: object 2 (bird): unknown class 'bird'" in err and "d.xml: object 1 (bird)" in err


def test_voc_size_comes_from_the_image(tmp_path):
    scene = {"a.jpg": SCENE["a.jpg"]}
    images, xml_dir = _make_images(tmp_path / "images", scene), tmp_path / "xml"
    xml_dir.mkdir()
    (xml_dir / "a.xml").write_text(_voc_xml("a.jpg", 640, 480, scene["a.jpg"][2]))  # stale <size>
    out = tmp_path / "o.json"
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out) == 0
    assert json.loads(out.read_text())["images"][0] == {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
    (xml_dir / "a.xml").write_text(_voc_xml("a.jpg", 0, 0, scene["a.jpg"][2], size=False))
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out) == 0
    assert json.loads(out.read_text())["images"][0]["width"] == 64


@pytest.mark.parametrize("content,message", [
    ("<annotation><filename>a.jpg</filename><object>", "a.xml:1: malformed XML"),
    ('<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY x "xx">]><annotation><filename>&x;</filename></annotation>',
     "a.xml: DOCTYPE/ENTITY declarations are not allowed"),
    ("<annotation><filename>../secret.jpg</filename></annotation>", "points outside the image folder"),
    ("<annotation><filename>missing.jpg</filename></annotation>", "image 'missing.jpg' not found"),
    ("<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox><xmin>5</xmin><ymin>2</ymin>"
     "<xmax>3</xmax><ymax>9</ymax></bndbox></object></annotation>", "a.xml: object 1 (cat): xmax < xmin"),
])
def test_voc_bad_files_give_one_clear_error(tmp_path, capsys, content, message):
    images = _make_images(tmp_path / "images", {"a.jpg": SCENE["a.jpg"]})
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.jpg")  # exists, but outside the image folder
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "a.xml").write_text(content)
    assert _convert("--format", "voc", "--annotations", tmp_path / "xml", "--images", images,
                    "--output", tmp_path / "o.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("retinanet convert: error: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "o.json").exists()


def test_missing_folders_are_named(tmp_path, capsys):
    _write_voc(tmp_path)
    assert _convert("--format", "voc", "--annotations", tmp_path / "xml", "--images", tmp_path / "nope",
                    "--output", tmp_path / "o.json") == 2
    assert f"images folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err


def test_yolo_round_trip_within_half_a_pixel_and_loads(tmp_path):
    classes = ["cat", "dog", "bird"]  # index order, deliberately not sorted
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    images, labels = _make_images(tmp_path / "images"), _write_yolo(tmp_path, classes)
    out = tmp_path / "o.json"
    assert _convert("--format", "yolo", "--labels", labels, "--images", images, "--classes", tmp_path / "classes.txt",
                    "--output", out) == 0
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == classes
    _check_coco_conventions(coco)
    _check_same_boxes(coco, tol=0.5, crowd_difficult=False)
    ds = CocoDetection(str(images), str(out))
    assert len(ds) == 4 and ds.stats["empty_images"] == 1 and ds.stats["annotations"] == 5
    assert ds[0]["image"].shape[1:] == (48, 64)


def test_yolo_exif_rotated_image_uses_the_loaders_size(tmp_path):
    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the loader sees 30 x 50 (W x H)
    Image.new("RGB", (50, 30)).save(tmp_path / "images" / "r.jpg", exif=exif)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "r.txt").write_text("0 0.5 0.5 1 1\n")
    (tmp_path / "c.txt").write_text("thing\n")
    out = tmp_path / "o.json"
    assert _convert("--format", "yolo", "--labels", tmp_path / "labels", "--images", tmp_path / "images",
                    "--classes", tmp_path / "c.txt", "--output", out) == 0
    coco = json.loads(out.read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (30, 50)
    assert coco["annotations"][0]["bbox"] == [0, 0, 30, 50]
    assert CocoDetection(str(tmp_path / "images"), str(out))[0] is not None  # size agrees with the loader


def test_yolo_bad_lines_are_reported_together_with_file_and_line(tmp_path, capsys):
    images = _make_images(tmp_path / "images", {"a.jpg": SCENE["a.jpg"], "b.jpg": SCENE["c.jpg"]})
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n1 1.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.1\n")
    (tmp_path / "labels" / "b.txt").write_text("\n1 0.5 x 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    args = ["--format", "yolo", "--labels", tmp_path / "labels", "--images", images, "--classes", tmp_path / "c.txt",
            "--output", tmp_path / "o.json"]
    assert _convert(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("retinanet convert: error: 5 bad label lines")
    a, b = tmp_path / "labels" / "a.txt", tmp_path / "labels" / "b.txt"
    for where, what in [(f"{a}:2", "expected 5 fields"), (f"{a}:3", "outside [0, 1]"),
                        (f"{a}:4", "class index 7 out of range"), (f"{a}:5", "outside (0, 1]"),
                        (f"{b}:2", "not a number")]:
        items = re.split(r"; |\n", err.split("lines: ", 1)[1])  # one line: "N bad label lines: a; b; ..."
        line = next((item for item in items if item.strip().startswith(f"{where}: ")), "")
        assert what in line, (where, err)
    assert not (tmp_path / "o.json").exists()
    assert _convert(*args, "--skip-bad") == 0  # the good lines survive, the bad ones are dropped
    assert len(json.loads((tmp_path / "o.json").read_text())["annotations"]) == 2


def test_yolo_many_problems_show_twenty_and_the_count(tmp_path, capsys):
    images = _make_images(tmp_path / "images", {"a.jpg": SCENE["a.jpg"]})
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n" * 25)
    (tmp_path / "c.txt").write_text("cat\n")
    assert _convert("--format", "yolo", "--labels", tmp_path / "labels", "--images", images, "--classes",
                    tmp_path / "c.txt", "--output", tmp_path / "o.json") == 2
    err = capsys.readouterr().err
    assert "25 bad label lines" in err and "... and 5 more" in err and err.count("out of range") == 20


def test_yolo_needs_classes(tmp_path, capsys):
    images = _make_images(tmp_path / "images", {"a.jpg": SCENE["a.jpg"]})
    assert _convert("--format", "yolo", "--labels", tmp_path, "--images", images, "--output", tmp_path / "o.json") == 2
    assert "--format yolo needs --classes" in capsys.readouterr().err


def _split(tmp_path: Path, images: Path, xml_dir: Path, seed: int, name: str) -> tuple[dict, dict]:
    out = tmp_path / name
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output", out,
                    "--split-val", "0.3", "--seed", seed) == 0
    return json.loads((out / "train.json").read_text()), json.loads((out / "val.json").read_text())


def test_split_is_deterministic_disjoint_and_loadable(tmp_path, capsys):
    scene = {f"im{i:02d}.jpg": (32, 32, [("cat" if i % 2 else "dog", 2.0, 3.0, 10.0, 12.0, 0)]) for i in range(10)}
    images, xml_dir = _make_images(tmp_path / "images", scene), _write_voc(tmp_path, scene)
    train, val = _split(tmp_path, images, xml_dir, 1, "s1")
    assert (train, val) == _split(tmp_path, images, xml_dir, 1, "s1_again")
    ids = lambda d: {im["id"] for im in d["images"]}  # noqa: E731
    assert len(ids(val)) == 3 and len(ids(train)) == 7 and not ids(train) & ids(val)
    assert ids(train) | ids(val) == set(range(1, 11))
    assert {a["image_id"] for a in val["annotations"]} <= ids(val)
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                                        {"id": 2, "name": "dog", "supercategory": ""}]
    others = [ids(_split(tmp_path, images, xml_dir, s, f"s{s}")[1]) for s in (2, 3, 4)]
    assert any(o != ids(val) for o in others)  # the seed matters
    for part in ("train", "val"):
        assert len(CocoDetection(str(images), str(tmp_path / "s1" / f"{part}.json"))) == len(ids(locals()[part]))
    assert _convert("--format", "voc", "--annotations", xml_dir, "--images", images, "--output",
                    tmp_path / "x.json", "--split-val", "0.3") == 2
    assert "--output is a folder" in capsys.readouterr().err
