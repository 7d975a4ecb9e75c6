"""Kill points: named places in every publish step where a test can kill the process, as a crash would.

`kill_point("rescore.publish")` does nothing unless $PERSONA_KILL_AT names that point; then the process dies at
once with SIGKILL semantics (`os._exit`, no cleanup, no `finally`), exactly what an OOM killer or a lost node
does to a job. Tests run a command with the variable set, then run it again and check what is visible.
"""

from __future__ import annotations

import os

KILL_VAR = "PERSONA_KILL_AT"
EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL


def kill_point(name: str) -> None:
    """Die here if $PERSONA_KILL_AT is `name` (or a comma-separated list holding it)."""
    wanted = os.environ.get(KILL_VAR)
    if wanted and name in {w.strip() for w in wanted.split(",")}:
        os._exit(EXIT_CODE)
