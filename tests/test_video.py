"""Video input: a short generated clip -> annotated mp4 + JSON lines; mixed folders; unreadable videos."""
from __future__ import annotations

import json

import cv2
import numpy as np
from conftest import make_checkpoint, make_coco

from retinanet.cli import main
from retinanet.commands.infer import collect_inputs
from retinanet.video import VideoError, read_frames

import pytest


def _clip(path, frames: int = 5, size=(96, 128)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((*size, 3), 40, np.uint8)
        cv2.rectangle(img, (10 + 5 * i, 20), (60 + 5 * i, 70), (0, 200, 255), -1)  # a moving box
        writer.write(img)
    writer.release()


def test_video_and_images_in_one_folder(tmp_path, capsys):
    images, ann = make_coco(tmp_path / "data", 2)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    _clip(images / "clip.mp4")
    paths, _ = collect_inputs([str(images)])
    assert "clip.mp4" in [p.name for p in paths]
    out = tmp_path / "pred"
    rc = main(["infer", "--config", str(config), "--weights", str(ckpt), "--input", str(images), "--output", str(out),
               "--score-thresh", "0.0"])
    assert rc == 0
    frames, fps, count = read_frames(out / "clip.mp4")
    frames = list(frames)
    assert len(frames) == 5 and frames[0].shape == (96, 128, 3) and fps == pytest.approx(10.0)
    lines = [json.loads(x) for x in (out / "clip.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(5)) and lines[1]["time_s"] == pytest.approx(0.1)
    assert all(set(d) == {"bbox", "score", "category_id", "name"} for x in lines for d in x["detections"])
    assert sum(len(x["detections"]) for x in lines) > 0  # score threshold 0: the random model finds boxes
    assert (out / "img_1.png").is_file() and (out / "predictions.json").is_file()  # images still handled


def test_unreadable_video_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="cannot read video .*broken.mp4"):
        read_frames(bad)
    images, ann = make_coco(tmp_path / "data", 1)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    rc = main(["infer", "--config", str(config), "--weights", str(ckpt), "--input", str(bad), "--output",
               str(tmp_path / "o")])
    assert rc == 1  # nothing could be processed
    assert "cannot read video" in capsys.readouterr().err
