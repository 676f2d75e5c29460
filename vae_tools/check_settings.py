"""The sizes of a ``vae check`` run, per device, and the devices it knows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vae_common.config import VAEConfig
from vae_common.errors import UsageError

DEVICES = ("cpu", "cuda", "xpu")


@dataclass(frozen=True)
class CheckSettings:
    """The sizes of one ``vae check`` run.

    Attributes:
      mlp, conv: the two models the parity checks compare (the MLP also for the trajectory
        and the benchmark).
      batch_size: the MLP's parity and trajectory batch.
      conv_batch_size: the conv model's parity batch.
      trajectory_steps: Adam steps of the trajectory check.
      bench_samples: images per benchmark epoch (synthetic, ``vae_tools.bench.make_data``).
      bench_batch_size: the benchmark's batch.
      bench_repeats: timed epochs per training mode.
      bench_untimed_steps: untimed steps per mode before timing (whole epochs, at least one).
    """

    mlp: VAEConfig
    conv: VAEConfig
    batch_size: int = 128
    conv_batch_size: int = 128
    trajectory_steps: int = 20
    bench_samples: int = 60000
    bench_batch_size: int = 128
    bench_repeats: int = 5
    bench_untimed_steps: int = 900


def default_settings(device: str, quick: bool = False) -> CheckSettings:
    """The sizes for ``device``: the project's default models (MLP 784-400-20, the conv model)
    at batch 128; on a GPU the full benchmark (60,000-sample epochs, 900 untimed steps, 5
    repeats); on the CPU a short one (2,560-sample epochs of 20 steps, one untimed epoch, 3
    repeats) and the conv parity at batch 32, so that the check takes about a minute there.
    ``quick``: tiny 8x8 models and a 64-sample benchmark, which checks that everything runs
    (the figures mean little)."""
    from vae_tools.bench import default_config

    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    if quick:
        return CheckSettings(
            mlp=VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=4),
            conv=VAEConfig(
                input_shape=(1, 8, 8), hidden=(16,), latent_dim=4, arch="conv", conv_channels=(4, 8)
            ),
            batch_size=8,
            conv_batch_size=8,
            trajectory_steps=3,
            bench_samples=64,
            bench_batch_size=16,
            bench_repeats=1,
            bench_untimed_steps=0,
        )
    mlp, conv = default_config("mlp"), default_config("conv")
    if device == "cpu":
        return CheckSettings(
            mlp,
            conv,
            conv_batch_size=32,
            bench_samples=2560,
            bench_repeats=3,
            bench_untimed_steps=20,
        )
    return CheckSettings(mlp, conv)


def settings_dict(s: CheckSettings) -> dict[str, Any]:
    """``s`` as JSON-ready data, the two models as ``VAEConfig.to_dict``."""
    out = asdict(s)
    out["mlp"], out["conv"] = s.mlp.to_dict(), s.conv.to_dict()
    return out


__all__ = ["DEVICES", "CheckSettings", "default_settings", "settings_dict"]
