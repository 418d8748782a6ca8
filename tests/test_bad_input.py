"""Bad input that must not fool the numbers: malformed ground truth and results, non-finite models,
unreadable checkpoints, failed writes, bad CLI values. Each case: a one-line error with the expected
words and no traceback, a counted warning, or files left unchanged. Training cases: test_bad_input_train.py."""
from __future__ import annotations

import copy
import errno
import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.checkpoint import CheckpointError, NonFiniteWeightsError, load_checkpoint, save_checkpoint
from retinanet.cli import main
from retinanet.jsonio import dumps_finite
from retinanet.outputs import DenseOutputs
from retinanet.postprocess import PostProcessor
from retinanet.box_coder import BoxCoder
from conftest import assert_clean_error, checksums, make_checkpoint, make_coco

CATS = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]


def gt_dict() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0}]
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}


def perfect_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"]]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def eval_results(tmp_path, capsys, gt, results) -> tuple[int, str]:
    (tmp_path / "gt.json").write_text(json.dumps(gt))  # json writes NaN as a bare NaN token, as the tester's files had
    (tmp_path / "res.json").write_text(json.dumps(results))
    rc, _, err = run_cli(capsys, "eval", "--results", tmp_path / "res.json", "--annotations", tmp_path / "gt.json")
    return rc, err


# -- ground truth used for AP: a malformed entry is an error -------------------------------------

def _set(path, value):
    def edit(gt):
        *keys, last = path
        target = gt
        for k in keys:
            target = target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


GT_CASES = {
    "duplicate_image_id": (_set(["images", 1, "id"], 1), ["gt.json", "images[1] (id 1)", "duplicate image id"]),
    "nan_width": (_set(["annotations", 0, "bbox", 2], math.nan), ["annotations[0] (id 1)", "non-finite"]),
    "negative_width": (_set(["annotations", 1, "bbox", 2], -5), ["annotations[1] (id 2)", ">= 0"]),
    "string_in_bbox": (_set(["annotations", 0, "bbox", 1], "10"), ["annotations[0]", "bbox must be 4 numbers"]),
    "three_number_bbox": (_set(["annotations", 2, "bbox"], [1, 2, 3]), ["annotations[2] (id 3)", "bbox must be 4"]),
    "unknown_category": (_set(["annotations", 0, "category_id"], 9), ["category_id 9 is not in 'categories'"]),
    "unknown_image": (_set(["annotations", 0, "image_id"], 5), ["image_id 5 is not in 'images'"]),
    "missing_categories": (_set(["categories"], KeyError), ["missing top-level key 'categories'"]),
    "duplicate_annotation_id": (_set(["annotations", 1, "id"], 1), ["annotations[1] (id 1)", "duplicate annotation id"]),
    "missing_annotation_id": (_set(["annotations", 0, "id"], KeyError), ["annotations[0]", "missing key 'id'"]),
    "nan_area": (_set(["annotations", 0, "area"], math.nan), ["invalid 'area'"]),
}


@pytest.mark.parametrize("case", sorted(GT_CASES))
def test_malformed_ground_truth_is_an_error(tmp_path, capsys, case):
    gt = gt_dict()
    results = perfect_results(gt)
    edit, words = GT_CASES[case]
    edit(gt)
    rc, err = eval_results(tmp_path, capsys, gt, results)
    assert_clean_error(rc, err, "gt.json", *words)


def test_a_files_problems_are_reported_together(tmp_path, capsys):
    gt = gt_dict()
    gt["annotations"] = [dict(gt["annotations"][0], id=i, bbox=[1, 1, math.nan, 1]) for i in range(1, 26)]
    rc, err = eval_results(tmp_path, capsys, gt, [])
    assert_clean_error(rc, err, "25 problems", "(id 1)", "(id 20)", "... and 5 more")
    assert "(id 21)" not in err


def test_missing_area_is_computed_and_said(tmp_path, capsys, caplog):
    gt = gt_dict()
    results = perfect_results(gt)
    for a in gt["annotations"]:
        del a["area"]
    with caplog.at_level(logging.WARNING):
        rc, err = eval_results(tmp_path, capsys, gt, results)
    assert rc == 0, err
    assert "3 annotation(s) have no 'area'" in caplog.text


