"""Streamed training data (``Trainer.put_data(x, stream=True)``, ``vae_common.streaming``): the
same steps as the resident data in both backends (float64, every loss and every parameter),
uint8 kept as uint8 on the host until each batch, at most ``prefetch + 1`` batches on the device,
the seconds the step loop waited, and bad arguments refused. The N-device streamed epochs are in
``tests/test_data_parallel.py`` (they need several processes or forced devices)."""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pytest

from vae_common import streaming
from vae_common.config import VAEConfig
from vae_common.data import batch_indices
from vae_common.errors import ConfigError, DataError, DeviceError, ShapeError
from vae_common.layout import to_nchw
from vae_common.spec import init_canonical
from vae_common.streaming import UINT8_VALUES, HostData, Prefetcher
from vae_common.training import TrainConfig

TINY = VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=2)
TINY_CONV = VAEConfig(
    input_shape=(1, 4, 4), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
)
N, BATCH, SEED = 48, 8, 5
BACKENDS = ["jax", "torch"]
# The prefetch thread and the step loop wait on each other: a bug there deadlocks, which fails
# the test after this long (pytest-timeout) instead of hanging the suite.
pytestmark = pytest.mark.timeout(60)


def trainer(backend: str, config: VAEConfig = TINY, binarize: str = "none"):
    if backend == "jax":
        from vae_jax.trainer import Trainer
    else:
        from vae_torch.trainer import Trainer
    t = Trainer(config, TrainConfig(lr=1e-2, binarize=binarize), "float64", device="cpu")
    t.load_state_dict(init_canonical(config, 1))
    return t


def pixels(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)


def as_floats(u8: np.ndarray) -> np.ndarray:
    """The data loaders' conversion, written out in numpy: float32 pixels / 255."""
    return u8.astype(np.float32) / np.float32(255.0)


def two_epochs(t, data) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    losses = [
        t.train_epoch(data, batch_indices(len(data), BATCH, SEED, e), SEED, e) for e in (1, 2)
    ]
    return np.concatenate(losses), t.state_dict()


def assert_same_training(got, want) -> None:
    # Measured bit-equal here; 1e-15 leaves room for a different fusion of the same sums.
    np.testing.assert_allclose(got[0], want[0], rtol=1e-15, atol=0)
    assert set(got[1]) == set(want[1])
    for name, value in want[1].items():
        np.testing.assert_allclose(got[1][name], value, rtol=1e-15, atol=0, err_msg=name)


