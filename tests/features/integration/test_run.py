"""The integrate stage end to end, on small workspaces written in each test: OneID across sources, incremental
re-runs, atomic publishing, survivorship with lineage, consent-aware enrichment, no raw identifiers published, and
the `persona init` / `persona integrate` commands."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from features.integration.ingest import SourceFileError
from features.integration.run import integrate
from persona.cli import app
from persona.workspace import SALT_VAR, SecretError, Workspace

NOW = pd.Timestamp("2026-07-01", tz="UTC")

IDENTITY = {"identifiers": {
    "member_id": {"normalise": "id", "account": True},
    "account_id": {"normalise": "id", "account": True},
    "phone": {"normalise": "phone", "max_accounts": 2},
    "email": {"normalise": "email", "max_accounts": 2},
}}
CRM = {
    "channel": "crm", "kind": "profile", "path": "raw/crm.csv", "key": ["member_id"],
    "timestamp": {"column": "updated_at", "format": "iso"},
    "identifiers": {"member_id": "member_id", "phone": "mobile", "email": "email"},
    "fields": {"gender": "gender", "city": "city", "opt_out_enrichment": "opt_out_enrichment"},
}
ORDERS = {
    "channel": "online", "kind": "transactions", "path": "raw/orders/*.csv", "key": ["order_id"],
    "timestamp": {"column": "order_time", "format": "iso"},
    "identifiers": {"account_id": "account_id", "phone": "buyer_phone", "email": "buyer_email"},
    "fields": {"order_id": "order_id", "amount": "amount", "city": "ship_city"},
}
VENDOR = {
    "provider": "third_party", "path": "external/vendor.csv",
    "key": {"column": "phone_sha256", "type": "phone_sha256"}, "as_of": {"column": "as_of"},
    "fields": {"income_band": "income_band"},
}

# Four real people. Alice and Bob appear in both sources with phones and emails spelled differently.
CRM_CSV = """member_id,mobile,email,gender,city,opt_out_enrichment,updated_at
M1,138 0013 8001,Alice@Example.com,女,shanghai,false,2026-01-05T10:00:00
M2,+86 139-0013-9002,bob@example.com,m,beijing,true,2026-01-06T10:00:00
M3,13700137003,carol@example.com,f,shenzhen,,2026-01-07T10:00:00
,,,f,,,2026-01-08T10:00:00
"""
ORDERS_MAY = """order_id,account_id,buyer_phone,buyer_email,amount,ship_city,order_time
O1,A1,+86 138-0013-8001,,120.5,shanghai,2026-05-01T10:00:00
O2,A9,,  ALICE@example.com ,80,shanghai,2026-05-02T10:00:00
O3,A2,0086 139 0013 9002,BOB@EXAMPLE.COM ,99,beijing,2026-05-03T10:00:00
O4,A4,13600136004,,50,,2026-05-04T10:00:00
O5,A4,13600136004,,N/A,,2026-05-05T10:00:00
"""
RAW_IDENTIFIERS = ["138 0013 8001", "+86 138-0013-8001", "Alice@Example.com", "ALICE@example.com",
                   "+86 139-0013-9002", "0086 139 0013 9002", "bob@example.com", "BOB@EXAMPLE.COM",
                   "13700137003", "carol@example.com", "13600136004"]
NORMALISED_IDENTIFIERS = ["+8613800138001", "alice@example.com", "+8613900139002", "+8613700137003",
                          "+8613600136004", "13800138001", "13900139002", "13600136004"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def vendor_csv(rows: list[tuple[str, str]], column: str = "income_band") -> str:
    return f"phone_sha256,{column},as_of\n" + "".join(f"{sha(p)},{v},2026-03-01\n" for p, v in rows)


VENDOR_CSV = vendor_csv([("+8613800138001", "high"), ("+8613900139002", "low"), ("+8613600136004", "mid"),
                         ("+8613500135005", "unknown-person")])


def make_workspace(root: Path, files: dict[str, str], *, sources: dict | None = None, **config) -> Workspace:
    data = {"version": 1, "name": "test", "timezone": "Asia/Shanghai", "phone_region": "CN",
            "sources": sources or {"crm": CRM, "orders": ORDERS}, "identity": IDENTITY,
            "mappings": {"gender": {"男": "male", "女": "female", "m": "male", "f": "female"}}, **config}
    (root / "persona.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    for rel, text in files.items():
        write(root / rel, text)
    return Workspace.open(root)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def base_workspace(root: Path, **config) -> Workspace:
    config.setdefault("enrichment", {"vendor": VENDOR})
    return make_workspace(root, {"raw/crm.csv": CRM_CSV, "raw/orders/2026-05.csv": ORDERS_MAY,
                                 "external/vendor.csv": VENDOR_CSV}, **config)


def published(ws: Workspace, name: str) -> pd.DataFrame:
    return pd.read_parquet(ws.current("integrated") / name)


def persona_of(ws: Workspace, id_type: str, value: str) -> str:
    m = published(ws, "identity_map.parquet")
    return m.loc[(m["id_type"] == id_type) & (m["value"] == value), "persona_id"].item()


def profile(ws: Workspace, persona_id: str) -> pd.Series:
    p = published(ws, "profiles.parquet")
    return p.set_index("persona_id").loc[persona_id]


# --- OneID across sources and the report ---------------------------------------------------------------------
def test_one_persona_per_person_across_sources(tmp_path, salt):
    ws = base_workspace(tmp_path)
    report = integrate(ws, now=NOW)
    alice, bob, carol = (persona_of(ws, "member_id", m) for m in ("M1", "M2", "M3"))
    dave = persona_of(ws, "account_id", "A4")
    assert len({alice, bob, carol, dave}) == 4
    # Phones in three spellings and e-mails differing in case and whitespace meet in one persona.
    assert persona_of(ws, "account_id", "A1") == alice  # via phone
    assert persona_of(ws, "account_id", "A9") == alice  # via e-mail only
    assert persona_of(ws, "account_id", "A2") == bob
    tx = published(ws, "transactions.parquet").set_index("order_id")["persona_id"]
    assert tx.to_dict() == {"O1": alice, "O2": alice, "O3": bob, "O4": dave}
    assert report["personas"] == 4 == len(published(ws, "profiles.parquet"))
    assert profile(ws, alice)["channels"] == "crm|online" and profile(ws, alice)["records"] == 3


def test_report_counts_reconcile(tmp_path, salt):
    report = integrate(base_workspace(tmp_path), now=NOW)
    for name, expected in {"crm": (4, 3, 1), "orders": (5, 4, 1)}.items():
        s = report["sources"][name]
        assert (s["read"], s["accepted"], s["quarantined"]) == expected
        assert s["read"] == s["accepted"] + s["quarantined"]
    assert report["sources"]["crm"]["reasons"] == {"no_identifier": 1}
    assert report["sources"]["orders"]["reasons"] == {"bad_number": 1}
    q = published(Workspace.open(tmp_path), "quarantine.parquet")
    assert sorted(q[["source", "row"]].values.tolist()) == [["crm", 4], ["orders", 5]]
    e = report["enrichment"]["vendor"]
    assert (e["read"], e["accepted"], e["matched"]) == (4, 4, 2)
    assert e["match_rate"] == pytest.approx(e["matched"] / report["personas"]) == 0.5
    assert json.loads((Workspace.open(tmp_path).current("integrated") / "report.json").read_text())["personas"] == 4


def test_clean_source_before_a_source_with_quarantined_rows(tmp_path, salt):
    # The first source (crm) has no bad rows, the second (orders) has one: a very ordinary workspace.
    clean_crm = "".join(CRM_CSV.splitlines(keepends=True)[:4])  # header + the three good members
    ws = make_workspace(tmp_path, {"raw/crm.csv": clean_crm, "raw/orders/2026-05.csv": ORDERS_MAY})
    report = integrate(ws, now=NOW)
    assert report["sources"]["crm"]["quarantined"] == 0 and report["sources"]["orders"]["quarantined"] == 1
    assert published(ws, "quarantine.parquet")[["source", "row"]].values.tolist() == [["orders", 5]]


# --- consent and enrichment ----------------------------------------------------------------------------------
def test_opted_out_persona_gets_no_third_party_fields(tmp_path, salt):
    ws = base_workspace(tmp_path)
    report = integrate(ws, now=NOW)
    alice, bob = persona_of(ws, "member_id", "M1"), persona_of(ws, "member_id", "M2")
    dave = persona_of(ws, "account_id", "A4")
    assert profile(ws, alice)["income_band"] == "high" and bool(profile(ws, alice)["consent_enrichment"])
    assert pd.isna(profile(ws, bob)["income_band"]) and not profile(ws, bob)["consent_enrichment"]  # opted out
    assert profile(ws, dave)["income_band"] == "mid"  # no consent record: consent.missing = granted
    assert report["enrichment"]["vendor"]["withheld_no_consent"] == 1
    lineage = published(ws, "lineage.parquet")
    got = lineage[lineage["attribute"] == "income_band"].set_index("persona_id")
    assert set(got.index) == {alice, dave}
    assert (got["source"] == "enrichment:vendor").all()
    assert got["as_of"].notna().all()  # provenance: when the vendor's value was true


def test_missing_consent_denied_withholds_from_personas_without_a_record(tmp_path, salt):
    ws = base_workspace(tmp_path, consent={"missing": "denied"})
    report = integrate(ws, now=NOW)
    assert pd.isna(profile(ws, persona_of(ws, "account_id", "A4"))["income_band"])
    assert profile(ws, persona_of(ws, "member_id", "M1"))["income_band"] == "high"
    assert report["enrichment"]["vendor"]["withheld_no_consent"] == 2


def test_public_source_needs_no_consent(tmp_path, salt):
    ws = base_workspace(tmp_path, enrichment={"vendor": {**VENDOR, "provider": "public"}})
    report = integrate(ws, now=NOW)
    assert profile(ws, persona_of(ws, "member_id", "M2"))["income_band"] == "low"
    assert report["enrichment"]["vendor"]["withheld_no_consent"] == 0


@pytest.mark.parametrize("prefer,alice_city", [("internal", "shanghai"), ("external", "hangzhou")])
def test_internal_value_wins_unless_prefer_external(tmp_path, salt, prefer, alice_city):
    vendor = {**VENDOR, "fields": {"city": "city"}, "prefer": prefer}
    ws = base_workspace(tmp_path, enrichment={"vendor": vendor})
    write(tmp_path / "external/vendor.csv",
          vendor_csv([("+8613800138001", "hangzhou"), ("+8613600136004", "suzhou")], column="city"))
    integrate(ws, now=NOW)
    alice, dave = persona_of(ws, "member_id", "M1"), persona_of(ws, "account_id", "A4")
    assert profile(ws, alice)["city"] == alice_city
    assert profile(ws, dave)["city"] == "suzhou"  # no internal city: the external one fills the gap either way
    lineage = published(ws, "lineage.parquet")
    alice_city_lineage = lineage[(lineage["persona_id"] == alice) & (lineage["attribute"] == "city")]
    # The lineage describes the value that was kept, once.
    assert alice_city_lineage["source"].tolist() == (["orders"] if prefer == "internal" else ["enrichment:vendor"])


# --- incremental runs ----------------------------------------------------------------------------------------
def test_rerun_on_same_data_changes_nothing(tmp_path, salt):
    ws = base_workspace(tmp_path)
    first = integrate(ws, now=NOW)
    ids_before = published(ws, "identity_map.parquet")
    profiles_before = published(ws, "profiles.parquet")
    audit_before = published(ws, "audit_log.parquet")
    second = integrate(ws, now=NOW)
    assert second["run_id"] != first["run_id"]
    assert second["sources"] == first["sources"]
    assert second["personas"] == first["personas"]
    assert second["identity"]["new_personas"] == 0 and second["identity"]["merges"] == 0
    pd.testing.assert_frame_equal(published(ws, "identity_map.parquet"), ids_before)
    pd.testing.assert_frame_equal(published(ws, "profiles.parquet"), profiles_before)
    assert len(published(ws, "audit_log.parquet")) == len(audit_before) == 0
    assert second["next_seq"] == first["next_seq"]


def test_new_file_appends_keeps_ids_and_logs_a_merge(tmp_path, salt):
    ws = base_workspace(tmp_path)
    first = integrate(ws, now=NOW)
    before = published(ws, "identity_map.parquet")
    carol, dave = persona_of(ws, "member_id", "M3"), persona_of(ws, "account_id", "A4")
    alice = persona_of(ws, "member_id", "M1")
    # June: Alice orders again, Dave's account uses Carol's phone (they are one person), Eve is new.
    write(tmp_path / "raw/orders/2026-06.csv", """order_id,account_id,buyer_phone,buyer_email,amount,ship_city,order_time
