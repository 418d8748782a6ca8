"""Every ``python`` code block of README.md and docs/*.md runs, against a small model saved where the
README's example expects the demo's (output/demo/model_final.pth) and a photo named photo.jpg; every relative
link in them names an existing file; the README stays a short first page."""
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
# [text](target) outside code; the target ends at whitespace or ")" (an optional "title" follows a space).
LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
README_MAX_LINES = 220
# Pages that describe the project as it is: no words that narrate its history.
PRESENT_TENSE = ["README.md", "docs/cli.md", "docs/own_data.md", "docs/performance.md", "docs/bad_input.md",
                 "docs/results.md", "docs/design.md"]
HISTORY = re.compile(r"\b(before|start|goal|goals|session|earlier|now|was|previous version)\b", re.I)


def docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def relative_links(doc: Path) -> list[tuple[int, str]]:
    """(line, target) of every link in ``doc`` that is not a URL, an e-mail address or an in-page anchor."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    out = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("#"):
            out.append((text[:m.start()].count("\n") + 1, target))
    return out


def python_blocks() -> list[tuple[str, int, str]]:
    out = []
    for doc in docs():
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


def test_relative_links_name_existing_files():
    broken, anchored, total = [], [], 0
    for doc in docs():
        for line, target in relative_links(doc):
            total += 1
            path, _, anchor = target.partition("#")
            if anchor:
                anchored.append(f"{doc.relative_to(REPO)}:{line}: {target}")
            if not (doc.parent / path).resolve().is_file():
                broken.append(f"{doc.relative_to(REPO)}:{line}: {target}")
    assert total >= 10, f"only {total} relative links found: the link pattern is broken"
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    assert not anchored, "links with #anchors (headings move; link the page):\n" + "\n".join(anchored)


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](https://example.org) [gone](docs/missing.md) `[code](x.md)`\n"
                    "```text\n[fenced](y.md)\n```\n[here](#top)\n", encoding="utf-8")
    assert relative_links(page) == [(1, "docs/missing.md")]


def test_readme_is_a_short_first_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("name", PRESENT_TENSE)
def test_pages_describe_the_project_without_history_words(name):
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), (REPO / name).read_text(encoding="utf-8"))
    hits = [f"{name}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}" for m in HISTORY.finditer(text)]
    assert not hits, "history words:\n" + "\n".join(hits)
