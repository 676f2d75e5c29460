"""A stand-in for ``torch.cuda``'s CUDA-graph API on the CPU (``CPU_GRAPHS``), for the tests of
``Trainer(compile="cudagraph")`` and of the bench's ``torch/cudagraph`` contender.

The capture records every ATen call made inside ``graph(g)`` with its argument and result
tensors; ``replay`` makes the same calls again on the same tensors and writes each result into
the tensor the capture produced it in, as a CUDA graph replays its kernels on fixed addresses.
So, as on a GPU, the captured step sees new data only through tensors that outlive it, and
whatever it initialises inside the capture is initialised again at every replay. A read of a
tensor's value on the host during the capture (``item()``, a device sync on CUDA, which capture
forbids) raises, as it does on a GPU. (The recording runs the calls once; a real capture only
records them.)
"""

import contextlib
import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# ATen calls that read a tensor's value back to the host: a sync on CUDA, refused in capture.
HOST_READS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


class CaptureError(RuntimeError):
    """What a capture that reads a value back to the host raises (CUDA refuses it too)."""


class RecordedGraph:
    """Stands in for ``torch.cuda.CUDAGraph``: the calls of the capture, replayed."""

    def __init__(self):
        self.calls = []
        self.replays = 0

    def replay(self):
        self.replays += 1
        with torch.no_grad():  # the recorded calls include autograd's; run them as kernels
            for func, args, kwargs, out in self.calls:
                fresh = func(*args, **kwargs)
                for old, new in zip(tree_leaves(out), tree_leaves(fresh), strict=True):
                    # In-place calls and views already wrote to, or alias, the captured memory.
                    if isinstance(old, torch.Tensor) and old.numel() and not _same_memory(old, new):
                        old.copy_(new)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: RecordedGraph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name in HOST_READS:
            raise CaptureError(f"{func} reads a tensor back to the host during graph capture")
        out = func(*args, **kwargs)
        if func.namespace != "profiler":  # profiler annotations, not kernels
            self.graph.calls.append((func, args, kwargs, out))
        return out


class _Stream:
    def wait_stream(self, other):
        # One CPU thread runs everything in order: there is nothing to wait for.
        pass


CPU_GRAPHS = types.SimpleNamespace(
    CUDAGraph=RecordedGraph,
    graph=_Recorder,
    Stream=_Stream,
    stream=lambda s: contextlib.nullcontext(),
    current_stream=_Stream,
)