def test_zero_size_ground_truth_is_kept_and_counted(tmp_path, capsys, caplog):
    gt = gt_dict()
    gt["annotations"][2]["bbox"] = [5, 5, 0, 40]
    with caplog.at_level(logging.WARNING):
        rc, err = eval_results(tmp_path, capsys, gt, perfect_results(gt_dict()))
    assert rc == 0, err
    assert "1 ground-truth box(es) of zero width or height kept" in caplog.text


# -- results files: non-finite, malformed or unknown entries are errors -----------------------------

RESULT_CASES = {
    "nan_box": (lambda r: r[0]["bbox"].__setitem__(0, math.nan), ["entry 0", "non-finite"]),
    "inf_box": (lambda r: r[1]["bbox"].__setitem__(3, math.inf), ["entry 1", "non-finite"]),
    "negative_size": (lambda r: r[1]["bbox"].__setitem__(2, -3), ["entry 1", ">= 0"]),
    "nan_score": (lambda r: r[2].__setitem__("score", math.nan), ["entry 2", "score is not finite"]),
    "string_score": (lambda r: r[0].__setitem__("score", "0.9"), ["entry 0", "invalid 'score'"]),
    "no_score": (lambda r: r[0].pop("score"), ["entry 0", "missing key 'score'"]),
    "unknown_category": (lambda r: r[0].__setitem__("category_id", 99), ["category_id 99 is not in the annotations"]),
    "unknown_image": (lambda r: r[0].__setitem__("image_id", 42), ["image_id 42 is not in the annotations"]),
    "three_number_bbox": (lambda r: r[0].__setitem__("bbox", [1, 2, 3]), ["entry 0", "invalid 'bbox'"]),
    "not_a_list": (lambda r: r.append("x"), ["entry 3", "must be an object"]),
}


@pytest.mark.parametrize("case", sorted(RESULT_CASES))
def test_malformed_results_are_an_error(tmp_path, capsys, case):
    gt = gt_dict()
    results = perfect_results(gt)
    edit, words = RESULT_CASES[case]
    edit(results)
    rc, err = eval_results(tmp_path, capsys, gt, results)
    assert_clean_error(rc, err, "res.json", *words)


