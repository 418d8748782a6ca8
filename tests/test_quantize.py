"""`retinanet export --int8`: static int8 ONNX calibrated on images, its metadata, the AP check, and
the int8 file running through load_exported, `infer` and `eval` like the fp32 one."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import make_checkpoint, make_coco
from torchvision.ops import box_iou

from retinanet.checkpoint import load_checkpoint, save_checkpoint
from retinanet.cli import main
from retinanet.preprocess import read_image
from retinanet.quantize import calibration_images, predictor_convs
from retinanet.runtime import load_exported


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny random model with its class weights scaled up, so that scores spread over (0, 1) and
    follow the image (a flat random head scores every anchor about alike), exported with --int8."""
    root = tmp_path_factory.mktemp("int8")
    images, ann = make_coco(root, 6)
    config, ckpt = make_checkpoint(root, images, ann)
    state = load_checkpoint(ckpt)
    for k in state["model"]:
        if "cls_logits" in k:
            state["model"][k] = state["model"][k] * 30 - (3 if k.endswith("bias") else 0)
    save_checkpoint(ckpt, state)
    out = root / "export" / "m.int8.onnx"
    base = ["export", "--weights", str(ckpt), "--output", str(out), "--int8", "--calibration-images", "6",
            "--keep-fp32", "/fpn/lateral", "--fp32-predictors"]
    rc, err = _run(base + ["--calibration", str(images)])
    return {"root": root, "images": images, "ckpt": ckpt, "config": config, "int8": out, "rc": rc, "err": err,
            "fp32": root / "export" / "m.fp32.onnx", "base": base}


def test_export_writes_fp32_and_int8_and_prints_both_aps(setup):
    assert setup["rc"] == 0, setup["err"]
    assert setup["fp32"].is_file() and setup["int8"].is_file()
    assert "AP on " in setup["err"] and ": fp32 " in setup["err"] and ", int8 " in setup["err"] and ": ok" in setup["err"]
    assert setup["int8"].stat().st_size < 0.5 * setup["fp32"].stat().st_size  # int8 weights


