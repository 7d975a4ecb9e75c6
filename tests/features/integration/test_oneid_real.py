"""Identity on real records, through the integrate stage: phones that could exist link (and are flagged when no
range is assigned to them), over-long identifiers quarantine their row, and a persona dissolved by a device turning
shared is logged and retired rather than vanishing."""

from pathlib import Path

import pandas as pd
import yaml

from features.integration.run import integrate
from persona.workspace import Workspace

NOW = pd.Timestamp("2026-07-01", tz="UTC")
IDENTITY = {"identifiers": {
    "account_id": {"normalise": "id", "account": True},
    "phone": {"normalise": "phone", "max_accounts": 2},
    "device_id": {"normalise": "id", "max_accounts": 1},
}, "max_identifier_length": 64}
ORDERS = {
    "channel": "online", "kind": "transactions", "path": "raw/orders/*.csv", "key": ["order_id"],
    "timestamp": {"column": "order_time", "format": "iso"},
    "identifiers": {"account_id": "account_id", "phone": "buyer_phone", "device_id": "device"},
    "fields": {"order_id": "order_id", "amount": "amount"},
}
HEADER = "order_id,account_id,buyer_phone,device,amount,order_time\n"
MAY = HEADER + "".join([
    "O1,A1,238 1234 5678,D1,10,2026-05-01T10:00:00\n",  # a possible CN number in no assigned range
    "O2,,,D9,20,2026-05-02T10:00:00\n",                  # a guest checkout: a persona of one device
    "O3,A3,138 0013 8003,,30,2026-05-03T10:00:00\n",     # a valid mobile
    "O4,A4,12345,,40,2026-05-04T10:00:00\n",             # an impossible phone: dropped, the account still links
    "O5,,12345,,50,2026-05-05T10:00:00\n",               # nothing valid left: quarantined
    f"O6,A6,,{'x' * 65},60,2026-05-06T10:00:00\n",       # a device id over the limit: quarantined
])
# June: the guest's device D9 is seen logged into two accounts, so it is shared (max_accounts 1).
JUNE = HEADER + "O7,A7,,D9,70,2026-06-01T10:00:00\nO8,A8,,D9,80,2026-06-02T10:00:00\n"


