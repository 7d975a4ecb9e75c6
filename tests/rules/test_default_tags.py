"""The shipped default tag set: it reads only columns the feature pipeline really emits, loads and evaluates on a
frame with every family, and degrades to the tags a transactions-only workspace can support."""

import json

import numpy as np
import pandas as pd
import pytest

from features.affinity import affinity_feature_names
from features.attributes import profile_features
from features.engagement import EVENT_TYPES
from features.engagement import WINDOWS as ENG_WINDOWS
from features.realtime import COUNTS
from features.transactions import transaction_feature_names
from rules import CATEGORIES, DEFAULT_DIR, column_types, load_tagset

CATS = ("apparel", "beauty", "books", "electronics")
ENGAGEMENT_OR_APP = {"app_activity", "browsing_interests", "cart_abandoner", "recently_active", "hot_lead",
                     "visit_recency", "active_searcher", "social_engaged", "browse_trend", "cart_categories",
                     "engaged_non_buyer"}
PREDICTIVE = {"churn_risk", "churn_risk_band", "predicted_value", "predicted_value_tier", "high_value_customer",
              "valuable_at_risk", "top_interests"}
ATTRIBUTES = {"gender", "age_band", "city_tier", "marketing_consent", "contact_channels", "reachable", "income_band",
              "vendor_interests", "partner_spender", "city_income_level", "city_size"}


def attribute_columns() -> list[str]:
    """The attr_ columns features/attributes.py emits for a profile with every attribute."""
    prof = pd.DataFrame({"persona_id": ["P1"], "gender": ["female"], "birth_date": ["1990-01-01"], "city_tier": [1],
                         "city_income_index": [150], "city_population": [20000], "income_band": ["high"],
                         "vendor_interests": ["|".join(CATS)], "consent_marketing": [True],
                         **{f"partner_spend_{c}": [100.0] for c in CATS}})
    first = pd.DataFrame({"persona_id": ["P1"], "first_seen": pd.to_datetime(["2024-01-01"], utc=True)})
    out = profile_features(prof, as_of_dates=[pd.Timestamp("2025-01-01", tz="UTC")], activity_first_seen=first)
    return [c for c in out.columns if c.startswith("attr_")] + ["attr_n_channels_365d"]


def feature_columns(*, transactions_only: bool = False) -> list[str]:
    """Every feature column the pipeline emits (and the model scores), or a transactions-only workspace's subset."""
    cols = transaction_feature_names({"channel", "discount"}, has_categories=True)
    cols += affinity_feature_names(CATS, use_tx=True, use_ev=not transactions_only)
    if transactions_only:
        return cols
    cols += attribute_columns()
    cols += [f"eng_{s}_{w}d" for s in EVENT_TYPES.values() for w in ENG_WINDOWS]
    cols += ["eng_active_days_30d", "eng_days_since_last_visit", "eng_views_trend", "eng_social_30d", "eng_social_90d"]
    cols += list(COUNTS) + ["rt_last_event_ts"]
    cols += ["churn_risk", "high_value"] + [f"interest_{c}" for c in CATS]
    return cols


def synthetic(columns: list[str], n: int = 400, seed: int = 3) -> pd.DataFrame:
    """Plausible values per column family (shares and probabilities in [0, 1], counts, days, CNY), 10% NaN."""
    rng = np.random.default_rng(seed)
    data = {}
    for c in columns:
        if "share" in c or c.startswith(("interest_", "churn_risk")) or "rate" in c or c in ("attr_gender_female",
                                                                                         "attr_consent_marketing"):
            x = rng.random(n)
            x = np.round(x) if c.startswith("attr_") else x
        elif c.startswith("attr_vendor_int_"):
            x = (rng.random(n) < 0.3).astype(float)
        elif c == "attr_city_tier":
            x = rng.integers(1, 6, n).astype(float)
        elif c == "attr_income_band":
            x = rng.integers(0, 4, n).astype(float)
        elif c == "attr_age":
            x = rng.uniform(12, 80, n)
        elif "count" in c or c.startswith(("eng_", "rt_", "aff_view_", "aff_cart_", "aff_buy_")):
            x = rng.poisson(3, n).astype(float)
        else:
            x = rng.gamma(2.0, 300.0, n)
        x[rng.random(n) < 0.1] = np.nan
        data[c] = x.astype(np.float32)
    return pd.DataFrame(data, index=pd.Index([f"P{i:05d}" for i in range(n)], name="persona_id"))


