"""Generic mutation testing with cosmic-ray over the files of ``mutation/targets.py``.

For each file: copy the working tree into a temporary directory, check that the file's tests
pass there unmutated (and time them), let cosmic-ray apply one mutant at a time *to that copy*
and run the tests, then read the outcomes from its session database. The working tree is never
written to; the copies are removed at the end, also after Ctrl-C or SIGTERM.

Usage (``make mutation`` runs it with the pinned cosmic-ray):
    python mutation/generic.py --cosmic-ray BIN_DIR [--only FILE ...] [--without TEST ...]
        [--jobs N] [--sample K] [--reuse OLD/generic.json] [--out runs/mutation]

``--sample K`` tests every K-th mutant of each file (a stable choice, for a quick estimate);
``--reuse`` carries over the killed and equivalent outcomes of an earlier run (with the same
``--sample``, or any for a full run) for every file whose text is unchanged and tests only the
rest (adding tests cannot revive a killed mutant).
Writes ``OUT/generic.json`` (every mutant and its outcome) and ``OUT/generic.md`` (the score per
file and the survivors that ``mutation/equivalent.py`` does not explain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tree import (  # noqa: E402
    ROOT,
    check_imports_from,
    copy_tree,
    exists,
    pytest_command,
    test_env,
)
from equivalent import EQUIVALENT  # noqa: E402
from targets import OPERATORS, TARGETS, TIMEOUT_CONSTANT_S, TIMEOUT_FACTOR  # noqa: E402

OUTCOMES = ("killed", "survived", "equivalent", "error")
SELECT = Path(__file__).resolve().parent / "_select.py"

# Child processes, each the leader of its own process group (cosmic-ray and the pytest it
# starts), so an interrupt can end whole groups and no test keeps running on a removed copy.
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    if _stopping.is_set():
        raise KeyboardInterrupt
    if kwargs.pop("capture_output", False):
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = subprocess.Popen(command, start_new_session=True, **kwargs)
    with _children_lock:
        _children.add(proc)
    try:
        stdout, stderr = proc.communicate()
    finally:
        with _children_lock:
            _children.discard(proc)
    if _stopping.is_set():
        raise KeyboardInterrupt
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _stop_children() -> None:
    _stopping.set()
    with _children_lock:
        for proc in _children:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _config(path: str, command: list[str], timeout: float) -> str:
    # Every operator not listed in targets.OPERATORS is excluded by one negative look-ahead
    # (cr-filter-operators skips what its expressions match).
    keep = "|".join(re.escape(op) for op in OPERATORS)
    exclude = f"^(?!(?:{keep})$).*"
    return "\n".join(
        [
            "[cosmic-ray]",
            f"module-path = {json.dumps(path)}",
            f"timeout = {timeout:.1f}",
            "excluded-modules = []",
            f"test-command = {json.dumps(' '.join(command))}",
            "[cosmic-ray.distributor]",
            'name = "local"',
            "[cosmic-ray.filters.operators-filter]",
            f"exclude-operators = [{json.dumps(exclude)}]",
            "",
        ]
    )


def _mutated_line(diff: str) -> tuple[str, str]:
    """The (old, new) text of the lines a mutant changes, stripped, from its unified diff."""
    lines = diff.splitlines()
    old = [ln[1:].strip() for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    new = [ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
    return " / ".join(old), " / ".join(new)


def _equivalent_reason(path: str, old: str, new: str) -> str | None:
    for entry in EQUIVALENT:
        if entry["file"] == path and entry["old"] == old and entry["new"] == new:
            return entry["reason"]
    return None


def run_target(
    path: str,
    tests: list[str],
    cosmic_ray: Path,
    out: Path,
    sample: int,
    previous: dict | None,
    log: Callable[[str], None],
    rev: str | None = None,
) -> dict:
    """Mutate ``path`` in a fresh copy of the tree, judged by ``tests``; returns its summary."""
    copy = copy_tree(prefix="vae-mutation-", rev=rev)
    digest = hashlib.sha256((copy / path).read_bytes()).hexdigest()
    carried = []
    # A full run (sample 1) takes the outcomes of a sampled one too (its mutants are among the
    # full run's); a sampled run only those of a run with the same sample.
    if (
        previous is not None
        and previous["sha256"] == digest
        and (previous["sample"] == sample or sample == 1)
    ):
        carried = [m for m in previous["mutants"] if m["outcome"] in ("killed", "equivalent")]
    session = out / "sessions" / (path.replace("/", "_") + ".sqlite")
    try:
        check_imports_from(copy)
        command = pytest_command(tests)
        env = test_env(copy)
        start = time.perf_counter()
        base = _run(command, cwd=copy, env=env, capture_output=True, text=True)
        baseline_s = time.perf_counter() - start
        if base.returncode != 0:
            tail = (base.stdout + base.stderr).strip().splitlines()[-3:]
            log(f"{path}: NOT SCORED, its tests fail without any mutation: {' | '.join(tail)}")
            return {
                "file": path,
                "sha256": digest,
                "sample": sample,
                "tests": tests,
                "seconds": 0.0,
                "counts": dict.fromkeys(OUTCOMES, 0),
                "mutants": [],
                "baseline_failed": " | ".join(tail),
            }
        timeout = TIMEOUT_FACTOR * baseline_s + TIMEOUT_CONSTANT_S
        config = copy / "mutation-session.toml"
        config.write_text(_config(path, command, timeout))
        done = copy / "mutation-done.json"
        done.write_text(json.dumps([[m["operator"], m["occurrence"]] for m in carried]))
        session.parent.mkdir(parents=True, exist_ok=True)
        session.unlink(missing_ok=True)
        log(
            f"{path}: baseline {baseline_s:.1f} s, timeout {timeout:.0f} s per mutant, "
            f"{len(carried)} outcomes carried over"
        )
        start = time.perf_counter()
        steps = (
            [str(cosmic_ray / "cosmic-ray"), "init", str(config), str(session)],
            [str(cosmic_ray / "cr-filter-operators"), str(session), str(config)],
            [str(cosmic_ray / "python"), str(SELECT), str(session), "--sample", str(sample)]
            + ["--done", str(done)],
            [str(cosmic_ray / "cosmic-ray"), "exec", str(config), str(session)],
        )
        for step in steps:
            if _run(step, cwd=copy, env=env).returncode != 0:
                raise RuntimeError(f"{path}: {' '.join(step)} failed")
        seconds = time.perf_counter() - start
        dump = _run(
            [str(cosmic_ray / "cosmic-ray"), "dump", str(session)],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    result = summarise(path, dump, carried)
    result.update(sha256=digest, sample=sample, tests=tests, seconds=seconds)
    log(f"{path}: {result['counts']} in {seconds / 60:.1f} min")
    return result


def summarise(path: str, dump: str, carried: list[dict]) -> dict:
    """Outcomes of a session (``cosmic-ray dump`` output) plus those carried over."""
    mutants = list(carried)
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None or result["worker_outcome"] in ("skipped", "no-test"):
            continue
        spec = item["mutations"][0]
        old, new = _mutated_line(result.get("diff") or "")
        normal = result["worker_outcome"] == "normal" and result["test_outcome"] != "incompetent"
        outcome = result["test_outcome"] if normal else "error"
        reason = _equivalent_reason(path, old, new) if outcome == "survived" else None
        mutants.append(
            {
                "file": path,
                "line": spec["start_pos"][0],
                "operator": spec["operator_name"],
                "occurrence": spec["occurrence"],
                "function": spec.get("definition_name"),
                "old": old,
                "new": new,
                "outcome": "equivalent" if reason else outcome,
                "reason": reason,
            }
        )
    mutants.sort(key=lambda m: (m["line"], m["operator"], m["occurrence"]))
    counts = {k: sum(m["outcome"] == k for m in mutants) for k in OUTCOMES}
    return {"file": path, "counts": counts, "mutants": mutants}


def score(counts: dict[str, int]) -> float:
    """Killed over killed + survived. Equivalent mutants (no test can kill them) are left out,
    and so are errors (cosmic-ray could not apply the mutant or start the tests)."""
    total = counts["killed"] + counts["survived"]
    return counts["killed"] / total if total else 1.0


def report(results: list[dict], seconds: float, sample: int) -> str:
    total = {k: sum(r["counts"][k] for r in results) for k in OUTCOMES}
    which = "every mutant" if sample == 1 else f"every {sample}th mutant of each file"
    lines = [
        "# Generic mutation run (cosmic-ray)",
        "",
        f"Score {score(total):.1%} over {which}: {total['killed']} killed, {total['survived']} "
        f"survived, {total['equivalent']} equivalent (mutation/equivalent.py), "
        f"{total['error']} errors; {sum(r['seconds'] for r in results) / 60:.0f} min of "
        f"mutant runs ({seconds / 60:.0f} min in this invocation).",
        "",
        "| file | mutants | killed | survived | equivalent | errors | score | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["counts"]
        lines.append(
            f"| {r['file']} | {sum(c.values())} | {c['killed']} | {c['survived']} "
            f"| {c['equivalent']} | {c['error']} | {score(c):.1%} | {r['seconds'] / 60:.1f} |"
        )
    for r in results:
        if r.get("baseline_failed"):
            lines.append(
                f"\nNot scored: {r['file']} (its tests fail unmutated: {r['baseline_failed']})"
            )
    lines += ["", "## Surviving mutants", ""]
    for r in results:
        for m in r["mutants"]:
            if m["outcome"] in ("survived", "error"):
                lines.append(
                    f"- {m['outcome']}: {m['file']}:{m['line']} ({m['function']}, "
                    f"{m['operator']}): `{m['old']}` -> `{m['new']}`"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cosmic-ray", type=Path, required=True, help="bin dir of cosmic-ray")
    parser.add_argument("--only", action="append", default=[], help="mutate only this file")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        help="leave this test file out of every selection (to score the suite without it)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="files mutated at once")
    parser.add_argument("--sample", type=int, default=1, help="test every K-th mutant only")
    parser.add_argument("--reuse", type=Path, help="generic.json of an earlier run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mutation")
    parser.add_argument("--rev", help="mutate this commit instead of the working tree")
    args = parser.parse_args(argv)
    unknown = [f for f in args.only if f not in TARGETS]
    if unknown:
        parser.error(f"not in mutation/targets.py: {unknown}")
    targets = {f: t for f, t in TARGETS.items() if not args.only or f in args.only}
    selections = {f: [t for t in tests if t not in args.without] for f, tests in targets.items()}
    missing = sorted({t for ts in selections.values() for t in ts if not exists(t, args.rev)})
    missing += sorted(f for f in targets if not exists(f, args.rev))
    if missing:
        parser.error(f"mutation/targets.py names files that do not exist: {missing}")
    previous = {}
    if args.reuse:
        previous = {r["file"]: r for r in json.loads(args.reuse.read_text())}
    args.out.mkdir(parents=True, exist_ok=True)
    cosmic_ray = args.cosmic_ray.resolve()
    out = args.out.resolve()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    results_dir = out / "results"
    results_dir.mkdir(exist_ok=True)

    def one(f: str) -> dict:
        result = run_target(
            f, selections[f], cosmic_ray, out, args.sample, previous.get(f), log, args.rev
        )
        result["rev"] = args.rev
        (results_dir / (f.replace("/", "_") + ".json")).write_text(json.dumps(result, indent=1))
        return result

    # SIGTERM (kill, or a closing terminal under nohup) unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        results = list(pool.map(one, selections))
    except BaseException as exc:
        log(f"stopping the test runs and removing the copies ({type(exc).__name__})")
        _stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    pool.shutdown()
    seconds = time.perf_counter() - start
    # Every file scored into OUT so far (an earlier run with --only included), in target order.
    stored = {}
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        stored[r["file"]] = r
    results = [stored[f] for f in TARGETS if f in stored]
    (out / "generic.json").write_text(json.dumps(results, indent=1))
    text = report(results, seconds, args.sample)
    (out / "generic.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
