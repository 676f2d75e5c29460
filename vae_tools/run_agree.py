"""How the processes of a data-parallel run agree before they train (the agreement half of
``vae_tools.run_ranks.Ranks``; nothing here acts when there is one process).

- ``check_agree``: before anything else, every process's settings (model, training, run,
  epochs...) and then its training images (``images_digest``) are compared
  (``distributed.all_ranks_agree``); a difference is refused with one ``ConfigError`` naming the
  differing settings, printed by process 0 alone.
- ``broadcast``: the writer's starting point (fresh weights, or the state ``--resume`` restored,
  with the committed metrics: ``pack_start``) goes to every process, so all start from the same
  one (``unpack_start``).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from vae_common.errors import ConfigError
from vae_tools.run_settle import RanksStopped, Settling


class Agreement(Settling):
    """The agreement half of ``Ranks`` (``vae_tools.run_ranks``), over its stopping half."""

    def agree(self, text: str) -> bool:
        """True when every process passes the same ``text`` (one collective)."""
        if self.world == 1:
            return True
        with self.collective("while they compared their settings"):
            return bool(self._distributed().all_ranks_agree(text))

    def check_agree(self, named: dict[str, Any], what: str = "settings") -> None:
        """Refuse processes started with different ``named`` values (JSON-able, the same keys
        in every process): process 0 raises ``ConfigError`` naming the differing keys, the
        others ``RanksStopped``."""
        if self.world == 1:
            return
        if self.agree(_json(named)):
            return
        differ = [key for key in sorted(named) if not self.agree(_json(named[key]))]
        if not self.writer:
            raise RanksStopped(f"{self._name()}: the processes differ in their {what}", 2)
        raise ConfigError(
            f"the {self.world} processes of this run were started with different {what} "
            f"({', '.join(differ) or 'their order'}); start every process with the same command "
            "line and the same data"
        )

    def broadcast(self, payload: bytes | None) -> bytes:
        """Process 0's ``payload`` in every process (the others pass None)."""
        if self.world == 1:
            if payload is None:
                raise ConfigError("broadcast: process 0 has nothing to send")
            return payload
        with self.collective("while process 0 sent the starting state"):
            if self.backend == "torch":
                import torch.distributed as dist

                box: list[Any] = [payload if self.writer else None]
                dist.broadcast_object_list(box, src=0)
                return bytes(box[0])
            from jax.experimental import multihost_utils

            size = np.int32(len(payload) if payload is not None and self.writer else 0)
            size = int(np.asarray(multihost_utils.broadcast_one_to_all(size)))
            buffer = (
                np.frombuffer(payload, np.uint8)
                if payload is not None and self.writer
                else np.zeros(size, np.uint8)
            )
            return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def images_digest(x: np.ndarray) -> str:
    """A SHA-256 of an image array (its shape, dtype and bytes), to check that every process
    trains on the same images."""
    a = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def pack_start(
    state: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray] | None,
    step: int,
    metrics: list[dict[str, Any]],
) -> bytes:
    """Where a run starts, as bytes for ``Ranks.broadcast``: the weights, Adam's moments and
    step (None: fresh, step 0) and the committed metrics (an ``.npz``, no pickles)."""
    arrays = {f"state/{k}": np.asarray(v) for k, v in state.items()}
    arrays.update({f"adam/{k}": np.asarray(v) for k, v in (optimizer or {}).items()})
    meta = {"step": int(step), "metrics": metrics, "optimizer": optimizer is not None}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, meta=np.asarray(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def unpack_start(
    data: bytes,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, int, list[dict[str, Any]]]:
    """``pack_start``'s ``(state, optimizer, step, metrics)`` back from its bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        state = {k.removeprefix("state/"): f[k] for k in f.files if k.startswith("state/")}
        adam = {k.removeprefix("adam/"): f[k] for k in f.files if k.startswith("adam/")}
    return state, adam if meta["optimizer"] else None, int(meta["step"]), list(meta["metrics"])


__all__ = ["Agreement", "images_digest", "pack_start", "unpack_start"]
