"""Serving on precomputed tags (the engine in process, on a trained and rescored 1,500-customer workspace): what the
batch pushed is served as is; what moved since (real-time features, a newer feature row, a champion promoted, no
usable tag row) is computed again, only that, and always equals what scoring everything again gives on the features
the online store holds now."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_repo import definitions as defs
from features import store as feature_store
from rules import history
from serving import scoring
from serving.online import Customer, OnlineEngine
from tests.serving.conftest import serving_copy
from training import tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(workspace) -> OnlineEngine:
    return OnlineEngine(workspace)


@pytest.fixture
def own(rescored_base, tmp_path) -> OnlineEngine:
    """An engine on a copy of its own, for tests that change the store or the registry."""
    return OnlineEngine(serving_copy(rescored_base, tmp_path / "ws"))


def _pids(engine: OnlineEngine, start: int, n: int) -> list[str]:
    return history.read(engine.ws, columns=["persona_id"])["persona_id"].astype(str).iloc[start:start + n].tolist()


def _flat(profile: dict) -> dict:
    out = dict(profile["scores"])
    for tags in profile["tags"].values():
        out.update(tags)
    return out


def _everything(engine: OnlineEngine, pids: list[str]) -> list[dict]:
    """Every output and tag of personas scored again from all the features the online store holds now."""
    live = engine._live
    feats, _ = engine.features(live.reader, pids)
    out = live.scorer.score_columns(feats, len(pids))
    return [{k: scoring.plain(list(v)[j] if not hasattr(v, "tolist") else v.tolist()[j]) for k, v in out.items()}
            for j in range(len(pids))]


def _assert_same_as_everything(engine: OnlineEngine, pids: list[str], profiles: list[dict]) -> None:
    mismatches = []
    for pid, profile, want in zip(pids, profiles, _everything(engine, pids)):
        got = _flat(profile)
        for key, value in want.items():
            # a list tag the batch stored empty is served as []; scored now with no input it is None
            if key in got and got[key] != value and not (value is None and got[key] == []):
                mismatches.append((pid, key, got[key], value))
    assert not mismatches, mismatches[:10]


def _movers(engine: OnlineEngine, changed: set[str]) -> tuple[set[str], set[str]]:
    """(models, rule tags) that read a changed column, directly, through a tag, or through a model's output."""
    scorer = engine._live.scorer
    models = {t for t, m in scorer.models.models.items() if changed & set(m.features)}
    moved = changed | {o for t in models for o in scorer.models.models[t].outputs}
    outputs = set(scorer.models.outputs())
    tags = {c["id"] for c in scorer.tagset.catalog() if c["id"] not in outputs and moved & set(c["inputs"])}
    return models, tags


def test_an_untouched_persona_is_served_from_the_batch(engine):
    pids = _pids(engine, 0, 25)
    meta = history.read_meta(engine.ws)
    profiles = engine.profiles([Customer(persona_id=p) for p in pids])
    for p in profiles:
        assert p["computed"] == {"batch": {"date": meta["date"], "scored_at": meta["created"]}, "realtime": None,
                                 "recomputed": []}, p["persona_id"]
    _assert_same_as_everything(engine, pids, profiles)


def test_real_time_events_recompute_only_what_depends_on_them(engine):
    pids = _pids(engine, 40, 3)
    engine.ingest_events([{"persona_id": p, "event_type": "cart_add", "category": "beauty"} for p in pids] * 2)
    profiles = engine.profiles([Customer(persona_id=p) for p in [*pids, *_pids(engine, 60, 2)]])
    realtime = {c for v, names, _ in engine._live.reader.views if v.name == defs.REALTIME for c in names}
    models, tags = _movers(engine, realtime)
    assert tags and "hot_lead" in tags  # a rule on rt_cart_adds_1h
    scorer = engine._live.scorer
    for p in profiles[:3]:
        computed = p["computed"]
        assert computed["batch"] is not None and computed["realtime"] is not None
        outputs = {o for t in models for o in scorer.models.models[t].outputs}
        assert set(computed["recomputed"]) == outputs | tags, p["persona_id"]
        assert p["tags"]["behaviour"]["hot_lead"] is True
    assert [p["computed"]["recomputed"] for p in profiles[3:]] == [[], []]  # no event: nothing computed
    _assert_same_as_everything(engine, [p["persona_id"] for p in profiles], profiles)


def test_recommend_and_score_share_the_path(engine):
    pid = _pids(engine, 80, 1)[0]
    rec = engine.recommend(Customer(persona_id=pid), n=3)
    (profile,) = engine.profiles([Customer(persona_id=pid)])
    assert rec["computed"] == profile["computed"] and rec["computed"]["recomputed"] == []
    want = {k.removeprefix("interest_"): v for k, v in profile["scores"].items() if k.startswith("interest_")}
    assert all(item["propensity"] == want[item["category"]] for item in rec["recommendations"])


