"""Surviving generic mutants that cannot change behaviour, each with the reason.

``mutation/generic.py`` matches a survivor against these entries by file and by the stripped text
of the mutated line before (``old``) and after (``new``), and counts a match as equivalent (left
out of the score). Lines are matched by content, not number, so the list survives edits
elsewhere in the file; an entry whose line changed simply stops matching and the mutant shows
up as a survivor again, to be judged anew.
"""

from __future__ import annotations

EQUIVALENT: list[dict[str, str]] = []
