"""The online reader behind Feast's internals (features/online_reader.py) on the embedded profile: its direct read and
the public `get_online_features` fallback give the same features, row times, tags and marker; any Feast version other
than the one it was written for takes the fallback, saying so once. `check_reader_paths` and `check_delete` are
shared with tests/features/test_store_production.py (Redis)."""

from __future__ import annotations

import logging
from datetime import timedelta

import feast
import numpy as np
import pandas as pd
import pytest

from features import online_reader
from features import store as fs
from tests.features.test_store import D2, Applied, build, make_config, value

PEOPLE = ["a", "b", "late", "nobody"]
TAGS = pd.DataFrame({"persona_id": ["a", "b"], "churn_risk": [0.25, np.nan], "band": ["high", None]})


def load(applied: Applied) -> pd.Timestamp:
    """Snapshots up to D2 online, tags of a and b dated D2, a real-time push for a now, a marker; returns the push
    time."""
    fs.materialize(applied.store, D2 + timedelta(days=1))
    fs.push_tags(applied.store, TAGS, D2.to_pydatetime())
    now = pd.Timestamp.now(tz="UTC").floor("s")
    fs.push_realtime(applied.store, pd.DataFrame({"persona_id": ["a"], "event_timestamp": [now],
                                                  "rt_views_1h": [7.5]}))
    online_reader.write_marker(applied.store, {"generation": 3})
    return now


def micros(ts: pd.Timestamp) -> int:
    return ts.value // 1000


def check_reader_paths(applied: Applied) -> None:
    now = load(applied)
    fast, public = online_reader.OnlineReader(applied.store), online_reader.OnlineReader(applied.store, internals=False)
    assert fast.kind == applied.store.config.online_store.type and public.kind == "public"
    assert fast.tag_columns == public.tag_columns == {"churn_risk": "number", "band": "string"}
    for views, tags in [(None, True), (["realtime"], ["band"]), ([], False)]:
        got = [r.fetch(PEOPLE, views, tags=tags, marker=True) for r in (fast, public)]
        for rows in got:
            assert rows.marker == {"generation": 3}
            assert rows.found.tolist() == [True, True, True, False]
            # every view's row time whether its values were asked for or not (the fallback's: whole seconds)
            assert rows.stamps["attributes"].tolist() == [micros(D2)] * 3 + [0]
            assert rows.stamps["realtime"].tolist() == [micros(now), micros(D2), micros(D2), 0]
            if tags:
                assert rows.tag_stamps.tolist() == [micros(D2)] * 2 + [0, 0]
                assert rows.tags["band"] == ["high", None, None, None]
                if tags is True:
                    assert rows.tags["churn_risk"][0] == 0.25 and rows.tags["churn_risk"][2:] == [None, None]
            else:
                assert rows.tags is None
        fast_rows, public_rows = got
        assert fast_rows.columns == public_rows.columns
        np.testing.assert_array_equal(fast_rows.matrix, public_rows.matrix)
    realtime = fast.fetch(PEOPLE, ["realtime"])
    assert realtime.columns == ["rt_views_1h"]
    assert realtime.matrix[:, 0].tolist()[:3] == [7.5, value("realtime", "b", D2), value("realtime", "late", D2)]
    for reader in (fast, public):  # the whole matrix, as the engine scores from it
        matrix, found = reader.read(PEOPLE)
        frame = fast.frame(PEOPLE)
        np.testing.assert_array_equal(matrix, frame.drop(columns="persona_id").to_numpy())
        assert found.tolist() == [True, True, True, False]
    assert fast.fetch([], None, tags=True).matrix.shape == (0, len(fast.columns))


def check_delete(applied: Applied, *, internals: bool, monkeypatch) -> None:
    """delete_personas leaves nothing of a persona to serve (checked through the public read on another Feast)."""
    load(applied)
    if not internals:
        monkeypatch.setattr(feast, "__version__", "0.99.0")
    assert online_reader.delete_personas(applied.store, ["a"]) > 0
    rows = online_reader.OnlineReader(applied.store).fetch(["a", "b"], None, tags=True)
    assert np.isnan(rows.matrix[0]).all() and not np.isnan(rows.matrix[1]).all()
    assert rows.found.tolist() == [False, True] and rows.tags["band"] == [None, None]
    assert rows.tags["churn_risk"][0] is None
    assert online_reader.OnlineReader(applied.store).read(["a", "b"])[1].tolist() == [False, True]


def test_the_direct_read_and_the_public_fallback_give_the_same(tmp_path):
    check_reader_paths(build(tmp_path, make_config(), groups=("attributes", "transactions", "realtime")))


def test_another_feast_version_takes_the_public_path_saying_so_once(tmp_path, monkeypatch, caplog):
    applied = build(tmp_path, make_config(), groups=("attributes", "realtime"))
    load(applied)
    want = online_reader.OnlineReader(applied.store).fetch(PEOPLE, None, tags=True, marker=True)
    monkeypatch.setattr(feast, "__version__", "0.99.0")
    monkeypatch.setattr(online_reader, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="persona.features"):
        readers = [online_reader.OnlineReader(applied.store) for _ in range(3)]
    said = [r.getMessage() for r in caplog.records if "feast 0.99.0" in r.getMessage()]
    assert len(said) == 1 and "written for feast 0.67.x" in said[0] and "get_online_features" in said[0]
    got = readers[0].fetch(PEOPLE, None, tags=True, marker=True)
    assert readers[0].kind == "public" and got.marker == want.marker
    np.testing.assert_array_equal(got.matrix, want.matrix)
    assert got.tags == want.tags and got.found.tolist() == want.found.tolist()


@pytest.mark.parametrize("internals", [True, False])
def test_deleting_personas_leaves_nothing_to_serve(tmp_path, monkeypatch, internals):
    check_delete(build(tmp_path, make_config(), groups=("attributes", "realtime")), internals=internals,
                 monkeypatch=monkeypatch)
