"""Feature logging: the FeatureServices declare Feast logging, the logger writes what the online store served in
Feast's log schema, and a skew report compares it with the offline snapshot."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from features import feature_log
from features import store as fs
from features.offline import offline_frame
from tests.features.test_store import D2, FEATURE, build, make_config

SERVICE = "high_value_v1"  # attributes, transactions, engagement: no real-time group


def test_served_features_are_logged_in_feasts_schema_and_match_the_offline_snapshot(tmp_path):
    applied = build(tmp_path, make_config())
    service = applied.store.get_feature_service(SERVICE)
    assert service.logging_config is not None  # declared in the repository, as Feast users expect
    assert service.logging_config.destination.path == str(feature_log.log_root(applied.ws) / SERVICE)
    fs.materialize(applied.store, (D2 + timedelta(days=1)).to_pydatetime())

    services = [applied.store.get_feature_service(name) for name in applied.services]
    logger = feature_log.FeatureLogger(applied.store, services, sample_rate=1.0, seed=0)
    logger.offer(["a", "b"], "req-1")
    logger.offer(["late", "nobody"], "req-2")
    assert logger.flush() == 4 and logger.flush() == 0

    logged = feature_log.read_logs(feature_log.log_root(applied.ws), SERVICE)
    assert sorted(logged["persona_id"]) == ["a", "b", "late", "nobody"]
    assert set(logged["__request_id"]) == {"req-1", "req-2"}
    by_id = logged.set_index("persona_id")
    column = f"transactions__{FEATURE['transactions'][0]}"
    assert by_id.at["nobody", f"{column}__status"] != 1 and pd.isna(by_id.at["nobody", column])
    assert by_id.at["a", f"{column}__status"] == 1
    assert by_id.at["a", f"{column}__timestamp"] == D2

    report = feature_log.skew(logged, offline_frame(applied.ws, D2)).set_index("feature")
    assert report.at[FEATURE["transactions"][0], "compared"] == 3  # a, b, late; nobody was not found online
    assert (report["differ"] == 0).all()


def test_a_sample_rate_of_zero_logs_nothing_and_sampling_is_seeded(tmp_path):
    applied = build(tmp_path, make_config())
    services = [applied.store.get_feature_service(name) for name in applied.services]
    off = feature_log.FeatureLogger(applied.store, services, sample_rate=0.0)
    off.offer(["a", "b"])
    assert not off.enabled and off.flush() == 0

    ids = [f"p{i}" for i in range(1000)]
    picks = []
    for _ in range(2):
        half = feature_log.FeatureLogger(applied.store, services, sample_rate=0.5, seed=7)
        half.offer(ids)
        picks.append(half.pending())
    assert picks[0] == picks[1] and 400 < len(picks[0]) < 600
