"""Apply the symmetric mutations of ``mutation/symmetric_mutations.py`` one by one and test each.

Every mutation is written into a private copy of the tree (never the working tree), its tests
run there, and the copy's files are restored before the next one; the copy is removed at the
end, also after Ctrl-C or SIGTERM. First the tests run once unmutated: they must pass.

Usage: ``python mutation/symmetric.py [--only NAME ...] [--without TEST ...]``. Prints a table and
writes ``runs/mutation/symmetric.md``; exits 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tree import (  # noqa: E402
    ROOT,
    check_imports_from,
    copy_tree,
    exists,
    pytest_command,
    test_env,
)
from symmetric_mutations import DEFAULT_TESTS, SYMMETRIC  # noqa: E402

TIMEOUT_S = 900


def apply_edits(copy: Path, edits: list[tuple[str, str, str]]) -> dict[Path, str]:
    """Write the edits into ``copy``; returns the original text of each changed file."""
    originals: dict[Path, str] = {}
    try:
        for rel, old, new in edits:
            path = copy / rel
            text = path.read_text()
            originals.setdefault(path, text)
            count = text.count(old)
            if count != 1:
                raise ValueError(
                    f"{rel}: the old text occurs {count} times (must be once): {old!r}"
                )
            path.write_text(text.replace(old, new))
    except BaseException:
        restore(originals)
        raise
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def run_tests(copy: Path, tests: list[str]) -> tuple[bool, float, str]:
    """(passed, seconds, the tail of the output) of ``tests`` in ``copy``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            pytest_command(tests),
            cwd=copy,
            env=test_env(copy),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, "timeout"
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-3:]
    return proc.returncode == 0, time.perf_counter() - start, " | ".join(tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutation")
    parser.add_argument(
        "--without", action="append", default=[], help="leave this test file out of every run"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mutation")
    parser.add_argument("--rev", help="mutate this commit instead of the working tree")
    args = parser.parse_args(argv)
    names = [m["name"] for m in SYMMETRIC]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {names}")
    chosen = [m for m in SYMMETRIC if not args.only or m["name"] in args.only]

    def tests_of(m: dict) -> list[str]:
        return [t for t in m.get("tests", DEFAULT_TESTS) if t not in args.without]

    missing = sorted({t for m in chosen for t in tests_of(m) if not exists(t, args.rev)})
    if missing:
        parser.error(f"mutation/symmetric_mutations.py names missing test files: {missing}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    copy = copy_tree(prefix="vae-symmetric-", rev=args.rev)
    rows, start = [], time.perf_counter()
    try:
        check_imports_from(copy)
        for selection in sorted({tuple(tests_of(m)) for m in chosen}):
            passed, seconds, tail = run_tests(copy, list(selection))
            if not passed:
                print(f"the unmutated tree fails its tests ({tail}); nothing was scored")
                return 2
        for m in chosen:
            originals = apply_edits(copy, m["edits"])
            try:
                passed, seconds, tail = run_tests(copy, tests_of(m))
            finally:
                restore(originals)
            rows.append((m["name"], "survived" if passed else "killed", seconds, m["reason"]))
            print(f"{m['name']}: {rows[-1][1]} ({seconds:.0f} s) {'' if passed else tail}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    killed = sum(r[1] == "killed" for r in rows)
    lines = [
        "# Symmetric mutations",
        "",
        f"{killed} of {len(rows)} killed in {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "| mutation | outcome | seconds | bug |",
        "|---|---|---|---|",
        *(f"| {n} | {o} | {s:.0f} | {r} |" for n, o, s, r in rows),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "symmetric.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
