"""Survivorship in SQL (what integrate runs) picks the same winners, in the same order, as the pandas `survive`."""

import duckdb
import pandas as pd
import pytest

from features.integration.survivorship import CANDIDATE_COLUMNS, survive, survive_order, survive_sql
from persona.config import AttributeRule

T = pd.Timestamp


def candidates() -> pd.DataFrame:
    """Ties on every key but the last: equal times, equal counts, untrusted sources, missing times."""
    rows = [
        # persona P1: crm and app disagree; app twice (most frequent), crm newest
        ("P1", "city", "beijing", "crm", "crm/f1#3", T("2026-03-01", tz="UTC")),
        ("P1", "city", "shanghai", "app", "app/f2#1", T("2026-02-01", tz="UTC")),
        ("P1", "city", "shanghai", "app", "app/f2#2", T("2026-02-01", tz="UTC")),
        ("P1", "gender", "f", "app", "app/f2#1", T("2026-02-01", tz="UTC")),
        ("P1", "gender", "m", "crm", "crm/f1#3", None),
        # persona P0: everything tied but the record; one value from a source nobody listed
        ("P0", "city", "x", "orders", "orders/f3#10", T("2026-01-01", tz="UTC")),
        ("P0", "city", "y", "orders", "orders/f3#9", T("2026-01-01", tz="UTC")),
        ("P0", "city", "z", "partner", "partner/f4#1", T("2026-01-01", tz="UTC")),
        ("P0", "gender", "m", "app", "app/f2#7", None),
        ("P0", "gender", "f", "app", "app/f2#8", None),
        ("P0", "opt_out_marketing", "true", "crm", "crm/f1#1", T("2026-01-01", tz="UTC")),
        ("P0", "opt_out_marketing", "false", "orders", "orders/f3#1", T("2026-01-01", tz="UTC")),
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS).astype({"ts": "datetime64[ns, UTC]"})


@pytest.mark.parametrize("city_rule", ["most_recent", "most_trusted", "most_frequent"])
def test_sql_survivorship_matches_pandas(city_rule):
    rules = {"opt_out_marketing": AttributeRule(rule="most_recent", sources=["orders"]),
             "city": AttributeRule(rule=city_rule, sources=["app"]),
             "gender": AttributeRule(rule="most_trusted", sources=["crm"]),
             "birth_date": AttributeRule(rule="most_recent")}  # no candidate at all
    order = ["crm", "app", "orders"]
    frame = candidates()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("cand", frame)
    con.register("trust", survive_order(rules, order))
    got = con.execute(survive_sql("SELECT * FROM cand", "trust")).df()
    got["ts"] = got["ts"].astype("datetime64[ns, UTC]")  # DuckDB keeps microseconds
    expected = survive(frame, rules, order)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
