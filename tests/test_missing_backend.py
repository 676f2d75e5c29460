"""A framework that is not installed is reported as one line naming the extra to install (exit
status 2), never as a ``ModuleNotFoundError`` traceback; the other backend keeps working.

Each CLI case runs in a fresh interpreter whose first import finder answers every framework
module with ``ModuleNotFoundError(name=...)``, as Python does on an install without the extra.
(Unlike ``sys.modules[name] = None``, the method of ``tests/test_import_boundaries.py``, this
leaves no ``sys.modules`` entry: scipy, under ``load_digits``, probes ``sys.modules["torch"]``
and fails on a None there, which a real torch-less install never shows.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vae_common.checkpoint import save_checkpoint
from vae_common.config import VAEConfig
from vae_common.errors import BackendUnavailableError, UsageError, VAEError
from vae_common.spec import init_canonical
from vae_tools import _backends, cli

REPO = Path(__file__).resolve().parents[1]
JAX = ("jax", "jaxlib", "flax", "optax")
TORCH = ("torch",)
CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(8,), latent_dim=2)
JAX_LINE = (
    "the jax backend needs the 'jax' extra: pip install 'vae-twin[jax]' "
    "(the module 'jax' cannot be imported)"
)
TORCH_LINE = (
    "the torch backend needs the 'torch' extra: pip install 'vae-twin[torch]' "
    "(the module 'torch' cannot be imported)"
)

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    blocked = set(json.loads(sys.argv[1]))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    from vae_tools import cli

    status = cli.main(json.loads(sys.argv[2]))
    print(json.dumps({"status": status}))
    """
)


def vae_without(blocked: tuple[str, ...], *argv: str, cwd: Path) -> tuple[int, str, str]:
    """``vae ARGV`` in a fresh interpreter where ``blocked`` cannot be imported."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(list(blocked)), json.dumps(list(argv))],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    status = json.loads(lines[-1])["status"] if proc.returncode == 0 and lines else proc.returncode
    return status, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    save_checkpoint(path, init_canonical(CONFIG, 0), CONFIG, {"dataset": "digits"})
    return path


@pytest.mark.slow
def test_every_command_names_the_missing_extra(tmp_path, checkpoint):
    cases = [
        (JAX, "train", ["train", "--backend", "jax", "--out", "run", "--epochs", "1", "--quiet"]),
        (JAX, "eval", ["eval", "--backend", "jax", "--checkpoint", str(checkpoint)]),
        (TORCH, "eval", ["eval", "--backend", "torch", "--checkpoint", str(checkpoint)]),
        (
            JAX,
            "generate",
            ["generate", "samples", "--backend", "jax", "--checkpoint", str(checkpoint)]
            + ["--out", "gen"],
        ),
        # A command that needs both frameworks names the one that is missing.
        (TORCH, "parity", ["parity", "--hidden", "8", "--latent-dim", "2", "--batch-size", "4"]),
    ]
    for blocked, command, argv in cases:
        status, _, err = vae_without(blocked, *argv, cwd=tmp_path)
        line = JAX_LINE if blocked == JAX else TORCH_LINE
        assert (status, err) == (2, f"vae {command}: error: {line}\n"), (argv, err)
    assert not (tmp_path / "gen").exists()


@pytest.mark.slow
def test_a_torch_only_install_trains_and_generates_with_torch(tmp_path):
    status, _, err = vae_without(
        JAX,
        *("train", "--backend", "torch", "--epochs", "1", "--hidden", "16", "--latent-dim", "2"),
        *("--out", "run", "--quiet"),
        cwd=tmp_path,
    )
    assert status == 0, err
    status, out, err = vae_without(
        JAX,
        *("generate", "interpolate", "--backend", "torch"),
        *("--checkpoint", "run/checkpoint.safetensors", "--out", "gen", "--steps", "3"),
        cwd=tmp_path,
    )
    assert status == 0, err
    assert (tmp_path / "gen" / "interpolation.png").is_file()


def test_import_backend_names_any_missing_framework_module(monkeypatch):
    # flax present but optax missing (a broken or partial install) still names the jax extra.
    monkeypatch.setitem(sys.modules, "optax", None)
    monkeypatch.delitem(sys.modules, "vae_jax.train", raising=False)
    monkeypatch.delitem(sys.modules, "vae_jax", raising=False)
    with pytest.raises(BackendUnavailableError) as exc:
        _backends.import_backend("jax")
    assert str(exc.value) == (
        "the jax backend needs the 'jax' extra: pip install 'vae-twin[jax]' "
        "(the module 'optax' cannot be imported)"
    )
    # A UsageError (exit status 2 in the CLI) and still an ImportError for library callers.
    assert isinstance(exc.value, UsageError) and isinstance(exc.value, ImportError)
    with pytest.raises(UsageError, match="unknown backend 'tf'"):
        _backends.import_backend("tf")


def test_other_import_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    assert _backends.missing_backend_error(ModuleNotFoundError("x", name="jax.numpy")) is not None
    for exc in (
        ModuleNotFoundError("No module named 'scipy'", name="scipy"),
        ImportError("cannot import name 'f' from 'vae_jax.model'", name="vae_jax.model"),
        ImportError("no name"),
        ValueError("not an import error"),
    ):
        assert _backends.missing_backend_error(exc) is None

    def broken(args):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")

    monkeypatch.setattr(cli.commands, "cmd_demo", broken)
    with pytest.raises(ModuleNotFoundError, match="scipy"):
        cli.main(["demo", "--out", "unused"])
    assert not issubclass(ModuleNotFoundError, VAEError)
