"""The path users take: training on real-sized photos with the data loader's own worker processes, from
Python and from the CLI, each under a time limit, so that a hang fails the test instead of the suite."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import tiny_overrides
from retinanet.data.synthetic import make_synthetic_coco

LIMIT = 120  # seconds; a run takes about 15 s, a hang never ends
# The example config's train sizes: resizing a 640x480 photo to them starts OpenCV's pool (128 px does not).
SIZES = {"input.min_size_train": 320, "input.max_size_train": 448, "input.min_size_test": 320,
         "input.max_size_test": 448}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """640x480 JPEGs: large enough that resizing one starts OpenCV's thread pool (checked below)."""
    root = tmp_path_factory.mktemp("photos")
    make_synthetic_coco(root, num_train=6, num_val=2, image_size=(480, 640), vary_size=False, seed=3)
    return root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=LIMIT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"no end within {LIMIT} s (a hang): {' '.join(argv[:3])} ...\n{e.stderr}")


def test_photos_start_opencvs_thread_pool(photos):
    """The hang needs OpenCV's pool running in the parent before the workers fork: these photos start it."""
    code = textwrap.dedent(f"""
        import os
        from retinanet.config_loader import load_config
        from retinanet.data.loader import build_dataset
        cfg = load_config(None, {tiny_overrides(photos, photos / 'out', **SIZES)!r})
        ds = build_dataset(cfg, "train")
        threads = lambda: len(os.listdir("/proc/self/task"))
        before = threads()
        ds[(0, 0)]
        during = threads()
        import cv2
        cv2.setNumThreads(1)  # stops OpenCV's pool: what it added goes
        print(before, during, threads())
    """)
    out = _run([sys.executable, "-c", code], photos)
    assert out.returncode == 0, out.stderr
    before, during, after = map(int, out.stdout.split())
    assert during > before == after, "OpenCV started no threads: these photos do not exercise the fork hazard"


def test_train_with_workers_python(photos, tmp_path):
    overrides = tiny_overrides(photos, tmp_path / "run", **SIZES, **{"dataloader.num_workers": 2,
                                                                       "solver.max_iter": 4})
    code = (f"from retinanet.config_loader import load_config\nfrom retinanet.engine.trainer import train\n"
            f"train(load_config(None, {overrides!r}))\n")
    out = _run([sys.executable, "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()


def test_train_with_workers_cli(photos, tmp_path):
    """The README's example config with its own workers (2), through the command line."""
    overrides = [o for o in tiny_overrides(photos, tmp_path / "run", **SIZES, **{"solver.max_iter": 4})
                 if not o.startswith("dataloader.num_workers=")] + ["model.backbone.weights="]
    config = Path(__file__).resolve().parents[1] / "configs" / "examples" / "raccoon_mobilenet.yaml"
    out = _run([sys.executable, "-m", "retinanet.cli", "train", "--config", str(config), *overrides], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "num_workers: 2" in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_stuck_worker_stops_the_run_with_one_line(photos, tmp_path, monkeypatch, capsys):
    """A worker that never delivers (here: sleeps) ends the run after dataloader.timeout seconds, naming it."""
    import os
    import time

    from retinanet.cli import main
    from retinanet.data.coco import CocoDetection

    parent, read = os.getpid(), CocoDetection.__getitem__

    def stuck_in_workers(self, index):
        if os.getpid() != parent:  # the parent's own check read still works
            time.sleep(3600)
        return read(self, index)

    monkeypatch.setattr(CocoDetection, "__getitem__", stuck_in_workers)
    overrides = tiny_overrides(photos, tmp_path / "run", **{"dataloader.num_workers": 1, "dataloader.timeout": 3})
    start = time.monotonic()
    rc = main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"),
               *overrides, "data.demo=false"])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - start < 60, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "data loader delivered no batch for 3 s" in err and "dataloader.timeout=3" in err, err
