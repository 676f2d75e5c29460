"""Each example runs: ``main([...])`` for one epoch on the bundled digits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vae_common.checkpoint import load_checkpoint
from vae_common.compare import TOLERANCES
from vae_common.config import VAEConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``{backend: main's result}`` after one epoch of each training example."""
    out = {}
    for backend in ("jax", "torch"):
        directory = tmp_path_factory.mktemp(f"example-{backend}")
        out[backend] = load_example(f"train_{backend}").main(
            ["--epochs", "1", "--out", str(directory)]
        )
    return out


@pytest.mark.parametrize("name", ["train_jax", "train_torch", "port_checkpoint"])
def test_example_has_a_docstring_and_help(name, capsys):
    module = load_example(name)
    assert module.__doc__ and len(module.__doc__.strip().splitlines()) >= 2
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert "--dataset" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_example_saves_a_checkpoint(backend, trained):
    result = trained[backend]
    state, config, meta = load_checkpoint(result["checkpoint"])
    assert config == VAEConfig(input_shape=(1, 8, 8))
    assert (meta["backend"], meta["dataset"], meta["epoch"]) == (backend, "digits", "1")
    assert all(np.all(np.isfinite(v)) for v in state.values())
    test = result["test"]
    assert test["n"] == 297 and test["iwae_k"] == 100
    assert np.isfinite(test["neg_elbo"]) and test["neg_iwae"] < test["neg_elbo"]


def test_both_training_examples_reach_similar_losses(trained):
    # Same initial weights and batches, different noise: one epoch lands in the same place.
    elbo = {b: trained[b]["test"]["neg_elbo"] for b in trained}
    assert abs(elbo["jax"] - elbo["torch"]) < 0.05 * elbo["torch"], elbo


def test_port_checkpoint_example(trained, capsys):
    checkpoint = trained["jax"]["checkpoint"]
    result = load_example("port_checkpoint").main(
        ["--checkpoint", str(checkpoint), "--iwae-k", "20"]
    )
    assert result["agree"]
    assert result["tolerance"] == TOLERANCES["float32"]
    assert set(result["rel_diffs"]) >= {"neg_elbo", "reconstruction", "kl", "neg_iwae"}
    assert all(d <= TOLERANCES["float32"] for d in result["rel_diffs"].values())
    assert result["mean"].shape == (16, 20)
    assert "plain torch load_state_dict" in capsys.readouterr().out