def workspace(root: Path, files: dict[str, str]) -> Workspace:
    data = {"version": 1, "name": "test", "timezone": "Asia/Shanghai", "phone_region": "CN",
            "sources": {"orders": ORDERS}, "identity": IDENTITY}
    (root / "persona.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return Workspace.open(root)


def published(ws: Workspace, name: str) -> pd.DataFrame:
    return pd.read_parquet(ws.current("integrated") / name)


def identity_row(ws: Workspace, id_type: str, value: str) -> pd.Series:
    m = published(ws, "identity_map.parquet")
    return m[(m["id_type"] == id_type) & (m["value"] == value)].iloc[0]


def test_unassigned_phone_links_and_is_flagged_and_bad_identifiers_are_rejected(tmp_path, salt):
    ws = workspace(tmp_path, {"raw/orders/2026-05.csv": MAY})
    report = integrate(ws, now=NOW)
    orders = report["sources"]["orders"]
    assert orders["read"] == orders["accepted"] + orders["quarantined"] == 6 and orders["accepted"] == 4
    assert orders["reasons"] == {"no_identifier": 1, "identifier_too_long": 1}
    assert orders["invalid_identifiers"] == {"phone": 2} and orders["unreachable_identifiers"] == {"phone": 1}
    q = published(ws, "quarantine.parquet").set_index("row")["reason"]
    assert q[6] == "identifier_too_long: device has 65 characters (identity.max_identifier_length = 64)"

    unassigned, valid = identity_row(ws, "phone", "+8623812345678"), identity_row(ws, "phone", "+8613800138003")
    assert unassigned["status"] == "linked" and not unassigned["reachable"] and valid["reachable"]
    assert unassigned["persona_id"] == identity_row(ws, "account_id", "A1")["persona_id"]
    assert pd.isna(identity_row(ws, "account_id", "A1")["reachable"])  # not a phone: no reachability
    ids = published(ws, "identity_map.parquet")
    assert not ids["value"].str.endswith("12345").any() and not ids["value"].str.contains("xxxx").any()

    profiles = published(ws, "profiles.parquet").set_index("persona_id")
    a1, a3 = profiles.loc[unassigned["persona_id"]], profiles.loc[valid["persona_id"]]
    # The unassigned number counts as the persona's phone but is never its contact (what segments export).
    assert (a1["n_phone"], a1["phone_reachable"]) == (1, False) and pd.isna(a1["phone_hash"])
    assert (a3["n_phone"], a3["phone_reachable"]) == (1, True) and a3["phone_hash"] == valid["value_hash"]
    assert pd.isna(profiles.loc[identity_row(ws, "account_id", "A4")["persona_id"], "phone_reachable"])


def test_device_turned_shared_dissolves_a_persona_across_runs_with_audit_and_retirement(tmp_path, salt):
    ws = workspace(tmp_path, {"raw/orders/2026-05.csv": MAY})
    integrate(ws, now=NOW)
    guest = identity_row(ws, "device_id", "D9")["persona_id"]
    assert published(ws, "transactions.parquet").set_index("order_id").loc["O2", "persona_id"] == guest

    (tmp_path / "raw/orders/2026-06.csv").write_text(JUNE, encoding="utf-8")
    second = integrate(ws, now=NOW + pd.Timedelta(hours=1))
    d9 = identity_row(ws, "device_id", "D9")
    assert d9["status"] == "shared" and pd.isna(d9["persona_id"])
    assert guest not in set(published(ws, "profiles.parquet")["persona_id"])
    assert second["identity"]["dissolved"] == 1 and second["identity"]["unlinked"] == 1

    audit = published(ws, "audit_log.parquet")
    mine = audit[audit["persona_id"] == guest].set_index("event")
    assert sorted(mine.index) == ["dissolve", "unlink"]
    assert (mine["reason"] == "shared").all() and (mine["id_type"] == "device_id").all()
    assert (mine["value_hash"] == d9["value_hash"]).all() and (mine["run_id"] == second["run_id"]).all()
    record = published(ws, "aliases.parquet").set_index("persona_id").loc[guest]
    assert pd.isna(record["alias_of"]) and record["reason"] == "dissolved: its device_id became shared"
    # The accounts that made the device shared are new personas: the retired id is never reused.
    assert guest not in {identity_row(ws, "account_id", a)["persona_id"] for a in ("A7", "A8")}

    # A third run on the same data logs nothing new and keeps the record.
    third = integrate(ws, now=NOW + pd.Timedelta(hours=2))
    assert third["identity"]["dissolved"] == 0 and len(published(ws, "audit_log.parquet")) == len(audit)
    assert published(ws, "aliases.parquet").set_index("persona_id").loc[guest, "reason"] == record["reason"]


def test_audit_log_from_before_reasons_is_extended_with_one_dtype_per_column(tmp_path, salt):
    # The published log is one written before `reason` existed, with ids blanked by `persona forget`; the next run
    # appends its events to it.
    ws = workspace(tmp_path, {"raw/orders/2026-05.csv": MAY})
    integrate(ws, now=NOW)
    earlier = pd.DataFrame({"event": ["merge"], "persona_id": [None], "other_persona_id": ["P0000000002"],
                            "id_type": ["phone"], "run_id": ["000001"], "at": [NOW], "value_hash": [None]})
    earlier.to_parquet(ws.current("integrated") / "audit_log.parquet", index=False)
    (tmp_path / "raw/orders/2026-06.csv").write_text(JUNE, encoding="utf-8")
    integrate(ws, now=NOW + pd.Timedelta(hours=1))
    log = published(ws, "audit_log.parquet")
    assert log["event"].tolist() == ["merge", "unlink", "dissolve"]
    assert log["reason"].tolist()[1:] == ["shared", "shared"] and pd.isna(log["reason"].iloc[0])
    assert pd.isna(log["persona_id"].iloc[0]) and log["other_persona_id"].iloc[0] == "P0000000002"
    # one dtype per column, whatever the older log held (an all-NA column decides nothing): text, and `at` in UTC
    assert {str(t) for c, t in log.dtypes.items() if c != "at"} == {"string"}
    assert isinstance(log["at"].dtype, pd.DatetimeTZDtype) and str(log["at"].dt.tz) == "UTC"
