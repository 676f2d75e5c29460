"""A private copy of the working tree for mutation runs.

Mutations are only ever written into such a copy (under the system's temporary directory), never
into the working tree, which other people edit while a run takes hours. The copy holds what git
would see: tracked files as they are now on disk (uncommitted edits included) and untracked files
that are not ignored; ``.venv`` and ``runs/`` stay behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vae_common", "vae_jax", "vae_torch", "vae_tools")


def tree_files(root: Path = ROOT) -> list[str]:
    """Repository-relative paths of the files git sees (tracked, or untracked and not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({p for p in out.split("\0") if p and (root / p).is_file()})


def exists(rel: str, rev: str | None = None, root: Path = ROOT) -> bool:
    """Whether file ``rel`` is in the working tree (or in commit ``rev``)."""
    if rev is None:
        return (root / rel).is_file()
    probe = subprocess.run(["git", "cat-file", "-e", f"{rev}:{rel}"], cwd=root, capture_output=True)
    return probe.returncode == 0


def copy_tree(prefix: str, rev: str | None = None, root: Path = ROOT) -> Path:
    """Copy the tree into a new temporary directory and return it (the caller removes it).

    ``rev``: copy that commit (``git archive``) instead of the working tree as it is on disk,
    e.g. to score a commit while someone's edits in progress leave the working tree failing.
    """
    dest = Path(tempfile.mkdtemp(prefix=prefix))
    if rev is not None:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev], cwd=root, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest
    for rel in tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return dest


def test_env(copy: Path) -> dict[str, str]:
    """The environment for tests run in ``copy``: its packages first on the import path (the
    project is installed in editable mode, pointing at the working tree), no bytecode written
    (a mutant and its restored original can share a size and an mtime second)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_from(copy: Path) -> None:
    """Refuse to run if the project's packages would be imported from anywhere but ``copy``."""
    code = (
        "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *PACKAGES],
        cwd=copy,
        env=test_env(copy),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    outside = [p for p in out if not Path(p).resolve().is_relative_to(copy.resolve())]
    if outside:
        raise SystemExit(f"packages would be imported from outside the copy {copy}: {outside}")


def pytest_command(tests: list[str]) -> list[str]:
    """pytest on ``tests``, stopping at the first failure (a killed mutant needs no more)."""
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
