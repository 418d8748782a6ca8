"""The evaluation report: confusion matrix on a hand-made case, a self-contained HTML page, the PR data source."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.evaluation import compute_metrics, load_coco
from retinanet.evaluation.confusion import confusion_matrix, match_image, normalize_rows
from retinanet.evaluation.report import write_report


def test_confusion_matrix_hand_made():
    # Image 1: a cat found as cat, a dog found as cat (confusion), a bird missed, one false-positive dog,
    # and a low-score dog on the bird that the score threshold drops (else the bird would be confused).
    gt1 = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32),
           "labels": np.array([0, 1, 2])}
    det1 = {"boxes": np.array([[0, 0, 10, 10], [21, 21, 30, 30], [70, 70, 80, 80], [40, 40, 50, 50]], np.float32),
            "scores": np.array([0.9, 0.8, 0.7, 0.1]), "labels": np.array([0, 0, 1, 1])}
    # Image 2: two detections on one cat: the higher score matches, the other is a false positive.
    gt2 = {"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([0])}
    det2 = {"boxes": np.array([[0, 0, 10, 9], [0, 0, 10, 10]], np.float32), "scores": np.array([0.5, 0.95]),
            "labels": np.array([0, 0])}
    cm, per_image = confusion_matrix([gt1, gt2], [det1, det2], num_classes=3, iou_thresh=0.5, score_thresh=0.3)
    expected = np.array([[2, 0, 0, 0],   # cat: found twice as cat
                         [1, 0, 0, 0],   # dog: found as cat
                         [0, 0, 0, 1],   # bird: missed
                         [1, 1, 0, 0]])  # background: a false cat (duplicate), a false dog
    assert cm.tolist() == expected.tolist()
    assert per_image[0] == {"tp": 1, "fp": 2, "fn": 2, "confused": 1, "f1": pytest.approx(1 / 3)}
    assert per_image[1]["tp"] == 1 and per_image[1]["fp"] == 1
    norm = normalize_rows(cm)
    assert np.allclose(norm[:3].sum(1), 1) and norm[3].tolist() == [0.5, 0.5, 0, 0]


def test_greedy_matching_by_score():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    dets = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 8]])
    assert match_image(gt, dets, torch.tensor([0.2, 0.9])).tolist() == [-1, 0]  # score wins, not IoU
    assert match_image(gt, dets[:1] + 6, torch.tensor([1.0])).tolist() == [-1]  # IoU 0.25 < 0.5


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    """A 3-image, 2-class ground truth with images on disk and results: some right, one wrong, one missed."""
    root = tmp_path_factory.mktemp("rep")
    (root / "images").mkdir()
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(1, 4):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 64, "width": 80})
        anns.append({"id": 2 * i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0})
        anns.append({"id": 2 * i + 1, "image_id": i, "category_id": 4, "bbox": [40, 30, 30, 25], "area": 750,
                     "iscrowd": 0})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 4, "name": "dog"}]}
    results = [{"image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9} for i in (1, 2, 3)]
    results += [{"image_id": 1, "category_id": 4, "bbox": [40, 30, 30, 25], "score": 0.8},
                {"image_id": 2, "category_id": 1, "bbox": [40, 30, 30, 25], "score": 0.7}]  # image 3's dog missed
    return root, load_coco(gt), results


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_report_is_self_contained_and_uses_cocoeval(small_eval, tmp_path, backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    root, coco, results = small_eval
    metrics, ev = compute_metrics(coco, results, backend, return_eval=True)
    assert np.asarray(ev.eval["precision"]).shape == (10, 101, 2, 4, 3)  # [T, R, K, A, M], both backends
    page = write_report(tmp_path, coco, results, ev, root / "images", metrics, None, None)
    for name in ("pr_curves.png", "confusion_matrix.png", "per_class.csv", "confusion_matrix.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = page.read_text()
    parser = _Tags()
    parser.feed(text)
    parser.close()
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 2 + 3  # two plots, three gallery images
    assert all(a["src"].startswith("data:image/") for a in imgs)
    assert not any(str(a.get(k, "")).startswith(("http://", "https://", "//")) for _, a in parser.tags
                   for k in ("src", "href"))
    assert "http://" not in text and "https://" not in text
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert [(r["name"], int(r["gt"]), int(r["detections"])) for r in rows] == [("cat", 3, 4), ("dog", 3, 1)]
    assert float(rows[0]["AP"]) == pytest.approx(metrics["per_category"]["cat"])  # the same COCOeval numbers
    cm = json.loads((tmp_path / "confusion_matrix.json").read_text())["counts"]
    assert cm == [[3, 0, 0], [1, 1, 1], [0, 0, 0]]
    # Worst first: image 2 (dog found as cat: F1 1/2), image 3 (dog missed: F1 2/3), image 1 (perfect).
    captions = [a["alt"] for a in imgs[2:]]
    assert captions[0].startswith("2.png") and captions[1].startswith("3.png") and captions[2].startswith("1.png")


def test_report_without_detections(small_eval, tmp_path):
    root, coco, _ = small_eval
    metrics, ev = compute_metrics(coco, [], return_eval=True)
    assert ev is None
    page = write_report(tmp_path, coco, [], ev, root / "images", metrics)
    assert page.is_file() and not (tmp_path / "pr_curves.png").exists()
    counts = json.loads((tmp_path / "confusion_matrix.json").read_text())["counts"]
    assert counts == [[0, 0, 3], [0, 0, 3], [0, 0, 0]]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_a_browser(small_eval, tmp_path):
    root, coco, results = small_eval
    metrics, ev = compute_metrics(coco, results, return_eval=True)
    page = write_report(tmp_path, coco, results, ev, root / "images", metrics)
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.resolve().as_uri()], check=True, timeout=120,
                   capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.std() > 10  # a blank (all-white) page has no variance


def test_eval_command_writes_the_report(tmp_path):
    from conftest import make_checkpoint, make_coco

    from retinanet.cli import main
    images, ann = make_coco(tmp_path / "data", 2)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(config), "--weights", str(ckpt), "--output", str(out),
                 "evaluation.report_score_thresh=0.0"]) == 0
    for name in ("metrics.json", "report.html", "confusion_matrix.png", "per_class.csv"):
        assert (out / name).is_file(), name
    assert "data:image/jpeg;base64," in (out / "report.html").read_text()  # the gallery
