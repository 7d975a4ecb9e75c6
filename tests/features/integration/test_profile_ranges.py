"""`profile_ranges.assemble`: parts written by pandas range by range make the file one frame would have made."""

import datetime as dt

import pandas as pd

from features.integration.profile_ranges import assemble, range_starts_sql, ranges


def _frame(n0: int, dates: list, band: list) -> pd.DataFrame:
    birth = pd.to_datetime(pd.Series(dates), errors="coerce").dt.date
    return pd.DataFrame({"persona_id": pd.Series([f"p{n0 + i}" for i in range(len(dates))], dtype="string"),
                         "birth_date": birth, "band": pd.Series(band, dtype=object),
                         "n": pd.Series(range(len(dates)), dtype="int64")})


def test_a_column_all_null_in_one_range_takes_its_type_from_the_others(tmp_path):
    """One range with no birth date (pandas makes it NaT objects, not dates) and no enrichment value: the assembled
    file reads back as the whole frame written at once."""
    parts = [_frame(0, [None, None], [None, None]), _frame(2, ["1990-01-02", None], ["high", None]),
             _frame(4, [], [])]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"{i:06d}.parquet")
        part.to_parquet(paths[-1], index=False)
    assert assemble(paths, tmp_path / "all.parquet") == 4
    whole = pd.concat(parts[:2], ignore_index=True)
    whole.to_parquet(tmp_path / "whole.parquet", index=False)
    got = pd.read_parquet(tmp_path / "all.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(tmp_path / "whole.parquet"))
    assert got["birth_date"].iloc[2] == dt.date(1990, 1, 2)
    assert not list(tmp_path.glob(".all.parquet*"))


def test_ranges_cover_every_persona_once():
    assert ranges([]) == [(0, None, None)]
    assert ranges(["p1", "p5", "p9"]) == [(0, None, "p5"), (1, "p5", "p9"), (2, "p9", None)]
    import duckdb

    ids = "(SELECT * FROM (VALUES ('p3'), ('p1'), ('p2'), ('p1'), ('p5')) v(persona_id))"
    assert [r[0] for r in duckdb.sql(range_starts_sql(ids, 2)).fetchall()] == ["p1", "p3"]
