"""`retinanet infer` end to end: files, folders and globs in; drawn images and predictions.json out."""
from __future__ import annotations

import json
import shutil

from PIL import Image
from conftest import make_checkpoint, make_coco

from retinanet.cli import main
from retinanet.commands.infer import collect_inputs


def _setup(tmp_path):
    images, ann = make_coco(tmp_path / "data", 3)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "img_1.png", other / "img_1.png")  # same name as an input in another folder
    Image.open(images / "img_2.png").convert("RGB").save(other / "photo.jpg")
    return images, other, config, ckpt


def test_collect_inputs(tmp_path):
    images, other, _, _ = _setup(tmp_path)
    (images / "notes.txt").write_text("not an image")
    paths, unmatched = collect_inputs([str(images), str(other / "*.jpg"), str(images / "img_1.png"), "nope/*.png"])
    assert [p.name for p in paths] == ["img_1.png", "img_2.png", "img_3.png", "photo.jpg"]
    assert paths == sorted(paths) and unmatched == ["nope/*.png"]


def test_infer_command_end_to_end(tmp_path, capsys):
    images, other, config, ckpt = _setup(tmp_path)
    out = tmp_path / "pred"
    rc = main(["infer", "--config", str(config), "--weights", str(ckpt), "--input", str(images), str(other / "*"),
               "--output", str(out), "--score-thresh", "0.3", "--batch-size", "2"])
    assert rc == 0
    inputs = sorted([*images.glob("*.png"), *other.iterdir()])
    drawn = sorted(p.name for p in out.iterdir() if p.name != "predictions.json")
    assert drawn == ["img_1.png", "img_1_1.png", "img_2.png", "img_3.png", "photo.jpg"]
    for name, src in (("img_2.png", images / "img_2.png"), ("photo.jpg", other / "photo.jpg")):
        assert Image.open(out / name).size == Image.open(src).size
    assert Image.open(out / "img_1.png").tobytes() != Image.open(images / "img_1.png").tobytes()  # boxes drawn
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and all(set(p) == {"image_id", "category_id", "bbox", "score", "file_name"} for p in preds)
    assert all(p["score"] > 0.3 and p["category_id"] in (3, 7) and len(p["bbox"]) == 4 for p in preds)
    # image ids number the inputs in sorted order, starting at 1
    assert {(p["image_id"], p["file_name"]) for p in preds} <= {(i, str(p)) for i, p in enumerate(inputs, 1)}
    assert {p["image_id"] for p in preds} == set(range(1, len(inputs) + 1))


def test_infer_skips_unreadable_and_fails_only_when_nothing_worked(tmp_path, capsys):
    images, _, config, ckpt = _setup(tmp_path)
    (images / "img_2.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "pred"
    # overrides after --input are taken as overrides, not inputs
    rc = main(["infer", "--config", str(config), "--weights", str(ckpt), "--input", str(images),
               "--output", str(out), "evaluation.tta=true"])
    err = capsys.readouterr().err
    assert rc == 0 and str(images / "img_2.png") in err
    assert sorted(p.name for p in out.glob("*.png")) == ["img_1.png", "img_3.png"]
    assert {p["image_id"] for p in json.loads((out / "predictions.json").read_text())} <= {1, 3}
    rc = main(["infer", "--config", str(config), "--weights", str(ckpt), "--input", str(images / "img_2.png"),
               "--output", str(tmp_path / "none")])
    assert rc == 1 and "img_2.png" in capsys.readouterr().err
    assert main(["infer", "--weights", str(ckpt), "--input", str(tmp_path / "missing/*.jpg"), "--output", str(out)]) == 1
    assert "no image found" in capsys.readouterr().err


def test_infer_bad_checkpoint(tmp_path, capsys):
    images, _, config, _ = _setup(tmp_path)
    rc = main(["infer", "--config", str(config), "--weights", str(tmp_path / "nope.pth"), "--input", str(images),
               "--output", str(tmp_path / "o")])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err


def test_overrides_go_before_input_or_after_double_dash():
    import argparse

    from retinanet.commands import infer
    p = argparse.ArgumentParser()
    infer.add_arguments(p)
    before = p.parse_args(["--output", "o", "a.b=1", "--input", "x.jpg", "y.jpg"])
    after = p.parse_args(["--output", "o", "--input", "x.jpg", "y.jpg", "--", "a.b=1"])
    for args in (before, after):
        assert args.input == ["x.jpg", "y.jpg"] and args.overrides == ["a.b=1"]
