"""A console workspace: the session's trained workspace, rescored (tags online), with a campaign whose window's
purchases were planted and integrated. Built once per session; tests that write copy it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CAMPAIGN = "autumn_winback"


@pytest.fixture(scope="session")
def console_workspace(trained_workspace, tmp_path_factory) -> Path:
    import datetime as dt

    from features.integration.run import integrate
    from persona.cli.campaign import plant_campaign
    from persona.workspace import Workspace
    from rules import campaigns
    from rules.catalog import rule_paths
    from rules.segments import load_segments
    from serving.batch import rescore

    root = tmp_path_factory.mktemp("console") / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    ws = Workspace.open(root)
    rescore(ws)
    campaigns.create(ws, load_segments(rule_paths(ws, ws.config())), CAMPAIGN, "churn_risk >= 0", holdout=0.3,
                     start=dt.date(2026, 10, 8), end=dt.date(2026, 10, 21), cost_per_contact=1.5)
    plant_campaign(ws, CAMPAIGN, lift=0.2, base_rate=0.1)
    integrate(ws)
    return root


@pytest.fixture(scope="session")
def phone_of(console_workspace) -> tuple[str, str]:
    """A persona with a scored profile and one of its raw phones (as integration kept it, restricted)."""
    import pandas as pd

    from persona.workspace import Workspace
    from rules import history

    ws = Workspace.open(console_workspace)
    ids = pd.read_parquet(ws.current("integrated") / "identity_map.parquet")
    snap = history.read(ws, columns=["persona_id"])
    phones = ids[(ids["id_type"] == "phone") & ids["persona_id"].isin(set(snap["persona_id"]))]
    row = phones.sort_values("persona_id").iloc[0]
    return str(row["persona_id"]), str(row["value"])
