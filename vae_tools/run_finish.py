"""How a training run ends (``vae_tools.run.train``), once its epochs are done: the plots, the
test set of the last and the best checkpoint, and the final commit (``finish``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vae_tools.run_commit import Job
from vae_tools.run_data import RunData
from vae_tools.run_epochs import make_trainer
from vae_tools.run_eval import final_test, result_lines
from vae_tools.run_log import RunLog
from vae_tools.run_plots import save_run_plots
from vae_tools.run_ranks import Ranks


def finish(
    job: Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    log: RunLog,
    plots: bool,
    eval_batch_size: int,
    patience: int,
    epochs: int,
    ranks: Ranks,
    device: str | None,
    compile: bool | str,
) -> None:
    """Process 0, once the epochs are done: the plots, the test set (last and best
    checkpoint) and the final commit. With several processes they run on a 1-device copy of
    the trainer (evaluation is unsharded; loading the best weights into the data-parallel
    trainer would wait for the other processes)."""
    if not ranks.writer:
        return
    run_dir, trainer = job.directory(), job.trainer
    step = trainer.step
    if ranks.world > 1:
        single = make_trainer(
            trainer.backend,
            job.config,
            job.train_config,
            job.settings.dtype,
            device,
            compile,
            job.settings.precision,
        )
        single.load_state_dict(trainer.state_dict())
        job = replace(job, trainer=single)
    if plots:
        save_run_plots(run_dir.out, job.trainer, data, metrics, job.settings.seed, run_dir)
    # Last: the best checkpoint's test figure loads its weights into the trainer.
    results = final_test(job, data, metrics, eval_batch_size, patience, epochs)
    for line in result_lines(results):
        log.note(line)
    log.scalars(
        {
            f"final/{'best_' if name == 'best' else ''}test_neg_elbo": results[name]["neg_elbo"]
            for name in ("last", "best")
            if name in results
        },
        step,
    )
    run_dir.commit(run_dir.manifest.epoch, step, test=results)


__all__ = ["finish"]
