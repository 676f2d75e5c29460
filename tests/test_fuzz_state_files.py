"""Property: whatever happens to a checkpoint or a train-state file, loading it either returns
exactly what was saved or raises ``CheckpointError``, never another exception.

Two families of damage, each for both kinds of file:

- bytes: truncation at any point, or one to three flipped bytes anywhere (header, metadata,
  tensor data, the digest itself). The digest ``save_tensors`` stores is what turns a flipped
  data byte into an error rather than a different model.
- structure: tensors removed, added, reshaped or retyped (int32, float16, bool, ...), metadata
  values edited or removed; the file is written again with a valid digest (or none), so the
  loader's own checks are what is tested, not the digest.

A train state is loaded the way ``--resume`` loads it: ``load_train_state``, then
``Trainer.load_state_dict`` and ``load_optimizer_state_dict`` in both backends; whatever
``load_train_state`` accepts, both trainers must accept too. A valid file made with other
settings (an edited config or run settings that still parse) is the refused resume it describes,
``ResumeError``. Examples are derandomized so the suite is stable; each test asserts that both
outcomes occurred and prints its counts (``pytest -s``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vae_jax.train
import vae_torch.train
from vae_common.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.errors import ResumeError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools.run_state import PARAM, RunSettings, load_train_state, save_train_state

CFG = VAEConfig(input_shape=(1, 4, 4), hidden=(5,), latent_dim=2)
TRAIN = TrainConfig(lr=1e-2)
SETTINGS = RunSettings(dataset="fuzz", batch_size=4)
EPOCH = 1
STEP = 2  # the two Adam steps of the original
# 50 examples a test, 200 in all; derandomized: the same cases on every run.
FUZZ = settings(
    max_examples=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Saved:
    """One file as written, and what loading it must give back."""

    path: Path
    data: bytes
    header_end: int  # 8 + header length: where the tensor data starts
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]


def saved(path: Path) -> Saved:
    data = path.read_bytes()
    tensors, metadata = load_tensors(path)
    return Saved(path, data, 8 + int.from_bytes(data[:8], "little"), tensors, metadata)


@pytest.fixture(scope="module")
def trainers():
    """``{backend: trainer}``; loads replace the whole state, so one of each serves every case."""
    out = {}
    for backend, cls in (("jax", vae_jax.train.Trainer), ("torch", vae_torch.train.Trainer)):
        out[backend] = cls(CFG, TRAIN, "float32", device="cpu")
    return out


@pytest.fixture(scope="module")
def originals(tmp_path_factory, trainers):
    """The checkpoint and the train state of a torch trainer after two Adam steps."""
    root = tmp_path_factory.mktemp("fuzz-originals")
    trainer = trainers["torch"]
    trainer.load_state_dict(init_canonical(CFG, seed=0, dtype="float32"))
    rng = np.random.default_rng(0)
    trainer.run_steps(rng.random((STEP, 4, *CFG.input_shape)), rng.standard_normal((STEP, 4, 2)))
    save_checkpoint(root / "checkpoint.safetensors", trainer.state_dict(), CFG, {"epoch": "1"})
    save_train_state(root / "train_state.safetensors", trainer, CFG, TRAIN, SETTINGS, EPOCH)
    return {
        "checkpoint": saved(root / "checkpoint.safetensors"),
        "train_state": saved(root / "train_state.safetensors"),
    }


def same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    """The same names, dtypes, shapes and values (bit for bit: no NaN in these states)."""
    return set(got) == set(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want
    )


# -- what loading must do --------------------------------------------------------------------------


def outcome_of_checkpoint(path: Path, original: Saved, trainers) -> str:
    try:
        state, config, _ = load_checkpoint(path)
    except CheckpointError:
        return "refused"
    assert config == CFG, f"a damaged checkpoint loaded with another config: {config}"
    assert same(state, original.tensors), "a damaged checkpoint loaded other weights"
    for trainer in trainers.values():  # what ``vae eval`` does next
        trainer.load_state_dict(state)
        assert same(trainer.state_dict(), state)
    return "loaded"


def outcome_of_train_state(path: Path, original: Saved, trainers) -> str:
    try:
        params, opt, epoch, step = load_train_state(path, CFG, TRAIN, SETTINGS)
    except CheckpointError:
        return "refused"
    except ResumeError as exc:
        assert str(exc).startswith("--resume refused:")
        return "resume refused"
    want_params = {
        k.removeprefix(PARAM): v for k, v in original.tensors.items() if k.startswith(PARAM)
    }
    want_opt = {k: v for k, v in original.tensors.items() if not k.startswith(PARAM)}
    assert (epoch, step) == (EPOCH, STEP), f"loaded epoch {epoch}, step {step}"
    assert same(params, want_params) and same(opt, want_opt), "loaded another state"
    for trainer in trainers.values():  # what ``--resume`` does next; must not refuse now
        trainer.load_state_dict(params)
        trainer.load_optimizer_state_dict(opt, step)
        assert trainer.step == step
        assert same(trainer.optimizer_state_dict(), opt)
    return "loaded"


OUTCOME = {"checkpoint": outcome_of_checkpoint, "train_state": outcome_of_train_state}


# -- damage: bytes ---------------------------------------------------------------------------------


@st.composite
def byte_damage(draw, original: Saved):
    n = len(original.data)
    if draw(st.booleans()):
        return ("truncate", draw(st.integers(0, n - 1)))
    # Half the flips land in the header (metadata, names, shapes, offsets), which is small.
    position = st.one_of(st.integers(0, original.header_end - 1), st.integers(0, n - 1))
    flips = draw(st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=3))
    return ("flip", flips)


def apply_bytes(original: Saved, damage) -> bytes:
    kind, arg = damage
    if kind == "truncate":
        return original.data[:arg]
    data = bytearray(original.data)
    for position, mask in arg:
        data[position] ^= mask
    return bytes(data)


# -- damage: structure -----------------------------------------------------------------------------

RETYPES = [np.int32, np.float16, np.bool_, np.float64, np.int64, np.uint8]
RESHAPES = ["flatten", "add-axis", "reverse-axes", "shorter", "longer", "empty"]
# Metadata values that are not what a writer of this project stores (nor a plain valid count).
ODD_VALUES = [
    "",
    "-1",
    "1.5",
    " 1",
    "+1",
    "1e3",
    "NaN",
    "null",
    "[]",
    "{}",
    "{",
    '{"latent_dim": 0}',
    '{"lr": "fast"}',
    "99999999999999999999",
    str(2**31),
    "vae-twin/2",
]


def reshape(arr: np.ndarray, how: str) -> np.ndarray:
    if how == "flatten":
        return arr.reshape(-1)
    if how == "add-axis":
        return arr[None]
    if how == "reverse-axes":
        return arr.reshape(arr.shape[::-1])
    if how == "shorter":
        return arr.reshape(-1)[:1].copy()
    if how == "longer":
        return np.concatenate([arr.reshape(-1), arr.reshape(-1)[:1]])
    return arr.reshape(-1)[:0].copy()


@st.composite
def structure_damage(draw, original: Saved):
    names = sorted(original.tensors)
    keys = sorted(set(original.metadata) | {"format", "config", "epoch", "step", "extra"})
    text = st.text(max_size=12).filter(lambda v: not (v.isascii() and v.isdigit()))
    value = st.one_of(st.sampled_from(ODD_VALUES), text, st.none())  # None: key removed
    one = st.one_of(
        st.tuples(st.just("remove"), st.sampled_from(names)),
        st.tuples(
            st.just("add"),
            st.sampled_from(["extra", "param.extra", "adam.exp_avg.extra", names[0] + ".x"]),
            st.sampled_from(RETYPES + [np.float32]),
            st.lists(st.integers(0, 3), max_size=2),
        ),
        st.tuples(st.just("reshape"), st.sampled_from(names), st.sampled_from(RESHAPES)),
        st.tuples(st.just("retype"), st.sampled_from(names), st.sampled_from(RETYPES)),
        st.tuples(st.just("metadata"), st.sampled_from(keys), value),
    )
    return draw(st.lists(one, min_size=1, max_size=3)), draw(st.booleans())


def apply_structure(original: Saved, damage, path: Path) -> None:
    edits, with_digest = damage
    tensors, meta = dict(original.tensors), dict(original.metadata)
    for edit in edits:
        kind, name = edit[0], edit[1]
        if kind == "remove":
            tensors.pop(name, None)
        elif kind == "add":
            tensors[name] = np.zeros(edit[3], edit[2])
        elif kind == "reshape" and name in tensors:
            tensors[name] = reshape(tensors[name], edit[2])
        elif kind == "retype" and name in tensors:
            tensors[name] = tensors[name].astype(edit[2])
        elif kind == "metadata":
            if edit[2] is None:
                meta.pop(name, None)
            else:
                meta[name] = edit[2]
    if with_digest:
        save_tensors(path, tensors, meta)
    else:  # as another tool would write it
        meta.pop(DIGEST_KEY, None)
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        path.write_bytes(safetensors.numpy.save(arrays, metadata=meta))


# -- the properties ----------------------------------------------------------------------------


def run_fuzz(kind: str, family: str, originals, trainers, tmp_path) -> collections.Counter:
    original = originals[kind]
    path = tmp_path / f"damaged-{kind}.safetensors"
    counts: collections.Counter = collections.Counter()
    damage = byte_damage(original) if family == "bytes" else structure_damage(original)

    @FUZZ
    @given(damage=damage)
    def check(damage):
        if family == "bytes":
            path.write_bytes(apply_bytes(original, damage))
        else:
            apply_structure(original, damage, path)
        counts[OUTCOME[kind](path, original, trainers)] += 1

    check()
    print(f"\n{kind} {family}: {sum(counts.values())} cases, {dict(counts)}")
    return counts


@pytest.mark.parametrize("family", ["bytes", "structure"])
@pytest.mark.parametrize("kind", ["checkpoint", "train_state"])
def test_a_damaged_file_loads_unchanged_or_raises_checkpoint_error(
    kind, family, originals, trainers, tmp_path
):
    counts = run_fuzz(kind, family, originals, trainers, tmp_path)
    assert sum(counts.values()) >= 40  # hypothesis ran the cases, not a handful
    assert counts["refused"] > 0
    if family == "bytes":
        # Some damage leaves the state intact (a flip in a padding space or a cancelled flip);
        # what matters is that it then loads exactly, which the outcome functions assert.
        assert counts["refused"] > counts["loaded"]
