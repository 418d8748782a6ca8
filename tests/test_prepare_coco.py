"""scripts/prepare_coco.sh on small fake archives: download (file:// URL), MD5 check, unpack, re-run, bad sum."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "prepare_coco.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _fake_mirror(root: Path) -> dict[str, str]:
    """COCO-shaped val2017.zip and annotations_trainval2017.zip under root/{zips,annotations}; their MD5s."""
    (root / "zips").mkdir(parents=True)
    (root / "annotations").mkdir()
    with zipfile.ZipFile(root / "zips" / "val2017.zip", "w") as z:
        z.writestr("val2017/000000000139.jpg", b"not really a jpeg")
    with zipfile.ZipFile(root / "annotations" / "annotations_trainval2017.zip", "w") as z:
        for split in ("train", "val"):
            z.writestr(f"annotations/instances_{split}2017.json", json.dumps({"images": [], "annotations": []}))
    return {p.stem: hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*.zip")}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "COCO_ARCHIVES": "val2017.zip annotations_trainval2017.zip", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=60)


def _md5_env(sums: dict[str, str]) -> dict[str, str]:
    return {f"COCO_MD5_{k}": v for k, v in sums.items()}


def test_published_checksums_are_the_defaults():
    text = SCRIPT.read_text()
    for name, md5 in [("train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
                      ("val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
                      ("annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c")]:
        assert f"{name}) echo {md5}" in text
    assert "http://images.cocodataset.org" in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="the download step uses curl")
def test_download_verify_unpack_then_rerun_skips(tmp_path):
    sums = _fake_mirror(tmp_path / "mirror")
    out = tmp_path / "coco"
    proc = _run(str(out), COCO_URL_BASE=(tmp_path / "mirror").as_uri(), **_md5_env(sums))
    assert proc.returncode == 0, proc.stderr
    assert (out / "val2017" / "000000000139.jpg").read_bytes() == b"not really a jpeg"
    assert (out / "annotations" / "instances_val2017.json").is_file()
    assert (out / "downloads" / "val2017.zip").is_file() and not (out / "downloads" / "val2017.zip.part").exists()
    assert sorted(p.name for p in (out / ".prepare").iterdir()) == [
        "annotations_trainval2017.zip.unpacked", "annotations_trainval2017.zip.verified",
        "val2017.zip.unpacked", "val2017.zip.verified"]
    # A re-run neither downloads (the mirror is gone) nor unpacks again (a local edit survives).
    shutil.rmtree(tmp_path / "mirror")
    (out / "val2017" / "000000000139.jpg").write_bytes(b"edited")
    again = _run(str(out), COCO_URL_BASE=(tmp_path / "mirror").as_uri(), **_md5_env(sums))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already unpacked, skipping") == 2
    assert (out / "val2017" / "000000000139.jpg").read_bytes() == b"edited"


def test_preplaced_archive_with_wrong_checksum_fails_before_unpacking(tmp_path):
    sums = _fake_mirror(tmp_path / "mirror")
    out = tmp_path / "coco"
    (out / "downloads").mkdir(parents=True)
    shutil.copy(tmp_path / "mirror" / "zips" / "val2017.zip", out / "downloads")
    proc = _run("--skip-download", str(out), COCO_ARCHIVES="val2017.zip", COCO_MD5_val2017="0" * 32)
    assert proc.returncode != 0
    assert "prepare_coco: error:" in proc.stderr and "val2017.zip: MD5 mismatch" in proc.stderr
    assert f"got {sums['val2017']}" in proc.stderr
    assert not (out / "val2017").exists() and not (out / ".prepare" / "val2017.zip.verified").exists()
    # The right sum (as the env override) lets the same pre-placed archive through, without downloading.
    ok = _run("--skip-download", str(out), COCO_ARCHIVES="val2017.zip", COCO_MD5_val2017=sums["val2017"])
    assert ok.returncode == 0, ok.stderr
    assert (out / "val2017" / "000000000139.jpg").is_file() and "downloading" not in ok.stdout


def test_skip_download_without_archive_says_where_to_put_it(tmp_path):
    proc = _run("--skip-download", str(tmp_path / "coco"), COCO_ARCHIVES="val2017.zip")
    assert proc.returncode != 0
    assert f"{tmp_path / 'coco' / 'downloads' / 'val2017.zip'} not found" in proc.stderr


def test_python_fallbacks_without_unzip_and_md5sum(tmp_path):
    """Where unzip / md5sum are missing, the script uses Python's zipfile and hashlib."""
    sums = _fake_mirror(tmp_path / "mirror")
    bin_dir = tmp_path / "bin"  # a PATH with only what the script needs, minus unzip and md5sum
    bin_dir.mkdir()
    for tool in ("bash", "cut", "mkdir", "mv", "touch", "rm", "sed"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    out = tmp_path / "coco"
    (out / "downloads").mkdir(parents=True)
    shutil.copy(tmp_path / "mirror" / "zips" / "val2017.zip", out / "downloads")
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT), "--skip-download", str(out)], capture_output=True,
                          text=True, env={"PATH": str(bin_dir), "COCO_ARCHIVES": "val2017.zip",
                                          "COCO_MD5_val2017": sums["val2017"], "PYTHON": sys.executable}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (out / "val2017" / "000000000139.jpg").is_file()
