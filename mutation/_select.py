"""A cosmic-ray session filter (run with cosmic-ray's own interpreter): skip the mutants that
are not selected, so ``cosmic-ray exec`` runs only the others.

Usage: ``python _select.py SESSION --sample K [--done FILE]``

- ``--sample K``: of the pending mutants in a stable order (line, column, operator,
  occurrence), keep every K-th one (1 keeps all);
- ``--done FILE``: a JSON list of ``[operator, occurrence]`` pairs whose outcome is already known
  (from an earlier run over the identical file); they are skipped too.
"""

from __future__ import annotations

import argparse
import json

from cosmic_ray.work_db import WorkDB
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    parser.add_argument("--sample", type=int, default=1)
    parser.add_argument("--done")
    args = parser.parse_args()
    done = set()
    if args.done:
        done = {(op, int(occ)) for op, occ in json.load(open(args.done))}
    db = WorkDB(args.session, WorkDB.Mode.open)
    try:
        items = sorted(
            db.pending_work_items,
            key=lambda it: (
                tuple(it.mutations[0].start_pos),
                it.mutations[0].operator_name,
                it.mutations[0].occurrence,
            ),
        )
        for index, item in enumerate(items):
            spec = item.mutations[0]
            known = (spec.operator_name, spec.occurrence) in done
            if index % args.sample or known:
                why = "outcome known from an earlier run" if known else "not in the sample"
                db.set_result(
                    item.job_id, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED)
                )
    finally:
        db.close()


if __name__ == "__main__":
    main()
