"""The output folder of a training run: what counts as a run, when one may be written over, which
periodic checkpoints this run may delete, and the checks a run makes before its first iteration."""
from __future__ import annotations

import logging
import os
import random
import socket
import re
import time
from pathlib import Path
from typing import IO, Optional

import numpy as np
import torch

from ..checkpoint import remove_stale_temp_files

log = logging.getLogger("retinanet")

PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


class RunLockedError(ValueError):
    """Another live process is training into the same output folder."""


def lock_output_dir(output: Path) -> Optional[IO]:
    """Takes ``output/train.lock`` for this process, or raises RunLockedError naming the process that holds it.

    An flock, not a marker file: the kernel drops it when its holder exits, crashed or killed, so it never
    goes stale. Keep the returned file open for the run; closing it releases the lock. None where the OS has
    no flock (Windows): there two runs are not kept apart."""
    try:
        import fcntl
    except ImportError:
        return None
    output.mkdir(parents=True, exist_ok=True)
    f = open(output / "train.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunLockedError(f"output folder {output} is in use by another training run ({holder}); wait for it "
                             f"to end, or choose another --output-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def run_files(output: Path) -> list[Path]:
    """The files that show ``output`` holds a training run (checkpoints, final model, metrics)."""
    ckpt = output / "checkpoints"
    candidates = [ckpt / "last.pth", output / "model_final.pth", output / "metrics.jsonl", output / "metrics.json"]
    found = [p for p in candidates if p.is_file()]
    if ckpt.is_dir():
        found += sorted(p for p in ckpt.iterdir() if PERIODIC.match(p.name))
    return found


def check_output_dir(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuses to start a new run in a folder that holds one, unless ``resume`` (continue it) or
    ``overwrite`` (start over: its files are replaced as the new run writes them, never deleted)."""
    if resume or overwrite:
        return
    found = run_files(output)
    if found:
        names = ", ".join(str(p.relative_to(output)) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ValueError(f"output folder {output} already holds a training run ({names}); pass --resume to "
                         f"continue it, --overwrite to start over in it, or choose another --output-dir")


def set_aside_metrics(output: Path) -> Optional[Path]:
    """With --overwrite: moves the previous run's metrics.jsonl aside, so the new one does not mix
    two runs' records (appending would). Returns the new name, or None when there was none."""
    path = output / "metrics.jsonl"
    if not path.is_file():
        return None
    aside = output / f"metrics.jsonl.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    path.rename(aside)
    log.info("--overwrite: the previous run's %s moved to %s", path.name, aside.name)
    return aside


def clean_stale_temp_files(output: Path) -> None:
    """Removes the ``*.pth.*.tmp`` files a killed save left behind (each as large as a checkpoint)."""
    for folder in (output, output / "checkpoints"):
        for tmp in remove_stale_temp_files(folder):
            log.info("removed %s, left by an interrupted checkpoint save", tmp)


def periodic_checkpoints(ckpt_dir: Path, up_to: Optional[int] = None) -> list[Path]:
    """The ``model_<iteration>.pth`` files of ``ckpt_dir`` (at most iteration ``up_to``), oldest first."""
    found = [(int(m[1]), p) for p in ckpt_dir.glob("model_*.pth") if (m := PERIODIC.match(p.name))]
    return [p for it, p in sorted(found) if up_to is None or it <= up_to]


def prune(written: list[Path], keep_last: int) -> None:
    """Deletes all but the newest ``keep_last`` of ``written``: the periodic checkpoints of this run
    only, so a folder's older run (kept with --overwrite) never loses a file to this one."""
    for old in written[: max(0, len(written) - keep_last)]:
        old.unlink(missing_ok=True)
    del written[: max(0, len(written) - keep_last)]


def check_readable(dataset, images_root: str) -> None:
    """Reads training images in order until one loads; none at all is an error naming the folder,
    raised before the first iteration (and so before any checkpoint). Usually one read."""
    root = Path(images_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.train.images: image folder not found: {root}")
    for i in range(len(dataset)):
        if dataset[(i, 0)] is not None:
            return
    raise ValueError(f"data.train.images: none of the {len(dataset)} training images listed in the annotations "
                     f"could be read from {root} (wrong folder?)")



def load_val(val):
    """The validated val ground truth (a COCO) of ``cfg.data.val``, its file names checked against
    its image folder; None without a val set. Bad val files fail here, before the first iteration."""
    if not (val.images and val.annotations):
        return None
    from ..data.validate import check_image_paths
    from ..evaluation import load_coco
    coco = load_coco(val.annotations)
    check_image_paths(coco.dataset["images"], val.images, val.annotations)
    return coco


def rng_state() -> dict:
    """torch, numpy and Python RNG states as plain data (a checkpoint loads with weights_only=True)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [int(v) for v in np_state[1]], "numpy_pos": int(np_state[2]),
            "python": list(random.getstate()[1])}


def set_rng_state(state: dict) -> None:
    """Restores what ``rng_state`` saved, so a resumed run draws what an uninterrupted one would."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
