"""``make_compiled_step(skip_guards=True)`` (the default, ``Trainer(compile=True)``'s): one
compiled graph per call key, run without guard evaluation once the key has made its guarded
calls, gives exactly the numbers of the guarded path (``skip_guards=False``), for an odd-sized
batch and a change of precision too: the Python dispatch on the key keeps every call on a graph
made for its inputs.

Compiling takes seconds per graph: those tests are marked slow, as in ``test_torch_compiled_step``.
Also the interleaved A/B of ``vae_tools.bench.guards_ab`` that measures the two.
"""

import numpy as np
import pytest
import torch

from vae_common.config import VAEConfig
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools.bench import guards_ab
from vae_torch import _compile
from vae_torch.convert import from_canonical
from vae_torch.model import build_model
from vae_torch.train import cpu_compiler, make_compiled_step, make_optimizer

needs_compiler = pytest.mark.skipif(
    cpu_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler"
)


CONFIG = VAEConfig(input_shape=(1, 6, 6), hidden=(16,), latent_dim=3)


def stepper(dtype: str, skip_guards: bool):
    model = build_model(CONFIG, dtype)
    from_canonical(model, init_canonical(CONFIG, 0, dtype))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2))
    return model, optimizer, make_compiled_step(model, optimizer, 0.05, skip_guards=skip_guards)


def batches(dtype, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for b in sizes:
        x = torch.as_tensor(rng.random((b,) + CONFIG.input_shape).astype(dtype))
        eps = torch.as_tensor(rng.standard_normal((b, CONFIG.latent_dim)).astype(dtype))
        yield x, eps


def assert_same(a, b):
    for (name, p), q in zip(a[0].named_parameters(), b[0].parameters(), strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=name)
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            np.testing.assert_array_equal(a[1].state[p][key].numpy(), b[1].state[q][key].numpy())


@pytest.mark.slow
@needs_compiler
def test_skipped_guards_give_the_guarded_steps_bit_for_bit_with_an_odd_batch(monkeypatch):
    stances = []
    set_stance = torch.compiler.set_stance

    def spy(*args, **kwargs):
        stances.append(kwargs.get("skip_guard_eval_unsafe"))
        return set_stance(*args, **kwargs)

    guarded, skipping = stepper("float64", False), stepper("float64", True)
    # Full batches of 8, an odd one of 5 (the epoch's last), full batches again, the odd again;
    # the KL weight changes every step (it enters the graph as a tensor).
    sizes = [8] * 4 + [5] + [8] * 3 + [5, 5, 5]
    want, got = [], []
    for i, (x, eps) in enumerate(batches("float64", sizes)):
        want.append(guarded[2](x, eps, beta=i / 10).item())
    monkeypatch.setattr(torch.compiler, "set_stance", spy)
    for i, (x, eps) in enumerate(batches("float64", sizes)):
        got.append(skipping[2](x, eps, beta=i / 10).item())
    assert got == want
    assert_same(guarded, skipping)
    # Guards skipped on every call of a key after its first GUARDED_CALLS (8: 7 calls, 5: 4).
    assert _compile.GUARDED_CALLS == 2
    assert stances == [True] * (7 - 2 + 4 - 2)


@pytest.mark.slow
@needs_compiler
def test_a_change_of_precision_gets_its_own_graph():
    # Under bf16 autocast the traced graph differs (bf16 products): a skipped-guard call must
    # not run the float32 graph, nor the float32 call the bf16 one.
    guarded, skipping = stepper("float32", False), stepper("float32", True)
    plan = [False, False, False, True, True, True, False, True]
    out = []
    for step in (guarded[2], skipping[2]):
        losses = []
        for bf16, (x, eps) in zip(plan, batches("float32", [8] * len(plan)), strict=True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                losses.append(step(x, eps, beta=1.0).item())
        out.append(losses)
    assert out[1] == out[0]
    assert_same(guarded, skipping)


@pytest.mark.slow
@needs_compiler
def test_keys_past_the_own_graphs_share_one_guarded_function():
    guarded, skipping = stepper("float64", False), stepper("float64", True)
    sizes = [3, 4, 5, 6, 7, 7, 7, 3, 7]  # 5 keys: the fifth (7) past OWN_GRAPHS = 4
    assert _compile.OWN_GRAPHS == 4
    for step in (guarded[2], skipping[2]):
        step.losses = [step(x, e, beta=0.5).item() for x, e in batches("float64", sizes)]
    assert skipping[2].losses == guarded[2].losses
    assert_same(guarded, skipping)


def test_the_ab_alternates_which_variant_goes_first():
    calls = []
    variants = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = guards_ab.interleaved(variants, steps=2, rounds=3)
    assert calls == list("aabb" + "bbaa" + "aabb")
    assert [len(t) for t in times] == [3, 3] and all(v >= 0 for t in times for v in t)


@pytest.mark.slow
@needs_compiler
def test_the_ab_reports_both_variants(capsys):
    line = guards_ab.main(["--tiny", "--steps", "1", "--rounds", "2", "--untimed", "1"])
    assert capsys.readouterr().out == line + "\n"
    assert (
        line.startswith("MLP 64-16-2 float32 batch 128, ") and "rounds of 1 steps: guarded " in line
    )
