"""Tiny MNIST-format datasets written by tests (never the real data)."""

from pathlib import Path

import numpy as np

from vae_common.data import IDX_FILES


def write_idx_dir(directory: Path, n_train: int, n_test: int, size: int, seed: int = 0) -> Path:
    """The four standard MNIST-format files (big-endian headers) with random images."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (directory / IDX_FILES[f"{split}_images"]).write_bytes(
            np.array([2051, n, size, size], ">u4").tobytes() + images.tobytes()
        )
        (directory / IDX_FILES[f"{split}_labels"]).write_bytes(
            np.array([2049, n], ">u4").tobytes() + labels.tobytes()
        )
    return directory
