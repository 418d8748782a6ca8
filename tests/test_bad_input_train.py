"""Training runs that must not lose work or start on bad data: a folder holding a run, --resume that
would rewind, stale temp files, unreadable image folders, bad val files, non-finite models, bad
config values. Runs go through ``retinanet.cli.main`` where the outcome is an exit status."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error, checksums, tiny_overrides
from retinanet.checkpoint import save_checkpoint
from retinanet.cli import main
from retinanet.config_loader import load_config
from retinanet.engine.trainer import NonFiniteLossError, Trainer


def train_cli(capsys, root: Path, out: Path, *flags: str, **extra) -> tuple[int, str]:
    rc = main(["train", "--config", "configs/demo.yaml", *flags, *tiny_overrides(root, out, **extra)])
    return rc, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/demo.yaml


# -- a folder that holds a run ---------------------------------------------------------------------

@pytest.mark.parametrize("marker", ["checkpoints/last.pth", "model_final.pth", "metrics.jsonl",
                                    "checkpoints/model_0000003.pth"])
def test_train_refuses_a_folder_holding_a_run(tmp_path, capsys, data_root, marker):
    out = tmp_path / "run"
    (out / marker).parent.mkdir(parents=True, exist_ok=True)
    (out / marker).write_bytes(b"the previous run's " + marker.encode())
    before = checksums(out)
    rc, err = train_cli(capsys, data_root, out)
    assert_clean_error(rc, err, str(out), "already holds a training run", "--resume", "--overwrite")
    after = checksums(out)
    assert after.pop("train.lock") and after == before  # only the lock (released, never stale) was added


@pytest.mark.slow
def test_overwrite_starts_over_without_deleting_the_old_runs_checkpoints(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    old = {f"checkpoints/model_{i:07d}.pth": b"old run %d" % i for i in (1, 3, 100)}
    for name, data in old.items():
        (out / name).write_bytes(data)
    (out / "metrics.jsonl").write_text('{"iteration": 100, "loss": 0.5}\n')
    # This run writes model_0000002 and model_0000004, and keeps only the last of its own.
    rc, err = train_cli(capsys, data_root, out, "--overwrite", **{"solver.max_iter": 5, "train.checkpoint_period": 2,
                                                                   "train.keep_last": 1, "data.val.annotations": ""})
    assert rc == 0, err
    for name, data in old.items():  # another run's files: never deleted by this run's pruning
        assert (out / name).read_bytes() == data
    periodic = sorted(p.name for p in (out / "checkpoints").glob("model_*.pth"))
    assert periodic == ["model_0000001.pth", "model_0000003.pth", "model_0000004.pth", "model_0000100.pth"]
    aside = list(out.glob("metrics.jsonl.replaced-*"))
    assert len(aside) == 1 and "iteration\": 100" in aside[0].read_text()
    records = [json.loads(ln, parse_constant=pytest.fail) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]


def test_resume_refuses_a_smaller_max_iter(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    save_checkpoint(out / "checkpoints/last.pth", {"model": {"w": torch.zeros(1)}, "iteration": 10})
    before = checksums(out)
    rc, err = train_cli(capsys, data_root, out, "--resume", **{"solver.max_iter": 6})
    assert_clean_error(rc, err, "last.pth", "iteration 10", "solver.max_iter=6", "rewind")
    after = checksums(out)
    assert {k: after.get(k) for k in before} == before  # (log.txt is new)


# -- runs that should not start --------------------------------------------------------------------

def _no_checkpoint(out: Path) -> bool:
    return not (out / "model_final.pth").exists() and not list((out / "checkpoints").glob("*.pth"))


def test_no_readable_training_image_is_an_error_naming_the_folder(tmp_path, capsys, data_root):
    empty = tmp_path / "empty_images"
    empty.mkdir()
    out = tmp_path / "run"
    rc, err = train_cli(capsys, data_root, out, **{"data.train.images": str(empty)})
    assert_clean_error(rc, err, "none of the 4 training images", str(empty))
    assert _no_checkpoint(out)


def test_stale_temp_files_are_removed_at_start(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints/last.pth.k3j2h1.tmp", out / "model_final.pth.x9y8z7.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (out / "notes.tmp").write_text("not ours")
    rc, err = train_cli(capsys, data_root, out, **{"data.train.images": str(tmp_path / "missing")})
    assert_clean_error(rc, err, "image folder not found", "missing")
    assert not any(p.exists() for p in stale) and (out / "notes.tmp").exists()


@pytest.mark.parametrize("problem, words", [
    ("duplicate_image_id", ["val.json", "duplicate image id"]),
    ("nan_box", ["val.json", "non-finite"]),
    ("outside_root", ["val.json", "outside the image root"]),
])
def test_bad_val_file_fails_before_the_first_iteration(tmp_path, capsys, data_root, problem, words):
    val = json.loads((data_root / "annotations/val.json").read_text())
    if problem == "duplicate_image_id":
        val["images"].append(dict(val["images"][0]))
    elif problem == "nan_box":
        val["annotations"][0]["bbox"][2] = math.nan
    else:
        val["images"][0]["file_name"] = "../outside.jpg"
    (tmp_path / "val.json").write_text(json.dumps(val))
    out = tmp_path / "run"
    rc, err = train_cli(capsys, data_root, out, **{"data.val.annotations": str(tmp_path / "val.json")})
    assert_clean_error(rc, err, *words)
    assert _no_checkpoint(out) and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides, words", [
    ({"solver.max_iter": 0}, ["solver.max_iter must be > 0"]),
    ({"solver.steps": "[4, 2]"}, ["strictly increasing"]),
    ({"solver.steps": "[3, 6]"}, ["solver.steps must lie in (0, solver.max_iter=6)"]),
    ({"solver.warmup_iters": 7}, ["solver.warmup_iters (7) must be <= solver.max_iter (6)"]),
    ({"solver.ims_per_batch": 0}, ["solver.ims_per_batch must be >= 1"]),
    ({"solver.base_lr": -1e-3}, ["solver.base_lr must be a positive number"]),
    ({"train.log_period": 0}, ["train.log_period must be >= 1"]),
])
def test_bad_config_values_fail_before_anything_is_written(tmp_path, capsys, data_root, overrides, words):
    out = tmp_path / "run"
    rc, err = train_cli(capsys, data_root, out, **overrides)
    assert_clean_error(rc, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("text", ["solver.base_lr=1e-3", "solver.base_lr=1E-3", "solver.base_lr=.001"])
def test_scientific_notation_is_accepted_on_the_command_line(text):
    assert load_config(None, [text]).solver.base_lr == pytest.approx(1e-3)


def test_scientific_notation_is_accepted_in_yaml(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 without a dot as a string; the loader must still take it as a float.
    (tmp_path / "c.yaml").write_text("solver:\n  base_lr: 1e-3\n  weight_decay: 5.0e-5\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.solver.base_lr == pytest.approx(1e-3) and cfg.solver.weight_decay == pytest.approx(5e-5)


# -- non-finite models, honest logs, distinct skip counts ------------------------------------------

def test_non_finite_buffer_is_never_saved_and_logs_stay_json(tmp_path, data_root):
    out = tmp_path / "run"
    trainer = Trainer(load_config(None, tiny_overrides(data_root, out, **{"data.val.annotations": ""})))
    trainer._log_jsonl({"iteration": 1, "loss": math.nan, "loss_box": math.inf})
    record = json.loads((out / "metrics.jsonl").read_text(), parse_constant=pytest.fail)
    assert record == {"iteration": 1, "loss": None, "loss_box": None}
    name, var = next((n, b) for n, b in trainer.model.named_buffers() if n.endswith("running_var"))
    var[0] = math.nan  # BatchNorm statistics, not a parameter
    with pytest.raises(NonFiniteLossError, match=f"{name}.*no checkpoint written"):
        trainer.save(3)
    with pytest.raises(NonFiniteLossError):
        trainer.save(6, final=True)
    assert _no_checkpoint(out)


@pytest.mark.slow
def test_skipped_images_count_distinct_files(tmp_path, data_root, caplog):
    images = tmp_path / "images"
    images.mkdir()
    train_json = json.loads((data_root / "annotations/train.json").read_text())
    for i, im in enumerate(train_json["images"]):
        src = (data_root / "images" / im["file_name"]).read_bytes()
        (images / im["file_name"]).write_bytes(src if i != 1 else b"not an image")
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(data_root, out, **{"data.train.images": str(images),
                                                              "data.val.annotations": "", "solver.max_iter": 4}))
    trainer = Trainer(cfg)
    with caplog.at_level("INFO", logger="retinanet"):
        trainer.train()
    # 4 batches of 2 over 4 images draw the bad one twice: it is one file.
    assert trainer._bad_images == {train_json["images"][1]["id"]}
    assert "done: 1 bad images skipped" in caplog.text


# -- one run per folder ------------------------------------------------------------------------------

def test_second_run_into_a_busy_folder_is_refused_naming_the_first(tmp_path, capsys, data_root):
    import os

    from retinanet.engine.run_dir import lock_output_dir
    out = tmp_path / "run"
    held = lock_output_dir(out)  # as a running `retinanet train` holds it
    try:
        for flags in ((), ("--resume",), ("--overwrite",)):
            rc, err = train_cli(capsys, data_root, out, *flags)
            assert_clean_error(rc, err, str(out), "in use by another training run", f"pid {os.getpid()}")
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    finally:
        held.close()
    rc, err = train_cli(capsys, data_root, out, **{"solver.max_iter": 2, "train.eval_period": 0})
    assert rc == 0, err


def test_a_killed_runs_lock_is_not_stale(tmp_path):
    import subprocess
    import sys

    from retinanet.engine.run_dir import lock_output_dir
    code = ("import sys, time; from pathlib import Path; from retinanet.engine.run_dir import lock_output_dir; "
            "f = lock_output_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            lock_output_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock_output_dir(tmp_path).close()  # the kernel dropped the killed holder's lock
