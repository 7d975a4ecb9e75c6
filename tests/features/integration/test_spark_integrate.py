"""`persona integrate` with `engine: spark` (staging on the executors by spark_stage, OneID by spark_oneid) gives
what the embedded engine gives: the same staged files, manifest counts and quarantine reasons, the same personas
(same ids), identity map, profiles, lineage, audit log and activity, over two runs where files change, are added and
a person is erased; and a file that cannot be read stops both at the same place with the same error."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from features.integration import standardise as std
from features.integration.ingest import SourceFileError
from features.integration.run import integrate
from persona.workspace import SALT_VAR, Workspace, write_parquet_atomic
from tests.conftest import SPARK_TEST_CONF, spark_or_skip
from tests.features.integration.test_run import CRM_CSV, VENDOR, VENDOR_CSV, make_workspace, write

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]

NOW = pd.Timestamp("2026-07-01", tz="UTC")
LATER = pd.Timestamp("2026-07-08", tz="UTC")
HEADER = "order_id,account_id,buyer_phone,buyer_email,amount,ship_city,order_time\n"
# Three files of one source: duplicates within a file and across files (O2 in a and b, O7 in b and c), malformed
# rows, a missing required field, a bad time, a row with no identifier.
ORDERS_A = HEADER + """O1,A1,+86 138-0013-8001,,120.5,shanghai,2026-05-01T10:00:00
O2,A9,,  ALICE@example.com ,80,shanghai,2026-05-02T10:00:00
O2,A9,,  ALICE@example.com ,80,shanghai,2026-05-02T10:00:00
O3,A2,0086 139 0013 9002,BOB@EXAMPLE.COM ,99,beijing,2026-05-03T10:00:00
O4,A4,13600136004,,50,,not a time
"""
ORDERS_B = HEADER + """O2,A9,,  ALICE@example.com ,80,shanghai,2026-05-02T10:00:00
O5,A4,13600136004,,N/A,,2026-05-05T10:00:00
O6,,,,30,,2026-05-06T10:00:00
O7,A5,13500135005,e@example.com,70,hangzhou,2026-05-07T10:00:00
,A5,13500135005,,20,hangzhou,2026-05-08T10:00:00
O8,A6,"unterminated,,10,,2026-05-09T10:00:00
"""
ORDERS_C = HEADER + """O7,A5,13500135005,e@example.com,70,hangzhou,2026-05-07T10:00:00
O9,A7,13300133007,carol@example.com,15,shenzhen,2026-05-10T10:00:00
O13,A8,13500135005,,12,hangzhou,2026-05-12T10:00:00
"""
# Day two: file b changes (O2 gone, O10 links A4 with A6's e-mail), a new month arrives.
ORDERS_B2 = HEADER + """O5,A4,13600136004,,N/A,,2026-05-05T10:00:00
O7,A5,13500135005,e@example.com,70,hangzhou,2026-05-07T10:00:00
O10,A4,13600136004,f@example.com,40,,2026-05-11T10:00:00
"""
ORDERS_JUNE = HEADER + """O11,A6,13200132006,f@example.com,25,wuhan,2026-06-02T10:00:00
O3,A2,0086 139 0013 9002,BOB@EXAMPLE.COM ,99,beijing,2026-05-03T10:00:00
O12,A1,13900139002,,60,shanghai,2026-06-03T10:00:00
"""
OUTPUTS = ["identity_map.parquet", "identity_hashed.parquet", "aliases.parquet", "profiles.parquet",
           "lineage.parquet", "audit_log.parquet", "quarantine.parquet", "transactions.parquet"]


def workspaces(tmp_path: Path) -> dict[str, Workspace]:
    out = {}
    for engine in ("duckdb", "spark"):
        root = tmp_path / engine
        root.mkdir()
        extra = {"engine": "spark", "spark": {"master": "local[2]", "conf": SPARK_TEST_CONF}} if engine == "spark" else {}
        out[engine] = make_workspace(root, {"raw/crm.csv": CRM_CSV, "raw/orders/2026-05-a.csv": ORDERS_A,
                                            "raw/orders/2026-05-b.csv": ORDERS_B,
                                            "raw/orders/2026-05-c.csv": ORDERS_C,
                                            "external/vendor.csv": VENDOR_CSV},
                                     enrichment={"vendor": VENDOR}, **extra)
    return out


def manifest(ws: Workspace) -> dict:
    data = json.loads((ws.state / "ingested.json").read_text())
    return {name: {rel: {k: v for k, v in entry.items() if k != "mtime_ns"} for rel, entry in files.items()}
            for name, files in data.items()}


def assert_same(a: Workspace, b: Workspace) -> None:
    assert manifest(a) == manifest(b)
    for folder in ("staging", "quarantine"):
        files_a = sorted(p.relative_to(getattr(a, folder)) for p in getattr(a, folder).rglob("*.parquet"))
        files_b = sorted(p.relative_to(getattr(b, folder)) for p in getattr(b, folder).rglob("*.parquet"))
        assert files_a == files_b, folder
        for rel in files_a:
            pd.testing.assert_frame_equal(pd.read_parquet(getattr(a, folder) / rel),
                                          pd.read_parquet(getattr(b, folder) / rel), obj=str(rel))
    activity = [n for n in ("events.parquet", "interactions.parquet") if (a.current("integrated") / n).exists()]
    for name in OUTPUTS + activity:
        pd.testing.assert_frame_equal(pd.read_parquet(a.current("integrated") / name),
                                      pd.read_parquet(b.current("integrated") / name), obj=name)


def report(ws: Workspace) -> dict:
    data = json.loads((ws.current("integrated") / "report.json").read_text())
    assert data.pop("engine") == ws.config().engine  # the report says which engine ran
    data.pop("seconds")
    data["identity"].pop("seconds", None)
    return data


def test_spark_engine_integrates_as_the_embedded_one_over_two_runs(tmp_path, salt, spark):
    ws = workspaces(tmp_path)
    first = {e: integrate(w, now=NOW) for e, w in ws.items()}
    assert first["duckdb"]["sources"]["orders"]["quarantined"] > 0  # the data exercises the quarantine
    assert first["duckdb"]["sources"]["orders"]["reasons"].get("duplicate")
    assert_same(ws["duckdb"], ws["spark"])
    assert report(ws["duckdb"]) == report(ws["spark"])

    for w in ws.values():
        write(w.root / "raw/orders/2026-05-b.csv", ORDERS_B2)
        write(w.root / "raw/orders/2026-06.csv", ORDERS_JUNE)
        # An erasure interrupted after it was recorded, before it rewrote staging: A5's phone must drop out of
        # resolution on both engines (and out of the files staged again).
        phone = std.salted_hash(pd.Series(["+8613500135005"], dtype="string"), w.salt())
        write_parquet_atomic(w.state / "forgotten.parquet",
                             pd.DataFrame({"id_type": ["phone"], "value_hash": phone, "erasure_id": ["e1"]}))
    # Profiles built two personas at a time: on Spark one task per range, the embedded engine one after the other.
    second = {e: integrate(w, now=LATER, per_range=2) for e, w in ws.items()}
    assert second["duckdb"]["identity"]["merges"] + second["duckdb"]["identity"]["splits"] > 0
    assert second["duckdb"]["sources"]["orders"]["erased"] > 0
    hashed = pd.read_parquet(ws["duckdb"].current("integrated") / "identity_hashed.parquet")
    assert "A8" not in set(pd.read_parquet(ws["duckdb"].current("integrated") / "identity_map.parquet")["value"])
    assert not hashed["value_hash"].isin(phone).any()
    assert_same(ws["duckdb"], ws["spark"])
    assert report(ws["duckdb"]) == report(ws["spark"])


def test_an_unreadable_file_stops_both_engines_at_the_same_place(tmp_path, salt, spark):
    ws = workspaces(tmp_path)
    errors = {}
    for engine, w in ws.items():
        (w.root / "raw/orders/2026-05-b.csv").write_bytes(b"\x00\x01 not a csv \xff\xfe")
        with pytest.raises(SourceFileError) as raised:
            integrate(w, now=NOW)
        errors[engine] = str(raised.value).replace(str(w.root), "<ws>")
    assert errors["duckdb"] == errors["spark"]
    assert manifest(ws["duckdb"]) == manifest(ws["spark"])  # the files before it are staged, not published
    assert ws["spark"].current("integrated") is None


def test_integrate_on_spark_collects_nothing_to_a_small_driver(tmp_path):
    """`persona integrate` in its own process, on Spark with a 512 MB driver allowed 1 MB of results: 3,000
    generated customers give ~70,000 mentions whose personas (mention_persona) alone are over 1 MB, so collecting
    them, or the staged rows, would fail the run. The result equals the embedded engine's."""
    from features.generate import generate

    spark_or_skip()
    base = tmp_path / "base"
    base.mkdir()
    (base / "secrets.env").write_text(f"{SALT_VAR}=00112233445566778899aabbccddeeff\n", encoding="utf-8")
    generate(base, 3000, seed=5)
    roots = {e: tmp_path / e for e in ("duckdb", "spark")}
    for root in roots.values():
        shutil.copytree(base, root, symlinks=True)
    path = roots["spark"] / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["engine"] = "spark"
    cfg["spark"] = {"master": "local[2]", "conf": {**SPARK_TEST_CONF, "spark.driver.memory": "512m",
                                                   "spark.driver.maxResultSize": "1m",
                                                   "spark.sql.autoBroadcastJoinThreshold": "1m"}}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}
    for engine, root in roots.items():
        done = subprocess.run([sys.executable, "-m", "persona.cli", "integrate", "-w", str(root), "--json"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
        problems = [line for line in done.stderr.splitlines() if "Exception" in line or "Error" in line]
        assert done.returncode == 0, "\n".join(problems[:10]) or done.stderr[-3000:]
    ws = {e: Workspace.open(r) for e, r in roots.items()}
    mentions = sum(pq.read_metadata(p).num_rows for p in ws["spark"].staging.rglob("*.mentions.parquet"))
    assert mentions > 50_000
    assert_same(ws["duckdb"], ws["spark"])
