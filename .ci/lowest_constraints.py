"""Print a pip constraints file pinning every declared dependency to its lower bound.

Usage: python .ci/lowest_constraints.py pyproject.toml EXTRA...   (Python 3.11+, for tomllib)

Reads `[project].dependencies` and the named optional extras. Each `name>=X` becomes `name==X`
and an exact pin (`name==X`) is kept; any other requirement has no lower bound to test and is an
error, so a dependency cannot be added without one. Only the project's direct dependencies are
pinned: what they pull in resolves as usual (uv calls this `--resolution lowest-direct`).
"""

import re
import sys

import tomllib

REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<specs>[^;]*?)\s*(?:;.*)?$"
)


def lower_bound_pin(requirement: str) -> str:
    """Return `name==version` for one PEP 508 requirement with a `>=` or `==` bound."""
    match = REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot parse requirement {requirement!r}")
    name = match["name"]
    for spec in (s.strip() for s in match["specs"].split(",") if s.strip()):
        bound = re.fullmatch(r"(==|>=|~=)\s*(\S+)", spec)
        if bound is not None:
            return f"{name}=={bound[2]}"
    raise SystemExit(f"{requirement!r} declares no lower bound (>=, == or ~=)")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    with open(argv[1], "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for extra in argv[2:]:
        if extra not in extras:
            raise SystemExit(f"no extra {extra!r} in {argv[1]}")
        requirements += extras[extra]
    for requirement in requirements:
        print(lower_bound_pin(requirement))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
