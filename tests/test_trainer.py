"""End-to-end training on small generated data: loss goes down, resume is exact, DDP matches, bad input."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from retinanet.checkpoint import load_checkpoint
from retinanet.cli import main as cli_main
from retinanet.config_loader import load_config
from retinanet.data.synthetic import make_synthetic_coco
from retinanet.engine.trainer import NonFiniteLossError, Trainer, train

from conftest import free_port, tiny_overrides


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_training_runs_writes_outputs_and_loss_decreases(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(data_root, out, **{"solver.max_iter": 30, "train.checkpoint_period": 10,
                                                              "train.keep_last": 2, "solver.base_lr": 0.02,
                                                              "train.vis_images": 1}))
    metrics = train(cfg)
    assert (out / "config.yaml").is_file() and (out / "model_final.pth").is_file()
    assert len(list((out / "predictions").glob("*.jpg"))) == 1  # the final evaluation draws val images
    assert (out / "checkpoints/last.pth").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("model_*.pth")) == ["model_0000010.pth",
                                                                                "model_0000020.pth"]
    assert not list((out / "checkpoints").glob("*.tmp"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(r["gamma"] == 2.0 for r in records if "loss" in r)
    final = json.loads((out / "metrics.json").read_text())
    assert set(final) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert final["AP"] == metrics["AP"] and final["AP50"] == metrics["AP50"]
    saved = load_config(out / "config.yaml")
    assert saved.model.num_classes == len(saved.model.class_names) > 1
    ckpt = load_checkpoint(out / "model_final.pth")
    assert [c["id"] for c in ckpt["categories"]] == list(saved.model.category_ids)


def test_resume_gives_identical_weights(data_root, tmp_path):
    straight = tmp_path / "straight"
    train(load_config(None, tiny_overrides(data_root, straight, **{"solver.max_iter": 6, "train.eval_period": 0,
                                                                   "data.val.annotations": ""})))
    resumed = tmp_path / "resumed"
    train(load_config(None, tiny_overrides(data_root, resumed, **{"solver.max_iter": 3, "data.val.annotations": ""})))
    # The second run asks for 6 iterations in total and continues from iteration 3.
    train(load_config(None, tiny_overrides(data_root, resumed, **{"solver.max_iter": 6, "data.val.annotations": ""})),
          resume=True)
    a, b = _weights(straight / "model_final.pth"), _weights(resumed / "model_final.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_cleanly_keeping_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    trainer = Trainer(load_config(None, tiny_overrides(data_root, out, **{"train.checkpoint_period": 2})))
    real = trainer.criterion.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        losses = real(*args, **kwargs)
        if calls["n"] == 4:  # iteration index 3, after the checkpoint at 2
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: non-finite loss \(loss_cls=nan"):
        trainer.train()
    last = load_checkpoint(out / "checkpoints/last.pth")
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (out / "model_final.pth").exists()


def test_nan_loss_can_be_skipped(data_root, tmp_path, monkeypatch):
    out = tmp_path / "skip"
    trainer = Trainer(load_config(None, tiny_overrides(data_root, out, **{"train.skip_nonfinite": True,
                                                                          "data.val.annotations": ""})))
    real = trainer.criterion.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        losses = real(*args, **kwargs)
        if calls["n"] == 2:
            losses["loss_box"] = losses["loss_box"] + float("inf")
        return losses

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    trainer.train()
    assert trainer.skipped_steps == 1
    final = load_checkpoint(out / "model_final.pth")["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_bad_images_and_empty_images_are_survived(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=6, num_val=1, seed=1)
    ann = json.loads((root / "annotations/train.json").read_text())
    images = ann["images"]
    (root / "images" / images[0]["file_name"]).write_bytes(b"not an image at all")  # corrupt
    (root / "images" / images[1]["file_name"]).unlink()  # missing
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] != images[2]["id"]]  # empty image
    (root / "annotations/train.json").write_text(json.dumps(ann))
    out = tmp_path / "run"
    trainer = Trainer(load_config(None, tiny_overrides(root, out, **{"data.val.annotations": "",
                                                                     "solver.max_iter": 8})))
    trainer.train()
    assert trainer.skipped_images == 2  # distinct files, however often they were drawn
    assert (out / "model_final.pth").is_file()


def test_cli_rejects_unknown_key_and_wrong_num_classes(data_root, tmp_path, capsys):
    args = ["train", "--config", "configs/demo.yaml", *tiny_overrides(data_root, tmp_path / "x")]
    assert cli_main(args + ["model.num_clases=3"]) == 2
    err = capsys.readouterr().err
    assert "model.num_clases" in err and "model.num_classes" in err
    assert cli_main(args + ["model.num_classes=17"]) == 2
    assert "num_classes" in capsys.readouterr().err


def test_bf16_autocast_step_on_cpu(data_root, tmp_path):
    out = tmp_path / "bf16"
    metrics = train(load_config(None, tiny_overrides(data_root, out, **{"train.amp": "bf16", "solver.max_iter": 2,
                                                                        "data.val.annotations": ""})))
    assert metrics == {}
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rec)


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train(load_config(None, overrides))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=8, num_val=1, seed=3)
    # Every image fits in 128 x 128 after resizing, so each rank pads exactly as the single process does.
    extra = {"solver.ims_per_batch": 4, "solver.max_iter": 3, "data.val.annotations": "",
             "dataloader.aspect_ratio_grouping": False, "input.min_size_train": 96, "input.max_size_train": 128}
    single, multi = tmp_path / "single", tmp_path / "ddp"
    train(load_config(None, tiny_overrides(root, single, **extra)))
    mp.spawn(_ddp_worker, args=(2, free_port(), tiny_overrides(root, multi, **extra)), nprocs=2, join=True)
    a, b = _weights(single / "model_final.pth"), _weights(multi / "model_final.pth")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_overfits_two_images_to_high_ap50(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=2, num_val=0, seed=5, image_size=(128, 160))
    ann = root / "annotations/train.json"
    out = tmp_path / "overfit"
    overrides = tiny_overrides(root, out, **{
        "data.val.annotations": str(ann), "solver.max_iter": 80, "solver.base_lr": 0.01, "solver.warmup_iters": 10,
        "solver.steps": "[66]", "input.flip_prob": 0.0, "input.min_size_train": 128, "input.max_size_train": 160,
        "model.head.norm": "gn", "model.fpn.channels": 64, "solver.clip_grad_norm": 10.0,
        "train.checkpoint_period": 1000, "train.log_period": 20})
    metrics = train(load_config(None, overrides))
    assert metrics["AP50"] > 90.0, metrics