def test_onnx_speed_script_times_the_files_side_by_side(setup):
    script = Path(__file__).resolve().parents[1] / "scripts" / "onnx_speed.py"
    files = [str(setup["fp32"]), str(setup["int8"])]
    proc = subprocess.run([sys.executable, str(script), *files, "--height", "128", "--width", "128", "--iters", "2",
                           "--warmup", "0", "--threads", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if " ms " in line]
    assert [row[-1] for row in rows] == files and rows[0][2] == "1.00x"
    assert all(float(row[0]) > 0 for row in rows)


def test_metadata_lists_quantized_and_fp32_nodes(setup):
    model, fp32 = onnx.load(str(setup["int8"])), onnx.load(str(setup["fp32"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert "retinanet_config" in meta and "retinanet_categories" in meta
    info = json.loads(meta["retinanet_int8"])
    assert info["calibration"] == "minmax" and info["calibration_images"] == 6
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    heads = predictor_convs(fp32)
    assert len(heads) == 10 and set(heads) <= set(info["fp32_nodes"])
    kept = {c for c in convs if "/fpn/lateral" in c}  # --keep-fp32
    assert kept and set(heads) | kept <= set(info["fp32_nodes"])
    assert set(convs) - set(heads) - kept <= set(info["quantized_nodes"])
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) > len(convs)


def test_int8_detections_close_to_fp32(setup):
    fp32, int8 = load_exported(setup["fp32"]), load_exported(setup["int8"])
    assert int8.categories == fp32.categories and int8.cfg == fp32.cfg
    for path in sorted(setup["images"].iterdir())[:3]:
        image = read_image(path)
        ref, got = fp32.predict(image), int8.predict(image)
        assert ref["scores"][0] > 0.9  # a decisive model: scores spread, the top ones near 1
        iou = box_iou(ref["boxes"][:5], got["boxes"][:10])
        close = (ref["scores"][:5, None] - got["scores"][None, :10]).abs() < 0.05
        same = ref["labels"][:5, None] == got["labels"][None, :10]
        assert ((iou > 0.5) & close & same).any(1).all(), (ref["scores"][:5], got["scores"][:10], iou)


def test_int8_file_runs_in_eval_and_infer(setup, tmp_path):
    rc, err = _run(["eval", "--weights", str(setup["int8"]), "--output", str(tmp_path / "eval")])
    assert rc == 0, err
    assert "AP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    image = sorted(setup["images"].iterdir())[0]
    rc, err = _run(["infer", "--weights", str(setup["int8"]), "--input", str(image), "--output", str(tmp_path / "inf"),
                    "--score-thresh", "0.5"])
    assert rc == 0, err
    assert json.loads((tmp_path / "inf" / "predictions.json").read_text())


def test_guard_refuses_and_keeps_files(setup):
    setup["int8"].unlink()
    # A threshold below zero: any int8 file "drops" too much, so the check must refuse it.
    # Without --fp32-predictors: by default the predictors are int8 too.
    rc, err = _run(setup["base"][:-1] + ["--calibration", str(setup["config"]), "--calibration-images", "2",
                                         "--max-ap-drop", "-1"])
    assert rc == 1
    assert setup["int8"].is_file() and setup["fp32"].is_file()
    info = json.loads({p.key: p.value for p in onnx.load(str(setup["int8"])).metadata_props}["retinanet_int8"])
    assert set(predictor_convs(onnx.load(str(setup["fp32"])))) <= set(info["quantized_nodes"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-ap-drop -1" in errors[0] and "kept" in errors[0]
    assert "--keep-fp32 /backbone/" in errors[0]  # says what to try next


def test_calibration_sources(setup, tmp_path):
    files = calibration_images(setup["images"], 3)
    assert len(files) == 3 and len(set(files)) == 3
    # a config: its data.train images (here none, so data.val's), by image id
    assert calibration_images(setup["config"], 100) == sorted(setup["images"].iterdir(), key=lambda p: int(p.stem[4:]))


@pytest.mark.parametrize("case", ["empty", "missing", "no_data", "no_calibration", "no_val", "escape", "winograd"])
def test_bad_calibration_input_one_line(setup, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text(yaml.safe_dump({"model": {"num_classes": 2}}))
    # escape: a config whose annotations name a file outside the image folder
    coco = json.loads(Path(yaml.safe_load(setup["config"].read_text())["data"]["val"]["annotations"]).read_text())
    coco["images"][0]["file_name"] = "../../outside.jpg"
    (tmp_path / "escape.json").write_text(json.dumps(coco))
    escape = tmp_path / "escape.yaml"
    escape.write_text(yaml.safe_dump({"data": {"val": {"images": str(setup["images"]),
                                                       "annotations": str(tmp_path / "escape.json")}}}))
    # no_val: a folder calibrates, and the model's own val set is unset: nothing to score the AP on
    source = {"empty": [str(empty)], "missing": [str(tmp_path / "nowhere")], "no_data": [str(no_data)],
              "no_calibration": [], "no_val": [str(setup["images"]), "data.val.annotations="],
              "escape": [str(escape)], "winograd": [str(setup["images"]), "--winograd"]}[case]
    out = tmp_path / "bad.int8.onnx"
    rc, err = _run(["export", "--weights", str(setup["ckpt"]), "--output", str(out), "--int8"]
                   + (["--calibration"] + source if source else []))
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert {"empty": "no image files", "missing": "nowhere", "no_data": "data.train",
            "no_calibration": "--calibration", "no_val": "--no-verify", "escape": "outside the image root",
            "winograd": "drop --winograd"}[case] in lines[0]
    assert not out.exists() and not (tmp_path / "bad.fp32.onnx").exists()
