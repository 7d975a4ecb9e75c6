"""Kill points: named places in every publish step where a test can kill the process, as a crash would.

`kill_point("rescore.tagged")` does nothing unless $PERSONA_KILL_AT names that point; then the process dies at
once with SIGKILL semantics (`os._exit`, no cleanup, no `finally`), exactly what an OOM killer or a lost node
does to a job. Tests run a command with the variable set, then run it again and check what is visible
(tests/persona/test_crash.py).

The points, named `<stage>.<step>` after the step just done, in the order a run passes them:

    integrate.staged            integrate: one source file staged and recorded in the manifest, before the next
    integrated.building         integrate: every output written into runs/.<id>.building, before the rename
    integrated.renamed          integrate: renamed to runs/<id>, before `current` is swapped to it
    integrated.linked           integrate: `current` swapped, before old runs are pruned
    (publishing's three are named after the stage folder it publishes, e.g. `integrated`)

    features.group_written      features: one feature group's offline file replaced, before the next group
    features.snapshots_written  features: every offline file written, before the Feast apply and the manifest
    features.applied            features: the Feast repository applied, before materialising and the manifest

    rescore.tagged              rescore: every persona scored and tagged, before the snapshot write
    tags.written                rescore (rules.history.write): the new version folder complete, before the link swap
    tags.linked                 rescore (rules.history.write): `tags/date=D` swapped to it, before pruning
    rescore.written             rescore: the snapshot written and old snapshots pruned, before the online push

    campaign.built              campaign create: campaigns/.tmp-NAME-PID complete, before it is renamed in
    campaign.set_aside          campaign create --replace: the old record renamed aside, before the new one is in
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
