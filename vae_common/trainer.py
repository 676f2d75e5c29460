"""The training contract: what a ``Trainer`` is, in both backends.

``vae_jax.trainer.Trainer`` and ``vae_torch.trainer.Trainer`` subclass ``TrainerBase``. The shared
docstrings and the shared plumbing (the argument checks of ``vae_common.trainer_checks``, the
batching checks) run here, once; evaluation and generation (``evaluate``, ``reconstruct``,
``sample``, ``encode_mean``) come from ``vae_common.trainer_inference.InferenceBase``. A backend
implements only the abstract hooks (``_``-prefixed) with its own arrays. The mirror test
(``tests/test_api_mirror.py``) proves that both trainers have exactly these public methods with
these signatures.

Arrays cross this interface as numpy arrays, except the dataset ``put_data`` returns (a
``jax.Array`` or ``torch.Tensor``, or a streamed ``HostData``) for ``train_epoch``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from vae_common.batches import check_batches
from vae_common.config import VAEConfig
from vae_common.precision import check_precision
from vae_common.state_checks import check_optimizer_state, check_state, check_step
from vae_common.streaming import HostData, Prefetcher
from vae_common.trainer_checks import (
    check_arguments,
    check_compile,
    check_devices,
    check_host_data,
    check_split,
    check_steps,
    check_stream,
    check_uneven,
)
from vae_common.trainer_inference import InferenceBase
from vae_common.training import TrainConfig


class TrainerBase(InferenceBase):
    """A model, its Adam state and its step count, trained on data resident on one device.

    Args:
      config: the model.
      train: optimizer and objective settings (``TrainConfig()`` when None).
      dtype: ``"float32"`` or ``"float64"`` (checked against the device).
      device: a device name for the backend's ``select_device`` (None: the backend's default).
      compile: ``False``, ``True`` or ``"cudagraph"`` (``ConfigError`` for anything else).
        torch: ``True`` computes each step's loss and gradients in one compiled graph;
        ``"cudagraph"`` (CUDA only) captures the whole eager step (forward, backward and the
        capturable Adam update) as one CUDA graph per batch shape and replays it
        (``vae_torch._cuda_graph``). JAX compiles every step with ``jax.jit`` anyway and accepts
        ``True`` for symmetry, and ``"cudagraph"`` on a CUDA device only, where XLA already
        runs the kernels of its compiled steps through CUDA graphs wherever its command
        buffers apply (``--xla_gpu_enable_command_buffer``), so it changes nothing. Off CUDA,
        ``"cudagraph"`` raises ``DeviceError`` naming the device, with the same text in both
        backends. The CUDA-graph step has not yet run on a GPU: its tests replay the captured
        kernels on the CPU through a stand-in for ``torch.cuda``'s graph API.
      flush_denormal: torch on the CPU: flush denormals to zero while training; XLA always does.
      devices: data parallelism over this many devices (None: one device, no collectives).
        JAX shards every batch over a mesh of ``devices`` devices (``vae_jax.distributed``);
        torch runs one process per device under ``DistributedDataParallel``, and ``devices``
        must equal the world size of the process group (``vae_torch.distributed``). Either way a
        global batch of B examples is cut into ``devices`` slices of B / devices rows (a B that
        ``devices`` does not divide: see ``uneven``), the noise and the dynamic binarization are
        those of the 1-device run on the whole batch, and the loss is the mean over the global
        batch, so an N-device step is the 1-device step up to rounding. Evaluation, generation
        and reconstruction run unsharded, one whole batch on one device, any batch size.
      precision: how the training steps compute (``vae_common.precision``): ``"float32"``,
        ``"tf32"`` (TF32 products on NVIDIA GPUs; float32 elsewhere) or ``"bf16"`` (torch
        autocast; JAX bfloat16 layers); the weights, Adam's state and the loss stay float32,
        and evaluation and generation compute as in a float32 run. Only ``"float32"`` with
        ``dtype="float64"`` (``ConfigError`` otherwise).
      uneven: what ``run_steps`` and ``train_epoch`` (resident or streamed) do with a batch of
        B examples that ``devices`` does not divide (such as an epoch's last, smaller batch):
        ``"refuse"``, a ``ConfigError`` before any step; or ``"replicate"``, that batch whole
        on every device (JAX: placed replicated over the mesh; torch: every rank takes all B
        rows, and the gradient all-reduce averages identical copies), so its step is still the
        1-device step on the whole batch up to rounding, at N times the work. Batches that
        split still split; one device splits every batch.

    The weights are set by ``load_state_dict`` before anything else is called.
    """

    backend: ClassVar[str]

    def __init__(
        self,
        config: VAEConfig,
        train: TrainConfig | None = None,
        dtype: str = "float32",
        device: Any = None,
        compile: bool | str = False,
        flush_denormal: bool = True,
        devices: int | None = None,
        precision: str = "float32",
        uneven: str = "refuse",
    ) -> None:
        self.train_config = check_arguments(config, train, dtype)
        self.config = config
        self.dtype = dtype
        self.precision = check_precision(precision, dtype)
        self.compile = check_compile(compile)
        self.flush_denormal = bool(flush_denormal)
        self.devices = check_devices(devices)
        self.uneven = check_uneven(uneven)
        self._loaded = False
        self._data_wait_s = 0.0

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Start from canonical weights (PyTorch names and layouts): fresh Adam state, step 0.

        Float32 and float64 weights load into either dtype (cast). Raises ``CheckpointError``
        naming any missing, extra, mis-shaped, mis-typed or non-finite tensor, before the
        backend sees any of them.
        """
        check_state(state, self.config)
        self._load_state_dict(state)
        self._loaded = True

    def state_dict(self) -> dict[str, np.ndarray]:
        """The current weights, canonical names and layouts, as numpy arrays."""
        self._require_weights()
        return self._state_dict()

    @property
    def step(self) -> int:
        """Adam steps taken since the weights were loaded (or the restored count)."""
        self._require_weights()
        return self._step()

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """Adam's moments under canonical names (``adam.exp_avg.<param>``,
        ``adam.exp_avg_sq.<param>``), PyTorch layouts; zeros before the first step."""
        self._require_weights()
        return self._optimizer_state_dict()

    def load_optimizer_state_dict(self, tensors: dict[str, np.ndarray], step: int) -> None:
        """Restore Adam's moments (canonical names, as ``optimizer_state_dict`` writes them) and
        the step count; a state written by either backend loads into either.

        Every tensor is checked here, once for both backends, before an optimizer or a kernel
        sees it (torch's fused Adam trusts its state's shapes: a short moment corrupts memory):
        exactly the names of ``vae_common.training.optimizer_state_names``, each of its
        parameter's shape and of the trainer's dtype, finite, second moments non-negative, and a
        step count in [0, 2**31 - 1]. Raises ``CheckpointError`` naming the first bad tensor, its
        shape and dtype and the expected ones; the trainer's state is then unchanged.
        """
        self._require_weights()
        step = check_step(step)
        checked = check_optimizer_state(tensors, self.config, self.dtype)
        self._load_optimizer_state_dict(checked, step)

    def put_data(self, x: np.ndarray, stream: bool = False, prefetch: int | None = None) -> Any:
        """Images (N, C, H, W) moved to the device once, in the model dtype; or, with
        ``stream=True``, kept on the host for datasets larger than the device's memory.

        Checked here, once, by the rules of the losses (``vae_common.checks.image_array``):
        the training steps do not check x's values themselves. Streamed, x may also be uint8
        and is not copied (a ``np.memmap`` works): a ``vae_common.streaming.HostData`` whose
        epochs keep at most ``prefetch`` (default 2, only with ``stream``) + 1 batches on the
        device and make the same steps as the resident data.
        """
        ahead = check_stream(stream, prefetch)
        if ahead is not None:
            return HostData(x, self.config.input_shape, self.config.likelihood, ahead)
        return self._put_data(self._images("x", x, self.config.likelihood))

    def train_epoch(self, data: Any, batches: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """One epoch of Adam steps over ``batches`` (S, B) of indices into ``data`` (from
        ``put_data``); returns the (S,) per-step losses after one host sync (an empty array for
        S = 0, the weights unchanged).

        The noise (and the dynamic binarization) of the epoch is drawn on the device from
        ``(seed, epoch)``: JAX folds ``epoch`` into ``key(seed)``; torch seeds a generator with
        ``vae_common.training.epoch_seed(seed, epoch)``. Bad indices are refused before any step.
        Streamed data is gathered batch by batch in the same order (``data_wait_s``).
        """
        self._require_weights()
        checked = check_batches(batches, int(data.shape[0]))
        check_split(checked.shape[1], self.devices, self.uneven)
        if isinstance(data, HostData):
            check_host_data(data, self.config)
        if not len(checked):
            # An epoch of no steps (S = 0): nothing to train and no batch waited for.
            self._data_wait_s = 0.0
            return np.zeros(0, np.dtype(self.dtype))
        if not isinstance(data, HostData):
            self._data_wait_s = 0.0
            return self._train_epoch(data, checked, int(seed), int(epoch))
        batch = checked.shape[1]

        def put(x: np.ndarray) -> Any:
            return self._put_batch(x, batch)

        with Prefetcher(data, checked, self._stream_rows(batch), put) as feed:
            losses = self._train_stream(feed, checked, int(seed), int(epoch))
        self._data_wait_s = feed.wait_s
        return losses

    @property
    def data_wait_s(self) -> float:
        """Seconds the step loop of the last ``train_epoch`` waited for its batches (blocked on
        the prefetch queue of streamed data; 0.0 for resident data and before any epoch)."""
        return self._data_wait_s

    def run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Adam steps on given batches (S, B, C, H, W) and noise (S, B, L); returns (S,) losses.

        The reproducible path: the same arrays give the same steps in both backends.
        """
        self._require_weights()
        xs, eps = check_steps(xs, eps, self.config, self.devices, self.uneven)
        return self._run_steps(xs, eps)

    def synchronize(self) -> None:
        """Wait until all work queued by this trainer has finished (for timing)."""
        self._synchronize()

    def _settings_text(self) -> str:
        # What every process of a data-parallel run must share (distributed.all_ranks_agree).
        config, train = self.config.to_json(), self.train_config.to_json()
        settings = (config, train, self.dtype, str(self.compile), self.precision, self.uneven)
        return "|".join(settings)

    def _whole(self, batch: int) -> bool:
        """Whether a global batch of ``batch`` examples is computed whole on every device
        (``uneven="replicate"``, ``check_split`` having let it through) instead of split."""
        return self.devices is not None and batch % self.devices != 0

    # The hooks each backend implements on its own arrays:

    @abc.abstractmethod
    def _load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    @abc.abstractmethod
    def _state_dict(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _step(self) -> int: ...

    @abc.abstractmethod
    def _optimizer_state_dict(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _load_optimizer_state_dict(self, tensors: dict[str, np.ndarray], step: int) -> None: ...

    @abc.abstractmethod
    def _put_data(self, x: np.ndarray) -> Any: ...

    @abc.abstractmethod
    def _train_epoch(self, data: Any, batches: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """``batches`` is checked, int32 (S, B)."""

    @abc.abstractmethod
    def _stream_rows(self, batch: int) -> slice:
        """The rows of each global batch of ``batch`` this process moves to its devices."""

    @abc.abstractmethod
    def _put_batch(self, x: np.ndarray, batch: int) -> Any:
        """Those rows of a global batch of ``batch`` on the device(s), in the stored dtype."""

    @abc.abstractmethod
    def _train_stream(self, feed: Prefetcher, batches: Any, seed: int, epoch: int) -> np.ndarray:
        """``_train_epoch`` on the batches ``feed`` yields, each dropped before the next."""

    @abc.abstractmethod
    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _synchronize(self) -> None: ...


__all__ = ["TrainerBase"]