def test_uint8_values_are_the_loaders_pixels_over_255():
    k = np.arange(256, dtype=np.uint8)
    assert UINT8_VALUES.dtype == np.float32
    np.testing.assert_array_equal(UINT8_VALUES, to_nchw(k.reshape(256, 1, 1, 1), "nchw").ravel())
    assert UINT8_VALUES[0] == 0.0 and UINT8_VALUES[255] == 1.0
    np.testing.assert_allclose(UINT8_VALUES, k / 255.0, rtol=6e-8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", [TINY, TINY_CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_streamed_uint8_trains_as_the_resident_floats(backend, config, binarize):
    u8 = pixels()
    resident = trainer(backend, config, binarize)
    want = two_epochs(resident, resident.put_data(as_floats(u8)))
    streamed = trainer(backend, config, binarize)
    got = two_epochs(streamed, streamed.put_data(u8, stream=True, prefetch=1))
    assert_same_training(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stored", ["float16", "float32-memmap", "float64"])
def test_streamed_floats_keep_their_values(backend, stored, tmp_path):
    # Each float dtype streams as given and becomes the model dtype on the device, exactly as
    # the resident path casts it (float16 and float32 widen without rounding).
    x = as_floats(pixels()).astype(stored.split("-")[0])
    if stored.endswith("memmap"):
        mm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", x.dtype, x.shape)
        mm[:] = x
        mm.flush()
        x = np.load(tmp_path / "x.npy", mmap_mode="r")
    resident = trainer(backend, binarize="dynamic")
    want = two_epochs(resident, resident.put_data(np.asarray(x, np.float64)))
    streamed = trainer(backend, binarize="dynamic")
    got = two_epochs(streamed, streamed.put_data(x, stream=True))
    assert_same_training(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_stays_uint8_on_the_host_until_each_batch(backend, tmp_path):
    u8 = pixels()
    np.save(tmp_path / "u8.npy", u8)
    mm = np.load(tmp_path / "u8.npy", mmap_mode="r")
    t = trainer(backend)
    data = t.put_data(mm, stream=True)
    assert isinstance(data, HostData) and data.images.dtype == np.uint8
    assert np.shares_memory(data.images, mm)  # not copied, not converted
    seen: list[tuple[str, tuple[int, ...], str]] = []
    put = t._put_batch

    def spy(host: np.ndarray, global_batch: int):
        dev = put(host, global_batch)
        seen.append((host.dtype.name, host.shape, str(dev.dtype)))
        return dev

    t._put_batch = spy
    t.train_epoch(data, batch_indices(N, BATCH, SEED, 1), SEED, 1)
    assert len(seen) == N // BATCH
    assert {s[:2] for s in seen} == {("uint8", (BATCH, 1, 4, 4))}
    assert {s[2].removeprefix("torch.") for s in seen} == {"uint8"}  # still uint8 on the device
    np.testing.assert_array_equal(np.asarray(mm), u8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_device_holds_at_most_prefetch_plus_one_batches(backend, prefetch):
    # 64 images in batches of 4: 16 batches; the bound is (prefetch + 1) * 4 rows of the 64.
    n, batch = 64, 4
    limit = prefetch + 1
    assert limit * batch < n
    t = trainer(backend, binarize="dynamic")
    live, peak, calls = [0], [0], [0]
    put = t._put_batch

    def counted(host: np.ndarray, global_batch: int):
        dev = put(host, global_batch)
        calls[0] += 1
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(dev, lambda: live.__setitem__(0, live[0] - 1))
        return dev

    t._put_batch = counted
    data = t.put_data(pixels(n), stream=True, prefetch=prefetch)
    losses = t.train_epoch(data, batch_indices(n, batch, SEED, 1), SEED, 1)
    assert losses.shape == (n // batch,) and np.all(np.isfinite(losses))
    assert calls[0] == n // batch
    assert 1 <= peak[0] <= limit, peak[0]
    assert live[0] == 0  # nothing left on the device after the epoch


class _Box:
    """A stand-in device batch that can be watched with a weak reference."""

    def __init__(self, host: np.ndarray) -> None:
        self.host = host


def _counted_boxes():
    """``put`` making ``_Box`` batches, and ``peak``: [the most alive at once]."""
    live, peak = [0], [0]
    lock = threading.Lock()

    def put(host):
        box = _Box(host)
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])

        def gone():
            with lock:
                live[0] -= 1

        weakref.finalize(box, gone)
        return box

    return put, peak


def _feed(n: int, prefetch: int, put) -> Prefetcher:
    data = HostData(pixels(n), (1, 4, 4), "bernoulli", prefetch)
    return Prefetcher(data, np.arange(n, dtype=np.int32).reshape(n, 1), slice(0, 1), put)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_the_queue_runs_ahead_of_a_slow_step_up_to_its_bound(prefetch):
    put, peak = _counted_boxes()
    order = []
    with _feed(8, prefetch, put) as feed:
        for box in feed:
            time.sleep(0.02)  # a slow step: the producer fills the queue meanwhile
            order.append(int(box.host[0, 0, 0, 0]))
            del box
    assert order == [int(v) for v in pixels(8)[:, 0, 0, 0]]  # every batch, in order
    assert peak[0] == prefetch + 1  # ahead by exactly the bound, never more
    assert feed.max_resident == prefetch + 1


def test_wait_is_the_time_the_step_loop_spent_on_a_slow_producer():
    def slow(host):
        time.sleep(0.05)
        return host

    with _feed(4, 2, slow) as feed:
        start = time.perf_counter()
        assert len(list(feed)) == 4
        elapsed = time.perf_counter() - start
    assert 0.15 <= feed.wait_s <= elapsed + 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_wait_s_of_the_last_epoch(backend):
    t = trainer(backend)
    assert t.data_wait_s == 0.0
    batches = batch_indices(N, BATCH, SEED, 1)
    t.train_epoch(t.put_data(as_floats(pixels())), batches, SEED, 1)
    assert t.data_wait_s == 0.0  # resident: never waits
    put = t._put_batch

    def slow(host, global_batch):
        time.sleep(0.05)
        return put(host, global_batch)

    t._put_batch = slow
    start = time.perf_counter()
    t.train_epoch(t.put_data(pixels(), stream=True), batches, SEED, 1)
    elapsed = time.perf_counter() - start
    # At least the first batch's 0.05 s is waited for; never more than the epoch took.
    assert 0.045 <= t.data_wait_s <= elapsed


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_transfer_is_raised_in_the_step_loop_and_the_thread_ends(backend):
    t = trainer(backend)
    put, calls = t._put_batch, [0]

    def failing(host, global_batch):
        calls[0] += 1
        if calls[0] == 3:
            raise DeviceError("out of device memory (test)")
        return put(host, global_batch)

    t._put_batch = failing
    with pytest.raises(DeviceError, match="out of device memory"):
        t.train_epoch(t.put_data(pixels(), stream=True), batch_indices(N, BATCH, SEED, 1), 0, 1)
    assert not any(th.name == "vae-prefetch" for th in threading.enumerate())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_stream_arguments_are_refused(backend):
    t = trainer(backend)
    u8 = pixels()
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="stream must be True or False"):
            t.put_data(u8, stream=bad)
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match="prefetch must be an integer >= 0"):
            t.put_data(u8, stream=True, prefetch=bad)
    with pytest.raises(ConfigError, match="applies to streamed data"):
        t.put_data(as_floats(u8), prefetch=2)
    with pytest.raises(ShapeError, match="must be floating point"):
        t.put_data(u8)  # resident data are floats, as before
    with pytest.raises(ShapeError) as info:
        t.put_data(u8.astype(np.int16), stream=True)
    assert str(info.value) == (
        "x must be uint8 or floating point (float16, float32, float64) to be streamed, got "
        "dtype int16"
    )
    assert t.put_data(u8, stream=True).prefetch == streaming.DEFAULT_PREFETCH == 2
    with pytest.raises(ShapeError, match="model expects"):
        t.put_data(u8.reshape(N, 1, 2, 8), stream=True)
    with pytest.raises(DataError, match="values in"):
        t.put_data(as_floats(u8) * 2, stream=True)
    data = t.put_data(u8, stream=True)
    with pytest.raises(ShapeError, match=f"data has {N} samples"):
        t.train_epoch(data, np.array([[0, N]]), 0, 1)


def test_bad_values_anywhere_in_a_large_array_are_found(monkeypatch):
    # The float check reads the data in slices; a NaN in the last one is still found.
    monkeypatch.setattr(streaming, "_CHECK_BYTES", 64)
    x = as_floats(pixels())
    x[-1, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        HostData(x, (1, 4, 4), "gaussian")
    x[-1, 0, 3, 3] = 7.0  # fine for a Gaussian likelihood, not for a Bernoulli one
    HostData(x, (1, 4, 4), "gaussian")
    with pytest.raises(DataError, match="Bernoulli likelihood"):
        HostData(x, (1, 4, 4), "bernoulli")


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_data_of_another_model_is_refused(backend):
    other = trainer(
        backend, VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=2, likelihood="gaussian")
    )
    data = other.put_data(as_floats(pixels()), stream=True)
    with pytest.raises(ConfigError, match="checked for input shape .* likelihood 'gaussian'"):
        trainer(backend).train_epoch(data, batch_indices(N, BATCH, SEED, 1), 0, 1)


class _SliceRecorder(np.ndarray):
    """An array view that records the row slices read from it."""

    seen: list[int]

    def __getitem__(self, key):
        if isinstance(key, slice):
            self.seen.append(len(range(*key.indices(self.shape[0]))))
        return super().__getitem__(key)


@pytest.mark.parametrize(
    "rows, image, want",
    [
        # 96 rows of 1 MiB: one slice of 64 MiB, then the rest.
        (96, (1, 512, 512), [64, 32]),
        # Rows larger than 64 MiB (4,100 x 4,100 float32, 67.2 MB): one row at a time.
        (2, (1, 4100, 4100), [1, 1]),
    ],
)
def test_the_value_check_reads_64_mib_at_a_time(tmp_path, rows, image, want):
    """The float check of a memmap reads it in slices of at most 64 MiB (or one row, when a row
    is larger), never whole. The files are sparse: all zeros, no disk written."""
    path = tmp_path / "x.f32"
    x = np.memmap(path, np.float32, "w+", shape=(rows, *image))
    view = x.view(_SliceRecorder)
    view.seen = []
    HostData(view, image, "bernoulli")
    assert view.seen == want


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_value_check_stops_at_the_first_slice_with_an_infinity(monkeypatch, likelihood):
    """One +inf in the first slice (the minimum still finite) is refused after reading that
    slice only: the remaining slices cannot make the data acceptable again."""
    monkeypatch.setattr(streaming, "_CHECK_BYTES", 2 * 16)  # two rows of (1, 2, 2) float32
    x = np.zeros((6, 1, 2, 2), np.float32)
    x[0, 0, 0, 0] = np.inf
    view = x.view(_SliceRecorder)
    view.seen = []
    with pytest.raises(DataError, match="^x contains NaN or Inf values$"):
        HostData(view, (1, 2, 2), likelihood)
    assert view.seen == [2]


def test_a_blocked_producer_sleeps_and_ends_soon_after_the_epoch_is_left():
    """With every slot taken (prefetch 0, the consumer holding its batch), the producer waits
    without spinning (the process uses well under the wall time in CPU meanwhile) and ends
    within a fraction of a second once the ``with`` block is left early."""
    with _feed(6, 0, _Box) as feed:
        batches = iter(feed)
        held = next(batches)
        time.sleep(0.05)  # the producer has gathered batch 1 and blocks on the one slot
        cpu = time.process_time()
        time.sleep(0.4)
        busy = time.process_time() - cpu
        start = time.perf_counter()
    ended = time.perf_counter() - start
    del held
    assert busy < 0.2, f"the blocked producer used {busy:.2f} s of CPU in 0.4 s"
    assert ended < 0.5, f"leaving the epoch took {ended:.2f} s"
    assert not feed._thread.is_alive()


class _SlowStart(HostData):
    """Host data whose first three gathers are slow (the producer then runs behind)."""

    gathered = 0

    def gather(self, idx):
        self.gathered += 1
        if self.gathered <= 3:
            time.sleep(0.05)
        return super().gather(idx)


def test_max_resident_is_the_peak_also_when_it_comes_late():
    """``max_resident`` counts every batch released: with a producer slower than the step for
    the first three batches (one batch on the device at a time) and a slower step afterwards
    (the producer runs ahead: two, with prefetch 1), it is 2, the peak the weak references
    see."""
    put, peak = _counted_boxes()
    n = 8
    data = _SlowStart(pixels(n), (1, 4, 4), "bernoulli", 1)
    taken = 0
    with Prefetcher(data, np.arange(n).reshape(n, 1), slice(0, 1), put) as feed:
        for box in feed:  # not enumerate: its reused result tuple would keep the last box
            taken += 1
            if taken > 3:
                time.sleep(0.05)
            del box
    assert taken == n
    assert peak[0] == 2
    assert feed.max_resident == 2


def test_a_prefetcher_of_no_batches_yields_nothing_and_holds_nothing():
    """Zero batches (S = 0): no item, no ``put`` call, nothing waited for, ``max_resident`` 0."""
    calls = []
    data = HostData(pixels(4), (1, 4, 4), "bernoulli", 1)
    with Prefetcher(data, np.zeros((0, 2), np.int64), slice(0, 2), calls.append) as feed:
        assert list(feed) == []
    assert calls == [] and feed.max_resident == 0 and feed.wait_s == 0.0


def test_a_single_float_image_streams():
    """One image is a dataset too: its float values are checked (as one slice) and it trains."""
    x = as_floats(pixels(1))
    assert HostData(x, (1, 4, 4), "bernoulli").shape == (1, 1, 4, 4)
    with pytest.raises(DataError, match="values in"):
        HostData(x * 2, (1, 4, 4), "bernoulli")