def test_valid_results_score_and_metrics_json_is_strict(tmp_path, capsys):
    gt = gt_dict()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(perfect_results(gt)))
    rc, out, err = run_cli(capsys, "eval", "--results", tmp_path / "res.json", "--annotations", tmp_path / "gt.json",
                           "--output", tmp_path / "m")
    assert rc == 0, err
    # No large objects in this GT: APl is undefined and must be written as null, not NaN.
    metrics = json.loads((tmp_path / "m/metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["APl"] is None


def test_dumps_finite_writes_null():
    text = dumps_finite({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads(text, parse_constant=pytest.fail) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


# -- evaluation with a model: file names outside the image root -----------------------------------

def test_file_name_outside_image_root_is_not_opened(tmp_path, capsys, monkeypatch):
    images, ann = make_coco(tmp_path / "data", n_images=2)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    gt = json.loads(ann.read_text())
    gt["images"][1]["file_name"] = "../../secret.png"
    (tmp_path / "bad.json").write_text(json.dumps(gt))
    opened = []
    import retinanet.evaluation.inference as inference
    monkeypatch.setattr(inference, "read_image", lambda p: opened.append(p))
    rc, _, err = run_cli(capsys, "eval", "--config", config, "--weights", ckpt, "--output", tmp_path / "e",
                         f"data.val.annotations={tmp_path / 'bad.json'}")
    assert_clean_error(rc, err, "bad.json", "images[1] (id 2)", "outside the image root")
    assert opened == []


# -- non-finite models are never written, loaded or scored ----------------------------------------

@pytest.mark.parametrize("tensor", ["weight", "running_var"])
def test_non_finite_state_is_not_saved(tmp_path, tensor):
    bn = torch.nn.BatchNorm2d(2)
    getattr(bn, tensor).data[0] = math.nan
    with pytest.raises(NonFiniteWeightsError, match=rf"1 tensor\(s\) hold NaN or Inf: {tensor}"):
        save_checkpoint(tmp_path / "m.pth", {"model": bn.state_dict()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_non_finite_checkpoint_is_refused_by_eval_and_infer(tmp_path, capsys, command):
    images, ann = make_coco(tmp_path / "data", n_images=1)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    data = torch.load(ckpt, weights_only=True)
    data["model"]["head.cls_logits.bias"][:] = math.nan  # written behind save_checkpoint's back
    torch.save(data, tmp_path / "nan.pth")
    extra = ["--input", images, "--output", tmp_path / "o"] if command == "infer" else ["--output", tmp_path / "o"]
    rc, _, err = run_cli(capsys, command, "--config", config, "--weights", tmp_path / "nan.pth", *extra)
    assert_clean_error(rc, err, "nan.pth", "head.cls_logits.bias", "NaN or Inf")
    assert not (tmp_path / "o").exists()


def test_postprocess_drops_non_finite_candidates(caplog):
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 60, 60], [0, 0, 40, 40]])
    logits = torch.full((1, 4, 2), 2.0)
    deltas = torch.zeros(1, 4, 4)
    logits[0, 0, 1] = math.nan  # one NaN score
    deltas[0, 1] = math.nan  # a NaN box for both classes of anchor 1
    post = PostProcessor(BoxCoder(), score_thresh=0.05, topk_candidates=10)
    with caplog.at_level(logging.WARNING, logger="retinanet.postprocess"):
        boxes, scores, labels, keep = post.candidates(DenseOutputs(logits, deltas, anchors, [4]), [(64, 64)])
        dets = post(DenseOutputs(logits, deltas, anchors, [4]), [(64, 64)])
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert int(keep.sum()) == 8 - 3
    assert "dropped 3 candidate detection(s)" in caplog.text
    assert torch.isfinite(dets[0]["boxes"]).all() and len(dets[0]["boxes"]) > 0


# -- checkpoints that are not ours, and writes that fail --------------------------------------------

def test_random_bytes_are_not_a_checkpoint(tmp_path):
    (tmp_path / "rnd.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "rnd.pth")
    assert "not a PyTorch checkpoint" in str(e.value) and "could run code" not in str(e.value)


class Custom:
    pass


def test_custom_class_pickle_could_run_code(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Custom()}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c.pth")
    assert "contains objects that could run code" in str(e.value) and "Custom" in str(e.value)


@pytest.mark.parametrize("fault", ["enospc_oserror", "enospc_zip_writer", "permission"])
def test_failed_checkpoint_write_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch, fault):
    import retinanet.checkpoint as ck

    def fail_save(obj, f):
        f.write(b"partial")
        if fault == "enospc_oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    if fault == "permission":
        def deny(**kw):
            raise PermissionError(errno.EACCES, "Permission denied", kw["dir"])
        monkeypatch.setattr("tempfile.mkstemp", deny)  # the folder cannot take the temp file
    else:
        monkeypatch.setattr(ck.torch, "save", fail_save)
        monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))  # the disk is full
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path / "m.pth", {"model": {"w": torch.zeros(1)}})
    expected = "Permission denied" if fault == "permission" else "no space left on device"
    assert "m.pth" in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_os_error_is_one_line_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    gt = gt_dict()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(perfect_results(gt)))
    (tmp_path / "taken").write_text("a file where the output folder should go")
    argv = ["eval", "--results", tmp_path / "res.json", "--annotations", tmp_path / "gt.json", "--output",
            tmp_path / "taken"]
    rc, _, err = run_cli(capsys, *argv)
    assert_clean_error(rc, err, str(tmp_path / "taken"), "File exists")
    monkeypatch.setenv("RETINANET_DEBUG", "1")
    with pytest.raises(FileExistsError):
        main([str(a) for a in argv])


