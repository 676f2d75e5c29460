"""The dependency direction, proved by importing with the other framework blocked.

Each check runs in a fresh interpreter: ``sys.modules[name] = None`` (and a finder refusing every
submodule) makes ``import name`` raise ImportError, so a module that reaches for a blocked
framework, directly or through another module, fails to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = ("torch",)
JAX = ("jax", "jaxlib", "flax", "optax")
COMMON = [
    f"vae_common.{m}" for m in ("config", "spec", "checkpoint", "data", "compare", "reference")
]


def package_modules(package: str) -> list[str]:
    """The package and every module in it (new modules are covered as they are added)."""
    files = sorted((REPO / package).glob("*.py"))
    return [package] + [f"{package}.{f.stem}" for f in files if f.stem != "__init__"]


SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys

    blocked = set(json.loads(sys.argv[1]))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, Refuse())
    for name in blocked:
        sys.modules[name] = None
    result = {"imported": [], "failed": {}}
    for module in json.loads(sys.argv[2]):
        try:
            importlib.import_module(module)
            result["imported"].append(module)
        except ImportError as exc:
            result["failed"][module] = repr(exc)
    loaded = sorted(m for m in sys.modules
                    if m.split(".")[0] in blocked and sys.modules[m] is not None)
    result["blocked_but_loaded"] = loaded
    print(json.dumps(result))
    """
)


def import_with_blocked(modules: list[str], blocked: tuple[str, ...]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(list(blocked)), json.dumps(modules)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_imports(modules: list[str], blocked: tuple[str, ...], control: str) -> None:
    """``modules`` import with ``blocked`` refused, while ``control``, which needs one, does not."""
    result = import_with_blocked([*modules, control], blocked)
    failed = dict(result["failed"])
    control_error = failed.pop(control, "")
    assert failed == {}, f"import needs one of {blocked}: {failed}"
    assert result["imported"] == modules
    assert result["blocked_but_loaded"] == []
    assert any(b in control_error for b in blocked), f"blocking did not work: {result}"


def test_vae_common_imports_neither_framework():
    modules = package_modules("vae_common")
    assert set(COMMON) <= set(modules)
    assert_imports(modules, TORCH + JAX, control="vae_torch")


def test_vae_jax_never_imports_torch():
    modules = package_modules("vae_jax")
    assert {"vae_jax.model", "vae_jax.losses", "vae_jax.sampling"} <= set(modules)
    assert_imports(modules, TORCH, control="vae_torch")


def test_vae_torch_never_imports_jax():
    modules = package_modules("vae_torch")
    assert {"vae_torch.model", "vae_torch.losses", "vae_torch.device"} <= set(modules)
    assert_imports(modules, JAX, control="vae_jax")


def test_cli_and_parity_checker_import_backends_lazily():
    assert_imports(
        ["vae_tools", "vae_tools.parity", "vae_tools.cli"], TORCH + JAX, control="vae_jax"
    )
