"""Surviving generic mutants that cannot change behaviour, each with the reason.

``mutation/generic.py`` matches a survivor against these entries by file and by the stripped text
of the mutated line before (``old``) and after (``new``, as cosmic-ray writes it), and counts a
match as equivalent (left out of the score). Lines are matched by content, not number, so the
list survives edits elsewhere in the file; an entry whose line changed stops matching and the
mutant shows up as a survivor again, to be judged anew.
"""

from __future__ import annotations

_EPOCH_SEED = (
    "np.random.SeedSequence([seed, epoch]).generate_state({}, np.uint64)[0] >> np.uint64(1)"
)

_NPZ_MATCH = 'images, labels = matches[{}]["images"], matches[{}]["labels"]'

_NPZ_LABELS = "ys = [arrays[label_keys[{}]][train_idx], arrays[label_keys[{}]][test_idx]]"

EQUIVALENT: list[dict[str, str]] = [
    *(
        {
            "file": "vae_common/training.py",
            "old": _EPOCH_SEED.format("2"),
            "new": _EPOCH_SEED.format(f" {n}"),
            "reason": "SeedSequence.generate_state(n) yields its words in order, so word 0 is "
            "the same for every n >= 1 (checked for several seeds); only word 0 is used",
        }
        for n in (1, 3)
    ),
    {
        "file": "vae_common/reference.py",
        "old": "return -0.5 * np.sum(1.0 + logvar - mean**2 - np.exp(logvar), axis=-1)",
        "new": "return -0.5 * np.sum(1.0 + logvar - mean**2 - np.exp(logvar), axis=+1)",
        "reason": "mean and logvar are (B, L) by contract: axis 1 is the last axis",
    },
    {
        "file": "vae_common/reference.py",
        "old": "return a.reshape(a.shape[0], -1)",
        "new": "return a.reshape(a.shape[0], - 2)",
        "reason": "numpy (2.4) infers a dimension given as any negative number, as for -1",
    },
    {
        "file": "vae_common/reference.py",
        "old": "free_bits: float = 0.0,",
        "new": "free_bits: float = -1.0,",
        "reason": "mlp_objective_and_grads with a floor of -1 floors nothing (every KL_j >= 0): "
        "the same value and gradient as the plain KL, up to the order of the sums",
    },
    *(
        {
            "file": "vae_jax/trainer.py",
            "old": 'if self.config.arch == "conv" and self.device.platform == "cpu":',
            "new": f"if {mutated}:",
            "reason": "the per-step loop and the scanned epoch make the same steps with the same "
            "noise (the loop exists for speed on XLA:CPU); only the time differs",
        }
        for mutated in (
            'self.config.arch == "conv" and self.device.platform != "cpu"',
            'self.config.arch == "conv" or self.device.platform == "cpu"',
            'not self.config.arch == "conv" and self.device.platform == "cpu"',
            'self.config.arch != "conv" and self.device.platform == "cpu"',
        )
    ),
    *(
        {
            "file": "vae_jax/trainer.py",
            "old": "if self.mesh is not None and self._processes > 1:",
            "new": f"if self.mesh is not None and self._processes {mutated}:",
            "reason": "the one case this adds is a single process, where require_same passes "
            "without a collective (distributed.all_ranks_agree returns True for one process)",
        }
        for mutated in ("> 0", ">= 1")
    ),
    {
        "file": "vae_jax/trainer.py",
        "old": "flush_denormal: bool = True,",
        "new": "flush_denormal: bool = False,",
        "reason": "the JAX trainer accepts flush_denormal for symmetry and never reads it "
        "(XLA flushes denormals itself)",
    },
    {
        "file": "vae_torch/losses.py",
        "old": "return torch.sum(_kl_per_dim(mean, logvar), dim=-1)",
        "new": "return torch.sum(_kl_per_dim(mean, logvar), dim=+1)",
        "reason": "mean and logvar are checked to be (B, L): dim 1 is the last dimension",
    },
    {
        "file": "vae_common/reference.py",
        "old": "_, mean, logvar = mlp_forward(state, config, x, eps[0])",
        "new": "_, mean, logvar = mlp_forward(state, config, x, eps[ -1])",
        "reason": "only the encoder's mean and logvar are kept, and they do not depend on eps",
    },
    {
        "file": "vae_common/sources.py",
        "old": "return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)",
        "new": "return json.dumps(self.to_dict(), sort_keys=True, allow_nan=True)",
        "reason": "a DataSource holds no NaN or infinity to write: its only float, test_fraction, "
        "is checked to lie in (0, 1) by __post_init__ and the dataclass is frozen",
    },
    {
        "file": "vae_common/idx.py",
        "old": 'found = "more" if len(data) > expected else f"{header + len(data)} bytes"',
        "new": 'found = "more" if len(data) >= expected else f"{header + len(data)} bytes"',
        "reason": "the line runs only when len(data) != expected, where > and >= agree",
    },
    {
        "file": "vae_common/npz.py",
        "old": "key = image_keys[0]",
        "new": "key = image_keys[ -1]",
        "reason": "the line runs only when image_keys holds one key (the single-array scheme), "
        "whose first and last elements are the same",
    },
    *(
        {
            "file": "vae_common/npz.py",
            "old": _NPZ_MATCH.format("0", "0"),
            "new": _NPZ_MATCH.format(*mutated),
            "reason": "the line runs only when matches holds exactly one scheme (any other "
            "count is refused just above): element 0 is element -1",
        }
        for mutated in ((" -1", "0"), ("0", " -1"))
    ),
    {
        "file": "vae_common/npz.py",
        "old": "missing.sort(key=NPZ_ARRAYS.index if set(missing) <= set(NPZ_ARRAYS) else None)",
        "new": "missing.sort(key=NPZ_ARRAYS.index if set(missing) < set(NPZ_ARRAYS) else None)",
        "reason": "<= and < differ only when missing holds all four of NPZ_ARRAYS (the Keras "
        "scheme's keys), which cannot happen: missing holds only absent keys of the one scheme "
        "that matched, and a scheme matches only when at least one of its keys is present",
    },
    {
        "file": "vae_common/npz.py",
        "old": "for x_key, y_key in zip(image_keys, label_keys, strict=True):",
        "new": "for x_key, y_key in zip(image_keys, label_keys, strict=False):",
        "reason": "image_keys and label_keys are the images and labels of one NPZ_SCHEMES "
        "entry, which name as many label arrays as image arrays (2 and 2, or 1 and 1): the "
        "zip never sees two lengths, so strict never raises",
    },
    {
        "file": "vae_common/npz.py",
        "old": 'f"{image_keys[-1]} images are {images[1].shape[1:]}; both splits must have one "',
        "new": 'f"{image_keys[+1]} images are {images[1].shape[1:]}; both splits must have one "',
        "reason": "the line runs only when the two splits differ in image size, which the "
        "single-array scheme (one array, split) cannot: image_keys then holds two keys, and "
        "element 1 is element -1",
    },
    *(
        {
            "file": "vae_common/npz.py",
            "old": _NPZ_LABELS.format("0", "0"),
            "new": _NPZ_LABELS.format(*mutated),
            "reason": "the line runs only in the single-array scheme, whose label_keys is the "
            "one key ('y',): element 0 is element -1",
        }
        for mutated in ((" -1", "0"), ("0", " -1"))
    ),
    {
        "file": "vae_torch/train.py",
        "old": "optimizer.zero_grad(set_to_none=True)",
        "new": "optimizer.zero_grad(set_to_none=False)",
        "reason": "every parameter enters the objective, so each backward (DDP's all-reduce "
        "too) writes a gradient for all of them: into None, or added to a zero tensor, and "
        "0.0 + g is g (a gradient of -0.0 becomes +0.0, which Adam's moments and update treat "
        "alike); the same gradients reach Adam, only the memory held between steps differs",
    },
    {
        "file": "vae_common/data.py",
        "old": "x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)",
        "new": "x = (bunch.data.astype(np.float32) / 16.0).reshape(- 2, 1, 8, 8)",
        "reason": "numpy (2.4) infers a dimension given as any negative number, as for -1",
    },
    {
        "file": "vae_jax/data_parallel.py",
        "old": "return jax.make_array_from_process_local_data(NamedSharding(self.mesh, _spec(0)), "
        "x, shape)",
        "new": "return jax.make_array_from_process_local_data(NamedSharding(self.mesh, "
        "_spec( -1)), x, shape)",
        "reason": "_spec(-1) is _spec(0): [None] * -1 is the empty list, so both are "
        "PartitionSpec('data'), the batch split along axis 0",
    },
    {
        "file": "vae_common/training.py",
        "old": "if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):",
        "new": "if not ( -1 <= self.b1 < 1 and 0 <= self.b2 < 1):",
        "reason": "the loop above already refuses a negative b1 (every number of the loop must "
        "be >= 0), so b1 >= 0 here, where -1 <= b1 and 0 <= b1 agree",
    },
    *(
        {
            "file": "vae_common/evaluation.py",
            "old": "if iwae_k > 1:",
            "new": f"if iwae_k {mutated}:",
            "reason": "the check at the top refuses iwae_k < 0 and iwae_k == 1, so iwae_k is 0 "
            "or >= 2 here, where > 0, >= 1 and > 1 agree",
        }
        for mutated in ("> 0", ">= 1")
    ),
    {
        "file": "vae_common/training.py",
        "old": "if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):",
        "new": "if not (0 <= self.b1 < 1 and -1 <= self.b2 < 1):",
        "reason": "the loop above already refuses a negative b2 (every number of the loop must "
        "be >= 0), so b2 >= 0 here, where -1 <= b2 and 0 <= b2 agree",
    },
    {
        "file": "vae_common/evaluation.py",
        "old": "chunk = max(1, min(batch_size, IWAE_CHUNK // iwae_k))",
        "new": "chunk = max( 0, min(batch_size, IWAE_CHUNK // iwae_k))",
        "reason": "batch_size >= 1 and 2 <= iwae_k <= IWAE_CHUNK are checked at the top, so "
        "min(batch_size, IWAE_CHUNK // iwae_k) >= 1, where max with 0 and max with 1 agree",
    },
    {
        "file": "vae_common/streaming.py",
        "old": "self._held = False",
        "new": "self._held = True",
        "reason": "in Prefetcher._release, every call is the epoch's first (held False) or "
        "follows a yield that set held True, so what _release leaves there is overwritten "
        "before it is read; in __exit__ nothing reads it after (a Prefetcher is iterated once). "
        "The same line in __init__ is killed (an extra slot: prefetch + 2 batches resident)",
    },
    {
        "file": "vae_common/streaming.py",
        "old": "rows = max(1, _CHECK_BYTES // max(1, x[0].nbytes))",
        "new": "rows = max(1, _CHECK_BYTES // max(1, x[ -1].nbytes))",
        "reason": "x is an (N, C, H, W) array with N >= 1 (checked before): its first and last "
        "rows have the same number of bytes",
    },
    {
        "file": "vae_common/streaming.py",
        "old": "rows = max(1, _CHECK_BYTES // max(1, x[0].nbytes))",
        "new": "rows = max(1, _CHECK_BYTES // max( 0, x[0].nbytes))",
        "reason": "x's rows have the model's (C, H, W), every axis >= 1 (checked before), so "
        "x[0].nbytes >= 1, where max with 0 and max with 1 agree",
    },
    *(
        {
            "file": "vae_jax/input_checks.py",
            "old": "@functools.lru_cache(maxsize=64)",
            "new": new,
            "reason": "_flax_layout is a pure function of a frozen, hashable config returning "
            "read-only mappings; the cache (its size, or having one at all) only saves "
            "recomputing the layout table for a config seen before",
        }
        for new in ("@functools.lru_cache(maxsize= 65)", "@functools.lru_cache(maxsize= 63)")
    ),
    {
        "file": "vae_jax/input_checks.py",
        "old": " /  / @functools.lru_cache(maxsize=64)",
        "new": "",
        "reason": "_flax_layout is a pure function of a frozen, hashable config returning "
        "read-only mappings; without the cache it is recomputed on each call, to the same value",
    },
    {
        "file": "vae_common/streaming.py",
        "old": "rows = max(1, _CHECK_BYTES // max(1, x[0].nbytes))",
        "new": "rows = max(1, _CHECK_BYTES // max( 2, x[0].nbytes))",
        "reason": "only float data are checked here (float16 at the smallest: 2 bytes an "
        "element) and a row has >= 1 element, so x[0].nbytes >= 2, where max with 2 and max "
        "with 1 agree",
    },
    {
        "file": "vae_common/streaming.py",
        "old": 'self._thread = threading.Thread(target=self._produce, name="vae-prefetch", '
        "daemon=True)",
        "new": 'self._thread = threading.Thread(target=self._produce, name="vae-prefetch", '
        "daemon=False)",
        "reason": "the thread is started by __enter__ and joined by __exit__, which runs however "
        "the with block is left (an exception or KeyboardInterrupt included), so it never "
        "outlives the block and whether it is a daemon is never consulted",
    },
    {
        "file": "vae_common/trainer_checks.py",
        "old": '"xs", xs.reshape((-1,) + xs.shape[2:]), config.input_shape, config.likelihood',
        "new": '"xs", xs.reshape((- 2,) + xs.shape[2:]), config.input_shape, config.likelihood',
        "reason": "numpy (2.4) infers a dimension given as any negative number, as for -1",
    },
    {
        "file": "vae_jax/trainer.py",
        "old": 'if self.mesh is not None and self.uneven == "replicate":',
        "new": 'if self.mesh is not None or self.uneven == "replicate":',
        "reason": "the case this adds is one device (mesh None), where jit_steps and Placement "
        "ignore whole (they have nothing to replicate over) and _whole is always False, so "
        "the whole steps are the plain ones and never chosen",
    },
    {
        "file": "vae_jax/data_parallel.py",
        "old": "axes = (None, None, None) if whole else (None, 0, 1)",
        "new": "axes = (None, None, None) if whole else (None, -1, 1)",
        "reason": "_spec(axis) is P(*([None] * axis), DATA_AXIS), and [None] * -1 is [], so "
        "_spec(-1) is _spec(0): the same split along the first axis",
    },
    {
        "file": "vae_jax/data_parallel.py",
        "old": "return (idx if self.mesh is None else self.split(idx, self._batch_axis(0))), "
        "self.number(i)",
        "new": "return (idx if self.mesh is None else self.split(idx, self._batch_axis( -1))), "
        "self.number(i)",
        "reason": "idx has one axis, so axis -1 is axis 0: split's index tuple "
        "(slice(None),) * -1 is empty and _spec(-1) is _spec(0), as for axis 0",
    },
    {
        "file": "vae_jax/data_parallel.py",
        "old": "x = x.reshape(len(x), -1)",
        "new": "x = x.reshape(len(x), - 2)",
        "reason": "numpy (2.4) infers a dimension given as any negative number, as for -1",
    },
    *(
        {
            "file": "vae_torch/trainer.py",
            "old": "self._step_count = 0",
            "new": f"self._step_count = {mutated}",
            "reason": "the count __init__ sets is never read: every use of a trainer's steps "
            "needs weights first (TrainerBase refuses them before), and _load_state_dict sets "
            "the count to 0 (the same line there is killed: a step count of 1 after loading "
            "shifts the KL warm-up)",
        }
        for mutated in ("1", "-1")
    ),
    *(
        {
            "file": "vae_torch/trainer.py",
            "old": "if self.world > 1:",
            "new": f"if self.world {mutated}:",
            "reason": "the case this adds is one rank, where require_same passes without a "
            "collective (distributed.all_ranks_agree is True outside a process group, and a "
            "group of one agrees with itself)",
        }
        for mutated in ("> 0", ">= 1")
    ),
    {
        "file": "vae_torch/trainer.py",
        "old": "rows = self._stream_rows(len(batches[0]))",
        "new": "rows = self._stream_rows(len(batches[ -1]))",
        "reason": "batches is a 2-d (S, B) array with S >= 1 here (an epoch of no steps "
        "returns before): its first and last rows both have B indices",
    },
    {
        "file": "vae_torch/trainer.py",
        "old": "return t.pin_memory().to(self.device, non_blocking=True)",
        "new": "return t.pin_memory().to(self.device, non_blocking=False)",
        "reason": "a blocking copy to the GPU gives the same tensor; non_blocking only lets "
        "the host queue the copy without waiting (CUDA only, speed only)",
    },
]
