"""The Dockerfile installs the package the way setup.py and the README do."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _install_requires() -> dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALL_REQUIRES" for t in node.targets):
            return dict(re.match(r"([A-Za-z0-9_.-]+)(.*)", s).groups() for s in ast.literal_eval(node.value))
    raise AssertionError("setup.py has no INSTALL_REQUIRES")


def test_dockerfile_pins_match_setup_py():
    reqs, docker = _install_requires(), (REPO / "Dockerfile").read_text()
    code = "\n".join(line for line in docker.splitlines() if not line.lstrip().startswith("#"))
    for pkg in ("torch", "torchvision"):
        pins = set(re.findall(rf"(?<![\w-]){pkg}==([\w.+]+)", code))
        assert pins == {reqs[pkg].removeprefix("==")}, f"Dockerfile pins {pkg} {pins}, setup.py {reqs[pkg]}"
    base = re.search(r"^FROM\s+pytorch/pytorch:([\d.]+)-cuda[\d.]+-cudnn\d+-runtime", code, re.M)
    assert base and base[1] == reqs["torch"].removeprefix("=="), "base image torch version differs from setup.py"
    assert re.search(r"pip install (-[\w-]+ )*-e \.", code), "the Dockerfile must install with `pip install -e .`"
    assert 'ENTRYPOINT ["retinanet"]' in code
    assert "/data/coco" in docker and all(f" {cmd} " in docker for cmd in ("train", "eval", "infer"))


def test_readme_installs_the_same_way():
    readme = (REPO / "README.md").read_text()
    assert "pip install -e ." in readme
