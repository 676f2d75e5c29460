"""Image-array layouts: which of (N, H, W), (N, H, W, C) and (N, C, H, W) an array is in, by
an explicit rule (``resolve_layout``), its conversion to float32 (N, C, H, W) (``to_nchw``; uint8
pixels may be kept as they are stored), uint8 pixels as the float32 values the loaders make
(``float_images``: k / 255) and the value check every loaded array passes (``validate_images``).
"""

from __future__ import annotations

import math

import numpy as np

from vae_common.checks import pixel_value_error
from vae_common.errors import DataError
from vae_common.sources import LAYOUTS

# Channel counts of an image: grey, RGB, RGBA (what the run's plots and Pillow can show).
CHANNELS = (1, 3, 4)


def resolve_layout(shape: tuple[int, ...], layout: str = "auto", what: str = "images") -> str:
    """The layout (``nhw``, ``nchw`` or ``nhwc``) of an image array of ``shape``.

    ``auto``: a 3-D array is (N, H, W); a 4-D array is (N, C, H, W) when axis 1 holds 1, 3 or
    4 (channels) and axis 3 does not, (N, H, W, C) in the opposite case; when both or neither
    do (e.g. (N, 3, 32, 3), (N, 4, 4, 4), (N, 5, 6, 7)) the array is refused: pass the layout.
    The smallest axis is never taken for the channels. A forced ``nchw`` or ``nhwc`` needs a
    4-D array whose channel axis holds 1, 3 or 4; ``nhw`` needs a 3-D array.

    Raises:
      DataError naming ``what``, its shape and the layout option to pass.
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shape = tuple(int(s) for s in shape)
    options = "pass layout='nchw' or layout='nhwc' (vae train --layout nchw|nhwc)"
    if len(shape) == 3:
        if layout in ("auto", "nhw"):
            return "nhw"
        raise DataError(
            f"{what} have shape {shape}, 3-D, but layout {layout!r} needs 4-D arrays; a 3-D "
            "array is (N, H, W) (layout 'nhw' or 'auto')"
        )
    if len(shape) != 4:
        raise DataError(
            f"{what} have shape {shape}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    if layout == "nhw":
        raise DataError(f"{what} have shape {shape}, 4-D, but layout 'nhw' needs 3-D arrays")
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if layout == "auto":
        if first and not last:
            return "nchw"
        if last and not first:
            return "nhwc"
        why = (
            f"both axis 1 ({shape[1]}) and axis 3 ({shape[3]}) could hold the channels"
            if first
            else f"neither axis 1 ({shape[1]}) nor axis 3 ({shape[3]}) holds 1, 3 or 4 channels"
        )
        raise DataError(
            f"{what} have shape {shape}, an ambiguous layout: {why}; {options}, or give images "
            "with 1, 3 or 4 channels"
        )
    channels = shape[1] if layout == "nchw" else shape[3]
    if channels not in CHANNELS:
        raise DataError(
            f"{what} have shape {shape}: layout {layout!r} puts {channels} channels on axis "
            f"{1 if layout == 'nchw' else 3}, but images have 1, 3 or 4 channels"
        )
    return layout


def to_nchw(
    x: np.ndarray, layout: str, what: str = "images", keep_uint8: bool = False
) -> np.ndarray:
    """``x`` in the resolved ``layout`` as float32 (N, C, H, W), checked like a data file.

    The dtype must be real (bool, integer, unsigned or floating point): uint8 is scaled by
    1/255 (``float_images``), the others are cast as they are (so float images keep their
    values). The array must hold at least one image and every value must be finite. One
    float32 array is made (none when ``x`` is float32 (N, C, H, W) already).

    With ``keep_uint8``, a uint8 ``x`` stays uint8 (N, C, H, W), pixel values 0..255 that mean
    ``float_images``' k / 255: no float copy (a copy in the stored dtype only when the layout
    moves the channel axis). Other dtypes are converted as above.

    Raises:
      DataError naming ``what`` and its shape or dtype.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{what} must hold real numbers (uint8 or floating point), got dtype {x.dtype}"
        )
    if resolve_layout(x.shape, layout, what) != layout:
        raise DataError(f"{what} of shape {x.shape} are not in layout {layout!r}")
    if not len(x):
        raise DataError(f"{what} hold no images (shape {x.shape})")
    if layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        # Every uint8 value is finite and k / 255 lies in [0, 1]: nothing to check.
        return np.ascontiguousarray(x) if keep_uint8 else float_images(x)
    out = np.ascontiguousarray(x, dtype=np.float32)
    validate_images(out, None, name=what)
    return out


def float_images(x: np.ndarray) -> np.ndarray:
    """``x`` as the float images the loaders make: uint8 pixels k become float32 k / 255 (the
    float32 division, correctly rounded: ``vae_common.streaming.UINT8_VALUES``' values), in a
    new C-contiguous array of ``x``'s shape; any other array is returned as it is."""
    if x.dtype != np.uint8:
        return x
    out = np.ascontiguousarray(x, dtype=np.float32)
    out /= np.float32(255.0)
    return out


def validate_images(x: np.ndarray, likelihood: str | None = "bernoulli", name: str = "x") -> None:
    """``DataError`` unless ``x`` is a float array (N, C, H, W) whose values suit ``likelihood``.

    The values follow ``vae_common.checks.pixel_value_error``, the rule the loss functions apply:
    every value finite; in [0, 1] for ``"bernoulli"``; any finite value for ``"gaussian"`` (and
    for None, when the likelihood is not known yet, as while loading a file).
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise DataError(f"{name} must have shape (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name} must be floating point, got dtype {x.dtype}")
    if not x.size:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    nonfinite = None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nonfinite = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    error = pixel_value_error(name, lo, hi, likelihood or "gaussian", nonfinite)
    if error is not None:
        raise error
