"""``vae_torch.train.make_compiled_step`` (``Trainer(compile=True)``): gradients from one compiled
graph, then torch's Adam update, follow the same trajectory as the eager ``train_step``, keep
``torch.optim.Adam``'s state usable, and do not recompile as beta changes.

Compared in float64, where the only differences are rounding (the compiled graph orders some sums
differently), against the trajectory tolerance of the one table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vae_common.compare import TRAJECTORY_TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools.cli import main
from vae_torch.device import DeviceError
from vae_torch.train import Trainer, cpu_compiler, make_compiled_step, make_optimizer

# Compiling takes seconds per model (about 17 s cold on 2 cores): these run in `make test` and
# are left out of `make test-fast` (marked slow).
_no_compiler = pytest.mark.skipif(
    cpu_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler"
)


def needs_compiler(test):
    return pytest.mark.slow(_no_compiler(test))


CONFIG = VAEConfig(input_shape=(1, 6, 6), hidden=(16,), latent_dim=3)
STEPS = 12


def _batches(dtype, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.random((STEPS, 8) + CONFIG.input_shape).astype(dtype)
    eps = rng.standard_normal((STEPS, 8, CONFIG.latent_dim)).astype(dtype)
    return xs, eps


def _trained(compile: bool, train: TrainConfig, dtype="float64", resume_at=None):
    trainer = Trainer(CONFIG, train, dtype, device="cpu", compile=compile)
    trainer.load_state_dict(init_canonical(CONFIG, 0, dtype))
    xs, eps = _batches(dtype)
    if resume_at is None:
        losses = trainer.run_steps(xs, eps)
    else:  # stop, move the state through canonical arrays, go on in a fresh trainer
        first = trainer.run_steps(xs[:resume_at], eps[:resume_at])
        resumed = Trainer(CONFIG, train, dtype, device="cpu", compile=compile)
        resumed.load_state_dict(trainer.state_dict())
        resumed.load_optimizer_state_dict(trainer.optimizer_state_dict(), trainer.step)
        losses = np.concatenate([first, resumed.run_steps(xs[resume_at:], eps[resume_at:])])
        trainer = resumed
    return trainer, losses


@pytest.fixture(scope="module")
def eager_and_compiled():
    train = TrainConfig(lr=1e-2, warmup_steps=5, free_bits=0.05)
    return _trained(False, train), _trained(True, train), train


@needs_compiler
def test_compiled_step_follows_the_eager_trajectory_float64(eager_and_compiled):
    (eager, eager_losses), (compiled, compiled_losses), _ = eager_and_compiled
    tol = TRAJECTORY_TOLERANCES["float64"]
    assert rel_diff(compiled_losses, eager_losses) <= tol
    params_e, params_c = eager.state_dict(), compiled.state_dict()
    assert params_c.keys() == params_e.keys()
    for name in params_e:
        assert rel_diff(params_c[name], params_e[name]) <= tol, name
    adam_e, adam_c = eager.optimizer_state_dict(), compiled.optimizer_state_dict()
    assert adam_c.keys() == adam_e.keys()
    for name in adam_e:
        assert rel_diff(adam_c[name], adam_e[name]) <= tol, name
    assert compiled.step == eager.step == STEPS
    # The weights moved: the comparison above is not between two copies of the initialisation.
    init = init_canonical(CONFIG, 0, "float64")
    assert max(rel_diff(params_c[n], init[n]) for n in init) > 1e-3


@needs_compiler
def test_compiled_step_resumes_from_canonical_optimizer_state(eager_and_compiled):
    (_, eager_losses), _, train = eager_and_compiled
    resumed, losses = _trained(True, train, resume_at=5)
    assert rel_diff(losses, eager_losses) <= TRAJECTORY_TOLERANCES["float64"]
    assert resumed.step == STEPS


@needs_compiler
def test_beta_changes_do_not_recompile():
    torch._dynamo.reset()
    trainer = Trainer(CONFIG, TrainConfig(warmup_steps=100), "float32", device="cpu")
    trainer.load_state_dict(init_canonical(CONFIG, 0, "float32"))
    step = make_compiled_step(trainer.model, trainer.optimizer)
    xs, eps = _batches("float32")
    x, e = torch.as_tensor(xs[0]), torch.as_tensor(eps[0])
    from torch._dynamo.utils import counters

    counters.clear()
    for i in range(4):
        assert torch.isfinite(step(x, e, beta=i / 100))
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_step_refuses_optimizers_it_cannot_reproduce():
    trainer = Trainer(CONFIG, TrainConfig(), "float32", device="cpu")
    sgd = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="torch.optim.Adam"):
        make_compiled_step(trainer.model, sgd)
    amsgrad = torch.optim.Adam(trainer.model.parameters(), amsgrad=True)
    with pytest.raises(ConfigError, match="amsgrad"):
        make_compiled_step(trainer.model, amsgrad)
    other = make_optimizer(Trainer(CONFIG, TrainConfig(), device="cpu").model, TrainConfig())
    with pytest.raises(ConfigError, match="exactly the model's parameters"):
        make_compiled_step(trainer.model, other)


def test_missing_cpu_compiler_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    trainer = Trainer(CONFIG, TrainConfig(), "float32", device="cpu")
    missing = "'no-such-c\\+\\+-compiler' was not found"
    with pytest.raises(DeviceError, match=missing):
        make_compiled_step(trainer.model, trainer.optimizer)
    with pytest.raises(DeviceError, match=missing):  # refused at once, not at the first step
        Trainer(CONFIG, TrainConfig(), "float32", device="cpu", compile=True)
    code = main(
        [
            "train",
            "--backend",
            "torch",
            "--compile",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "needs a C++ compiler" in capsys.readouterr().err


@needs_compiler
def test_each_compiled_step_has_its_own_cache():
    # torch.compile keeps graphs per code object up to a recompile limit (8 by default) and,
    # under fullgraph=True, fails past it: a sweep over models in one process must not hit it.
    xs, eps = _batches("float64")
    with torch._dynamo.config.patch(recompile_limit=1):
        for hidden in (5, 6, 7):
            config = VAEConfig(input_shape=CONFIG.input_shape, hidden=(hidden,), latent_dim=3)
            losses = {}
            for compile in (False, True):
                trainer = Trainer(config, TrainConfig(), "float64", device="cpu", compile=compile)
                trainer.load_state_dict(init_canonical(config, 0, "float64"))
                losses[compile] = trainer.run_steps(xs[:2], eps[:2])
            assert rel_diff(losses[True], losses[False]) <= TRAJECTORY_TOLERANCES["float64"]
