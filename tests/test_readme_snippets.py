"""The README's snippets run as they are written, each with only the backend it shows.

A snippet is a ```python block with a marker on the line before it, ``<!-- test: backend=jax -->``
or ``backend=torch``. Every block of the sections "Quick start", "Training from Python" and
"Generating from a checkpoint" must be one (an unmarked block there fails the test); blocks
elsewhere that are scripts for other launchers (``torchrun``) may go unmarked. The snippets run in
README order, each in a fresh interpreter, all in one temporary directory (the generation
snippet reads the checkpoint the training snippet saved), with the other framework's modules
refused by an import finder, as on an install with one extra only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FRAMEWORKS = {"jax": ("jax", "jaxlib", "flax", "optax"), "torch": ("torch",)}
MARKER = re.compile(r"<!-- test: backend=(jax|torch) -->")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SECTIONS = ("## Quick start", "## Training from Python", "## Generating from a checkpoint")

PRELUDE = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {blocked!r}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    """
)


def blocks(text: str) -> list[tuple[str | None, str, int]]:
    """``(backend, or None when unmarked; code; line)`` of every python block of ``text``."""
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        found.append((marker.group(1) if marker else None, match.group(1), line))
    return found


def unmarked_in_sections(text: str) -> list[int]:
    """Lines of the unmarked python blocks inside ``SECTIONS`` (each must hold at least one)."""
    lines = []
    for section in SECTIONS:
        start = text.index(f"\n{section}\n")
        end = text.find("\n## ", start + 1)
        found = blocks(text[start : len(text) if end < 0 else end])
        assert found, f"{section} has no python snippet"
        offset = text.count("\n", 0, start)
        lines += [offset + line for backend, _, line in found if backend is None]
    return lines


def test_every_python_block_of_the_api_sections_is_marked():
    text = README.read_text()
    assert unmarked_in_sections(text) == []
    assert {b for b, _, _ in blocks(text) if b} == {"jax", "torch"}
    # The check itself: an unmarked block in a section is found, a marked one is not.
    doc = "\n## Quick start\n\n```python\nprint(1)\n```\n"
    doc += "\n## Training from Python\n<!-- test: backend=jax -->\n```python\nx = 1\n```\n"
    doc += "\n## Generating from a checkpoint\n<!-- test: backend=torch -->\n```python\n```\n"
    assert unmarked_in_sections(doc) == [4]


@pytest.mark.slow
def test_readme_snippets_run_with_only_their_backend(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    snippets = [(b, code, line) for b, code, line in blocks(README.read_text()) if b]
    assert len(snippets) >= 5
    for backend, code, line in snippets:
        other = next(b for b in FRAMEWORKS if b != backend)
        script = PRELUDE.format(blocked=set(FRAMEWORKS[other])) + code
        proc = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"README.md line {line} ({backend}):\n{proc.stderr}"
    assert (tmp_path / "digits-jax.safetensors").is_file()
    assert (tmp_path / "digits-torch.safetensors").is_file()
