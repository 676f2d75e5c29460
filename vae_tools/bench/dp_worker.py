"""One process of a data-parallel bench row: ``python -m vae_tools.bench.dp_worker JOB_DIR``.

Reads the job ``vae_tools.bench.data_parallel.save_job`` wrote, times its modes with
``timing.measure_interleaved`` (untimed epochs first, then interleaved timed rounds) and writes
``JOB_DIR/result.json`` atomically: from the one JAX process, or from rank 0 of the torch ranks
(``torchrun`` sets their environment). Every torch epoch ends with an all-reduce of its losses
(and every step with DDP's gradient all-reduce), so rank 0's clock covers the slowest rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from vae_tools.bench.contenders import make_contender
from vae_tools.bench.data_parallel import RANK_TIMEOUT_S, RESULT_FILE, Job, LastLosses, load_job
from vae_tools.bench.report import write_json
from vae_tools.bench.timing import measure_interleaved


def time_job(job: Job) -> dict[str, Any]:
    """``timings`` (mode -> ``timing.summarize`` dict) and ``last_epoch_mean_loss`` (mode ->
    the mean loss of its last timed epoch) of ``job``'s modes, in this process."""
    epochs = [LastLosses(make_contender(job.backend, m, job.workload)) for m in job.modes]
    timings = measure_interleaved(epochs, job.untimed_epochs, job.repeats)
    return {
        "timings": dict(zip(job.modes, timings, strict=True)),
        "last_epoch_mean_loss": {m: e.mean for m, e in zip(job.modes, epochs, strict=True)},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: python -m vae_tools.bench.dp_worker JOB_DIR")
    folder = Path(argv[0])
    job = load_job(folder)
    if job.backend == "jax":
        if job.workload.dtype == "float64":
            from vae_jax.device import enable_float64

            enable_float64()
        import jax

        result = time_job(job)
        result["jax_devices"] = [str(d) for d in jax.devices()[: job.workload.devices]]
        write_json(result, folder / RESULT_FILE)
        return 0
    import torch

    from vae_torch import distributed

    # Plain float32 products, as in the 1-device torch rows (vae_tools.bench.run).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    distributed.initialize(device=job.workload.device, timeout_s=RANK_TIMEOUT_S)
    try:
        result = time_job(job)
        if distributed.process_index() == 0:
            result["threads_per_process"] = torch.get_num_threads()
            write_json(result, folder / RESULT_FILE)
    finally:
        distributed.shutdown()
    # The result is written and the process group is gone. Skip the interpreter's teardown: a
    # C++ worker thread (gloo's, inductor's) still joinable when static objects are destroyed
    # can abort a rank after its work has finished (seen in this project's 2-rank tests).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
