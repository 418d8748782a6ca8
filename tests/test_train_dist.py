"""scripts/train_dist.sh through the real torchrun CLI (gloo, CPU): 2 processes = 1 process, same global batch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from retinanet.checkpoint import load_checkpoint
from retinanet.config_loader import load_config
from retinanet.data.synthetic import make_synthetic_coco
from retinanet.engine.trainer import train

from conftest import REPO, free_port, tiny_overrides

SCRIPT = REPO / "scripts" / "train_dist.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    # The worker processes must import this checkout, as the test does.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    # The launcher of this interpreter: the same CLI as `torchrun` (its console script calls this module).
    env["TORCHRUN"] = f"{sys.executable} -m torch.distributed.run"
    return env


def test_dry_run_builds_single_and_multi_node_commands(tmp_path):
    def cmd(*args: str, **env: str) -> str:
        out = subprocess.run(["bash", str(SCRIPT), *args], env=_env(DRY_RUN="1", **env), capture_output=True,
                             text=True, check=True)
        return out.stdout
    single = cmd("2", "cfg.yaml", "solver.max_iter=5")
    assert "--standalone --nproc_per_node=2 -m retinanet.cli train --config cfg.yaml solver.max_iter=5" in single
    multi = cmd("4", "cfg.yaml", "a=1", "--", "--max_restarts", "2", NNODES="3", MASTER_ADDR="node0",
                MASTER_PORT="1234", RDZV_ID="job7")
    assert ("--nnodes=3 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=node0:1234 --rdzv_id=job7 "
            "--max_restarts 2 -m retinanet.cli train --config cfg.yaml a=1") in multi
    static = cmd("1", "c.yaml", NNODES="2", MASTER_ADDR="n0", RDZV_BACKEND="static", NODE_RANK="1")
    assert "--rdzv_backend=static" in static and "--node_rank=1" in static
    bad = subprocess.run(["bash", str(SCRIPT), "2", "c.yaml"], env=_env(NNODES="2"), capture_output=True, text=True)
    assert bad.returncode == 2 and "needs MASTER_ADDR" in bad.stderr


# The launch script's test; DDP equals one process is also tested in the default suite
# (test_trainer.py::test_ddp_two_processes_match_single_process). Run with -m slow.
@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    root = tmp_path / "data"
    make_synthetic_coco(root, num_train=8, num_val=1, seed=3)
    # As in test_trainer's DDP test: every image fits in 128 x 128 after resizing, so each rank pads exactly
    # as the single process does; no aspect grouping, so the global batch order is the same.
    extra = {"solver.ims_per_batch": 4, "solver.max_iter": 3, "data.val.annotations": "",
             "dataloader.aspect_ratio_grouping": False, "input.min_size_train": 96, "input.max_size_train": 128}
    single, multi = tmp_path / "single", tmp_path / "torchrun"
    train(load_config(None, tiny_overrides(root, single, **extra)))
    (tmp_path / "empty.yaml").write_text("{}\n")
    # The multi-node code path (c10d rendezvous at MASTER_ADDR:MASTER_PORT) on one node, loopback only.
    proc = subprocess.run(["bash", str(SCRIPT), "2", str(tmp_path / "empty.yaml"),
                           *tiny_overrides(root, multi, **extra)], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(NNODES="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # the trainer really ran under a world of 2
    a = load_checkpoint(single / "model_final.pth")["model"]
    b = load_checkpoint(multi / "model_final.pth")["model"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst


# A script's test (scripts/slurm_train.sh): run with -m slow.
@pytest.mark.slow
def test_slurm_script_starts_one_torchrun_per_node_at_the_first_host(tmp_path):
    bin_dir = tmp_path / "bin"  # stand-ins for SLURM's tools: srun runs its command once, here
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = _env(DRY_RUN="1", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[a-b]",
               SLURM_NNODES="2", SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE="4")
    out = subprocess.run(["bash", str(REPO / "scripts" / "slurm_train.sh"), "cfg.yaml", "a=1", "--resume"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert ("--nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=node-a:29500 --rdzv_id=77 "
            "-m retinanet.cli train --config cfg.yaml a=1 --resume") in out