@pytest.fixture(scope="module")
def full():
    frame = synthetic(feature_columns())
    tags = load_tagset([DEFAULT_DIR], columns=column_types(frame))
    return frame, tags


def test_defaults_read_only_columns_the_pipeline_emits(full):
    frame, tags = full
    assert tags.unavailable == {}
    assert 40 <= len(tags.tags) <= 50
    assert tags.inputs() <= set(feature_columns())
    files = {t.path.name for t in tags.tags}
    assert files == {"basic.yaml", "consumption.yaml", "behaviour.yaml", "predictive.yaml", "enrichment.yaml"}
    for t in tags.tags:
        assert t.path.stem == t.spec.category, t.id      # one file per category


def test_defaults_fit_and_evaluate_on_every_family(full):
    frame, tags = full
    stats = json.loads(json.dumps(tags.fit(frame)))
    assert set(stats) == {"rfm_segment", "spend_level", "predicted_value_tier"}
    out = tags.evaluate(frame, stats)
    assert list(out.columns) == [t.id for t in tags.tags] and out.index.equals(frame.index)
    for t in tags.tags:
        col = out[t.id]
        if t.value_type == "bool":
            assert col.dtype == "boolean", t.id
        elif t.value_type == "category":
            assert list(col.cat.categories) == [v for v, _, _ in t.values], t.id
            assert col.notna().any(), t.id                # every category tag assigns something here
        elif t.value_type == "number":
            assert col.dtype == np.float64, t.id
        else:
            assert all(v is None or isinstance(v, tuple) for v in col), t.id
    assert set(out["rfm_segment"].dropna()) >= {"important_value", "general_retain"}
    assert out["predicted_value_tier"].value_counts()["top_20pct"] == pytest.approx(0.2 * frame["high_value"].notna().sum(),
                                                                                     abs=2)
    assert (out["high_value_customer"] == (out["predicted_value_tier"] == "top_20pct")).all()
    interests = frame[[f"interest_{c}" for c in CATS]].notna().sum(axis=1)
    assert (out["top_interests"].map(lambda v: 0 if v is None else len(v)) == interests.clip(upper=3)).all()


def test_online_rows_match_the_batch(full):
    frame, tags = full
    stats = tags.fit(frame)
    batch = tags.evaluate(frame, stats)
    for i in (0, 7, 123, 399):  # how fast a one-row evaluation is: bench/rules_bench.py, step 5
        pd.testing.assert_frame_equal(tags.evaluate(frame.iloc[[i]], stats), batch.iloc[[i]])
    again = tags.evaluate(frame.iloc[[7]], stats)  # repeated online calls give the same answer
    pd.testing.assert_frame_equal(again, batch.iloc[[7]])


