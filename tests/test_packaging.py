"""setup.py gives compatible ranges, constraints.txt the tested pins inside them, and CI, the Dockerfile and the
README all install with that one constraints file."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
INSTALL = re.compile(r"pip install (?:-[-\w]+ )*-c constraints\.txt (?:-[-\w]+ )*-e (\S+)")


def _setup_value(name: str):
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def _requirements() -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in _setup_value("INSTALL_REQUIRES")]
    reqs += [Requirement(s) for extra in _setup_value("EXTRAS").values() for s in extra]
    return {canonicalize_name(r.name): r for r in reqs}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+]+)", line)
            assert m, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def _code(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_setup_py_gives_ranges_not_pins():
    for s in _setup_value("INSTALL_REQUIRES"):
        req = Requirement(s)
        assert req.specifier and not any(sp.operator in ("==", "===") for sp in req.specifier), \
            f"setup.py: {s!r} must be a compatible range, not a pin (pins go in constraints.txt)"


def test_constraints_pin_every_requirement_inside_its_range():
    reqs, pins = _requirements(), _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the builds on local disk
    for name, req in reqs.items():
        assert name in pins, f"constraints.txt does not pin {name} (setup.py requires {req})"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside setup.py's range {req.specifier}"


def test_ci_installs_with_the_constraints_and_keeps_the_real_smoke_last():
    code = _code(REPO / ".ci" / "run")
    installs = INSTALL.findall(code)
    assert installs == ['".[test]"'], f".ci/run must install with -c constraints.txt -e \".[test]\": {installs}"
    steps = [line.strip() for line in code.splitlines() if line.strip()]
    assert steps.index("python -m pytest -q") > next(i for i, s in enumerate(steps) if "pip install" in s)
    assert "bash ../shared/tools/real_smoke.sh" in code
    assert code.index("python -m pytest -q") < code.index("real_smoke.sh")


def test_dockerfile_installs_with_the_constraints():
    docker, code = (REPO / "Dockerfile").read_text(), _code(REPO / "Dockerfile")
    assert INSTALL.findall(code) == ["."], "the Dockerfile must install with `pip install -c constraints.txt -e .`"
    assert re.search(r"^COPY .*\bconstraints\.txt\b", code, re.M), "the Dockerfile must copy constraints.txt"
    assert not re.search(r"(?<![\w-])torch(vision)?==", code), "pins belong in constraints.txt, not the Dockerfile"
    base = re.search(r"^FROM\s+pytorch/pytorch:([\d.]+)-cuda[\d.]+-cudnn\d+-runtime", code, re.M)
    assert base and base[1] == _pins()["torch"], "the base image's torch differs from constraints.txt's pin"
    assert 'ENTRYPOINT ["retinanet"]' in code
    assert "/data/coco" in docker and all(f" {cmd} " in docker for cmd in ("train", "eval", "infer"))


def test_readme_opens_with_the_two_constrained_commands():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"^```bash\n(.*?)^```", readme, re.S | re.M)
    assert first_block, "README.md has no bash block"
    assert INSTALL.findall(first_block[1]) == [".", '".[test]"'], first_block[1]
    assert "retinanet train --config configs/demo.yaml" in first_block[1]
    assert "python -m pytest -q" in first_block[1]
    assert (REPO / "configs" / "demo.yaml").is_file()
    assert "pip install -e ." not in readme, "the README installs without the constraints file somewhere"
