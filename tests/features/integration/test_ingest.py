"""Ingestion: every bad row is quarantined with its source, row number and a reason; good rows are standardised."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.integration.ingest import (ARROW_STR, SeenKeys, SourceFileError, StagedCounts, StagedFile, carries,
                                         read_source_file, stage_file, standardise_file)
from persona.config import PersonaConfig, parse_config
from persona.workspace import write_parquet_atomic

NOW = pd.Timestamp("2026-07-01", tz="UTC")
SALT = "test-salt"
HEADER = "order_id,phone,email,amount,order_time\n"


def config(**source_overrides) -> PersonaConfig:
    orders = {
        "channel": "online", "kind": "transactions", "path": "raw/orders/*.csv", "key": ["order_id"],
        "timestamp": {"column": "order_time", "format": "iso"},
        "identifiers": {"phone": "phone", "email": "email"},
        "fields": {"order_id": "order_id", "amount": "amount"},
    }
    orders.update(source_overrides)
    return parse_config({
        "timezone": "Asia/Shanghai",
        "sources": {"orders": orders},
        "identity": {"identifiers": {"phone": {"normalise": "phone"}, "email": {"normalise": "email"}}},
        "mappings": {"gender": {"男": "male", "女": "female", "m": "male", "u": None}},
    })


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def ingest(path: Path, cfg: PersonaConfig, *, source: str = "orders", seen: np.ndarray | None = None,
           forgotten: dict[str, set[str]] | None = None) -> StagedFile:
    spec = cfg.sources[source]
    raw = read_source_file(path, spec)
    return standardise_file(raw, spec, cfg, source=source, file_id=path.stem, now=NOW,
                            seen_row_keys=np.zeros(0, dtype=np.uint64) if seen is None else seen, salt=SALT,
                            forgotten=forgotten)


def values_of(staged: StagedFile) -> pd.DataFrame:
    """The staged mentions with their raw values (which only the in-memory `identifiers` hold)."""
    return staged.mentions.merge(staged.identifiers, on=["id_type", "value_hash"])


def reasons_by_row(staged: StagedFile) -> dict[int, str]:
    return dict(zip(staged.quarantined["row"], staged.quarantined["reason"]))


# --- quarantine reasons --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_line,reason_parts", [
    pytest.param("O2,13800138002,,10,2026-05-01T10:00:00,extra", ["malformed_row", "expected 5 fields, found 6"],
                 id="malformed-row"),
    pytest.param("O2,13800138002,,10,", ["missing_timestamp", "order_time"], id="missing-timestamp"),
    pytest.param("O2,13800138002,,10,last tuesday",
                 ["bad_timestamp", "order_time", "'last tuesday'", "expected format iso"], id="bad-timestamp"),
    pytest.param("O2,13800138002,,10,2099-01-01T00:00:00",
                 ["timestamp_out_of_range", "order_time", "2099-01-01", "2026-07-01"], id="timestamp-in-2099"),
    pytest.param("O2,13800138002,,10,1970-01-01T00:00:00", ["timestamp_out_of_range", "1970"],
                 id="timestamp-before-1990"),
    pytest.param("O2,13800138002,,N/A,2026-05-01T10:00:00", ["bad_number", "amount", "'N/A'", "expected a number"],
                 id="bad-number"),
    pytest.param("O2,13800138002,,,2026-05-01T10:00:00", ["missing_field", "amount"], id="missing-required-field"),
    pytest.param("O2,,,10,2026-05-01T10:00:00", ["no_identifier", "phone/email"], id="no-identifier"),
    pytest.param("O2,12345,not-an-email,10,2026-05-01T10:00:00", ["no_identifier"], id="only-invalid-identifiers"),
    pytest.param("O1,13800138001,,10,2026-05-01T10:00:00", ["duplicate", "order_id"], id="duplicate-in-file"),
])
def test_bad_row_is_quarantined_with_source_row_and_reason(tmp_path, bad_line, reason_parts):
    # Row 1 is good, row 2 is the bad one, row 3 is good: only row 2 is quarantined, numbered as a data row.
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,13800138001,,10,2026-05-01T10:00:00\n"
                 + bad_line + "\nO3,13800138003,c@x.com,12.5,2026-05-02T10:00:00\n")
    staged = ingest(path, config())
    q = staged.quarantined
    assert len(q) == 1
    assert q["source"].iloc[0] == "orders" and q["file_id"].iloc[0] == "a"
    assert q["row"].iloc[0] == 2
    for part in reason_parts:
        assert part in q["reason"].iloc[0]
    assert staged.accepted["row"].tolist() == [1, 3]
    assert staged.accepted["order_id"].tolist() == ["O1", "O3"]
    assert len(staged.accepted) + len(q) == 3 == staged.read


def test_quarantined_row_keeps_its_raw_values(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,13800138001,,N/A,2026-05-01T10:00:00\n"
                 "O2,13800138002,,1,2026-05-01T10:00:00,extra\n")
    q = ingest(path, config()).quarantined
    assert json.loads(q["raw"].iloc[0])["amount"] == "N/A"
    assert q["raw"].iloc[1] == "O2,13800138002,,1,2026-05-01T10:00:00,extra"


def test_every_reason_at_once_counts_reconcile(tmp_path):
    lines = [
        "O1,13800138001,,10,2026-05-01T10:00:00",       # 1 ok
        "O2,13800138002,,10,2026-05-01T10:00:00,x",     # 2 malformed
        "O3,13800138003,,10,",                          # 3 missing timestamp
        "O4,13800138004,,10,soon",                      # 4 bad timestamp
        "O5,13800138005,,10,2099-12-31T00:00:00",       # 5 out of range
        "O6,13800138006,,N/A,2026-05-01T10:00:00",      # 6 bad number
        "O7,13800138007,,,2026-05-01T10:00:00",         # 7 missing amount
        "O8,,,10,2026-05-01T10:00:00",                  # 8 no identifier
        "O1,13800138001,,10,2026-05-01T10:00:00",       # 9 duplicate of row 1
        "O9, 138 0013 8009 ,,\"¥1,299.00\",2026-05-01 10:00:00",  # 10 ok
    ]
    staged = ingest(write(tmp_path / "raw/orders/a.csv", HEADER + "\n".join(lines) + "\n"), config())
    got = {row: reason.split(":")[0] for row, reason in reasons_by_row(staged).items()}
    assert got == {2: "malformed_row", 3: "missing_timestamp", 4: "bad_timestamp", 5: "timestamp_out_of_range",
                   6: "bad_number", 7: "missing_field", 8: "no_identifier", 9: "duplicate"}
    assert staged.accepted["row"].tolist() == [1, 10]
    assert len(staged.accepted) + len(staged.quarantined) == len(lines)
    assert staged.accepted["amount"].tolist() == [10.0, 1299.0]


def test_same_key_at_another_time_is_not_a_duplicate(tmp_path):
    # The row key is the key columns plus the timestamp: the same order id at another time is a new row.
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,13800138001,,10,2026-05-01T10:00:00\n"
                 "O1,13800138001,,10,2026-05-02T10:00:00\n"
                 " O1 ,13800138001,,10,2026-05-01T10:00:00\n")  # same key, trimmed, same time: duplicate
    staged = ingest(path, config())
    assert staged.accepted["row"].tolist() == [1, 2]
    assert reasons_by_row(staged) == {3: "duplicate: order_id seen before"}


def test_duplicate_across_files(tmp_path):
    first = ingest(write(tmp_path / "raw/orders/a.csv", HEADER + "O1,13800138001,,10,2026-05-01T10:00:00\n"),
                   config())
    second = ingest(write(tmp_path / "raw/orders/b.csv", HEADER + "O2,13800138002,,10,2026-05-01T10:00:00\n"
                          "O1,13800138001,,10,2026-05-01T10:00:00\n"
                          "O1,13800138001,,10,2026-05-03T10:00:00\n"),
                    config(), seen=first.accepted["row_key"].to_numpy())
    assert second.accepted["row"].tolist() == [1, 3]
    assert second.quarantined["file_id"].tolist() == ["b"]
    assert reasons_by_row(second) == {2: "duplicate: order_id seen before"}


def test_source_without_key_deduplicates_identical_rows(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,13800138001,,10,2026-05-01T10:00:00\n"
                 "O1,13800138001,,10,2026-05-01T10:00:00\n"
                 "O1,13800138001,,11,2026-05-01T10:00:00\n")
    staged = ingest(path, config(key=[]))
    assert staged.accepted["row"].tolist() == [1, 3]
    assert reasons_by_row(staged)[2].startswith("duplicate: identical row")


# --- standardised values -------------------------------------------------------------------------------------
def test_accepted_rows_are_in_utc_and_hold_no_raw_identifiers(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,+86 138-0013-8001,A@X.com,10,2026-05-01T10:00:00\n"
                 "O2,13800138001,,10,2026-05-01T10:00:00+00:00\n")
    staged = ingest(path, config())
    assert staged.accepted["ts"].tolist() == [pd.Timestamp("2026-05-01 02:00", tz="UTC"),
                                              pd.Timestamp("2026-05-01 10:00", tz="UTC")]
    assert not {"phone", "email"} & set(staged.accepted.columns)
    assert list(staged.mentions.columns) == ["mention_key", "id_type", "value_hash"]  # what is written: no value
    mentions = values_of(staged).merge(staged.accepted[["mention_key", "order_id"]], on="mention_key")
    assert sorted(zip(mentions["order_id"], mentions["id_type"], mentions["value"])) == [
        ("O1", "email", "a@x.com"), ("O1", "phone", "+8613800138001"), ("O2", "phone", "+8613800138001")]


def test_invalid_phone_is_dropped_but_row_kept_when_another_identifier_is_valid(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,12345,b@x.com,10,2026-05-01T10:00:00\n"
                 "O2,call me,,10,2026-05-01T10:00:00\n"
                 "O3,13800138003,,10,2026-05-01T10:00:00\n")
    staged = ingest(path, config())
    assert staged.accepted["order_id"].tolist() == ["O1", "O3"]
    assert reasons_by_row(staged)[2].startswith("no_identifier")
    o1 = staged.accepted.loc[staged.accepted["order_id"] == "O1", "mention_key"].iloc[0]
    assert staged.mentions.loc[staged.mentions["mention_key"] == o1, "id_type"].tolist() == ["email"]
    assert staged.invalid_identifiers == {"phone": 2}
    assert "12345" not in values_of(staged)["value"].tolist()


def test_possible_but_unassigned_phone_is_linked_and_counted_unreachable(tmp_path):
    # 238... is a possible CN length in no assigned range: it links (an identifier the customer gave), is counted as
    # not reachable; 12345 (a local-only length) is impossible and dropped as before.
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,238 1234 5678,,10,2026-05-01T10:00:00\n"
                 "O2,12345,,10,2026-05-01T10:00:00\n"
                 "O3,13800138003,,10,2026-05-01T10:00:00\n")
    staged = ingest(path, config())
    assert staged.accepted["order_id"].tolist() == ["O1", "O3"]
    assert reasons_by_row(staged) == {2: "no_identifier: no valid phone/email"}
    assert sorted(values_of(staged)["value"]) == ["+8613800138003", "+8623812345678"]
    assert staged.invalid_identifiers == {"phone": 1} and staged.unreachable_identifiers == {"phone": 1}


def test_over_long_identifier_quarantines_its_row_and_counts_reconcile(tmp_path):
    cfg = parse_config({**config().model_dump(), "identity": {
        "identifiers": {"phone": {"normalise": "phone"}, "email": {"normalise": "email"}},
        "max_identifier_length": 20}})
    long_email = "a" * 12 + "@example.com"  # 24 characters
    path = write(tmp_path / "raw/orders/a.csv", HEADER + f"O1,13800138001,{long_email},10,2026-05-01T10:00:00\n"
                 "O2,13800138002,b@x.com,10,2026-05-01T10:00:00\n"
                 f"O3,13800138003,  {'c' * 8}@x.com  ,10,2026-05-01T10:00:00\n")  # 14 once trimmed: fine
    staged = ingest(path, cfg)
    assert reasons_by_row(staged) == {
        1: "identifier_too_long: email has 24 characters (identity.max_identifier_length = 20)"}
    assert staged.accepted["order_id"].tolist() == ["O2", "O3"]
    assert staged.read == len(staged.accepted) + len(staged.quarantined) == 3
    # Nothing of the quarantined row links: its phone (valid on its own) is not among the mentions either.
    assert "+8613800138001" not in values_of(staged)["value"].tolist()
    assert json.loads(staged.quarantined["raw"].iloc[0])["email"] == long_email
    # The default limit (256) lets the same file through.
    assert len(ingest(path, config()).accepted) == 3


def test_code_mappings_and_unmapped_codes(tmp_path):
    cfg = parse_config({
        "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                            "identifiers": {"member_id": "member_id"},
                            "fields": {"gender": "gender", "city": "city", "opt_out_marketing": "opt_out"}}},
        "identity": {"identifiers": {"member_id": {"account": True}}},
        "mappings": {"gender": {"男": "male", "女": "female", "M": "male", "u": None}},
    })
    path = write(tmp_path / "raw/crm.csv", "member_id,gender,city,opt_out\n"
                 "M1,男,Shanghai,是\nM2, 女 ,,否\nM3,m,,\nM4,U,,\nM5,Non-Binary,,y\nM6,,,\n")
    staged = ingest(path, cfg, source="crm")
    gender = dict(zip(staged.accepted["row"], staged.accepted["gender"]))
    assert gender[1] == "male" and gender[2] == "female" and gender[3] == "male"
    assert pd.isna(gender[4]) and pd.isna(gender[6])  # mapped to unknown / empty
    assert gender[5] == "non-binary"  # unmapped: kept, trimmed and lowercased
    assert staged.unmapped_codes == {"gender": 1}  # city has no mapping: not reported as unmapped
    assert staged.accepted["city"].iloc[0] == "shanghai"
    opt_out = dict(zip(staged.accepted["row"], staged.accepted["opt_out_marketing"]))
    assert (opt_out[1], opt_out[2], opt_out[5]) == (True, False, True) and pd.isna(opt_out[3])
    assert staged.quarantined.empty


def test_bad_boolean_and_date_are_quarantined(tmp_path):
    cfg = parse_config({
        "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                            "identifiers": {"member_id": "member_id"},
                            "fields": {"birth_date": "birthday", "opt_out_marketing": "opt_out"}}},
        "identity": {"identifiers": {"member_id": {"account": True}}},
    })
    path = write(tmp_path / "raw/crm.csv", "member_id,birthday,opt_out\nM1,1990-02-03,n\nM2,1990-02-30,n\nM3,,maybe\n")
    staged = ingest(path, cfg, source="crm")
    assert staged.accepted["birth_date"].iloc[0] == pd.Timestamp("1990-02-03")
    reasons = reasons_by_row(staged)
    assert reasons[2].startswith("bad_date: birth_date") and "1990-02-30" in reasons[2]
    assert reasons[3].startswith("bad_bool: opt_out_marketing") and "maybe" in reasons[3]


def test_parquet_source(tmp_path):
    path = tmp_path / "raw/orders/a.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({
        "order_id": ["O1", "O2", "O3"],
        "phone": pd.array([13800138001, 13800138002, None], dtype="Int64"),  # phones exported as numbers
        "email": [None, "B@x.com", None],
        "amount": [10.5, None, 3.0],
        "order_time": pd.to_datetime(["2026-05-01 10:00", "2026-05-02 10:00", "2026-05-03 10:00"]),
    }).to_parquet(path)
    cfg = config(path="raw/orders/*.parquet")
    assert cfg.sources["orders"].file_format == "parquet"
    staged = ingest(path, cfg)
    assert staged.accepted["order_id"].tolist() == ["O1"]
    assert staged.accepted["ts"].iloc[0] == pd.Timestamp("2026-05-01 02:00", tz="UTC")  # naive: workspace zone
    assert staged.accepted["amount"].iloc[0] == 10.5
    assert values_of(staged)["value"].tolist() == ["+8613800138001"]
    assert reasons_by_row(staged) == {2: "missing_field: amount is empty", 3: "no_identifier: no valid phone/email"}
    assert staged.read == 3


# --- hashed mentions and erasure ----------------------------------------------------------------------------
def salted(value: str) -> str:
    return hashlib.sha256(f"{SALT}|{value}".encode()).hexdigest()


def test_mentions_hold_salted_hashes_and_keys_depend_on_the_salt(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER + "O1,+86 138-0013-8001,A@X.com,10,2026-05-01T10:00:00\n")
    staged = ingest(path, config())
    assert sorted(staged.mentions["value_hash"]) == sorted([salted("+8613800138001"), salted("a@x.com")])
    assert sorted(staged.identifiers["value"]) == ["+8613800138001", "a@x.com"]
    spec = config().sources["orders"]
    other = standardise_file(read_source_file(path, spec), spec, config(), source="orders", file_id="a", now=NOW,
                             seen_row_keys=np.zeros(0, dtype=np.uint64), salt="another-salt")
    # Without the salt a mention key cannot be recomputed from a guessed phone.
    assert staged.accepted["mention_key"].iloc[0] != other.accepted["mention_key"].iloc[0]


def test_row_with_a_forgotten_identifier_is_erased_whatever_its_spelling_or_other_faults(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", HEADER +
                 "O1,138 0013 8001,,10,2026-05-01T10:00:00\n"      # the forgotten phone, spelled another way
                 "O2,13800138002,,10,2026-05-01T10:00:00\n"        # someone else
                 "O3,,Gone@X.com,N/A,2026-05-01T10:00:00\n"        # forgotten e-mail on a row that would be quarantined
                 "O4,13800138002,,N/A,2026-05-01T10:00:00\n"       # quarantined, kept
                 "O5,+8613800138001,,10,2026-05-01T10:00:00,extra\n")  # malformed, carrying the forgotten phone
    forgotten = {"phone": {salted("+8613800138001")}, "email": {salted("gone@x.com")}}
    staged = ingest(path, config(), forgotten=forgotten)
    assert staged.accepted["order_id"].tolist() == ["O2"]
    assert sorted(staged.quarantined["row"]) == [4]
    assert staged.erased == 3 and staged.read == 5
    assert not set().union(*forgotten.values()) & set(staged.mentions["value_hash"])
    assert "13800138001" not in "".join(staged.quarantined["raw"]) and "gone" not in "".join(staged.quarantined["raw"])
    # Without the erasure the same file stages as before.
    plain = ingest(path, config())
    assert plain.erased == 0 and len(plain.accepted) == 2 and len(plain.quarantined) == 3


def test_carries_finds_an_identifier_in_any_field_of_quarantined_raw_values():
    cfg = config()
    raw = pd.Series(['{"phone": "+86 138 0013 8001", "amount": "x"}', '{"phone": "13800138002"}',
                     'O5,x,138-0013-8001,1', '{"note": "GONE@x.com "}', None])
    hashes = {"phone": {salted("+8613800138001")}, "email": {salted("gone@x.com")}}
    assert carries(raw, cfg, SALT, hashes).tolist() == [True, False, True, True, False]


# --- unusable files ------------------------------------------------------------------------------------------
def test_file_missing_a_mapped_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "raw/orders/a.csv", "order_id,phone,email,order_time\nO1,13800138001,,2026-05-01\n")
    with pytest.raises(SourceFileError) as exc:
        ingest(path, config())
    assert str(path) in str(exc.value) and "'amount'" in str(exc.value)


def test_parquet_missing_a_mapped_column_names_file_and_column(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"order_id": ["O1"], "phone": ["13800138001"], "email": [None],
                  "order_time": ["2026-05-01"]}).to_parquet(path)
    with pytest.raises(SourceFileError) as exc:
        ingest(path, config(path="*.parquet"))
    assert str(path) in str(exc.value) and "'amount'" in str(exc.value)


@pytest.mark.parametrize("content", ["", "\n", "   \n\n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = write(tmp_path / "raw/orders/a.csv", content)
    with pytest.raises(SourceFileError, match="empty file") as exc:
        ingest(path, config())
    assert str(path) in str(exc.value)


def test_header_only_file_has_no_rows(tmp_path):
    staged = ingest(write(tmp_path / "raw/orders/a.csv", HEADER), config())
    assert staged.read == 0 and staged.accepted.empty and staged.quarantined.empty


def test_file_in_wrong_encoding_is_an_error(tmp_path):
    path = tmp_path / "raw/orders/a.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes((HEADER + "O1,13800138001,张三@x.com,10,2026-05-01\n").encode("gb18030"))
    with pytest.raises(SourceFileError, match="csv.encoding"):
        ingest(path, config())
    staged = ingest(path, config(csv={"encoding": "gb18030"}))
    assert staged.read == 1


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SourceFileError, match="file not found"):
        ingest(tmp_path / "nope.csv", config())


# --- streaming stager: stage_file in tiny chunks equals standardise_file on the whole file ------------------------
def staged_both(tmp_path: Path, path: Path, cfg: PersonaConfig, *, source: str = "orders", chunk_rows: int = 3,
                seen=None, forgotten=None) -> StagedCounts:
    """Stage `path` both ways and assert the same Parquet rows and schema, counts, row keys and identifiers."""
    spec, out = cfg.sources[source], tmp_path / f"out{chunk_rows}"
    seen = np.zeros(0, dtype=np.uint64) if seen is None else seen
    whole = standardise_file(read_source_file(path, spec), spec, cfg, source=source, file_id="f1", now=NOW,
                             seen_row_keys=seen, salt=SALT, forgotten=forgotten)
    for name, frame in (("rows", whole.accepted), ("mentions", whole.mentions), ("quarantine", whole.quarantined)):
        write_parquet_atomic(out / f"whole.{name}.parquet", frame)
    got = stage_file(path, spec, cfg, source=source, file_id="f1", now=NOW, seen_row_keys=seen, salt=SALT,
                     forgotten=forgotten, out_rows=out / "rows.parquet", out_mentions=out / "mentions.parquet",
                     out_quarantine=out / "quarantine.parquet", chunk_rows=chunk_rows)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("whole.")) == [
        "mentions.parquet", "quarantine.parquet", "rows.parquet"]  # no temporary file left
    for name in ("rows", "mentions", "quarantine"):
        expected, actual = pq.read_table(out / f"whole.{name}.parquet"), pq.read_table(out / f"{name}.parquet")
        if len(whole.accepted):  # an empty frame's text column is all-null in one pass, text in the stager
            assert actual.schema.remove_metadata() == expected.schema.remove_metadata(), name
        assert actual.to_pylist() == expected.to_pylist(), name
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"),
                                      pd.read_parquet(out / f"whole.{name}.parquet"), check_dtype=False)
    reasons = whole.quarantined["reason"].str.split(":").str[0].value_counts().to_dict()
    assert got.counts() == {"read": whole.read, "accepted": len(whole.accepted), "quarantined": len(whole.quarantined),
                            "erased": whole.erased, "reasons": reasons, "unmapped_codes": whole.unmapped_codes,
                            "invalid_identifiers": whole.invalid_identifiers,
                            "unreachable_identifiers": whole.unreachable_identifiers}
    assert got.row_keys.dtype == np.uint64
    assert got.row_keys.tolist() == sorted(whole.accepted["row_key"].tolist())
    pd.testing.assert_frame_equal(got.identifiers, whole.identifiers.astype(ARROW_STR))
    return got


MESSY = (HEADER
         + "O1,+8613800138001,,10,2026-05-01T10:00:00,extra\n"   # malformed first row
         + "O1,13800138001,a@x.com,10,2026-05-01T10:00:00\n"
         + "O2,13800138002,,N/A,2026-05-01T10:00:00\n"           # bad number
         + "O3,13800138003,b@x.com,5,last tuesday\n"             # bad timestamp
         + "O4,,,10,2026-05-02T10:00:00\n"                       # no identifier
         + "O5,12345,not-an-email,10,2026-05-02T10:00:00\n"      # only invalid identifiers
         + "O1,13800138001,a@x.com,10,2026-05-01T10:00:00\n"     # duplicate of row 2, chunks apart
         + "O6,13800138001,a@x.com,7,2026-05-03T10:00:00\n"      # the same person again: one mention
         + "O7,13800138007,,10,\n"                               # missing timestamp
         + "O8,13800138008,gone@x.com,3,2026-05-04T10:00:00\n"   # forgotten e-mail
         + "broken\n"                                            # malformed, mid-file
         + "O6,13800138001,a@x.com,7,2026-05-03T10:00:00\n"      # duplicate of O6
         + "O9,238 1234 5678,c@x.com,1,2026-05-05T10:00:00\n"    # possible but unassigned phone
         + "O10,13800138010,,1,2099-01-01T00:00:00\n"            # out of range
         + "O11,13800138011,d@x.com,1,2026-05-06T10:00:00\n"
         + "O3,13800138003,b@x.com,5,2026-05-01T10:00:00\n"      # the valid O3: not a duplicate of a bad row
         + "O12,+8613800138012,,1,2026-05-06T10:00:00,x,y\n"     # malformed, last row
         + "O13,13800138001,,1,2026-05-06T10:00:00,x,y\n")       # malformed after the last parsed row


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5, 100])
def test_stage_file_in_chunks_equals_the_whole_file(tmp_path, chunk_rows):
    path = write(tmp_path / "raw/orders/a.csv", MESSY)
    got = staged_both(tmp_path, path, config(), chunk_rows=chunk_rows,
                      forgotten={"email": {salted("gone@x.com")}, "phone": {salted("+8613800138012")}})
    assert (got.read, got.accepted, got.quarantined, got.erased) == (18, 5, 11, 2)
    assert got.reasons["duplicate"] == 2 and got.reasons["malformed_row"] == 3
    assert got.invalid_identifiers == {"phone": 1, "email": 1} and got.unreachable_identifiers == {"phone": 1}


@pytest.mark.parametrize("as_seen_keys", [False, True])
def test_stage_file_checks_the_callers_seen_keys(tmp_path, as_seen_keys):
    cfg = config()
    earlier = ingest(write(tmp_path / "raw/orders/a.csv", HEADER + "O11,13800138011,d@x.com,1,2026-05-06T10:00:00\n"),
                     cfg).accepted["row_key"].to_numpy()
    seen = earlier
    if as_seen_keys:
        seen = SeenKeys()
        seen.add("a", earlier)
        seen.add("f1", np.array([1, 2], dtype=np.uint64))  # this file's own earlier version: not a duplicate source
    got = staged_both(tmp_path, write(tmp_path / "raw/orders/b.csv", MESSY), cfg, seen=seen)
    assert got.reasons["duplicate"] == 3


def test_stage_file_without_key_header_only_and_no_parsed_row(tmp_path):
    cfg = config(key=[])
    staged_both(tmp_path, write(tmp_path / "a.csv", HEADER + "O1,13800138001,,1,2026-05-06T10:00:00\n" * 4
                                + "O2,13800138002,,1,2026-05-06T10:00:00\n"), cfg, chunk_rows=2)
    got = staged_both(tmp_path, write(tmp_path / "b.csv", HEADER), cfg)
    assert got.read == 0 and len(got.identifiers) == 0
    assert pq.read_table(tmp_path / "out3/rows.parquet").num_rows == 0
    got = staged_both(tmp_path, write(tmp_path / "c.csv", HEADER + "x\ny,z\n"), cfg, chunk_rows=1)
    assert got.quarantined == 2 and got.reasons == {"malformed_row": 2}


def test_stage_file_parquet_source(tmp_path):
    path = tmp_path / "raw/orders/a.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({
        "amount": [10.5, None, 3.0, 4.0, 5.0, 4.0, 6.0],  # columns in another order than the mapping's
        "order_id": ["O1", "O2", "O3", "O4", "O5", "O4", "O1"],
        "phone": pd.array([13800138001, 13800138002, 13800138003, 13800138004, None, 13800138004, 13800138001],
                          dtype="Int64"),  # a null in one chunk only: pandas makes the whole column float
        "email": [None, "B@x.com", None, None, "e@x.com", None, None],
        "order_time": pd.to_datetime(["2026-05-01 10:00", "2026-05-02 10:00", None, "2026-05-03 10:00",
                                      "2026-05-03 10:00", "2026-05-03 10:00", "2026-05-01 10:00"]),
    }).to_parquet(path, row_group_size=3)
    cfg = config(path="raw/orders/*.parquet")
    got = staged_both(tmp_path, path, cfg, chunk_rows=2)
    assert (got.accepted, got.reasons) == (3, {"duplicate": 2, "missing_field": 1, "missing_timestamp": 1})
    # Without pandas metadata (another writer): an integer column with a null is float in one pass, so in every chunk.
    table = pq.read_table(path).replace_schema_metadata(None)
    pq.write_table(table.append_column("flag", pa.array([True, None, False, True, True, True, False])), path,
                   row_group_size=2)
    cfg = config(path="*.parquet", key=[], fields={"order_id": "order_id", "amount": "amount", "is_return": "flag"})
    assert staged_both(tmp_path, path, cfg, chunk_rows=3).accepted == 4


def test_stage_file_unreadable_files_raise_as_read_source_file_and_leave_nothing(tmp_path):
    cfg, out = config(), tmp_path / "out"
    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    cases = [(write(tmp_path / "e.csv", ""), cfg), (tmp_path / "nope.csv", cfg),
             (write(tmp_path / "m.csv", "order_id,phone\nO1,1\n"), cfg),
             (corrupt, config(path="*.parquet"))]
    bytes_ = (HEADER + "O1,13800138001,a@x.com,10,2026-05-01\n" * 3).encode() + b"O2,\xff\xfe,,1,2026-05-01\n"
    (tmp_path / "u.csv").write_bytes(bytes_ * 2000)  # invalid UTF-8 past the first chunk
    cases.append((tmp_path / "u.csv", cfg))
    for path, c in cases:
        spec = c.sources["orders"]
        with pytest.raises(SourceFileError) as whole:
            read_source_file(path, spec)
        with pytest.raises(SourceFileError) as chunked:
            stage_file(path, spec, c, source="orders", file_id="f", now=NOW, seen_row_keys=np.zeros(0, np.uint64),
                       salt=SALT, forgotten=None, out_rows=out / "r.parquet", out_mentions=out / "m.parquet",
                       out_quarantine=out / "q.parquet", chunk_rows=2)
        assert str(chunked.value).split(" (")[0] == str(whole.value).split(" (")[0]
        assert not out.exists() or not list(out.iterdir())
