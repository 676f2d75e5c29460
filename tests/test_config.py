"""VAEConfig: validation names the bad field, JSON round trips exactly, instances are frozen."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_common.config import ConfigError, VAEConfig


def test_defaults_are_the_784_400_20_bernoulli_mlp():
    cfg = VAEConfig()
    assert cfg.input_shape == (1, 28, 28)
    assert cfg.hidden == (400,)
    assert cfg.latent_dim == 20
    assert cfg.likelihood == "bernoulli"
    assert cfg.arch == "mlp"
    assert cfg.conv_channels == ()
    assert cfg.input_dim == 784
    assert cfg.conv_output_shape == (1, 28, 28)


@pytest.mark.parametrize(
    "field, value",
    [
        ("latent_dim", 0),
        ("latent_dim", -3),
        ("latent_dim", 2.5),
        ("latent_dim", True),
        ("latent_dim", "20"),
        ("latent_dim", None),
        ("likelihood", "poisson"),
        ("likelihood", "Bernoulli"),
        ("arch", "resnet"),
        ("input_shape", (28, 28)),
        ("input_shape", (1, 28, 28, 1)),
        ("input_shape", (0, 28, 28)),
        ("input_shape", (1, -28, 28)),
        ("input_shape", (1, 28.0, 28)),
        ("input_shape", "1,28,28"),
        ("input_shape", 784),
        ("hidden", (400, 0)),
        ("hidden", 400),
        ("hidden", ("400",)),
        ("conv_channels", (8,)),  # with arch="mlp"
        ("gaussian_std", 0.0),
        ("gaussian_std", -1.0),
        ("gaussian_std", float("nan")),
        ("gaussian_std", float("inf")),
        ("gaussian_std", "1.0"),
        ("gaussian_std", None),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        VAEConfig(**{field: value})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_conv_needs_channels_and_divisible_input():
    with pytest.raises(ConfigError, match="conv_channels"):
        VAEConfig(arch="conv")
    with pytest.raises(ConfigError, match="conv_channels"):
        VAEConfig(arch="conv", conv_channels=(8, 0))
    # Three stride-2 layers need height and width divisible by 8; 28 is not.
    with pytest.raises(ConfigError, match=r"input_shape.*divisible by 8"):
        VAEConfig(arch="conv", conv_channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="divisible by 4"):
        VAEConfig(input_shape=(1, 8, 6), arch="conv", conv_channels=(4, 4))
    cfg = VAEConfig(input_shape=(3, 32, 16), arch="conv", conv_channels=(8, 16, 4))
    assert cfg.conv_output_shape == (4, 4, 2)


def test_sequences_are_normalised_to_int_tuples():
    cfg = VAEConfig(
        input_shape=[1, np.int64(6), 5], hidden=[np.int32(7), 3], latent_dim=np.int64(4)
    )
    assert cfg.input_shape == (1, 6, 5) and type(cfg.input_shape[1]) is int
    assert cfg.hidden == (7, 3) and type(cfg.hidden[0]) is int
    assert cfg.latent_dim == 4 and type(cfg.latent_dim) is int
    assert cfg == VAEConfig(input_shape=(1, 6, 5), hidden=(7, 3), latent_dim=4)
    assert hash(cfg) == hash(VAEConfig(input_shape=(1, 6, 5), hidden=(7, 3), latent_dim=4))


def test_frozen():
    cfg = VAEConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.latent_dim = 10  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = (10,)  # type: ignore[misc]
    assert cfg.latent_dim == 20


def test_replace_validates_again():
    cfg = VAEConfig()
    assert cfg.replace(latent_dim=2).latent_dim == 2
    assert cfg.latent_dim == 20
    with pytest.raises(ConfigError, match="latent_dim"):
        cfg.replace(latent_dim=0)


def test_json_round_trip_of_defaults():
    cfg = VAEConfig()
    text = cfg.to_json()
    assert json.loads(text) == {
        "input_shape": [1, 28, 28],
        "hidden": [400],
        "latent_dim": 20,
        "likelihood": "bernoulli",
        "arch": "mlp",
        "conv_channels": [],
        "gaussian_std": 1.0,
    }
    assert VAEConfig.from_json(text) == cfg


def test_unknown_json_keys_are_named():
    data = {**VAEConfig().to_dict(), "latent": 3, "dropout": 0.1}
    with pytest.raises(ConfigError, match=r"unknown config keys \['dropout', 'latent'\]"):
        VAEConfig.from_json(json.dumps(data))


def test_invalid_json_and_non_objects():
    with pytest.raises(ConfigError, match="not valid JSON"):
        VAEConfig.from_json("{latent_dim: 3")
    with pytest.raises(ConfigError, match="JSON object"):
        VAEConfig.from_json("[1, 2]")
    with pytest.raises(ConfigError, match="latent_dim"):
        VAEConfig.from_json('{"latent_dim": "many"}')


@st.composite
def configs(draw):
    arch = draw(st.sampled_from(["mlp", "conv"]))
    channels = ()
    if arch == "conv":
        channels = tuple(draw(st.lists(st.integers(1, 64), min_size=1, max_size=3)))
    factor = 2 ** len(channels)
    return VAEConfig(
        input_shape=(
            draw(st.integers(1, 4)),
            factor * draw(st.integers(1, 16)),
            factor * draw(st.integers(1, 16)),
        ),
        hidden=tuple(draw(st.lists(st.integers(1, 1024), max_size=3))),
        latent_dim=draw(st.integers(1, 128)),
        likelihood=draw(st.sampled_from(["bernoulli", "gaussian"])),
        arch=arch,
        conv_channels=channels,
        gaussian_std=draw(st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)),
    )


@settings(max_examples=50, deadline=None)
@given(cfg=configs())
def test_json_round_trip(cfg):
    text = cfg.to_json()
    back = VAEConfig.from_json(text)
    assert back == cfg
    assert back.to_json() == text
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
