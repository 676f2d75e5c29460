"""What a training run reports while it runs: progress on stderr and TensorBoard event files.

Progress: a ``tqdm`` bar only when stderr is a terminal; otherwise (a log file, a pipe, a batch
job) one plain line per epoch, with no carriage returns, so the log reads as text.

TensorBoard (``vae train --tensorboard``): scalars written with ``tensorboardX``'s
``SummaryWriter`` (pure Python: no TensorFlow and no torch needed), from the optional extra
``pip install 'vae-twin[tensorboard]'``. The per-step training losses come back from the device
once per epoch (no host sync inside an epoch), so they are written after the epoch, each at its
global step number (the Adam step count after that step). Tags:

- ``train/loss``: the loss of every ``log_every``-th global step;
- ``epoch/train_loss``, ``epoch/seconds``, ``epoch/samples_per_s`` (examples trained per second
  of the epoch's training), ``epoch/data_wait_share`` (the share of those seconds spent waiting
  for data): per epoch, at the epoch's last step;
- ``val/neg_elbo``, ``val/reconstruction``, ``val/kl`` (with a validation split) and
  ``test/...`` (with ``--test-every-epoch``): per epoch, at the epoch's last step;
- ``final/test_neg_elbo`` (and ``final/best_test_neg_elbo``): the test set at the end.

A resumed run purges the steps after its committed one (``purge_step``), so the steps a killed
process logged and the resume trains again are not shown twice; a fresh run purges everything a
previous run left in the same directory.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from vae_common.errors import UsageError

TENSORBOARD_EXTRA = "tensorboard"
# Keys of an epoch record written as per-epoch scalars, under these tags.
EPOCH_SCALARS = {
    "train_loss": "epoch/train_loss",
    "seconds": "epoch/seconds",
    "samples_per_s": "epoch/samples_per_s",
    "data_wait_share": "epoch/data_wait_share",
    "val_neg_elbo": "val/neg_elbo",
    "val_reconstruction": "val/reconstruction",
    "val_kl": "val/kl",
    "test_neg_elbo": "test/neg_elbo",
    "test_reconstruction": "test/reconstruction",
    "test_kl": "test/kl",
}


def require_tensorboard() -> None:
    """``UsageError`` naming the extra to install unless ``tensorboardX`` can be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise UsageError(
            "--tensorboard needs the tensorboardX package: pip install "
            f"'vae-twin[{TENSORBOARD_EXTRA}]'"
        ) from None


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One plain line for an epoch record: its number, losses, held-out metrics, time and
    throughput (samples/s and the share of the time spent waiting for data, when recorded)."""
    parts = [f"train loss {record['train_loss']:.3f}"]
    if "val_neg_elbo" in record:
        parts.append(f"val -ELBO {record['val_neg_elbo']:.3f}")
    if "test_neg_elbo" in record:
        parts.append(f"test -ELBO {record['test_neg_elbo']:.3f}")
    timing = [f"{record['seconds']:.1f} s"]
    if "samples_per_s" in record:
        timing.append(f"{record['samples_per_s']:.0f} samples/s")
    if "data_wait_share" in record:
        timing.append(f"data wait {100 * record['data_wait_share']:.0f}%")
    devices = record.get("devices", 1)
    on = f" on {devices} devices" if devices > 1 else ""
    return (
        f"{record['backend']} epoch {record['epoch']}/{epochs}{on}: {', '.join(parts)} "
        f"({', '.join(timing)}, step {record['step']})"
    )


class RunLog:
    """Progress and TensorBoard scalars of one ``vae_tools.run.train`` call.

    Args:
      backend: for the progress bar's label.
      epochs: the run's total epochs.
      done: epochs already committed (a resume starts its bar there).
      progress: report progress on ``stream`` at all.
      tensorboard: the directory of the event files, or None for none.
      log_every: write every N-th global step's training loss (1: every step).
      purge_step: the first step whose earlier events TensorBoard discards (see the module
        docstring); None purges nothing.
      stream: where progress goes (stderr).
    """

    def __init__(
        self,
        backend: str,
        epochs: int,
        done: int,
        progress: bool,
        tensorboard: Path | None = None,
        log_every: int = 1,
        purge_step: int | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        if log_every < 1:
            raise UsageError(f"log_every must be a positive number of steps, got {log_every}")
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.log_every = log_every
        self.bar: Any = None
        self.progress = progress
        if progress and _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=epochs,
                initial=done,
                desc=f"{backend} training",
                unit="epoch",
                file=self.stream,
            )
        self.writer: Any = None
        if tensorboard is not None:
            require_tensorboard()
            from tensorboardX import SummaryWriter

            # A file of its own per writer: tensorboardX names files by the second and the
            # host, so a resume within the same second would otherwise reuse the name.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self.writer = SummaryWriter(
                str(tensorboard), purge_step=purge_step, filename_suffix=suffix
            )

    def epoch(self, record: dict[str, Any]) -> None:
        """Report a committed epoch: its progress, then its scalars (flushed to disk)."""
        if self.bar is not None:
            postfix = {"loss": f"{record['train_loss']:.2f}"}
            if "samples_per_s" in record:
                postfix["samples/s"] = f"{record['samples_per_s']:.0f}"
            for key, name in (("val_neg_elbo", "val"), ("test_neg_elbo", "test")):
                if key in record:
                    postfix[name] = f"{record[key]:.2f}"
            self.bar.set_postfix(postfix)
            self.bar.update(1)
        elif self.progress:
            print(epoch_line(record, self.epochs), file=self.stream, flush=True)
        if self.writer is not None:
            losses = record["train_losses"]
            first = record["step"] - len(losses) + 1
            for i, loss in enumerate(losses):
                if (first + i) % self.log_every == 0:
                    self.writer.add_scalar("train/loss", loss, first + i)
            for key, tag in EPOCH_SCALARS.items():
                if key in record:
                    self.writer.add_scalar(tag, record[key], record["step"])
            self.writer.flush()

    def note(self, text: str) -> None:
        """One line of progress that is not an epoch (early stopping, the final test)."""
        if not self.progress:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write ``{tag: value}`` at ``step`` (the final test results)."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
