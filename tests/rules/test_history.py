"""Tag history: atomic dated snapshots, pruning, date resolution, who entered / left a tag value, coverage."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from persona.workspace import Workspace
from rules import history


def _snapshot(ids, band, vip, interests, score) -> pd.DataFrame:
    return pd.DataFrame({
        "persona_id": ids,
        "churn_risk": np.asarray(score, dtype="float64"),
        "churn_risk_band": pd.Categorical(band, categories=["low", "medium", "high"]),
        "vip": pd.array(vip, dtype="boolean"),
        "top_interests": pd.Series([tuple(v) for v in interests], dtype=object),
    })


META_TAGS = [{"id": "churn_risk", "value_type": "number"}, {"id": "churn_risk_band", "value_type": "category"},
             {"id": "vip", "value_type": "bool"}, {"id": "top_interests", "value_type": "list"}]


def _write(ws: Workspace, date: str, frame: pd.DataFrame):
    return history.write(ws, date, history.to_arrow(frame), {"date": date, "tags": META_TAGS})


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path)


@pytest.fixture
def two_snapshots(ws) -> Workspace:
    _write(ws, "2025-09-01", _snapshot(
        ["p1", "p2", "p3", "p4"], ["high", "low", "high", None], [True, False, None, True],
        [("beauty", "food"), ("food",), (), ("toys",)], [0.9, 0.1, 0.8, np.nan]))
    # p1 leaves high, p2 enters high, p4 gone, p5 new; p2 loses vip, p3 becomes vip; food: p1 left, p5 entered.
    _write(ws, "2025-10-01", _snapshot(
        ["p1", "p2", "p3", "p5"], ["low", "high", "high", "medium"], [True, True, True, False],
        [("beauty",), ("food",), (), ("food", "toys")], [0.2, 0.7, 0.9, 0.5]))
    return ws


def test_a_snapshot_reads_back_with_its_types_and_meta(ws):
    frame = _snapshot(["p1", "p2"], ["high", None], [True, None], [("a", "b"), ()], [0.5, np.nan])
    folder = _write(ws, "2025-10-01", frame)
    assert folder.name == "date=2025-10-01" and (folder / history.META).is_file()

    back = history.read(ws)
    assert list(back["persona_id"]) == ["p1", "p2"]
    assert isinstance(back["churn_risk_band"].dtype, pd.CategoricalDtype)
    assert back["churn_risk_band"].iloc[0] == "high" and pd.isna(back["churn_risk_band"].iloc[1])
    assert back["vip"].iloc[0] == True and pd.isna(back["vip"].iloc[1])  # noqa: E712
    assert back["top_interests"].tolist() == [("a", "b"), ()]
    assert history.read_meta(ws)["tags"] == META_TAGS


def test_writing_a_date_again_replaces_it_and_leaves_no_hidden_folder(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    _write(ws, "2025-10-01", _snapshot(["p1", "p2"], ["low", "low"], [False, False], [(), ()], [0.1, 0.2]))
    assert history.list_dates(ws) == ["2025-10-01"]
    assert history.read(ws)["churn_risk_band"].tolist() == ["low", "low"]
    assert [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]


def test_a_write_that_fails_halfway_leaves_the_previous_snapshot_and_no_visible_folder(ws, monkeypatch):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(history.json, "dump", crash)  # the parquet part is written, the meta is not
    with pytest.raises(OSError, match="disk full"):
        _write(ws, "2025-10-01", _snapshot(["p9"], ["low"], [False], [()], [0.1]))
    with pytest.raises(OSError, match="disk full"):
        _write(ws, "2025-11-01", _snapshot(["p9"], ["low"], [False], [()], [0.1]))
    assert history.list_dates(ws) == ["2025-10-01"]
    assert history.read(ws)["persona_id"].tolist() == ["p1"]
    assert [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]  # the temp folder went too


def test_clean_partial_removes_only_hidden_leftovers(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    (history.root(ws) / ".tmp-abc").mkdir()
    (history.root(ws) / ".tmp-abc" / history.PART).write_bytes(b"half")
    (history.root(ws) / ".old-def").mkdir()
    assert sorted(history.clean_partial(ws)) == [".old-def", ".tmp-abc"]
    assert [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]
    assert history.clean_partial(ws) == []
    assert history.clean_partial(Workspace.open(ws.root / "empty")) == []


def test_a_folder_without_meta_is_not_a_snapshot(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    (history.root(ws) / "date=2025-11-01").mkdir()
    assert history.list_dates(ws) == ["2025-10-01"] and history.latest_date(ws) == "2025-10-01"


def test_prune_keeps_the_newest(ws):
    for d in ["2025-07-01", "2025-09-01", "2025-08-01", "2025-10-01"]:
        _write(ws, d, _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    assert history.prune(ws, 2) == ["2025-07-01", "2025-08-01"]
    assert history.list_dates(ws) == ["2025-09-01", "2025-10-01"]
    assert history.prune(ws, 5) == [] and history.list_dates(ws) == ["2025-09-01", "2025-10-01"]


def test_resolve_date_latest_previous_and_errors_naming_the_dates(ws):
    with pytest.raises(FileNotFoundError, match="no tag snapshots yet.*persona rescore"):
        history.resolve_date(ws, None)
    _write(ws, "2025-09-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    with pytest.raises(FileNotFoundError, match="only one tag snapshot.*2025-09-01"):
        history.resolve_date(ws, "previous")
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    assert history.resolve_date(ws, None) == history.resolve_date(ws, "latest") == "2025-10-01"
    assert history.resolve_date(ws, "previous") == "2025-09-01"
    assert history.resolve_date(ws, "2025-09-01") == "2025-09-01"
    with pytest.raises(FileNotFoundError, match=r"'2025-09-15'.*2025-09-01, 2025-10-01"):
        history.resolve_date(ws, "2025-09-15")


def test_diff_counts_who_entered_and_left_each_value(two_snapshots):
    out = history.diff(two_snapshots, "2025-09-01", "2025-10-01")
    assert out["from"] == "2025-09-01" and out["to"] == "2025-10-01"
    assert out["personas"] == {"from": 4, "to": 4}
    assert "churn_risk" not in out["tags"]  # a score has no values to enter or leave

    band = out["tags"]["churn_risk_band"]
    assert band["high"] == {"before": 2, "after": 2, "entered": 1, "left": 1,
                            "entered_sample": ["p2"], "left_sample": ["p1"]}
    assert band["low"]["entered_sample"] == ["p1"] and band["low"]["left_sample"] == ["p2"]
    assert band["medium"]["before"] == 0 and band["medium"]["entered_sample"] == ["p5"]

    vip = out["tags"]["vip"]
    assert vip["True"]["entered_sample"] == ["p2", "p3"] and vip["True"]["left_sample"] == ["p4"]
    assert vip["False"]["left_sample"] == ["p2"] and vip["False"]["entered_sample"] == ["p5"]

    food = out["tags"]["top_interests"]["food"]
    assert (food["before"], food["after"], food["entered_sample"], food["left_sample"]) == (2, 2, ["p5"], ["p1"])
    assert out["tags"]["top_interests"]["toys"]["left_sample"] == ["p4"]


def test_diff_of_one_tag_and_of_an_unknown_tag(two_snapshots):
    out = history.diff(two_snapshots, "previous", "latest", tags=["vip"])
    assert list(out["tags"]) == ["vip"]
    with pytest.raises(KeyError, match="no tag \\['vipp'\\].*churn_risk_band"):
        history.diff(two_snapshots, "previous", "latest", tags=["vipp"])
    with pytest.raises(FileNotFoundError, match="2025-08-01"):
        history.diff(two_snapshots, "2025-08-01", "latest")


def test_diff_against_a_snapshot_without_the_tag_counts_everyone_as_entered(ws):
    _write(ws, "2025-09-01", pd.DataFrame({"persona_id": ["p1", "p2"]}))
    _write(ws, "2025-10-01", _snapshot(["p1", "p2"], ["high", "low"], [True, False], [(), ()], [0.9, 0.1]))
    band = history.diff(ws, "previous", "latest")["tags"]["churn_risk_band"]
    assert band["high"]["entered"] == 1 and band["high"]["before"] == 0 and band["low"]["left"] == 0


def test_coverage_counts_values_and_non_empty_lists():
    frame = _snapshot(["p1", "p2", "p3", "p4"], ["high", None, "low", None], [True, None, None, None],
                      [("a",), (), (), ("b", "c")], [0.1, 0.2, np.nan, 0.4])
    cov = history.coverage(frame, ["churn_risk_band", "vip", "top_interests", "churn_risk", "not_there"])
    assert cov == {"churn_risk_band": 0.5, "vip": 0.25, "top_interests": 0.5, "churn_risk": 0.75}
    assert history.coverage(frame.iloc[:0], ["vip"]) == {"vip": 0.0}


def test_distribution_of_categories_lists_and_scores():
    frame = _snapshot(["p1", "p2", "p3", "p4"], ["high", "high", "low", None], [True, False, True, None],
                      [("a",), ("a", "b"), (), ()], [0.1, 0.2, 0.3, 0.4])
    band = {d["value"]: (d["count"], d["share"]) for d in history.distribution(frame, "churn_risk_band")}
    assert band == {"high": (2, 0.5), "low": (1, 0.25)}  # shares of every persona, not of those with a value
    assert {d["value"]: d["count"] for d in history.distribution(frame, "top_interests")} == {"a": 2, "b": 1}
    assert {d["value"]: d["count"] for d in history.distribution(frame, "vip")} == {"True": 2, "False": 1}
    bins = history.distribution(frame, "churn_risk", bins=2)
    assert len(bins) == 2 and sum(d["count"] for d in bins) == 4
    assert history.distribution(frame.assign(churn_risk=np.nan), "churn_risk") == []


# --- publishing a snapshot in one step: versions behind `date=` links ---------------------------------------------
class Killed(BaseException):
    """A kill point reached: the process would die here, running no clean-up."""


def _kill_at(monkeypatch, point: str) -> None:
    def kill_point(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(history, "kill_point", kill_point)


def _rows(ws, date="2025-10-01") -> list[str]:
    return history.read(ws, date)["persona_id"].tolist()


def _store(ws) -> list[str]:
    store = history.versions(ws)
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


def _linked(ws) -> list[str]:
    return sorted(os.path.basename(os.readlink(p)) for p in history.root(ws).iterdir() if p.is_symlink())


def _old_layout(ws, date: str, ids: list[str], name: str | None = None) -> None:
    """A snapshot folder as the code before versions wrote it: a plain `date=` folder (or a hidden one)."""
    folder = history.root(ws) / (name or f"date={date}")
    folder.mkdir(parents=True)
    pq.write_table(history.to_arrow(_snapshot(ids, ["low"] * len(ids), [True] * len(ids), [()] * len(ids),
                                              [0.5] * len(ids))), folder / history.PART)
    (folder / history.META).write_text(json.dumps({"date": date, "tags": META_TAGS}))


def test_a_date_is_a_link_to_an_immutable_version_beside_tags(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    link = history.root(ws) / "date=2025-10-01"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: a copied workspace keeps working
    assert _store(ws) == _linked(ws) and _store(ws)[0].startswith("2025-10-01.")
    assert [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]


def test_a_reader_of_the_replaced_version_keeps_reading_it_until_the_next_write(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    resolved = (history.root(ws) / "date=2025-10-01").resolve()  # a reader resolved the link, then reads later
    _write(ws, "2025-10-01", _snapshot(["p2"], ["low"], [False], [()], [0.1]))
    assert _rows(ws) == ["p2"]
    assert pq.read_table(resolved / history.PART)["persona_id"].to_pylist() == ["p1"]
    assert len(_store(ws)) == 2 and resolved.name in _store(ws)  # the replaced version, kept by this call
    _write(ws, "2025-11-01", _snapshot(["p3"], ["low"], [False], [()], [0.1]))
    assert resolved.name not in _store(ws) and _store(ws) == _linked(ws)  # the next write collected it


def test_every_rename_of_a_write_leaves_the_date_readable_old_or_new(ws, monkeypatch):
    """At every step of a write (and of moving an old-layout folder into versions) the date reads complete."""
    _old_layout(ws, "2025-10-01", ["old"])
    seen = []

    def check(fn):
        def step(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.append(_rows(ws))
            return out
        return step

    for name in ("rename", "replace"):
        monkeypatch.setattr(history.os, name, check(getattr(os, name)))
    _write(ws, "2025-10-01", _snapshot(["new"], ["low"], [False], [()], [0.1]))
    _write(ws, "2025-10-01", _snapshot(["newer"], ["low"], [False], [()], [0.1]))
    monkeypatch.undo()
    assert seen[0] == ["old"] and seen[-1] == ["newer"] and set(map(tuple, seen)) <= {("old",), ("new",), ("newer",)}
    assert (history.root(ws) / "date=2025-10-01").is_symlink() and len(_store(ws)) == 2  # with the replaced one


@pytest.mark.parametrize("point", ["tags.written", "tags.linked"])
def test_a_write_killed_at_a_kill_point_leaves_a_complete_snapshot_and_the_next_write_cleans_up(ws, monkeypatch,
                                                                                               point):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    first = _linked(ws)
    with monkeypatch.context() as mp:
        _kill_at(mp, point)
        mp.setattr(history.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
        with pytest.raises(Killed):
            _write(ws, "2025-10-01", _snapshot(["p2"], ["low"], [False], [()], [0.1]))
    assert _rows(ws) == (["p1"] if point == "tags.written" else ["p2"])
    assert (_linked(ws) == first) is (point == "tags.written")
    assert len(_store(ws)) == 2 and [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]

    _write(ws, "2025-10-01", _snapshot(["p3"], ["low"], [False], [()], [0.1]))
    assert _rows(ws) == ["p3"] and history.list_dates(ws) == ["2025-10-01"]
    assert len(_store(ws)) == 2  # the new version and the one it replaced; the unlinked one is gone
    assert (first[0] in _store(ws)) is (point == "tags.written")


def test_an_old_crash_between_two_renames_is_recovered_not_deleted_by_a_failing_run(ws, monkeypatch):
    """The code before versions, killed between its renames, left the date in `.old-` and the new one in `.tmp-`."""
    _old_layout(ws, "2025-10-01", ["before"], name=".old-aaa")
    _old_layout(ws, "2025-10-01", ["after"], name=".tmp-bbb")
    os.utime(history.root(ws) / ".old-aaa" / history.META, ns=(1, 1))  # the older of the two
    assert history.list_dates(ws) == []

    with monkeypatch.context() as mp:
        mp.setattr(history.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):  # the next run fails for another reason
            _write(ws, "2025-11-01", _snapshot(["p9"], ["low"], [False], [()], [0.1]))
    assert history.list_dates(ws) == ["2025-10-01"] and _rows(ws) == ["after"]
    assert [p.name for p in history.root(ws).iterdir()] == ["date=2025-10-01"]
    assert _store(ws) == _linked(ws)


def test_clean_partial_finishes_an_interrupted_link_swap_only_when_the_date_shows_nothing(ws):
    _write(ws, "2025-10-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    _write(ws, "2025-11-01", _snapshot(["p2"], ["high"], [True], [()], [0.9]))
    store_name = _linked(ws)[1]
    (history.root(ws) / "date=2025-11-01").rename(history.root(ws) / ".link-abc")  # killed inside the swap
    os.symlink(os.readlink(history.root(ws) / "date=2025-10-01"), history.root(ws) / ".link-def")  # a stale one
    assert history.list_dates(ws) == ["2025-10-01"]
    assert history.clean_partial(ws) == [".link-abc", ".link-def"]
    assert history.list_dates(ws) == ["2025-10-01", "2025-11-01"] and _rows(ws, "2025-11-01") == ["p2"]
    assert os.path.basename(os.readlink(history.root(ws) / "date=2025-11-01")) == store_name
    assert sorted(p.name for p in history.root(ws).iterdir()) == ["date=2025-10-01", "date=2025-11-01"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_plain_folder_of_the_old_layout_is_read_then_replaced_by_a_link(ws, monkeypatch, exchange):
    _old_layout(ws, "2025-09-01", ["a1"])
    _old_layout(ws, "2025-10-01", ["b1"])
    assert history.list_dates(ws) == ["2025-09-01", "2025-10-01"] and _rows(ws) == ["b1"]
    if not exchange:
        monkeypatch.setattr(history, "_exchange", lambda a, b: False)
    _write(ws, "2025-10-01", _snapshot(["b2"], ["low"], [False], [()], [0.1]))
    assert _rows(ws) == ["b2"] and _rows(ws, "2025-09-01") == ["a1"]
    assert (history.root(ws) / "date=2025-10-01").is_symlink()
    assert not (history.root(ws) / "date=2025-09-01").is_symlink()  # a date not written again stays as it was
    assert len(_store(ws)) == 2  # the new version and the old folder, moved in, collected by the next write
    assert history.prune(ws, 1) == ["2025-09-01"]  # a plain folder leaves in one rename too
    assert history.list_dates(ws) == ["2025-10-01"] and len(_store(ws)) == 3
    _write(ws, "2025-11-01", _snapshot(["c1"], ["low"], [False], [()], [0.1]))
    assert _store(ws) == _linked(ws) and len(_store(ws)) == 2


def test_prune_unlinks_at_once_and_the_next_write_deletes_the_data(ws):
    for d in ["2025-08-01", "2025-09-01", "2025-10-01"]:
        _write(ws, d, _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    assert history.prune(ws, 1) == ["2025-08-01", "2025-09-01"]
    assert history.list_dates(ws) == ["2025-10-01"] and len(_store(ws)) == 3
    _write(ws, "2025-11-01", _snapshot(["p1"], ["high"], [True], [()], [0.9]))
    assert _store(ws) == _linked(ws) and len(_store(ws)) == 2


def test_duckdb_and_pyarrow_read_every_snapshot_once_through_the_links(ws):
    import duckdb
    import pyarrow.dataset as ds

    _old_layout(ws, "2025-08-01", ["a1", "a2"])  # one folder of the old layout among the links
    _write(ws, "2025-09-01", _snapshot(["b1"], ["low"], [True], [()], [0.1]))
    _write(ws, "2025-10-01", _snapshot(["c0"], ["low"], [True], [()], [0.1]))
    _write(ws, "2025-10-01", _snapshot(["c1", "c2", "c3"], ["low"] * 3, [True] * 3, [()] * 3, [0.1] * 3))
    assert len(_store(ws)) == 3  # the replaced version of 2025-10-01 is still there: it must not be read
    want = {"2025-08-01": 2, "2025-09-01": 1, "2025-10-01": 3}

    got = duckdb.sql(f"SELECT CAST(date AS VARCHAR), count(*) FROM read_parquet('{history.root(ws)}/*/*.parquet', "
                     "hive_partitioning=true) GROUP BY ALL").fetchall()
    assert dict(got) == want
    table = ds.dataset(history.root(ws), partitioning="hive", format="parquet").to_table(columns=["date"])
    assert pd.Series(table["date"].to_pylist()).astype(str).value_counts().to_dict() == want
