"""The training precisions (``vae_common.precision``): float32, tf32 and bf16 in both backends.

What is checked: the vocabulary and its refusals; that bf16 really computes the layers in
bfloat16 (JAX's traced products, torch's layer outputs under autocast) while parameters,
gradients, Adam's state and the loss stay float32; that tf32 is float32 on the CPU, bit for bit;
that JAX traces each precision's matmul precision into the step; that torch's TF32 switch
follows the precision on CUDA and is restored; that both backends' bf16 losses agree within
``TOLERANCES["bf16"]`` (one gradient, and the per-step losses of a few Adam steps); and that the
precision is recorded by ``vae train`` and ``vae bench``.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vae_jax
import vae_torch
from vae_common.compare import BF16_JUDGED, TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, ResumeError
from vae_common.precision import (
    PRECISIONS,
    check_precision,
    precision_note,
    tf32_applies,
)
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_jax.model import with_precision
from vae_tools import parity

TINY = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=4)
# Large enough that a per-example value sums many rounded pixel terms (as in real use).
MID = VAEConfig(input_shape=(1, 28, 28), hidden=(64,), latent_dim=8)
CONV = VAEConfig(
    input_shape=(1, 8, 8), hidden=(16,), latent_dim=4, arch="conv", conv_channels=(4, 8)
)


def test_the_vocabulary_and_its_refusals():
    assert PRECISIONS == ("float32", "tf32", "bf16")
    for p in PRECISIONS:
        assert check_precision(p) == p
    assert check_precision("float32", "float64") == "float32"
    for p in ("tf32", "bf16"):
        with pytest.raises(ConfigError, match="dtype float32"):
            check_precision(p, "float64")
    for bad in ("fp16", "float16", "BF16", None):
        with pytest.raises(ConfigError, match="precision must be one of"):
            check_precision(bad)


def test_tf32_applies_on_nvidia_gpus_only():
    assert tf32_applies("tf32", "cuda") and tf32_applies("tf32", "gpu")
    for device in ("cpu", "xpu", "mps"):
        assert not tf32_applies("tf32", device)
        assert "no-op on " + device in precision_note("tf32", device)
    assert precision_note("tf32", "cuda") is None
    for p in ("float32", "bf16"):
        assert not tf32_applies(p, "cuda")
        assert precision_note(p, "cpu") is None


@pytest.mark.parametrize("trainer", [vae_jax.Trainer, vae_torch.Trainer], ids=["jax", "torch"])
def test_trainers_refuse_a_reduced_precision_of_float64_weights(trainer):
    with pytest.raises(ConfigError, match="dtype float32"):
        trainer(TINY, dtype="float64", precision="bf16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        trainer(TINY, precision="fp16")
    assert trainer(TINY, precision="bf16").precision == "bf16"


def _dot_lines(jaxpr: str) -> list[str]:
    # Each dot_general equation with its result type ("name:dtype[shape] = dot_general[").
    return re.findall(r"\w+:(\w+)\[[^\]]*\] = dot_general", jaxpr)


def test_jax_bf16_layers_compute_in_bfloat16_over_float32_parameters():
    model = vae_jax.build_model(TINY)
    params = vae_jax.from_canonical(model, init_canonical(TINY, 0))
    x, eps = jnp.full((4, 1, 8, 8), 0.5), jnp.zeros((4, 4))
    bf16 = with_precision(model, "bf16")
    assert with_precision(model, "float32") is model and with_precision(model, "tf32") is model
    assert bf16.dtype == jnp.float32 and bf16.compute_dtype == jnp.bfloat16

    def loss(m):
        return lambda p: vae_jax.loss(m, p, x, eps)

    # Forward and backward products: every one bfloat16 in bf16, none in float32.
    grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss(bf16)))(params))
    assert _dot_lines(grad_jaxpr) and set(_dot_lines(grad_jaxpr)) == {"bf16"}
    assert set(_dot_lines(str(jax.make_jaxpr(jax.grad(loss(model)))(params)))) == {"f32"}
    value, grads = jax.jit(jax.value_and_grad(loss(bf16)))(params)
    assert value.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    decoded, mean, logvar = jax.jit(lambda p: bf16.apply({"params": p}, x, eps))(params)
    assert decoded.dtype == mean.dtype == logvar.dtype == jnp.float32
    assert float(value) != float(jax.jit(loss(model))(params))  # bf16 is not a no-op
    with pytest.raises(ConfigError):
        with_precision(model, "fp16")


def test_jax_bf16_conv_layers_compute_in_bfloat16():
    model = vae_jax.build_model(CONV)
    params = vae_jax.from_canonical(model, init_canonical(CONV, 0))
    x, eps = jnp.full((2, 1, 8, 8), 0.5), jnp.zeros((2, 4))
    text = str(
        jax.make_jaxpr(lambda p: vae_jax.loss(with_precision(model, "bf16"), p, x, eps))(params)
    )
    convs = re.findall(r"\w+:(\w+)\[[^\]]*\] = conv_general_dilated", text)
    assert convs and set(convs) == {"bf16"}


def test_jax_steps_are_traced_under_the_precisions_matmul_precision():
    from vae_jax.train import _step_fn, init_train_state

    model = vae_jax.build_model(TINY)
    state = init_train_state(
        model, vae_jax.from_canonical(model, init_canonical(TINY, 0)), TrainConfig()
    )
    x, eps = jnp.zeros((4, 1, 8, 8)), jnp.zeros((4, 4))
    found = {}
    for p in PRECISIONS:
        text = str(jax.make_jaxpr(_step_fn(model, TrainConfig(), p))(state, x, eps))
        found[p] = set(re.findall(r"precision=\(Precision\.(\w+),", text))
    # float32: full float32 products (JAX's default on a GPU would be TF32); tf32: TF32 allowed.
    assert found == {"float32": {"HIGHEST"}, "tf32": {"HIGH"}, "bf16": {"HIGHEST"}}


def test_torch_bf16_layers_compute_in_bfloat16_and_the_loss_in_float32():
    model = vae_torch.build_model(TINY)
    vae_torch.from_canonical(model, init_canonical(TINY, 0))
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, i, out: seen.append(out.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    step = vae_torch.make_train_step(model, TrainConfig(), "bf16")
    optimizer = vae_torch.make_optimizer(model, TrainConfig())
    loss = step(optimizer, torch.full((4, 1, 8, 8), 0.5), torch.zeros(4, 4), 0)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert loss.dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for state in optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # Outside the step nothing is autocast: the same model computes in float32.
    seen.clear()
    with torch.no_grad():
        decoded, mean, _ = model(torch.full((4, 1, 8, 8), 0.5), torch.zeros(4, 4))
    assert decoded.dtype == mean.dtype == torch.float32


def test_torch_module_outputs_come_back_in_the_input_dtype_under_autocast():
    model = vae_torch.build_model(TINY)
    x = torch.full((3, 1, 8, 8), 0.5)
    with torch.no_grad(), vae_torch.train.autocast("cpu", "bf16"):
        decoded, mean, logvar = model(x, torch.zeros(3, 4))
        z_mean, _ = model.encode(x)
        assert model.encoder.mean(torch.zeros(3, 16)).dtype == torch.bfloat16  # the layer's own
    assert decoded.dtype == mean.dtype == logvar.dtype == z_mean.dtype == torch.float32


def test_torch_autocast_and_tf32_contexts():
    assert isinstance(vae_torch.train.autocast("cpu", "float32"), type(_null()))
    assert isinstance(vae_torch.train.autocast("cuda", "tf32"), type(_null()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": built, never entered
        ctx = vae_torch.train.autocast("cuda", "bf16")
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)
    with vae_torch.train.autocast("cpu", "bf16"):
        # Off: a weight cast cached during CUDA-graph capture would outlive the graph's pool.
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, True
        with vae_torch.train.matmul_precision("cuda", "tf32"):
            assert matmul.allow_tf32 and cudnn.allow_tf32
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)  # restored
        for p in ("float32", "bf16"):
            with vae_torch.train.matmul_precision("cuda", p):
                assert not matmul.allow_tf32 and not cudnn.allow_tf32
        with vae_torch.train.matmul_precision("cpu", "tf32"):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)  # no TF32 off CUDA
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def _null():
    import contextlib

    return contextlib.nullcontext()


def _run_steps(trainer_cls, precision, steps=4, config=TINY, **kw):
    rng = np.random.default_rng(3)
    shape = config.input_shape
    xs = rng.random((steps, 16) + shape).astype(np.float32)
    eps = rng.standard_normal((steps, 16, config.latent_dim)).astype(np.float32)
    t = trainer_cls(config, TrainConfig(), precision=precision, **kw)
    t.load_state_dict(init_canonical(config, 0))
    return t, t.run_steps(xs, eps)


@pytest.mark.parametrize("trainer", [vae_jax.Trainer, vae_torch.Trainer], ids=["jax", "torch"])
def test_tf32_is_float32_on_the_cpu_bit_for_bit(trainer):
    t32, l32 = _run_steps(trainer, "float32")
    ttf, ltf = _run_steps(trainer, "tf32")
    np.testing.assert_array_equal(l32, ltf)
    for name, v in t32.state_dict().items():
        np.testing.assert_array_equal(v, ttf.state_dict()[name])


def test_both_backends_bf16_training_losses_agree_within_the_tolerance():
    tj, lj = _run_steps(vae_jax.Trainer, "bf16", config=MID)
    tt, lt = _run_steps(vae_torch.Trainer, "bf16", config=MID)
    _, l32 = _run_steps(vae_torch.Trainer, "float32", config=MID)
    tol = TOLERANCES["bf16"]
    assert tol == 2.0**-8
    for a, b, c in zip(lj, lt, l32, strict=True):
        assert rel_diff(a, b) <= tol
        assert rel_diff(a, c) <= tol and rel_diff(b, c) <= tol
    assert not np.array_equal(lt, l32)  # bf16 is not float32
    for t in (tj, tt):
        assert {v.dtype for v in t.state_dict().values()} == {np.dtype("float32")}
        assert {v.dtype for v in t.optimizer_state_dict().values()} == {np.dtype("float32")}


@pytest.mark.slow
def test_torch_compiled_bf16_step_agrees_with_the_eager_one():
    # The compiled step is traced under the ambient autocast (Trainer._train_step).
    from vae_torch import _compile

    if _compile.cpu_compiler() is None:
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    _, eager = _run_steps(vae_torch.Trainer, "bf16", steps=2)
    _, compiled = _run_steps(vae_torch.Trainer, "bf16", steps=2, compile=True)
    assert max(rel_diff(a, b) for a, b in zip(compiled, eager, strict=True)) <= TOLERANCES["bf16"]


@pytest.mark.parametrize("config", [MID, CONV], ids=["mlp", "conv"])
def test_bf16_parity_passes_and_judges_what_compare_says(config):
    inp = parity.make_inputs(config, seed=1, batch_size=32)
    j = parity.jax_side(inp, "float32", "bf16")
    t = parity.torch_side(inp, "float32", "cpu", "bf16")
    assert j["loss_dtype"] == t["loss_dtype"] == "float32"  # reduced in float32 in both
    report = parity.check_parity(inp, "float32", "cpu", "bf16")
    assert report["passed"] and report["precision"] == "bf16"
    assert report["tolerance"] == TOLERANCES["bf16"]
    assert report["judged"] == ", ".join(BF16_JUDGED)
    judged = [report["loss"]["rel_diff"]] + [
        report["terms"][n]["max_rel_diff"] for n in BF16_JUDGED if n != "loss"
    ]
    assert report["max_rel_diff"] == max(judged) <= TOLERANCES["bf16"]
    # bf16 is a real change: the float32 parity of the same problem is far closer.
    f32 = parity.check_parity(inp, "float32", "cpu")
    assert f32["max_rel_diff"] < report["max_rel_diff"]


def test_parity_refuses_precisions_without_a_tolerance():
    inp = parity.make_inputs(TINY, batch_size=4)
    with pytest.raises(ValueError, match="parity compares precisions"):
        parity.check_parity(inp, "float32", "cpu", "tf32")
    with pytest.raises(ConfigError, match="dtype float32"):
        parity.check_parity(inp, "float64", "cpu", "bf16")


def test_the_run_settings_record_the_precision(tmp_path):
    from vae_tools.run_state import RunSettings, load_train_state, save_train_state

    with pytest.raises(ConfigError):
        RunSettings("digits", dtype="float64", precision="bf16")
    t = vae_torch.Trainer(TINY, precision="bf16")
    t.load_state_dict(init_canonical(TINY, 0))
    bf16 = RunSettings("digits", precision="bf16")
    save_train_state(tmp_path / "s.safetensors", t, TINY, TrainConfig(), bf16, 1)
    assert load_train_state(tmp_path / "s.safetensors", TINY, TrainConfig(), bf16)[2] == 1
    with pytest.raises(ResumeError, match="precision"):
        load_train_state(tmp_path / "s.safetensors", TINY, TrainConfig(), RunSettings("digits"))


def test_vae_train_refuses_bf16_in_float64(tmp_path, capsys):
    from vae_tools import cli

    status = cli.main(
        ["train", "--backend", "jax", "--precision", "bf16", "--dtype", "float64"]
        + ["--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]
    )
    assert status == 2 and "dtype float32" in capsys.readouterr().err


def test_bench_records_hold_the_precision():
    from vae_tools import bench

    result = bench.run_bench(
        config=TINY,
        samples=32,
        batch_sizes=(16,),
        repeats=1,
        untimed_steps=0,
        modes={"jax": ["epoch"], "torch": ["eager"], "reference": ["eager"]},
        precision="tf32",
        log=lambda m: None,
    )
    got = {(r["backend"], r["precision"], r["precision_note"]) for r in result["records"]}
    note = precision_note("tf32", "cpu")
    assert got == {("reference", "float32", None), ("jax", "tf32", note), ("torch", "tf32", note)}
    table = bench.format_table(result)
    assert "training precision tf32" in table and f"note: {note}" in table
