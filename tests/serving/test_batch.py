"""Batch rescoring on a trained 1,500-customer workspace: the snapshot holds every persona with scores and tags,
re-running gives the same snapshot, a crash leaves the previous one, --as-of DATE scores the data up to and including
DATE (another snapshot only with `nearest`), no champion is a clear error, and the tags reach the online store (where
one was loaded)."""

import os
import shutil

import pandas as pd
import pytest

from features import store as feature_store
from persona.errors import InsufficientDataError
from persona.workspace import SALT_VAR, Workspace
from rules import history
from rules.tags import TagSet
from features import model_tags, offline
from serving.batch import rescore
from training import tracking

pytestmark = pytest.mark.slow


@pytest.fixture
def ws(trained_workspace, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    return Workspace.open(root)


def _feature_dates(ws: Workspace) -> list[pd.Timestamp]:
    from persona.workspace import read_json

    return sorted(pd.Timestamp(d) for d in read_json(ws.root / "features" / "manifest.json")["dates"])


def test_a_copy_of_the_workspace_is_its_own(ws, trained_workspace):
    assert SALT_VAR not in os.environ and ws.salt()  # from the copied secrets.env
    uri = tracking.connect(ws, ws.config()).tracking_uri
    assert str(ws.root) in uri and str(trained_workspace) not in uri
    assert str(ws.root) in feature_store.render_store_yaml(ws, ws.config())


def test_rescore_writes_every_persona_with_scores_tags_and_metadata_and_repeats_exactly(ws):
    result = rescore(ws, push=False)
    date = _feature_dates(ws)[-1]
    assert result["date"] == str(date.date()) and history.list_dates(ws) == [result["date"]]
    assert result["pushed"] is None and result["cleaned"] == [] and result["unavailable"] == {}

    snap = history.read(ws)
    features = offline.offline_frame(ws, date)
    assert snap["persona_id"].is_unique and len(snap) == result["personas"] == len(features)
    assert set(snap["persona_id"]) == set(features["persona_id"].astype(str))
    assert snap["churn_risk"].between(0, 1).all() and (snap["high_value"] >= 0).all()
    assert any(c.startswith("interest_") for c in snap.columns)
    for tag in ("churn_risk_band", "rfm_segment", "lifecycle_stage", "high_value_customer", "valuable_at_risk",
                "top_interests"):
        assert tag in snap.columns, tag
    assert set(snap["churn_risk_band"].dropna().unique()) <= {"low", "medium", "high"}
    assert snap["top_interests"].map(lambda v: isinstance(v, tuple)).all()

    meta = history.read_meta(ws)
    assert meta["models"] == result["models"] and set(meta["models"]) == {"churn_risk", "high_value", "interest"}
    assert meta["personas"] == len(snap) and "churn_risk" in meta["outputs"]
    assert meta["stats"] and meta["rules_hash"]
    tag_ids = {t["id"] for t in meta["tags"]}
    assert {"churn_risk_band", "top_interests"} <= tag_ids
    assert set(meta["coverage"]) == {t for t in tag_ids if t in snap.columns}
    assert meta["coverage"]["churn_risk_band"] == pytest.approx(snap["churn_risk_band"].notna().mean())

    again = rescore(ws, push=False)
    assert again["date"] == result["date"] and history.list_dates(ws) == [result["date"]]
    pd.testing.assert_frame_equal(history.read(ws), snap)
    meta2 = history.read_meta(ws)
    assert {k: meta2[k] for k in ("stats", "coverage", "models", "rules_hash", "tags")} == \
           {k: meta[k] for k in ("stats", "coverage", "models", "rules_hash", "tags")}


def test_a_crash_halfway_leaves_the_previous_snapshot_and_the_next_run_cleans_up(ws, monkeypatch):
    first = rescore(ws, push=False)
    before = history.read(ws)

    def broken(self, *args, **kwargs):
        raise RuntimeError("rules crashed")

    with monkeypatch.context() as mp:
        mp.setattr(TagSet, "evaluate_columns", broken)  # the rule step of batch (and online) scoring
        with pytest.raises(RuntimeError, match="rules crashed"):
            rescore(ws, push=False)
    assert history.list_dates(ws) == [first["date"]]
    pd.testing.assert_frame_equal(history.read(ws), before)

    # A process killed while writing the parquet part: half a file in the hidden folder, and no clean-up ran.
    def killed(table, where, **kwargs):
        open(where, "wb").write(b"PAR1 half")
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(history.pq, "write_table", killed)
        mp.setattr(history.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(KeyboardInterrupt):
            rescore(ws, push=False)
    hidden = [p.name for p in history.root(ws).iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].startswith(".tmp-")
    assert history.list_dates(ws) == [first["date"]]
    pd.testing.assert_frame_equal(history.read(ws), before)

    third = rescore(ws, push=False)
    assert third["cleaned"] == hidden
    assert [p.name for p in history.root(ws).iterdir()] == [f"date={first['date']}"]
    pd.testing.assert_frame_equal(history.read(ws), before)


def test_as_of_is_the_last_day_of_data_and_another_snapshot_only_when_asked(ws):
    dates = _feature_dates(ws)
    day = (dates[-2] - pd.Timedelta(days=1)).normalize()  # the snapshot at dates[-2] holds the data through this day
    result = rescore(ws, as_of=day, push=False)
    assert result["date"] == str(dates[-2].date()) and result["data_through"] == result["requested"] == str(day.date())
    assert history.read_meta(ws)["as_of"].startswith(str(dates[-2].date()))
    latest = rescore(ws, push=False)
    assert history.list_dates(ws) == [str(dates[-2].date()), latest["date"]]

    # the day the snapshot is dated is not in it: asking for it is asking for the snapshot after, which is not there
    with pytest.raises(FileNotFoundError, match=rf"no feature snapshot holds the data up to and including "
                                                rf"{dates[-2].date()}.*{day.date()}.*--nearest"):
        rescore(ws, as_of=dates[-2], push=False)
    nearest = rescore(ws, as_of=dates[-2] + pd.Timedelta(days=2), nearest=True, push=False)
    assert nearest["date"] == str(dates[-2].date()) and nearest["requested"] == str((dates[-2] + pd.Timedelta(days=2)).date())
    with pytest.raises(FileNotFoundError, match="no feature snapshot holds the data"):
        rescore(ws, as_of=dates[0] - pd.Timedelta(days=3), nearest=True, push=False)
    with pytest.raises(ValueError, match="expected a calendar date"):
        rescore(ws, as_of=day + pd.Timedelta(hours=12), push=False)


def test_resolving_the_snapshot_of_a_day():
    from serving.batch import resolve_snapshot

    dates = [pd.Timestamp(d, tz="UTC") for d in ("1997-09-06", "1997-10-01")]
    assert resolve_snapshot(dates, None) == dates[-1]
    assert resolve_snapshot(dates, pd.Timestamp("1997-09-30", tz="UTC")) == dates[1]  # 30 September included
    assert resolve_snapshot(dates, pd.Timestamp("1997-09-05", tz="UTC")) == dates[0]
    with pytest.raises(FileNotFoundError, match=r"through 1997-09-05, 1997-09-30: pass --nearest .* 1997-09-05"):
        resolve_snapshot(dates, pd.Timestamp("1997-09-29", tz="UTC"))
    assert resolve_snapshot(dates, pd.Timestamp("1997-09-29", tz="UTC"), nearest=True) == dates[0]


def test_without_a_champion_rescoring_says_to_train_first(ws):
    client = tracking.connect(ws, ws.config())
    for tag in model_tags.names():
        name = tracking.model_name(tag)
        if tracking.alias_version(client, name, tracking.CHAMPION) is not None:
            client.delete_registered_model_alias(name, tracking.CHAMPION)
    with pytest.raises(InsufficientDataError, match="no champion model.*persona train --promote"):
        rescore(ws, push=False)
    assert history.list_dates(ws) == []


def test_no_push_where_no_online_store_was_loaded(ws):
    (ws.state / feature_store.ONLINE_STATE).unlink()  # as after `persona features --no-online` only
    result = rescore(ws, push=True)
    assert result["pushed"] is None and "--no-online" in result["push_skipped"]


def test_push_writes_the_tags_to_the_online_store(ws):
    result = rescore(ws, push=True)
    assert result["pushed"]["view"] == "tags" and result["pushed"]["rows"] == result["personas"]
    assert result["push_skipped"] is None
    snap = history.read(ws, columns=["persona_id", "churn_risk_band", "churn_risk", "top_interests"])
    rows = snap.dropna(subset=["churn_risk_band"]).head(3)
    store = feature_store.open_store(ws, ws.config())
    online = store.get_online_features(
        features=["tags:churn_risk_band", "tags:churn_risk", "tags:top_interests"],
        entity_rows=[{"persona_id": p} for p in [*rows["persona_id"], "no-such-persona"]]).to_df()
    assert list(online["churn_risk_band"][:3]) == list(rows["churn_risk_band"].astype(str))
    assert online["churn_risk"][:3].to_numpy() == pytest.approx(rows["churn_risk"].to_numpy())
    assert list(online["top_interests"][:3]) == ["|".join(v) if v else None for v in rows["top_interests"]]
    assert pd.isna(online["churn_risk_band"].iloc[3])
