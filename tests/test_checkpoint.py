"""Checkpoints: exact round trips, one clear error per kind of bad input, atomic saves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import torch

import vae_torch
from vae_common import checkpoint
from vae_common.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical

CFG = VAEConfig(input_shape=(1, 4, 3), hidden=(5,), latent_dim=2, likelihood="gaussian")


def write_raw(path, tensors, config=CFG, **extra_meta):
    """A safetensors file with checkpoint metadata, bypassing save_checkpoint's validation."""
    meta = {"format": FORMAT, "config": config.to_json() if config else "", **extra_meta}
    save_tensors(path, tensors, meta)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    path = tmp_path / "model.safetensors"
    state = init_canonical(CFG, seed=1, dtype=dtype)
    save_checkpoint(path, state, CFG, metadata={"epoch": 3, "note": "hi"})
    loaded, config, meta = load_checkpoint(path, expected_config=CFG)
    assert config == CFG
    assert meta == {"epoch": "3", "note": "hi"}
    assert list(loaded) == list(state)
    for name, value in state.items():
        assert loaded[name].dtype == np.dtype(dtype)
        assert np.array_equal(loaded[name], value), name


def test_saved_file_is_plain_safetensors_with_canonical_names(tmp_path):
    path = tmp_path / "model.safetensors"
    state = init_canonical(CFG)
    save_checkpoint(path, dict(reversed(list(state.items()))), CFG)
    raw = safetensors.numpy.load_file(str(path))
    assert sorted(raw) == sorted(state)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    assert header["__metadata__"]["format"] == FORMAT
    assert VAEConfig.from_json(header["__metadata__"]["config"]) == CFG


def test_torch_load_state_dict_accepts_a_loaded_checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, init_canonical(CFG, seed=2), CFG)
    state, config, _ = load_checkpoint(path)
    model = vae_torch.build_model(config, "float64")
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), state[name]), name


def test_missing_tensor_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    state = init_canonical(CFG)
    del state["decoder.out.bias"]
    write_raw(path, state)
    with pytest.raises(CheckpointError, match=r"missing tensors \['decoder\.out\.bias'\]"):
        load_checkpoint(path)


def test_extra_tensor_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    write_raw(path, {**init_canonical(CFG), "encoder.hidden.1.weight": np.zeros((2, 2))})
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['encoder\.hidden\.1\.weight"):
        load_checkpoint(path)


def test_mis_shaped_tensor_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    state = init_canonical(CFG)
    state["encoder.mean.weight"] = state["encoder.mean.weight"].T.copy()
    write_raw(path, state)
    match = r"'encoder\.mean\.weight' has shape \(5, 2\), the config needs \(2, 5\)"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_wrong_or_mixed_dtypes_are_named(tmp_path):
    state = init_canonical(CFG)
    ints = {**state, "decoder.out.bias": np.zeros(12, np.int32)}
    write_raw(tmp_path / "a.safetensors", ints)
    with pytest.raises(CheckpointError, match=r"'decoder\.out\.bias' has dtype int32"):
        load_checkpoint(tmp_path / "a.safetensors")
    mixed = {**state, "decoder.out.bias": state["decoder.out.bias"].astype(np.float32)}
    write_raw(tmp_path / "b.safetensors", mixed)
    with pytest.raises(CheckpointError, match="mix dtypes"):
        load_checkpoint(tmp_path / "b.safetensors")


def test_expected_config_mismatch_names_the_differing_fields(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_canonical(CFG), CFG)
    other = CFG.replace(latent_dim=3, likelihood="bernoulli")
    with pytest.raises(CheckpointError, match="different config") as info:
        load_checkpoint(path, expected_config=other)
    message = str(info.value)
    assert "latent_dim" in message and "likelihood" in message
    assert "hidden" not in message and "input_shape" not in message


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a checkpoint at all", b"\xff" * 64],
    ids=["empty", "text", "junk"],
)
def test_non_safetensors_file(tmp_path, content):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_numpy_file_is_rejected(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, **init_canonical(CFG))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_checkpoint(tmp_path, keep):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_canonical(CFG), CFG)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory, not a file"):
        load_checkpoint(tmp_path)


def test_safetensors_without_checkpoint_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file(init_canonical(CFG), str(path))
    with pytest.raises(CheckpointError, match="not a VAE checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "stored",
    ['{"latent_dim": 0}', '{"gaussian_std": null}', "not json", '{"layers": 3}'],
    ids=["invalid-value", "null-std", "not-json", "unknown-key"],
)
def test_invalid_stored_config(tmp_path, stored):
    path = tmp_path / "m.safetensors"
    save_tensors(path, init_canonical(CFG), {"format": FORMAT, "config": stored})
    with pytest.raises(CheckpointError, match="stored config is invalid"):
        load_checkpoint(path)


def test_invalid_state_is_never_written(tmp_path):
    path = tmp_path / "m.safetensors"
    bad = {k: v for k, v in init_canonical(CFG).items() if k != "encoder.mean.bias"}
    with pytest.raises(CheckpointError, match="encoder.mean.bias"):
        save_checkpoint(path, bad, CFG)
    assert list(tmp_path.iterdir()) == []


def boom(*args, **kwargs):
    raise OSError("disk full (simulated)")


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("patched", ["replace", "fsync"])
@pytest.mark.parametrize("failure", [boom, interrupt], ids=["oserror", "keyboardinterrupt"])
def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, patched, failure):
    path = tmp_path / "model.safetensors"
    old = init_canonical(CFG, seed=1)
    save_checkpoint(path, old, CFG, metadata={"epoch": "1"})
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.os, patched, failure)
    expected = KeyboardInterrupt if failure is interrupt else OSError
    with pytest.raises(expected):
        save_checkpoint(path, init_canonical(CFG, seed=2), CFG, metadata={"epoch": "2"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    state, _, meta = load_checkpoint(path)
    assert meta == {"epoch": "1"}
    assert all(np.array_equal(state[k], v) for k, v in old.items())
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"], "a temporary file was left behind"


def test_save_creates_parent_directories_and_overwrites(tmp_path):
    path = tmp_path / "runs" / "a" / "model.safetensors"
    save_checkpoint(path, init_canonical(CFG, seed=1), CFG)
    save_checkpoint(path, init_canonical(CFG, seed=2), CFG)
    state, _, _ = load_checkpoint(path)
    want = init_canonical(CFG, seed=2)["decoder.out.bias"]
    assert np.array_equal(state["decoder.out.bias"], want)
    assert sorted(os.listdir(path.parent)) == ["model.safetensors"]
