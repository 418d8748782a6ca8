"""Every ``python`` code block of README.md and docs/*.md runs, against a small model saved where the
README's example expects the demo's (output/demo/model_final.pth) and a photo named photo.jpg."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.build import build_model, checkpoint_payload
from retinanet.checkpoint import save_checkpoint
from retinanet.config_loader import load_config

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, int, str]]:
    out = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            out.append((doc.relative_to(REPO).as_posix(), text[:m.start()].count("\n") + 1, m.group(1)))
    return out


def test_readme_has_python_examples():
    assert any(doc == "README.md" for doc, _, _ in python_blocks())


@pytest.mark.parametrize("doc,line,code", python_blocks(), ids=lambda v: str(v) if isinstance(v, (str, int))
                         and not str(v).count("\n") else "")
def test_python_block_runs(doc, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml", ["model.backbone.name=resnet18", "model.fpn.channels=32",
                                                       "input.min_size_test=128", "input.max_size_test=160",
                                                       "train.device=cpu", "model.num_classes=3",
                                                       "model.class_names=[circle,rectangle,triangle]"])
    (tmp_path / "output" / "demo").mkdir(parents=True)
    save_checkpoint(tmp_path / "output" / "demo" / "model_final.pth",
                    checkpoint_payload(cfg, build_model(cfg).state_dict()))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    exec(compile(code, f"{doc}:{line}", "exec"), {"__name__": "__docs__"})
