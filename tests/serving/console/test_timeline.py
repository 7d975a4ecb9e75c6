"""Profile 360's timeline (ConsoleData.timeline) on the session's trained workspace: a customer's latest purchases,
events and interactions, newest first, each said in its table's own columns; a table without one of them still
shows, with what it has."""

from __future__ import annotations

import shutil

import duckdb
import pandas as pd
import pytest

from persona.workspace import Workspace
from serving.console.data import TIMELINE_ROWS, ConsoleData

pytestmark = pytest.mark.slow  # the session's trained workspace (about a minute, once)


def _busiest(run) -> str:
    con = duckdb.connect()
    try:
        return con.execute(f"""SELECT persona_id FROM read_parquet('{run / "transactions.parquet"}')
                               GROUP BY persona_id ORDER BY count(*) DESC, persona_id LIMIT 1""").fetchone()[0]
    finally:
        con.close()


def test_timeline_lists_the_latest_records_in_their_own_words(trained_workspace):
    ws = Workspace.open(trained_workspace)
    run = ws.current("integrated")
    pid = _busiest(run)
    shown = ConsoleData(ws).timeline(pid)
    assert 0 < len(shown) <= TIMELINE_ROWS
    assert [s["ts"] for s in shown] == sorted((s["ts"] for s in shown), reverse=True)
    tx = pd.read_parquet(run / "transactions.parquet", filters=[("persona_id", "==", pid)])
    bought = {f"{c} {a}" for c, a in zip(tx["category"], tx["amount"])}
    purchases = [s for s in shown if s["kind"] == "transactions"]
    assert purchases and all(s["what"] in bought for s in purchases)
    assert str(tx["ts"].max())[:19] == purchases[0]["ts"]


def test_a_table_without_a_described_column_still_shows_what_it_has(trained_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    ws = Workspace.open(root)
    run = ws.current("integrated")
    pid = _busiest(run)
    path = run / "transactions.parquet"
    pd.read_parquet(Workspace.open(trained_workspace).current("integrated") / "transactions.parquet").drop(
        columns=["amount"]).to_parquet(path)
    purchases = [s for s in ConsoleData(ws).timeline(pid) if s["kind"] == "transactions"]
    categories = set(pd.read_parquet(path, filters=[("persona_id", "==", pid)])["category"])
    assert purchases and all(s["what"] in categories for s in purchases)
