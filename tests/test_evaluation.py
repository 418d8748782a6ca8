"""COCO evaluator (against pycocotools directly), dataset inference and `retinanet eval` end to end."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from retinanet.cli import main
from retinanet.detector import Detector
from retinanet.evaluation import (METRIC_NAMES, COCOEvaluator, compute_metrics, evaluate_results_file,
                                  format_metrics_table, inference_on_coco, load_coco, to_coco_results)

from conftest import CATEGORIES, make_checkpoint, make_coco


def random_gt(n_images: int = 12, seed: int = 0) -> dict:
    """A COCO dataset dict (no image files) with small, medium and large boxes of two categories."""
    rng = np.random.RandomState(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 240})
        for _ in range(rng.randint(1, 5)):
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.choice([3, 7])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def perturbed_results(gt: dict, seed: int = 1) -> list[dict]:
    """GT boxes jittered, some with the wrong class, some missed, plus false positives; random scores."""
    rng = np.random.RandomState(seed)
    out = []
    for a in gt["annotations"]:
        if rng.rand() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        box = [x + rng.normal(0, 0.08 * w), y + rng.normal(0, 0.08 * h), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
        cat = a["category_id"] if rng.rand() > 0.1 else 10 - a["category_id"]
        out.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.rand())})
    for im in gt["images"]:
        for _ in range(2):
            out.append({"image_id": im["id"], "category_id": int(rng.choice([3, 7])),
                        "bbox": [*rng.uniform(0, 200, 2), *rng.uniform(5, 100, 2)], "score": float(rng.rand() * 0.5)})
    return out


def _direct_pycocotools(gt: dict, results: list[dict]) -> np.ndarray:
    coco = load_coco(copy.deepcopy(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_ground_truth_as_detections_scores_100(backend):
    gt = random_gt()
    evaluator = COCOEvaluator(copy.deepcopy(gt), backend)
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        evaluator.process([im["id"]], [{"boxes": boxes, "scores": torch.ones(len(anns)),
                                        "labels": torch.tensor([a["category_id"] for a in anns])}])
    metrics = evaluator.evaluate()
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[k] == pytest.approx(100.0), k
    assert metrics["per_category"] == {"square": pytest.approx(100.0), "bar": pytest.approx(100.0)}


def test_perturbed_results_same_with_both_backends_and_direct_pycocotools(tmp_path):
    gt, results = random_gt(), perturbed_results(random_gt())
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    direct = _direct_pycocotools(gt, results) * 100
    assert 10 < direct[0] < 90  # a non-trivial score, so the comparison means something
    by_backend = {b: evaluate_results_file(tmp_path / "res.json", tmp_path / "gt.json", b)
                  for b in ("pycocotools", "faster_coco_eval")}
    for metrics in by_backend.values():
        np.testing.assert_allclose([metrics[k] for k in METRIC_NAMES], direct[:9], atol=1e-6)
    for name in ("square", "bar"):
        assert by_backend["pycocotools"]["per_category"][name] == pytest.approx(
            by_backend["faster_coco_eval"]["per_category"][name], abs=1e-6)
    # Per-category APs of a 2-class set average to AP.
    assert np.mean(list(by_backend["pycocotools"]["per_category"].values())) == pytest.approx(direct[0], abs=1e-6)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_zero_detections_score_as_cocoeval_scores_a_miss(backend, tmp_path):
    """Nothing detected: 0 where ground truth exists, NaN (null) where none does (here: size ranges that
    images 1-2 lack), exactly as COCOeval scores one detection that matches nothing."""
    gt = random_gt(4)
    evaluator = COCOEvaluator(gt, backend)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    evaluator.process([1, 2], [empty, empty])
    metrics = evaluator.evaluate()
    miss = [{"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 0.5, 0.5], "score": 0.01}]
    oracle = compute_metrics(load_coco(copy.deepcopy(gt)), miss, backend, image_ids=[1, 2])
    assert {0.0} <= {metrics[k] for k in METRIC_NAMES} | set(metrics["per_category"].values())
    for k in METRIC_NAMES:
        assert metrics[k] == oracle[k] or (math.isnan(metrics[k]) and math.isnan(oracle[k])), k
    (tmp_path / "res.json").write_text("[]")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert evaluate_results_file(tmp_path / "res.json", tmp_path / "gt.json", backend)["AP"] == 0.0


def test_only_processed_images_are_scored():
    gt = random_gt(6)
    evaluator = COCOEvaluator(gt)
    anns = [a for a in gt["annotations"] if a["image_id"] == 2]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    evaluator.process([2], [{"boxes": boxes, "scores": torch.ones(len(anns)),
                             "labels": torch.tensor([a["category_id"] for a in anns])}])
    assert evaluator.evaluate()["AP50"] == pytest.approx(100.0)
    evaluator.reset()
    assert evaluator.results == []


def test_to_coco_results_round_trip():
    det = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0]]), "scores": torch.tensor([0.75]), "labels": torch.tensor([7])}
    assert to_coco_results(4, det) == [{"image_id": 4, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.75}]


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="evaluation.backend"):
        COCOEvaluator(random_gt(2), "detectron")
    with pytest.raises(ValueError, match=r"not in the annotations: \[99\]"):
        compute_metrics(load_coco(random_gt(2)), [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1}])
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1]}]))
    with pytest.raises(ValueError, match="entry 0"):
        evaluate_results_file(tmp_path / "bad.json", random_gt(2))
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        evaluate_results_file(tmp_path / "nothere.json", random_gt(2))


def test_format_metrics_table():
    table = format_metrics_table({**{k: 12.345 for k in METRIC_NAMES}, "APs": float("nan"),
                                  "per_category": {"square": 50.0, "bar": float("nan")}})
    lines = table.splitlines()
    assert lines[0].split() == ["AP", "|", "AP50", "|", "AP75", "|", "APs", "|", "APm", "|", "APl", "|", "AR1", "|",
                                "AR10", "|", "AR100"]
    assert "12.35" in lines[2] and "nan" in lines[2]
    assert "square" in table and "50.00" in table and "Per-category AP" in table


def _ddp_worker(rank: int, gt: dict, port: int, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    evaluator = COCOEvaluator(gt)
    for im in gt["images"][rank::2] + gt["images"][:1]:  # image 1 is run twice, as a padded sampler would
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        evaluator.process([im["id"]], [{"boxes": boxes, "scores": torch.ones(len(anns)),
                                        "labels": torch.tensor([a["category_id"] for a in anns])}])
    queue.put((rank, evaluator.evaluate()))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: 10-30 s on 2 shared cores
def test_gathers_across_ddp_ranks():
    import torch.multiprocessing as mp

    from conftest import free_port
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    gt = random_gt(6)
    procs = [ctx.Process(target=_ddp_worker, args=(r, gt, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results[1] == {}
    assert results[0]["AP"] == pytest.approx(100.0)  # every image, each counted once


def test_inference_on_coco_maps_category_ids_and_skips_unreadable(tmp_path, caplog):
    images, ann = make_coco(tmp_path, 3)
    (images / "img_2.png").write_bytes(b"not a png")
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    detector = Detector.from_config(config, ckpt, device="cpu", overrides=["model.num_classes=2"])
    results, evaluator = inference_on_coco(detector, images, ann, batch_size=2, progress=False)
    assert "img_2.png" in caplog.text
    assert results and {r["image_id"] for r in results} == {1, 3}
    assert {r["category_id"] for r in results} == {3, 7}  # dataset ids, not contiguous labels 0/1
    metrics = evaluator.evaluate()
    assert set(METRIC_NAMES) <= set(metrics) and 0 <= metrics["AP"] <= 100
    shard, _ = inference_on_coco(detector, images, ann, progress=False, rank=1, world_size=2)
    assert {r["image_id"] for r in shard} <= {2}  # rank 1 of 2 gets image 2 only (unreadable here)


def test_eval_command_end_to_end(tmp_path, capsys):
    images, ann = make_coco(tmp_path, 3)
    config, ckpt = make_checkpoint(tmp_path, images, ann)
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(config), "--weights", str(ckpt), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "square" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_NAMES) | {"per_category"} == set(metrics) and set(metrics["per_category"]) == {"square", "bar"}
    dets = json.loads((out / "detections.json").read_text())
    assert dets and all(set(d) == {"image_id", "category_id", "bbox", "score"} and len(d["bbox"]) == 4 for d in dets)
    assert {d["image_id"] for d in dets} == {1, 2, 3} and {d["category_id"] for d in dets} <= {3, 7}
    # The written results file scores the same on its own, with the other backend too.
    rc = main(["eval", "--results", str(out / "detections.json"), "--annotations", str(ann),
               "--output", str(tmp_path / "again"), "evaluation.backend=faster_coco_eval"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["AP"] == pytest.approx(metrics["AP"], abs=1e-3)
    # TTA through a key=value override.
    rc = main(["eval", "--config", str(config), "--weights", str(ckpt), "--output", str(tmp_path / "tta"),
               "evaluation.tta=true", "evaluation.tta_min_sizes=[96]"])
    assert rc == 0 and json.loads((tmp_path / "tta" / "detections.json").read_text())


def test_eval_command_bad_inputs(tmp_path, capsys):
    images, ann = make_coco(tmp_path, 1)
    config, _ = make_checkpoint(tmp_path, images, ann)
    assert main(["eval", "--config", str(config), "--weights", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "missing.pth" in err
    _, three = make_checkpoint(tmp_path, images, ann, CATEGORIES + [{"id": 9, "name": "x"}])
    assert main(["eval", "--config", str(config), "--weights", str(three)]) == 2
    assert "another number of classes" in capsys.readouterr().err
    assert main(["eval", "--weights", str(three), "data.val.images=", "data.val.annotations="]) == 2
    assert "data.val.images" in capsys.readouterr().err
    assert main(["eval", "--results", str(tmp_path / "none.json"), "--annotations", str(ann)]) == 2
    assert "none.json" in capsys.readouterr().err