def test_default_thresholds_on_hand_written_rows(full):
    _, tags = full
    base = {c: np.nan for c in feature_columns()}
    rows = pd.DataFrame([
        {**base, "attr_age": 17.9, "churn_risk": 0.6, "tx_recency_days": np.nan, "attr_city_tier": 5,
         "attr_consent_marketing": np.nan},
        {**base, "attr_age": 25.0, "churn_risk": 0.59, "tx_count_all": 1, "tx_recency_days": 20, "tx_tenure_days": 20,
         "attr_consent_marketing": 1, "attr_n_channels_365d": 2, "tx_online_share_365d": 0.9, "tx_count_365d": 1},
        {**base, "attr_age": 55.0, "churn_risk": 0.1, "tx_count_all": 5, "tx_recency_days": 200, "tx_tenure_days": 900,
         "tx_ipi_mean_days": 60, "attr_consent_marketing": 0, "tx_online_share_365d": 0.5, "tx_count_365d": 2},
        {**base, "tx_count_all": 3, "tx_recency_days": 400, "tx_tenure_days": 900, "tx_ipi_mean_days": 300,
         "tx_online_share_365d": 0.2, "tx_count_365d": 0, "eng_cart_adds_30d": 2, "tx_count_30d": np.nan},
    ])
    out = tags.evaluate(rows, {"rfm_segment": {"split": "mean", "recency": 100.0, "frequency": 2.0, "monetary": 500.0},
                               "spend_level": {"quantiles": [0.3, 0.7, 0.9], "edges": [100.0, 500.0, 2000.0]},
                               "predicted_value_tier": {"quantiles": [0.8], "edges": [1000.0]}})
    assert out["age_band"].tolist()[:3] == ["under_18", "25_34", "55_plus"] and pd.isna(out["age_band"].iloc[3])
    assert out["churn_risk_band"].tolist()[:3] == ["high", "medium", "low"]
    assert out["lifecycle_stage"].tolist() == ["prospect", "new", "sleeping", "lost"]
    assert out["marketing_consent"].tolist() == ["unknown", "consented", "opted_out", "unknown"]
    assert out["reachable"].tolist() == [False, True, False, False]
    assert out["city_tier"].tolist()[0] == "tier4_below"
    assert [None if pd.isna(v) else v for v in out["channel_preference"]] == [None, "online", "omni", None]
    assert out["overdue_repurchase"].tolist()[2:] == [True, False]     # 200 > 1.5 x 60; 400 < 1.5 x 300
    assert out["cart_abandoner"].tolist()[3] is True                   # no 30-day purchase count: coalesced to 0
    assert out["first_time_buyer"].tolist()[1] is True


def test_transactions_only_workspace(full):
    frame = synthetic(feature_columns(transactions_only=True))
    tags = load_tagset([DEFAULT_DIR], columns=column_types(frame))
    assert set(tags.unavailable) == ENGAGEMENT_OR_APP | PREDICTIVE | ATTRIBUTES
    assert tags.unavailable["churn_risk"] == "missing column 'churn_risk'"
    assert tags.unavailable["top_interests"] == "no column matches 'interest_*'"
    assert tags.unavailable["reachable"] == "depends on unavailable tag 'contact_channels'"
    available = {t.id for t in tags.tags}
    assert {"rfm_segment", "spend_level", "order_value_level", "discount_lover", "channel_preference", "returner",
            "big_spender_30d", "repeat_buyer", "lifecycle_stage", "overdue_repurchase"} <= available
    out = tags.evaluate(frame, tags.fit(frame))
    assert list(out.columns) == [t.id for t in tags.tags]
    assert out["rfm_segment"].notna().any() and out["lifecycle_stage"].notna().any()


def test_catalog_of_the_defaults_is_bilingual_and_complete(full):
    _, tags = full
    catalog = tags.catalog()
    json.dumps(catalog, ensure_ascii=False)
    assert {c["category"] for c in catalog} == set(CATEGORIES)
    for entry in catalog:
        assert entry["name_zh"] and entry["name_en"] and entry["description"] and entry["description_zh"], entry["id"]
        assert entry["owner"] and entry["cadence"] in ("daily", "on_event", "weekly"), entry["id"]
        assert entry["source"].split(":")[0].endswith(".yaml") and entry["inputs"], entry["id"]
        if entry["value_type"] == "category":
            assert all(v["zh"] and v["en"] for v in entry["values"]), entry["id"]
    by_id = {c["id"]: c for c in catalog}
    assert by_id["churn_risk"]["type"] == "model" and by_id["spend_365d"]["type"] == "statistic"
    assert by_id["income_band"]["type"] == "enrichment" and by_id["gender"]["type"] == "rule"
    assert by_id["valuable_at_risk"]["depends_on"] == ["churn_risk_band", "high_value_customer"]
    assert "high_value" in by_id["valuable_at_risk"]["inputs"]
