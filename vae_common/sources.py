"""How a dataset was loaded (``DataSource``: recorded by a run, loaded again by
``vae_common.data.load_dataset``) and the values its options take: layouts, colour conversions,
binarizations, the default held-out test fraction and the stream of its seeded draw.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from vae_common.errors import DataError

# Layouts an image array may be given in; ``auto`` decides by ``resolve_layout``'s rule.
LAYOUTS = ("auto", "nchw", "nhwc", "nhw")
COLORS = ("rgb", "gray")
BINARIZATIONS = ("none", "static", "dynamic")
# The share of the images held out as the test set when a source has no test split of its own
# (an npz with a single ``x``, an image folder without ``train/`` and ``test/``, arrays given
# without ``test``), and the stream of the seeded permutation that draws it.
DEFAULT_TEST_FRACTION = 0.1
SPLIT_STREAM = 11
ARRAYS = "arrays"


@dataclass(frozen=True)
class DataSource:
    """How a dataset was loaded: enough for ``load_dataset`` to load the same images again.

    A run records it (the checkpoint's ``data`` metadata, ``run.json``), as JSON
    (``to_json`` / ``from_json``).

    Attributes:
      spec: ``digits``, ``mnist:DIR`` (also ``fashion-mnist``, ``kmnist``, ``idx``),
        ``npz:FILE``, ``images:DIR``, or ``arrays`` (numpy arrays given from Python: recorded,
        but they cannot be loaded again from the record).
      layout: ``auto`` or the layout the arrays were read in (``nchw``, ``nhwc``, ``nhw``);
        loaders record the layout they resolved. Only npz files and arrays have a choice; the
        other formats fix it and take ``auto``.
      resize: ``(H, W)`` every image of an image folder is resized to (Pillow, bilinear), or
        None: the images must share one size.
      color: ``rgb`` or ``gray``: convert every image of an image folder to it, or None: the
        images must all be grey or all colour.
      test_fraction: the share held out as the test set when the source has no test split
        (None: the source's own split was used; a loader given None uses
        ``DEFAULT_TEST_FRACTION`` where it needs one).
      split_seed: the seed of that held-out draw (``default_rng([split_seed, SPLIT_STREAM])``);
        fixed rather than the run's seed, so runs with different seeds share one test set.
      binarize: how the run binarized the images (``none``, ``static``, ``dynamic``); set by the
        run, not used by loading (the loaders return grey levels).
    """

    spec: str
    layout: str = "auto"
    resize: tuple[int, int] | None = None
    color: str | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    binarize: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise DataError(f"DataSource.spec must be a non-empty string, got {self.spec!r}")
        if self.layout not in LAYOUTS:
            raise DataError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.resize is not None:
            size = tuple(self.resize) if isinstance(self.resize, (tuple, list)) else ()
            if len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
                raise DataError(
                    f"resize must be (H, W), two positive integers, got {self.resize!r}"
                )
            object.__setattr__(self, "resize", (int(size[0]), int(size[1])))
        if self.color is not None and self.color not in COLORS:
            raise DataError(f"color must be None or one of {COLORS}, got {self.color!r}")
        if self.test_fraction is not None:
            f = self.test_fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                raise DataError(f"test_fraction must be a number in (0, 1), got {f!r}")
            object.__setattr__(self, "test_fraction", float(f))
        if not _is_int(self.split_seed) or not 0 <= self.split_seed < 2**63:
            raise DataError(f"split_seed must be an integer in [0, 2**63), got {self.split_seed!r}")
        if self.binarize not in BINARIZATIONS:
            raise DataError(f"binarize must be one of {BINARIZATIONS}, got {self.binarize!r}")

    @property
    def kind(self) -> str:
        """The part of ``spec`` before the colon (``npz``, ``images``, ``digits``...)."""
        return self.spec.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["resize"] = None if self.resize is None else list(self.resize)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> DataSource:
        """The source ``body`` describes (``to_dict``'s keys; ``spec`` required, the others
        default); ``DataError`` naming an unknown key or a bad value."""
        if not isinstance(body, Mapping):
            raise DataError(f"a data source must be a JSON object, got {type(body).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise DataError(f"a data source has unknown keys {unknown} (known: {sorted(known)})")
        if "spec" not in body:
            raise DataError("a data source needs its 'spec'")
        values = dict(body)
        if isinstance(values.get("resize"), list):
            values["resize"] = tuple(values["resize"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> DataSource:
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError, TypeError) as exc:
            raise DataError(f"a data source must be JSON: {exc}") from None
        return cls.from_dict(body)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
