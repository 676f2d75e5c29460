"""Training data kept on the host: ``HostData`` (what ``TrainerBase.put_data(x, stream=True)``
returns) and ``Prefetcher``, the bounded queue that moves an epoch's batches to the device.

A streamed epoch forms each batch on the host (``x[idx]``, in the stored dtype: uint8 stays uint8,
so a batch moves a quarter of the float32 bytes), hands it to the backend, which moves it to the
device, and queues it. A background thread does this ahead of the step loop, so the gather and the
transfer of the next batches overlap the current step; at most ``prefetch + 1`` batches are on
the device at any time (``prefetch`` queued, one in use). uint8 images become floats only on the
device, through ``UINT8_VALUES``: the same float32 numbers the data loaders make
(``vae_common.layout.to_nchw``: pixels / 255 in float32), so a streamed epoch is the resident one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from queue import SimpleQueue
from typing import Any

import numpy as np

from vae_common import checks
from vae_common.errors import ConfigError, ShapeError

# uint8 pixel k -> k / 255 in float32, the division the data loaders make.
UINT8_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)
STREAM_DTYPES = ("uint8", "float16", "float32", "float64")
DEFAULT_PREFETCH = 2
# The value check reads a float dataset in slices of about this many bytes (a memmap is read
# once, never whole).
_CHECK_BYTES = 1 << 26
# How often a blocked producer looks whether the epoch was abandoned.
_POLL_S = 0.05


def check_prefetch(prefetch: Any) -> int:
    """``prefetch`` as an int >= 0; ``ConfigError`` otherwise (bool, float, negative...)."""
    if isinstance(prefetch, bool) or not isinstance(prefetch, int | np.integer) or prefetch < 0:
        raise ConfigError(f"prefetch must be an integer >= 0, got {prefetch!r}")
    return int(prefetch)


class HostData:
    """Images (N, C, H, W) kept on the host, in their stored dtype, for a streamed epoch.

    Args:
      images: uint8 (pixel values 0..255, scaled by 1/255 on the device) or float16, float32 or
        float64 (the values themselves; cast to the model dtype on the device); a numpy array or
        a ``np.memmap`` (never copied here: each batch reads its rows).
      input_shape: the model's (C, H, W).
      likelihood: the model's likelihood; float values are checked by its rule
        (``vae_common.checks.pixel_value_error``), in slices, once.
      prefetch: batches formed and moved ahead of the step loop (>= 0).

    Raises ``ShapeError`` for a wrong shape or dtype, ``DataError`` for bad values and
    ``ConfigError`` for a bad ``prefetch``, naming the array as ``x``.
    """

    def __init__(
        self,
        images: Any,
        input_shape: tuple[int, ...],
        likelihood: str,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.prefetch = check_prefetch(prefetch)
        x = images if isinstance(images, np.ndarray) else np.asarray(images)
        checks.check_images("x", x.shape, input_shape)
        if x.dtype.name not in STREAM_DTYPES:
            raise ShapeError(
                f"x must be uint8 or floating point ({', '.join(STREAM_DTYPES[1:])}) to be "
                f"streamed, got dtype {x.dtype}"
            )
        if x.dtype != np.uint8:
            _check_values(x, likelihood)
        self.images = x
        self.input_shape = tuple(input_shape)
        self.likelihood = likelihood

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` (b,) as a new (b, C, H, W) array in the stored dtype, in order."""
        return np.ascontiguousarray(self.images[idx])


def _check_values(x: np.ndarray, likelihood: str) -> None:
    rows = max(1, _CHECK_BYTES // max(1, x[0].nbytes))
    lo, hi = np.inf, -np.inf
    for start in range(0, len(x), rows):
        part = x[start : start + rows]
        # np.minimum and np.maximum keep a NaN (Python's min and max would drop it).
        lo, hi = float(np.minimum(lo, np.min(part))), float(np.maximum(hi, np.max(part)))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            break
    error = checks.pixel_value_error("x", lo, hi, likelihood)
    if error is not None:
        raise error


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """The batches ``data.gather(idx[rows])`` for each row ``idx`` of ``batches`` (S, B), moved
    by ``put`` (host array -> device array) on a background thread, in order.

    Use it as a context manager and iterate it once: each item is the next batch on the device.
    A batch counts as on the device from the call of ``put`` that makes it until the consumer
    asks for the next one (so it must drop its references by then) or leaves the ``with``
    block; ``put`` is not called while ``data.prefetch + 1`` batches are. ``wait_s`` sums the
    seconds the consumer waited for batches; ``max_resident`` is the most batches on the device
    at once. An error raised by ``gather`` or ``put`` is raised again in the consumer.
    """

    def __init__(
        self,
        data: HostData,
        batches: np.ndarray,
        rows: slice,
        put: Callable[[np.ndarray], Any],
    ) -> None:
        self._data, self._batches, self._rows, self._put = data, batches, rows, put
        self._slots = threading.Semaphore(data.prefetch + 1)
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._resident = 0
        self._held = False
        self.max_resident = 0
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._produce, name="vae-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._held = False
        while not self._queue.empty():
            self._queue.get()

    def __iter__(self) -> Iterator[Any]:
        for _ in range(len(self._batches)):
            self._release()
            start = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - start
            if isinstance(item, _Failed):
                raise item.exc
            self._held = True
            yield item
            del item
        self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            with self._lock:
                self._resident -= 1
            self._slots.release()

    def _produce(self) -> None:
        try:
            for idx in self._batches:
                host = self._data.gather(idx[self._rows])
                while not self._slots.acquire(timeout=_POLL_S):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                with self._lock:
                    self._resident += 1
                    self.max_resident = max(self.max_resident, self._resident)
                batch = self._put(host)
                del host
                self._queue.put(batch)
                del batch
        except BaseException as exc:  # raised again in the consumer's thread
            self._queue.put(_Failed(exc))


__all__ = [
    "DEFAULT_PREFETCH",
    "STREAM_DTYPES",
    "UINT8_VALUES",
    "HostData",
    "Prefetcher",
    "check_prefetch",
]
