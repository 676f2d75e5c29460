"""Every tensor is checked before it reaches an optimizer or a kernel, in both backends, with the
same message; state files load or fail with ``CheckpointError``, saying why.

The shared checks live in ``vae_common.checkpoint`` and ``vae_common.trainer.TrainerBase``; the
property-based version of the file checks is ``tests/test_fuzz_state_files.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

import vae_jax
import vae_jax.train
import vae_torch
import vae_torch.train
from vae_common import checkpoint
from vae_common.checkpoint import (
    DIGEST_KEY,
    FORMAT,
    CheckpointError,
    check_state,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.errors import ResumeError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig, optimizer_state_names
from vae_tools import cli
from vae_tools.run_state import PARAM, RunSettings, load_train_state, save_train_state

CFG = VAEConfig(input_shape=(1, 4, 4), hidden=(5,), latent_dim=2)
TRAIN = TrainConfig(lr=1e-2)
SETTINGS = RunSettings(dataset="unit", batch_size=4)
TRAINERS = {"jax": vae_jax.train.Trainer, "torch": vae_torch.train.Trainer}
BACKENDS = tuple(TRAINERS)
MOMENT = "adam.exp_avg_sq.decoder.hidden.0.bias"


def trained(backend: str) -> vae_jax.train.Trainer | vae_torch.train.Trainer:
    """A float32 trainer after two Adam steps (non-zero moments, step 2)."""
    trainer = TRAINERS[backend](CFG, TRAIN, "float32", device="cpu")
    trainer.load_state_dict(init_canonical(CFG, seed=0, dtype="float32"))
    rng = np.random.default_rng(0)
    trainer.run_steps(rng.random((2, 4, *CFG.input_shape)), rng.standard_normal((2, 4, 2)))
    return trainer


@pytest.fixture(scope="module")
def adam_state():
    """``(weights, moments, step)`` of a trained torch trainer."""
    trainer = trained("torch")
    return trainer.state_dict(), trainer.optimizer_state_dict(), trainer.step


@pytest.fixture(scope="module")
def fresh():
    """``{backend: trainer}`` with weights loaded, for the loads that must be refused."""
    out = {}
    for backend, cls in TRAINERS.items():
        out[backend] = cls(CFG, TRAIN, "float32", device="cpu")
        out[backend].load_state_dict(init_canonical(CFG, seed=0, dtype="float32"))
    return out


def refusals(fresh, call) -> dict[str, str]:
    """``{backend: message}`` of the CheckpointError ``call(trainer)`` raises in each backend."""
    messages = {}
    for backend, trainer in fresh.items():
        with pytest.raises(CheckpointError) as info:
            call(trainer)
        messages[backend] = str(info.value)
    return messages


# -- the native crash: Adam moments checked before the fused kernel sees them ---------------------


def vae_command() -> list[str]:
    script = Path(sys.executable).with_name("vae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vae_tools.cli"]


@pytest.mark.slow
def test_resume_with_a_short_adam_moment_exits_2_instead_of_corrupting_the_heap(tmp_path):
    # Before the check, torch's fused Adam ran on a (1,) moment of a (32,) parameter and glibc
    # aborted ("corrupted double-linked list"); the resume runs in a subprocess so that a
    # regression kills only it.
    out = tmp_path / "run"
    args = ["train", "--backend", "torch", "--dataset", "digits", "--hidden", "32"]
    args += ["--latent-dim", "2", "--device", "cpu", "--quiet", "--out", str(out)]
    assert cli.main([*args, "--epochs", "1"]) == 0
    path = out / "train_state.safetensors"
    tensors, meta = load_tensors(path)
    tensors[MOMENT] = tensors[MOMENT][:1].copy()
    save_tensors(path, tensors, meta)
    proc = subprocess.run(
        [*vae_command(), *args, "--epochs", "2", "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert f"tensor {MOMENT!r} has shape (1,) and dtype float32" in proc.stderr
    assert "expected shape (32,) and dtype float32" in proc.stderr
    assert "Traceback" not in proc.stderr


def shrink(m: np.ndarray) -> np.ndarray:
    return m[:1].copy()


def grow(m: np.ndarray) -> np.ndarray:
    return np.concatenate([m, m[:1]])


def with_value(value: float):
    def edit(m: np.ndarray) -> np.ndarray:
        m = m.copy()
        m[0] = value
        return m

    return edit


MOMENT_EDITS = {
    "shorter": (shrink, "has shape (1,) and dtype float32; expected shape (5,) and dtype float32"),
    "longer": (grow, "has shape (6,) and dtype float32; expected shape (5,) and dtype float32"),
    "int32": (
        lambda m: m.astype(np.int32),
        "has shape (5,) and dtype int32; expected shape (5,) and dtype float32",
    ),
    "float64": (
        lambda m: m.astype(np.float64),
        "has shape (5,) and dtype float64; expected shape (5,) and dtype float32",
    ),
    "bool": (lambda m: m > 0, "dtype bool; expected shape (5,) and dtype float32"),
    "nan": (with_value(np.nan), "holds 1 non-finite value (NaN or Inf)"),
    "inf": (with_value(np.inf), "holds 1 non-finite value (NaN or Inf)"),
    "negative": (with_value(-1.0), "holds negative values"),
}


@pytest.mark.parametrize("edit", sorted(MOMENT_EDITS))
def test_a_bad_adam_moment_is_refused_by_both_backends_with_one_message(edit, adam_state, fresh):
    _, moments, step = adam_state
    change, expected = MOMENT_EDITS[edit]
    bad = {**moments, MOMENT: change(moments[MOMENT])}
    before = {b: t.optimizer_state_dict() for b, t in fresh.items()}
    messages = refusals(fresh, lambda t: t.load_optimizer_state_dict(bad, step))
    assert messages["jax"] == messages["torch"]
    assert messages["torch"].startswith(f"optimizer state: tensor {MOMENT!r} ")
    assert expected in messages["torch"]
    for backend, trainer in fresh.items():  # a refused load leaves the trainer as it was
        after = trainer.optimizer_state_dict()
        assert all(np.array_equal(after[n], before[backend][n]) for n in after), backend
        assert trainer.step == 0


@pytest.mark.parametrize("edit", ["missing", "extra"])
def test_missing_or_extra_adam_tensors_are_named(edit, adam_state, fresh):
    _, moments, step = adam_state
    bad = dict(moments)
    if edit == "missing":
        del bad[MOMENT]
        expected = f"missing tensors [{MOMENT!r}]"
    else:
        bad["adam.exp_avg_sq.decoder.hidden.9.bias"] = moments[MOMENT]
        expected = "unexpected tensors ['adam.exp_avg_sq.decoder.hidden.9.bias']"
    messages = refusals(fresh, lambda t: t.load_optimizer_state_dict(bad, step))
    assert messages["jax"] == messages["torch"]
    assert expected in messages["torch"]


@pytest.mark.parametrize("step", [-1, 2**31, 1.5, True, "3", None])
def test_the_step_count_must_be_a_non_negative_integer(step, adam_state, fresh):
    _, moments, _ = adam_state
    messages = refusals(fresh, lambda t: t.load_optimizer_state_dict(moments, step))
    assert messages["jax"] == messages["torch"]
    assert "step count must be" in messages["torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checked_state_still_round_trips_and_steps(backend, adam_state):
    weights, moments, step = adam_state
    trainer = TRAINERS[backend](CFG, TRAIN, "float32", device="cpu")
    trainer.load_state_dict(weights)
    trainer.load_optimizer_state_dict(moments, np.int64(step))
    assert trainer.step == step
    got = trainer.optimizer_state_dict()
    assert all(np.array_equal(got[n], moments[n]) for n in optimizer_state_names(CFG))
    rng = np.random.default_rng(1)
    losses = trainer.run_steps(rng.random((1, 4, *CFG.input_shape)), rng.standard_normal((1, 4, 2)))
    assert np.all(np.isfinite(losses)) and trainer.step == step + 1


# -- weights: finite, exactly the spec -----------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_naming_the_tensor(value, fresh):
    state = init_canonical(CFG, seed=0, dtype="float32")
    state["decoder.out.weight"][3, 1] = value
    with pytest.raises(CheckpointError, match=r"tensor 'decoder\.out\.weight' holds 1 non-finite"):
        check_state(state, CFG)
    messages = refusals(fresh, lambda t: t.load_state_dict(state))
    assert messages["jax"] == messages["torch"]
    assert "'decoder.out.weight' holds 1 non-finite value" in messages["torch"]
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(Path(os.devnull), state, CFG)


def test_vae_eval_of_a_checkpoint_with_nan_weights_exits_2_naming_the_tensor(tmp_path, capsys):
    config = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    state = init_canonical(config, seed=0, dtype="float32")
    state["encoder.mean.bias"][0] = np.nan
    path = tmp_path / "nan.safetensors"
    save_tensors(path, state, {"format": FORMAT, "config": config.to_json()})  # bypasses checks
    argv = ["eval", "--checkpoint", str(path), "--backend", "torch", "--dataset", "digits"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "'encoder.mean.bias' holds 1 non-finite value" in err
    assert "nan" not in out.lower()


def torch_mapping(edit: str) -> dict[str, torch.Tensor]:
    model = vae_torch.build_model(CFG)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    if edit == "missing":
        del params["decoder.hidden.0.bias"]
    elif edit == "extra":
        params["encoder.extra"] = torch.zeros(2)
    elif edit == "shape":
        params["encoder.mean.bias"] = torch.zeros(3)
    elif edit == "dtype":
        params["encoder.mean.bias"] = torch.zeros(2, dtype=torch.float64)
    return params


def jax_mapping(edit: str) -> dict:
    model = vae_jax.build_model(CFG)
    params = vae_jax.from_canonical(model, init_canonical(CFG, seed=0, dtype="float32"))
    if edit == "missing":
        del params["decoder"]["hidden_0"]["bias"]
    elif edit == "extra":
        params["encoder"]["extra"] = np.zeros(2, np.float32)
    elif edit == "shape":
        params["encoder"]["mean"]["bias"] = np.zeros(3, np.float32)
    elif edit == "dtype":
        params["encoder"]["mean"]["bias"] = np.zeros(2, np.float64)
    return params


PARAM_EDITS = {
    "missing": "the params mapping does not match the config: missing tensors "
    "['decoder.hidden.0.bias']",
    "extra": "the params mapping does not match the config: unexpected tensors ['encoder{}extra']",
    "shape": "the params mapping: tensor 'encoder.mean.bias' has shape (3,) and dtype float32; "
    "expected shape (2,) and dtype float32",
    "dtype": "the params mapping: tensor 'encoder.mean.bias' has shape (2,) and dtype float64; "
    "expected shape (2,) and dtype float32",
}


@pytest.mark.parametrize("edit", sorted(PARAM_EDITS))
@pytest.mark.parametrize("entry", ["encode", "decode", "elbo_terms"])
def test_a_params_mapping_must_match_the_spec_in_both_backends(edit, entry):
    # torch's functional_call used the module's own weight for a missing key and ignored an
    # extra one; Flax ignored extra keys too. Each public function routes through the check.
    x = np.random.default_rng(0).random((3, *CFG.input_shape)).astype(np.float32)
    z = np.zeros((3, 2), np.float32)
    messages = {}
    for name, backend, model, params in (
        ("torch", vae_torch, vae_torch.build_model(CFG), torch_mapping(edit)),
        ("jax", vae_jax, vae_jax.build_model(CFG), jax_mapping(edit)),
    ):
        args = {"encode": (x,), "decode": (z,), "elbo_terms": (x, z)}[entry]
        with pytest.raises(CheckpointError) as info:
            getattr(backend, entry)(model, params, *args)
        messages[name] = str(info.value)
    expected = PARAM_EDITS[edit]
    assert messages["torch"] == expected.format(".")
    assert messages["jax"] == expected.format("/")  # a path the table does not know, as a path


def test_an_exact_params_mapping_computes_what_the_module_computes():
    model = vae_torch.build_model(CFG)
    x = torch.rand((3, *CFG.input_shape))
    params = torch_mapping("none")
    with torch.no_grad():
        for p in params.values():
            p.mul_(2.0)  # different from the module's own, so a fallback would show
        got = vae_torch.encode(model, params, x)[0]
        own = vae_torch.encode(model, None, x)[0]
        vae_torch.from_canonical(model, {k: v.numpy() for k, v in params.items()})
        want = vae_torch.encode(model, None, x)[0]
    assert torch.equal(got, want) and not torch.equal(got, own)


# -- files: unreadable, corrupted, invalid --------------------------------------------------------


def test_a_directory_a_missing_file_and_a_file_parent_are_told_apart(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory, not a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist$"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="a parent is not a directory"):
        load_checkpoint(tmp_path / "file" / "m.safetensors")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_checkpoint(fifo)


def test_an_unreadable_file_is_reported_as_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_canonical(CFG), CFG)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    # Simulated: the tests may run as root, who can read a mode-000 file.
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(CheckpointError, match="cannot be read: Permission denied") as info:
        load_checkpoint(path)
    assert "does not exist" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_a_mode_000_file_is_reported_as_permission_denied(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_canonical(CFG), CFG)
    path.chmod(0)
    with pytest.raises(CheckpointError, match="cannot be read: Permission denied"):
        load_checkpoint(path)


def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + data


@pytest.mark.parametrize(
    "content",
    [
        safetensors_bytes(b"{this is not json}"),
        safetensors_bytes(b'{"__metadata__": {"format": 1}}'),
        safetensors_bytes(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"\0"),
        safetensors_bytes(
            b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8
        ),
        (2**40).to_bytes(8, "little") + b"{}",
    ],
    ids=["header-not-json", "metadata-not-strings", "short-data", "shape-vs-offsets", "huge"],
)
def test_a_malformed_safetensors_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tensors(path)


def test_a_dtype_numpy_cannot_hold_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    header = b'{"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}'
    path.write_bytes(safetensors_bytes(header, b"\0" * 4))
    with pytest.raises(CheckpointError, match="tensor 'w' has dtype BF16"):
        load_tensors(path)


def test_a_flipped_byte_in_the_data_is_detected_by_the_digest(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_canonical(CFG, dtype="float32"), CFG)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # a mantissa bit of the last tensor: still a finite float
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"is corrupted: .* {DIGEST_KEY}"):
        load_checkpoint(path)


def test_the_digest_is_not_returned_and_files_without_one_still_load(tmp_path):
    path = tmp_path / "m.safetensors"
    state = init_canonical(CFG)
    save_checkpoint(path, state, CFG, metadata={"note": "x"})
    tensors, meta = load_tensors(path)
    assert DIGEST_KEY not in meta and meta["note"] == "x"
    assert (
        checkpoint.content_digest(tensors, meta)
        == json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])[
            "__metadata__"
        ][DIGEST_KEY]
    )
    # Written by plain safetensors (another tool): no digest, loads unchecked.
    plain = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file(
        state, str(plain), metadata={"format": FORMAT, "config": CFG.to_json()}
    )
    loaded, config, _ = load_checkpoint(plain)
    assert config == CFG and all(np.array_equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.bool_])
def test_a_retyped_weight_is_named(tmp_path, dtype):
    path = tmp_path / "m.safetensors"
    state = init_canonical(CFG, dtype="float32")
    state["encoder.mean.weight"] = state["encoder.mean.weight"].astype(dtype)
    save_tensors(path, state, {"format": FORMAT, "config": CFG.to_json()})
    with pytest.raises(CheckpointError, match=f"'encoder.mean.weight' has dtype {np.dtype(dtype)}"):
        load_checkpoint(path)


# -- train states: every stored field validated --------------------------------------------------


@pytest.fixture(scope="module")
def train_state_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("state") / "train_state.safetensors"
    save_train_state(path, trained("torch"), CFG, TRAIN, SETTINGS, epoch=1)
    return path


def edited(src: Path, dst: Path, tensors=None, **meta_changes) -> Path:
    """A copy of the train state ``src`` at ``dst`` with metadata (None: removed) or tensors
    changed, re-saved with a valid digest (so the loader's own checks are what is tested)."""
    old_tensors, meta = load_tensors(src)
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_tensors(dst, old_tensors if tensors is None else tensors(dict(old_tensors)), meta)
    return dst


def test_a_train_state_round_trips(train_state_file):
    params, opt, epoch, step = load_train_state(train_state_file, CFG, TRAIN, SETTINGS)
    trainer = trained("torch")
    assert (epoch, step) == (1, 2)
    assert all(np.array_equal(params[k], v) for k, v in trainer.state_dict().items())
    assert all(np.array_equal(opt[k], v) for k, v in trainer.optimizer_state_dict().items())


META_EDITS = {
    "format": ({"format": FORMAT}, "is not a training state"),
    "epoch-negative": ({"epoch": "-1"}, "stored epoch must be an integer"),
    "epoch-float": ({"epoch": "1.5"}, "stored epoch must be an integer"),
    "epoch-text": ({"epoch": "one"}, "stored epoch must be an integer"),
    "epoch-missing": ({"epoch": None}, "stored epoch must be an integer"),
    "epoch-space": ({"epoch": " 1"}, "stored epoch must be an integer"),
    "step-huge": ({"step": "99999999999999999999999"}, "stored step must be an integer"),
    "step-too-big": ({"step": str(2**31)}, "stored step must be in"),
    "config-not-json": ({"config": "{"}, "stored config is not valid JSON"),
    "config-invalid": ({"config": '{"latent_dim": 0}'}, "stored config is invalid"),
    "config-missing": ({"config": None}, "without its stored config"),
    "train-not-json": ({"train": "]"}, "stored training settings are invalid"),
    "train-wrong-type": ({"train": '{"lr": "fast"}'}, "stored training settings are invalid"),
    "settings-not-object": ({"settings": "[1, 2]"}, "stored run settings are not a JSON object"),
    "settings-not-json": ({"settings": "{'a': 1}"}, "stored settings is not valid JSON"),
}


@pytest.mark.parametrize("edit", sorted(META_EDITS))
def test_edited_train_state_metadata_is_a_checkpoint_error_naming_the_path(
    edit, train_state_file, tmp_path
):
    changes, expected = META_EDITS[edit]
    path = edited(train_state_file, tmp_path / "edited.safetensors", **changes)
    with pytest.raises(CheckpointError) as info:
        load_train_state(path, CFG, TRAIN, SETTINGS)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_valid_state_of_other_settings_is_still_a_refused_resume(train_state_file, tmp_path):
    other = json.dumps({**json.loads(load_tensors(train_state_file)[1]["settings"]), "seed": 7})
    path = edited(train_state_file, tmp_path / "other.safetensors", settings=other)
    with pytest.raises(ResumeError, match=r'--resume refused: .*"seed": \[7, 0\]'):
        load_train_state(path, CFG, TRAIN, SETTINGS)


def retype(name: str, dtype):
    def change(tensors):
        tensors[name] = tensors[name].astype(dtype)
        return tensors

    return change


TENSOR_EDITS = {
    "weight-float16": (
        retype(PARAM + "encoder.mean.bias", np.float16),
        "'encoder.mean.bias' has dtype float16",
    ),
    "all-weights-float64": (
        lambda t: {k: v.astype(np.float64) if k.startswith(PARAM) else v for k, v in t.items()},
        "the weights are float64 but the run is float32",
    ),
    "moment-int32": (retype(MOMENT, np.int32), f"{MOMENT!r} has shape (5,) and dtype int32"),
    "moment-reshaped": (
        lambda t: {**t, MOMENT: t[MOMENT].reshape(5, 1)},
        f"{MOMENT!r} has shape (5, 1) and dtype float32; expected shape (5,)",
    ),
    "moment-removed": (
        lambda t: {k: v for k, v in t.items() if k != MOMENT},
        f"missing tensors [{MOMENT!r}]",
    ),
    "tensor-added": (
        lambda t: {**t, "notes": np.zeros(2, np.float32)},
        "unexpected tensors ['notes']",
    ),
    "weight-added": (
        lambda t: {**t, PARAM + "encoder.extra": np.zeros(2, np.float32)},
        "unexpected tensors ['encoder.extra']",
    ),
}


@pytest.mark.parametrize("edit", sorted(TENSOR_EDITS))
def test_edited_train_state_tensors_are_named(edit, train_state_file, tmp_path):
    change, expected = TENSOR_EDITS[edit]
    path = edited(train_state_file, tmp_path / "edited.safetensors", tensors=change)
    with pytest.raises(CheckpointError) as info:
        load_train_state(path, CFG, TRAIN, SETTINGS)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_the_file_check_and_the_trainer_check_agree(train_state_file, tmp_path):
    # The same short moment refused by load_train_state (naming the file) and, given directly,
    # by the Trainer (naming the optimizer state): one check, two callers.
    path = edited(
        train_state_file, tmp_path / "short.safetensors", tensors=retype(MOMENT, np.int32)
    )
    with pytest.raises(CheckpointError) as from_file:
        load_train_state(path, CFG, TRAIN, SETTINGS)
    tensors, _ = load_tensors(path)
    trainer = trained("torch")
    with pytest.raises(CheckpointError) as from_trainer:
        trainer.load_optimizer_state_dict(
            {k: v for k, v in tensors.items() if not k.startswith(PARAM)}, 2
        )
    assert str(from_file.value).removeprefix(f"{path}: ") == str(from_trainer.value).removeprefix(
        "optimizer state: "
    )