O6,A1,,,30,shanghai,2026-06-01T10:00:00
O7,A4,137-0013-7003,,40,shenzhen,2026-06-02T10:00:00
O8,A5,13300133005,eve@example.com,70,wuhan,2026-06-03T10:00:00
O3,A2,13900139002,,99,beijing,2026-05-03T10:00:00
""")  # the last row repeats May's O3 (same order id and time): a duplicate across files
    second = integrate(ws, now=NOW + pd.Timedelta(hours=1))
    orders = second["sources"]["orders"]
    assert (orders["files"], orders["read"], orders["accepted"], orders["quarantined"]) == (2, 9, 7, 2)
    assert orders["reasons"] == {"bad_number": 1, "duplicate": 1}
    assert second["sources"]["crm"] == first["sources"]["crm"]
    assert second["personas"] == first["personas"]  # +1 (Eve) -1 (Carol and Dave merged)

    survivor, absorbed = min(carol, dave), max(carol, dave)
    assert persona_of(ws, "member_id", "M3") == survivor == persona_of(ws, "account_id", "A4")
    assert persona_of(ws, "member_id", "M1") == alice
    eve = persona_of(ws, "account_id", "A5")
    assert eve not in set(before["persona_id"])
    # Every identifier known before keeps its persona_id, or its retired id is an alias of the survivor.
    aliases = published(ws, "aliases.parquet").set_index("persona_id")["alias_of"].to_dict()
    after = published(ws, "identity_map.parquet").set_index(["id_type", "value"])["persona_id"]
    for id_type, value, old in before[["id_type", "value", "persona_id"]].itertuples(index=False):
        assert aliases.get(old, old) == after[(id_type, value)]
    assert aliases == {absorbed: survivor}
    audit = published(ws, "audit_log.parquet")
    merges = audit[audit["event"] == "merge"]
    assert merges[["persona_id", "other_persona_id"]].values.tolist() == [[survivor, absorbed]]
    assert merges["id_type"].iloc[0] in {"phone", "account_id"} and merges["run_id"].iloc[0] == second["run_id"]
    assert "value" not in audit.columns
    tx = published(ws, "transactions.parquet").set_index("order_id")["persona_id"]
    assert tx["O6"] == alice and tx["O7"] == survivor and tx["O4"] == survivor


def test_changed_file_is_read_again_without_double_counting(tmp_path, salt):
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    write(tmp_path / "raw/orders/2026-05.csv", ORDERS_MAY + "O10,A4,13600136004,,9,,2026-05-06T10:00:00\n")
    report = integrate(ws, now=NOW)
    orders = report["sources"]["orders"]
    assert (orders["files"], orders["read"], orders["accepted"], orders["quarantined"]) == (1, 6, 5, 1)
    assert "duplicate" not in orders["reasons"]  # its own earlier rows are not duplicates of themselves
    assert len(published(ws, "transactions.parquet")) == 5


def test_malformed_new_file_raises_and_leaves_published_run_untouched(tmp_path, salt):
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    current = ws.current("integrated")
    report_before = (current / "report.json").read_text()
    runs_before = sorted(p.name for p in (ws.stage_dir("integrated") / "runs").iterdir())
    bad = tmp_path / "raw/orders/2026-06.csv"
    write(bad, "order_id,account_id,buyer_phone,buyer_email,ship_city,order_time\nO9,A1,,,x,2026-06-01T10:00:00\n")
    with pytest.raises(SourceFileError) as exc:
        integrate(ws, now=NOW)
    assert str(bad) in str(exc.value) and "'amount'" in str(exc.value)
    assert ws.current("integrated") == current
    assert (current / "report.json").read_text() == report_before
    assert sorted(p.name for p in (ws.stage_dir("integrated") / "runs").iterdir()) == runs_before
    # Once the file is fixed the next run picks it up.
    write(bad, "order_id,account_id,buyer_phone,buyer_email,amount,ship_city,order_time\n"
               "O9,A1,,,5,x,2026-06-01T10:00:00\n")
    assert integrate(ws, now=NOW)["sources"]["orders"]["files"] == 2


# --- survivorship --------------------------------------------------------------------------------------------
def test_duckdb_is_held_to_a_memory_limit_and_spills_inside_the_workspace_then_cleans_up(tmp_path, salt,
                                                                                          monkeypatch):
    """Every DuckDB database of the run gets the memory limit and a spill folder in the workspace, gone after the run
    and after a failed one."""
    import features.integration.run as run

    ws = base_workspace(tmp_path)
    spill = ws.root / ".tmp" / "integrate"
    spill.mkdir(parents=True)
    (spill / "left-by-a-killed-run.tmp").write_text("x")
    connect, seen = run.duckdb.connect, []

    def spy(*args, config=None, **kwargs):
        con = connect(*args, config=config, **kwargs)
        seen.append((config, con.execute("SELECT current_setting('temp_directory')").fetchone()[0],
                     sorted(p.name for p in spill.iterdir())))
        return con

    monkeypatch.setattr(run.duckdb, "connect", spy)
    integrate(ws, now=NOW, memory_limit="500MB")
    assert len(seen) >= 2  # the run's database, and the scans' own (closed when they are done)
    for config, temp_directory, files in seen:
        assert config["memory_limit"] == "500MB" and Path(temp_directory).parent == spill
        assert "left-by-a-killed-run.tmp" not in files
    assert not (ws.root / ".tmp").exists()

    def broken(*args, **kwargs):
        assert spill.is_dir()
        raise RuntimeError("resolution failed")

    monkeypatch.setattr(run, "resolve", broken)
    write(ws.root / "raw/orders/2026-06.csv", ORDERS_MAY.replace("O", "P"))
    with pytest.raises(RuntimeError, match="resolution failed"):
        integrate(ws, now=NOW)
    assert not (ws.root / ".tmp").exists()


def test_profiles_built_one_range_of_personas_at_a_time_are_the_one_pass_profiles(tmp_path, salt):
    """Every persona in a range of its own (so some ranges match no vendor row, and hold only nulls in its field)
    publishes the profiles, identity map and report of one range for everyone; the lineage holds the same rows."""
    for n in ("one", "each"):
        (tmp_path / n).mkdir()
    ws = {n: base_workspace(tmp_path / n) for n in ("one", "each")}
    reports = {n: integrate(w, now=NOW, per_range=1 if n == "each" else 1_000) for n, w in ws.items()}
    assert reports["one"]["personas"] == reports["each"]["personas"] >= 4
    for r in reports.values():
        r.pop("seconds"), r["identity"].pop("seconds", None)
    assert reports["one"] == reports["each"]
    assert reports["each"]["enrichment"]["vendor"]["matched"] >= 2
    for name in ("profiles.parquet", "identity_map.parquet", "identity_hashed.parquet"):
        pd.testing.assert_frame_equal(published(ws["one"], name), published(ws["each"], name), obj=name)
    income = published(ws["each"], "profiles.parquet")["income_band"]
    assert income.notna().any() and income.isna().any()
    lineage = {n: published(w, "lineage.parquet").sort_values(["persona_id", "attribute"], ignore_index=True)
               for n, w in ws.items()}
    pd.testing.assert_frame_equal(lineage["one"], lineage["each"])
    assert (lineage["each"]["source"] == "enrichment:vendor").any()
    assert not (ws["each"].root / ".tmp").exists()


def test_survivorship_rules_with_lineage(tmp_path, salt):
    app_src = {"channel": "app", "kind": "profile", "path": "raw/app.csv", "key": ["user_id"],
               "timestamp": {"column": "updated_at"}, "identifiers": {"member_id": "member_id"},
               "fields": {"gender": "gender", "opt_out_enrichment": "no_ads"}}
    crm = {**CRM, "identifiers": {"member_id": "member_id"}}
    orders = {**ORDERS, "identifiers": {"member_id": "member_id"}}
    ws = make_workspace(tmp_path, {
        "raw/crm.csv": "member_id,mobile,email,gender,city,opt_out_enrichment,updated_at\n"
                       "M1,,,female,beijing,false,2026-01-01T00:00:00\n"
                       "M2,,,male,beijing,true,2026-06-01T00:00:00\n",
        "raw/app.csv": "user_id,member_id,gender,no_ads,updated_at\n"
                       "U1,M1,male,true,2026-05-01T00:00:00\n"       # newer, untrusted gender; newer opt-out
                       "U2,M2,female,false,2026-05-01T00:00:00\n"    # older than M2's CRM opt-out
                       "U3,M3,male,,2026-05-01T00:00:00\n",          # only the app knows M3's gender
        "raw/orders/a.csv": "order_id,member_id,amount,ship_city,order_time\n"
                            "O1,M1,1,shanghai,2026-02-01T00:00:00\n"
                            "O2,M1,1,shanghai,2026-02-02T00:00:00\n"
                            "O3,M2,1,shanghai,2026-02-03T00:00:00\n",  # one shanghai vs one (later) beijing
    }, sources={"crm": crm, "app": app_src, "orders": orders},
        identity={"identifiers": {"member_id": {"account": True}}},
        profile={"attributes": {"gender": {"rule": "most_trusted", "sources": ["crm"]},
                                "opt_out_enrichment": {"rule": "most_recent"},
                                "city": {"rule": "most_frequent"}}})
    integrate(ws, now=NOW)
    m1, m2, m3 = (persona_of(ws, "member_id", m) for m in ("M1", "M2", "M3"))
    p1, p2, p3 = profile(ws, m1), profile(ws, m2), profile(ws, m3)
    assert p1["gender"] == "female"  # trusted CRM beats the newer app value
    assert p3["gender"] == "male"  # the untrusted source still fills a gap
    assert not p1["consent_enrichment"]  # latest opt-out record (app, May) wins over CRM (January)
    assert not p2["consent_enrichment"]  # latest is CRM (June): recency, not source, decides
    assert p1["city"] == "shanghai"  # two orders to shanghai beat one CRM beijing
    lineage = published(ws, "lineage.parquet").set_index(["persona_id", "attribute"])
    assert lineage.loc[(m1, "gender"), "source"] == "crm"
    assert lineage.loc[(m1, "gender"), "record"].startswith("crm/")
    assert lineage.loc[(m1, "gender"), "record"].endswith("#1")
    assert lineage.loc[(m3, "gender"), "source"] == "app"
    assert lineage.loc[(m1, "opt_out_enrichment"), "source"] == "app"
    assert lineage.loc[(m1, "opt_out_enrichment"), "record"].endswith("#1")
    assert lineage.loc[(m2, "opt_out_enrichment"), "source"] == "crm"
    assert lineage.loc[(m1, "city"), "source"] == "orders"
    assert lineage.loc[(m1, "city"), "record"].split("#")[-1] in {"1", "2"}
    assert lineage["as_of"].notna().all()


# --- privacy -------------------------------------------------------------------------------------------------
def _leaks(folder: Path, skip: set[str]) -> list[tuple[str, str, str]]:
    found = []
    for file in sorted(folder.glob("*.parquet")):
        if file.name in skip:
            continue
        frame = pd.read_parquet(file)
        for col in frame.columns:
            if frame[col].dtype.kind not in "OSU" and not isinstance(frame[col].dtype, pd.StringDtype):
                continue
            text = frame[col].dropna().astype(str)
            for value in RAW_IDENTIFIERS + NORMALISED_IDENTIFIERS:
                if text.str.contains(value, regex=False).any():
                    found.append((file.name, col, value))
    return found


def test_published_outputs_hold_no_raw_phone_or_email(tmp_path, salt):
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    current = ws.current("integrated")
    assert {"profiles.parquet", "transactions.parquet", "lineage.parquet", "audit_log.parquet"} <= \
        {p.name for p in current.glob("*.parquet")}
    assert _leaks(current, skip={"identity_map.parquet", "quarantine.parquet"}) == []
    assert not any(v in (current / "report.json").read_text() for v in RAW_IDENTIFIERS + NORMALISED_IDENTIFIERS)
    # identity_map is the one restricted place that holds them (the scan would find them there).
    assert _leaks(current, skip=set()) and "+8613800138001" in set(published(ws, "identity_map.parquet")["value"])


def test_published_quarantine_holds_no_raw_phone_or_email(tmp_path, salt):
    # Order O5 (Dave, phone 13600136004) is quarantined for its amount; the published quarantine table sits next to
    # the hash-only outputs and must not carry his raw phone.
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    assert _leaks(ws.current("integrated"), skip={"identity_map.parquet"}) == []


def test_blocked_value_given_raw_is_matched_by_hash_and_links_nothing(tmp_path, salt):
    identity = {"identifiers": {**IDENTITY["identifiers"],
                                "phone": {"normalise": "phone", "max_accounts": 2, "blocked": ["138 0013 8001"]}}}
    ws = base_workspace(tmp_path, identity=identity)
    integrate(ws, now=NOW)
    assert persona_of(ws, "member_id", "M1") == persona_of(ws, "account_id", "A9")  # still one via the e-mail
    assert persona_of(ws, "account_id", "A1") != persona_of(ws, "member_id", "M1")  # O1 carried only the phone
    ids = published(ws, "identity_map.parquet").set_index("value")
    assert ids.loc["+8613800138001", "status"] == "blocked" and pd.isna(ids.loc["+8613800138001", "persona_id"])


def test_another_salt_is_refused_before_anything_is_staged(tmp_path, salt, monkeypatch):
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    manifest = (tmp_path / "state/ingested.json").read_text()
    write(tmp_path / "raw/orders/2026-06.csv", "order_id,account_id,buyer_phone,buyer_email,amount,ship_city,"
                                                "order_time\nO9,A1,,,5,x,2026-06-01T10:00:00\n")
    monkeypatch.setenv(SALT_VAR, "another-salt")
    with pytest.raises(SecretError, match="not the one this workspace was integrated with"):
        integrate(ws, now=NOW)
    assert (tmp_path / "state/ingested.json").read_text() == manifest


def test_workspace_staged_by_the_earlier_layout_is_migrated_on_the_next_run(tmp_path, salt):
    """Mentions with raw values and unkeyed mention keys (the earlier layout) are rewritten in place: same keys as a
    fresh staging, same persona ids, no raw value left, even for a file whose migration a crash cut in half."""
    ws = base_workspace(tmp_path)
    integrate(ws, now=NOW)
    expected_ids = published(ws, "identity_map.parquet")
    values = expected_ids[["id_type", "value_hash", "value"]]
    manifest_path = tmp_path / "state/ingested.json"
    manifest = json.loads(manifest_path.read_text())
    fresh = {}
    for source, files in manifest.items():
        for rel, entry in files.items():
            mentions_path = tmp_path / "staging" / source / f"{entry['file_id']}.mentions.parquet"
            rows_path = mentions_path.with_name(f"{entry['file_id']}.rows.parquet")
            mentions, rows = pd.read_parquet(mentions_path), pd.read_parquet(rows_path)
            fresh[rows_path] = rows["mention_key"].tolist()
            old = mentions.merge(values, on=["id_type", "value_hash"])[["mention_key", "id_type", "value"]]
            old["mention_key"] ^= 0x5A5A5A5A  # any other key: the earlier layout's were not keyed with the salt
            old.astype({"id_type": "string", "value": "string"}).to_parquet(mentions_path, index=False)
            if source != "orders":  # the orders file: a crash after its rows were re-keyed, before its mentions
                rows["mention_key"] ^= 0x5A5A5A5A
                rows.to_parquet(rows_path, index=False)
            del entry["erased"]
    manifest_path.write_text(json.dumps(manifest))

    report = integrate(ws, now=NOW)
    for rows_path, keys in fresh.items():
        assert pd.read_parquet(rows_path)["mention_key"].tolist() == keys
        assert pq.read_schema(str(rows_path).replace(".rows.", ".mentions.")).names == \
            ["mention_key", "id_type", "value_hash"]
    by = ["id_type", "value_hash"]
    pd.testing.assert_frame_equal(published(ws, "identity_map.parquet").sort_values(by, ignore_index=True),
                                  expected_ids.sort_values(by, ignore_index=True))
    assert report["identity"]["new_personas"] == 0 and report["identity"]["merges"] == 0
    assert published(ws, "transactions.parquet")["persona_id"].notna().sum() == 4
    assert not any("published" in e for files in json.loads(manifest_path.read_text()).values()
                   for e in files.values())


# --- command line --------------------------------------------------------------------------------------------
def test_bring_your_own_transactions_file_via_cli(tmp_path):
    ws = tmp_path / "shop"
    write(ws / "data/tx.csv", "customer_id,timestamp,amount\nC1,2024-03-01T10:00:00,10\nC2,2024-03-02T10:00:00,5.5\n"
                              "C1,2024-03-03T10:00:00,7\nC3,not a date,1\n")
    runner = CliRunner()
    init = runner.invoke(app, ["init", "-w", str(ws), "--transactions", str(ws / "data/tx.csv")])
    assert init.exit_code == 0, init.output
    assert (ws / "persona.yaml").is_file() and (ws / "secrets.env").is_file()
    result = runner.invoke(app, ["integrate", "-w", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"run_id", "sources", "personas", "identity", "enrichment"} <= set(report)
    tx = report["sources"]["transactions"]
    assert (tx["read"], tx["accepted"], tx["quarantined"]) == (4, 3, 1)
    assert report["personas"] == 2
    assert len(pd.read_parquet(Workspace.open(ws).current("integrated") / "transactions.parquet")) == 3
    again = runner.invoke(app, ["init", "-w", str(ws), "--transactions", str(ws / "data/tx.csv")])
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("broken,key", [
    ("sources:\n  tx: {channel: other, kind: [transactions\n", "not valid YAML"),
    ("timezon: UTC\nsources:\n  tx:\n    channel: other\n    kind: transactions\n    path: tx.csv\n"
     "    timestamp: {column: t}\n    identifiers: {c: c}\n    fields: {amount: a}\n"
     "identity: {identifiers: {c: {}}}\n", "timezon"),
])
def test_integrate_with_broken_config_exits_2_with_one_line(tmp_path, salt, broken, key):
    (tmp_path / "persona.yaml").write_text(broken)
    result = CliRunner().invoke(app, ["integrate", "-w", str(tmp_path), "--json"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error:") and "persona.yaml" in result.stderr and key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_integrate_without_salt_exits_2_saying_what_to_do(tmp_path):
    base_workspace(tmp_path)
    result = CliRunner().invoke(app, ["integrate", "-w", str(tmp_path), "--json"])
    assert result.exit_code == 2 and "PERSONA_SALT" in result.stderr and "Traceback" not in result.output


def test_published_quarantine_lists_sources_then_enrichment_in_file_and_row_order(tmp_path, salt):
    ws = base_workspace(tmp_path)
    write(tmp_path / "external/vendor.csv", VENDOR_CSV + f"{sha('+8613700137003')},mid,not-a-date\n")
    report = integrate(ws, now=NOW)
    q = published(ws, "quarantine.parquet")
    assert list(q.columns) == ["source", "file_id", "row", "reason"]  # no raw value is published
    assert q.dtypes.astype(str).tolist() == ["string", "string", "int64", "string"]
    assert q["source"].tolist() == ["crm", "orders", "enrichment:vendor"]
    assert q.loc[2, "file_id"] == "external/vendor.csv"
    assert report["enrichment"]["vendor"]["quarantined"] == 1
    assert len(q) == sum(s["quarantined"] for s in report["sources"].values()) + 1
