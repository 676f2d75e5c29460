"""``vae bench``: a fair training-speed comparison of the backends on one machine.

Method, the same for every contender (``contenders.py``):
- the same data (N images) resident on the device, the same model, initial weights, batch
  size, dtype and Adam settings (``workload.py``);
- untimed epochs first (compilation included): the first epoch's excess over a steady epoch is
  reported as ``compile_s``; by default they run past the ~800 steps after which PyTorch on the
  CPU slows down from denormal Adam moments, so that slowdown is inside the timed epochs;
- ``repeats`` timed epochs, interleaved across contenders (``timing.py``), each ending with the
  device synchronised; the median is reported with the spread ``(max - min) / median``;
- every figure is also a ratio to the reference row measured in the same run: the canonical
  eager PyTorch loop (DataLoader with shuffling, sigmoid + BCE summed, default Adam,
  ``loss.item()`` every step, flush-to-zero off);
- the host's versions and settings, its measured matmul peak and the GEMM-only ceiling of the
  step (``host.py``) go with the records (``report.py``: table, JSON, chart);
- with ``devices=N`` (``vae bench --devices N``), data-parallel rows ``<mode>-dpN`` of
  ``Trainer(devices=N)`` and their efficiency against N times the 1-device row
  (``data_parallel.py``; run in other processes where this one lacks the N devices, so not
  interleaved with the other rows).
"""

from vae_tools.bench.contenders import (
    CONTENDERS,
    DP_MODES,
    MODES,
    make_contender,
    reference_step,
)
from vae_tools.bench.data_parallel import check_devices
from vae_tools.bench.host import gemm_ceiling, gemm_shapes, host_info, matmul_peak_gflops
from vae_tools.bench.report import format_table, save_plot, write_json
from vae_tools.bench.run import choose, run_bench
from vae_tools.bench.timing import measure_interleaved, summarize
from vae_tools.bench.workload import Workload, default_config, flops_per_sample, make_data

__all__ = [
    "CONTENDERS",
    "DP_MODES",
    "MODES",
    "Workload",
    "check_devices",
    "choose",
    "default_config",
    "flops_per_sample",
    "format_table",
    "gemm_ceiling",
    "gemm_shapes",
    "host_info",
    "make_contender",
    "make_data",
    "matmul_peak_gflops",
    "measure_interleaved",
    "reference_step",
    "run_bench",
    "save_plot",
    "summarize",
    "write_json",
]