def test_a_tag_row_of_another_run_or_none_is_computed_in_full(own):
    pids = _pids(own, 0, 4)
    store = feature_store.open_store(own.ws, own.cfg)
    # two rows rewritten as by another run (a rescore whose push was cut short): not this batch's, so not served
    row = pd.DataFrame({defs.JOIN_KEY: pids[:2], defs.TIMESTAMP: pd.Timestamp(own._live.batch.date, tz="UTC")})
    for column, kind in own._live.reader.tag_columns.items():
        row[column] = pd.Series([float("nan")] * 2) if kind == "number" else pd.Series([None] * 2, dtype=object)
    row[scoring.SCORED_AT] = "another run"
    store.write_to_online_store(defs.TAGS_VIEW, row, allow_registry_cache=False)
    profiles = own.profiles([Customer(persona_id=p) for p in pids])
    full = own._live.scorer.full_plan().ids()
    assert [p["computed"]["batch"] is None for p in profiles] == [True, True, False, False]
    assert [sorted(p["computed"]["recomputed"]) for p in profiles[:2]] == [sorted(full)] * 2
    _assert_same_as_everything(own, pids, profiles)

    # the tags view gone (a workspace loaded before any rescore pushed): everyone computed, the same answers
    store.apply([], objects_to_delete=[store.get_feature_view(defs.TAGS_VIEW)], partial=False)
    own.refresh(force=True)
    profiles = own.profiles([Customer(persona_id=p) for p in pids])
    assert all(p["computed"]["batch"] is None for p in profiles)
    _assert_same_as_everything(own, pids, profiles)


def test_a_newer_feature_row_recomputes_what_reads_that_view(own):
    live = own._live
    view, names, _ = next(x for x in live.reader.views if x[0].name == "engagement")
    pids = _pids(own, 0, 50)
    feats = own.features(live.reader, pids, ["engagement"])[0]
    j = next(j for j in range(len(pids)) if all(feats[n][j] == feats[n][j] for n in names))  # no missing value
    pid = pids[j]
    before = own.features(live.reader, [pid], ["engagement"])[0]
    # the same values, dated after the batch: as if a newer snapshot had been loaded for this persona
    now = pd.Timestamp.now(tz="UTC")
    row = {defs.JOIN_KEY: [pid], defs.TIMESTAMP: now, defs.CREATED: now,
           **{n: pd.Series([before[n][0]]).astype(defs.NUMPY_DTYPES[f.dtype])
              for n, f in zip(names, view.features)}}
    store = feature_store.open_store(own.ws, own.cfg)
    store.write_to_online_store("engagement", pd.DataFrame(row), allow_registry_cache=False)
    (profile,) = own.profiles([Customer(persona_id=pid)])
    models, tags = _movers(own, set(names))
    outputs = {o for t in models for o in live.scorer.models.models[t].outputs}
    assert models and set(profile["computed"]["recomputed"]) == outputs | tags
    assert profile["computed"]["realtime"] is None
    _assert_same_as_everything(own, [pid], [profile])


def test_a_champion_promoted_after_the_batch_is_run_again_and_the_old_one_dropped(own):
    pids = _pids(own, 10, 3)
    snapshot = history.read(own.ws).set_index("persona_id").loc[pids]
    client = tracking.connect(own.ws, own.cfg)
    name = tracking.model_name("churn_risk")
    old = client.get_model_version_by_alias(name, tracking.CHAMPION)
    assert ("churn_risk", str(old.version)) in own.loader.cached()
    new = client.create_model_version(name, old.source, run_id=old.run_id)  # the same model, a new version
    client.set_registered_model_alias(name, tracking.CHAMPION, new.version)
    assert own.refresh()
    assert own._live.batch.stale_models == {"churn_risk"}
    assert sorted(own.loader.cached()) == sorted(own._live.scorer.models.versions().items())  # no old version kept
    assert ("churn_risk", str(old.version)) not in own.loader.cached()
    profiles = own.profiles([Customer(persona_id=p) for p in pids])
    _, tags = _movers(own, {"churn_risk"})
    for pid, p in zip(pids, profiles):
        assert p["models"]["churn_risk"] == str(new.version)
        assert set(p["computed"]["recomputed"]) == {"churn_risk"} | tags  # never the old version's scores
        assert p["scores"]["churn_risk"] == pytest.approx(float(snapshot.at[pid, "churn_risk"]), abs=1e-12)
    _assert_same_as_everything(own, pids, profiles)
