"""Training precisions: one vocabulary for both backends, ``--precision`` and the records.

A precision is a compute policy of the training step on top of float32 parameters; the
parameters, Adam's moments and the losses (with their reductions) stay float32 in every one:

- ``"float32"``: plain float32 arithmetic; TF32 is switched off where a device has it (torch's
  ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``, JAX's
  ``jax.default_matmul_precision("highest")``), so the two backends compute the same products.
- ``"tf32"``: float32 with TF32 matrix products and convolutions allowed (10 stored significand
  bits in the products, float32 accumulation). Only NVIDIA GPUs have TF32: elsewhere it is
  float32 (``precision_note`` says so for the records).
- ``"bf16"``: the dense and convolutional layers compute in bfloat16 (torch: ``torch.autocast``
  around the forward pass; JAX: the layers' ``dtype=bfloat16`` with float32 ``param_dtype``);
  their outputs go back to float32 before the loss. bfloat16 has float32's exponent range, so no
  loss scaling is needed.

Evaluation, generation and checkpoints always run in float32 with TF32 off: a precision only
changes how the training steps compute.
"""

from __future__ import annotations

from vae_common.errors import ConfigError

PRECISIONS = ("float32", "tf32", "bf16")
# The matmul precision JAX traces each training precision under (bf16 inputs have no choice).
JAX_MATMUL_PRECISION = {"float32": "highest", "tf32": "tensorfloat32", "bf16": "highest"}


def check_precision(precision: str, dtype: str = "float32") -> str:
    """``precision`` if it is one of ``PRECISIONS`` and fits ``dtype``; ``ConfigError``
    otherwise (``"tf32"`` and ``"bf16"`` are policies over float32 parameters, so a float64
    model takes only ``"float32"``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "float32" and dtype != "float32":
        raise ConfigError(
            f"precision {precision!r} computes over float32 parameters; use dtype float32 "
            f"(got {dtype!r}) or precision 'float32'"
        )
    return precision


def tf32_applies(precision: str, device_type: str) -> bool:
    """Whether ``precision`` turns TF32 on for a device type (``"cuda"``, torch's name, or
    ``"gpu"``, JAX's platform name, both NVIDIA): only ``"tf32"`` on an NVIDIA GPU."""
    return precision == "tf32" and device_type in ("cuda", "gpu")


def precision_note(precision: str, device_type: str) -> str | None:
    """What a record says when ``precision`` does not do on ``device_type`` what its name says
    (None when it does): TF32 exists only on NVIDIA GPUs."""
    if precision == "tf32" and not tf32_applies(precision, device_type):
        return f"tf32 is a no-op on {device_type}: no TF32 mode there, so it ran as float32"
    return None


__all__ = [
    "JAX_MATMUL_PRECISION",
    "PRECISIONS",
    "check_precision",
    "precision_note",
    "tf32_applies",
]
