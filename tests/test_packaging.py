"""The distribution a user installs: built from a copy of this tree (setuptools' own PEP 517
hooks, no network), the wheel carries the LICENSE, every package's py.typed marker and the
metadata a package index shows (licence, authors, classifiers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vae_common", "vae_jax", "vae_torch", "vae_tools")

BUILD = """
import json, sys
from setuptools import build_meta
print(json.dumps(build_meta.build_wheel(sys.argv[1])))
"""


def test_license_is_mit_with_the_projects_copyright():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the vae-twin authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


@pytest.mark.slow
def test_the_wheel_carries_license_markers_and_metadata(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path / "dist")],
        cwd=src,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = tmp_path / "dist" / json.loads(proc.stdout.strip().splitlines()[-1])
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
        licenses = [n for n in names if "/licenses/" in n or n.endswith("/LICENSE")]
        assert licenses and zf.read(licenses[0]) == (REPO / "LICENSE").read_bytes()
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
    assert "vae_tools/generate.py" in names and "vae_tools/_backends.py" in names
    assert meta["Name"] == "vae-twin"
    assert meta["License"] == "MIT"
    assert meta["Author"] == "the vae-twin authors"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    assert set(meta.get_all("Provides-Extra")) >= {"jax", "torch"}
    # Entry point of the `vae` command.
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "vae = vae_tools.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