# -- CLI values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["infer", "--batch-size", "0"], ["infer", "--batch-size", "-1"],
                                  ["eval", "--batch-size", "0"], ["eval", "--max-images", "-1"]])
def test_non_positive_counts_are_refused_by_argparse(capsys, argv):
    extra = ["--input", "x", "--output", "y"] if argv[0] == "infer" else []
    with pytest.raises(SystemExit) as e:
        main(argv + extra)
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_infer_refuses_output_folder_holding_inputs(tmp_path, capsys):
    images, ann = make_coco(tmp_path / "data", n_images=2)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    before = checksums(images)
    rc, _, err = run_cli(capsys, "infer", "--config", config, "--weights", ckpt, "--input", images / "img_1.png",
                         "--output", images)
    assert_clean_error(rc, err, "holds input images")
    assert checksums(images) == before


# -- the real-path cases: outputs over inputs, undefined AP, corrupt exported files, link loops --------

def _yolo_inputs(root: Path) -> tuple[Path, Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(images / f"{name}.jpg")
        (labels / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (images / "notes").write_text("a file without a suffix")
    (root / "classes.txt").write_text("cat\n")
    return images, labels, root / "classes.txt"


@pytest.mark.parametrize("target", ["images/a.jpg", "images/notes", "labels/a.txt"])
def test_convert_refuses_to_write_over_an_input(tmp_path, capsys, target):
    images, labels, classes = _yolo_inputs(tmp_path)
    before = checksums(tmp_path)
    rc, _, err = run_cli(capsys, "convert", "--format", "yolo", "--labels", labels, "--images", images,
                         "--classes", classes, "--output", tmp_path / target)
    assert_clean_error(rc, err, target.split("/")[1])
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("score_thresh", ["0.0", "1.0"])  # something detected, nothing detected
def test_eval_without_ground_truth_is_null_either_way(tmp_path, capsys, caplog, score_thresh):
    images, ann = make_coco(tmp_path / "data", n_images=2)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    gt = json.loads(ann.read_text())
    gt["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(gt))
    rc, _, err = run_cli(capsys, "eval", "--config", config, "--weights", ckpt, "--output", tmp_path / "e",
                         f"data.val.annotations={tmp_path / 'empty.json'}", f"model.test.score_thresh={score_thresh}")
    assert rc == 0, err
    detections = json.loads((tmp_path / "e" / "detections.json").read_text())
    assert (len(detections) > 0) == (score_thresh == "0.0")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert all(metrics[k] is None for k in ("AP", "AP50", "APs", "AR100")), metrics
    assert set(metrics["per_category"].values()) == {None}
    assert "AP is undefined" in caplog.text


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_corrupt_onnx_file_is_one_line(tmp_path, capsys, command):
    images, ann = make_coco(tmp_path / "data", n_images=1)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    extra = (["--input", images, "--output", tmp_path / "o"] if command == "infer"
             else ["--output", tmp_path / "o", f"data.val.images={images}", f"data.val.annotations={ann}"])
    rc, _, err = run_cli(capsys, command, "--weights", tmp_path / "model.onnx", *extra)
    assert_clean_error(rc, err, "model.onnx", "not a readable ONNX model")


def test_infer_glob_processes_each_real_file_once_through_link_loops(tmp_path, capsys):
    images, ann = make_coco(tmp_path / "data", n_images=3)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    (images / "sub").mkdir()
    (images / "img_3.png").rename(images / "sub" / "img_3.png")
    (images / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop
    (images / "sub" / "again.png").symlink_to(images / "img_1.png")  # a second name of one file
    rc, _, err = run_cli(capsys, "infer", "--config", config, "--weights", ckpt, "--input", f"{images}/**/*.png",
                         "--output", tmp_path / "o")
    assert rc == 0, err
    names = sorted(Path(p["file_name"]).name for p in json.loads((tmp_path / "o" / "predictions.json").read_text()))
    assert "3 input(s)" in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["img_1.png", "img_2.png", "img_3.png"]
    assert set(names) <= {"img_1.png", "img_2.png", "img_3.png"}
