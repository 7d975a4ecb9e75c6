"""Behaviour of the demo data generator (features/generate/) on small worlds."""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from features.generate import CATEGORIES, CATEGORY_CODES, CATEGORY_ZH, CITIES, default_config, generate

N = 2000
DAY = pd.Timedelta(days=1)
CSV_SOURCES = ("raw/crm_members.csv", "raw/online_orders/*.csv", "raw/pos/*.csv", "raw/social_interactions.csv")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    ws = tmp_path_factory.mktemp("demo")
    stages: list[tuple[str, float]] = []
    summary = generate(ws, N, seed=11, progress=lambda stage, done: stages.append((stage, done)))
    summary["stages"] = stages
    return ws, summary


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).fillna("")   # short (cut) lines read as NaN


def _load(ws: Path, pattern: str) -> pd.DataFrame:
    """All files of a source with the truth's person_id, file name and 1-based row attached."""
    frames = []
    for f in sorted(ws.glob(pattern)):
        rel = f.relative_to(ws).as_posix()
        df = pd.read_parquet(f) if f.suffix == ".parquet" else _csv(f)
        truth = pq.read_table(ws / "truth/records" / f"{rel}.parquet").to_pandas()
        assert len(truth) == len(df), rel
        frames.append(df.assign(person_id=truth.person_id.to_numpy(), file=rel, row=truth.row.to_numpy()))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def persons(world) -> pd.DataFrame:
    return pd.read_parquet(world[0] / "truth/persons.parquet")


@pytest.fixture(scope="module")
def orders(world) -> pd.DataFrame:
    df = _load(world[0], "raw/online_orders/*.csv")
    df["t"] = pd.to_datetime(df.order_time, format="ISO8601", utc=True, errors="coerce")
    return df


@pytest.fixture(scope="module")
def pos(world) -> pd.DataFrame:
    df = _load(world[0], "raw/pos/*.csv")
    local = pd.to_datetime(df.txn_time, format="%Y/%m/%d %H:%M")
    df["t"] = local.dt.tz_localize("Asia/Shanghai").dt.tz_convert("UTC")
    return df


@pytest.fixture(scope="module")
def events(world) -> pd.DataFrame:
    df = _load(world[0], "raw/app_events/*.parquet")
    df["t"] = pd.to_datetime(df.event_time, unit="ms", utc=True)
    return df


@pytest.fixture(scope="module")
def crm(world) -> pd.DataFrame:
    return _load(world[0], "raw/crm_members.csv")


@pytest.fixture(scope="module")
def social(world) -> pd.DataFrame:
    return _load(world[0], "raw/social_interactions.csv")


# ---------------------------------------------------------------------------------------------------------------
# contract: files, summary, config
# ---------------------------------------------------------------------------------------------------------------


def test_summary_lists_every_file_with_its_rows(world):
    ws, summary = world
    assert summary["customers"] == N and summary["seconds"] > 0
    assert set(summary["rows"]) == {"crm_members", "online_orders", "store_pos", "app_events", "social",
                                    "vendor", "partner", "city_stats"}
    assert len([f for f in summary["files"] if f.startswith("raw/online_orders/")]) == 24
    assert "raw/online_orders/2024-10.csv" in summary["files"] and "raw/pos/2026-09.csv" in summary["files"]
    for rel, rows in summary["files"].items():
        path = ws / rel
        n = pq.read_metadata(path).num_rows if rel.endswith(".parquet") else path.read_bytes().count(b"\n") - 1
        assert n == rows, rel
    assert summary["rows"]["online_orders"] == sum(v for k, v in summary["files"].items() if "online_orders" in k)
    fractions = [f for _, f in summary["stages"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 24


def test_persona_yaml_and_secret(world, tmp_path):
    ws, _ = world
    assert yaml.safe_load((ws / "persona.yaml").read_text(encoding="utf-8")) == default_config()
    assert re.fullmatch(r"PERSONA_SALT=[0-9a-f]{32}\n", (ws / "secrets.env").read_text())
    # the salt is random (not derived from the seed) and never overwritten
    generate(tmp_path, 50, seed=11)
    first = (tmp_path / "secrets.env").read_text()
    assert first != (ws / "secrets.env").read_text()
    generate(tmp_path, 50, seed=11)
    assert (tmp_path / "secrets.env").read_text() == first


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def digest(ws: Path) -> dict[str, str]:
        return {p.relative_to(ws).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(ws.rglob("*")) if p.is_file() and p.name != "secrets.env"}

    a, b, c = (generate(tmp_path / x, 300, seed=s) for x, s in (("a", 5), ("b", 5), ("c", 6)))
    assert a["files"] == b["files"]
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db and len(da) > 100
    assert da["raw/crm_members.csv"] != dc["raw/crm_members.csv"]


def test_span_follows_end_and_months_not_today(tmp_path):
    summary = generate(tmp_path, 200, end=date(2025, 3, 15), months=3)
    months = sorted(Path(f).stem for f in summary["files"] if f.startswith("raw/pos/"))
    assert months == ["2025-01", "2025-02", "2025-03"]
    ev = pd.concat([pd.read_parquet(f) for f in (tmp_path / "raw/app_events").glob("*.parquet")])
    t = pd.to_datetime(ev.event_time, unit="ms", utc=True).dt.tz_convert("Asia/Shanghai")
    assert t.min() >= pd.Timestamp("2025-01-01", tz="Asia/Shanghai")
    assert t.max() < pd.Timestamp("2025-03-16 01:00", tz="Asia/Shanghai")     # sessions may run a little over
    # a shorter re-run into the same workspace removes the month files it no longer writes
    generate(tmp_path, 200, end=date(2025, 3, 15), months=2)
    assert sorted(p.stem for p in (tmp_path / "raw/pos").glob("*.csv")) == ["2025-02", "2025-03"]
    assert not (tmp_path / "truth/records/raw/pos/2025-01.csv.parquet").exists()


def test_config_matches_the_documented_example():
    example = Path(__file__).resolve().parents[2] / "docs/persona.example.yaml"
    if not example.exists():
        pytest.skip("docs/persona.example.yaml not present")
    doc = yaml.safe_load(example.read_text(encoding="utf-8"))
    cfg = yaml.safe_load(yaml.safe_dump(default_config(), allow_unicode=True, sort_keys=False))
    completed = {("mappings", "city"), ("mappings", "category"), ("mappings", "event_type"),
                 ("enrichment", "partner", "fields")}

    def compare(a, b, path=()):
        if isinstance(a, dict):
            assert isinstance(b, dict), path
            if path in completed:
                assert set(a) <= set(b), path
                assert all(b[k] == v for k, v in a.items()), path
                return
            # the example documents every key; the generator writes a subset of them, with the same values
            assert set(b) <= set(a), (path, sorted(set(b) - set(a)))
            for k in b:
                compare(a[k], b[k], path + (k,))
        else:
            assert a == b, path

    compare(doc, cfg)


def test_config_validates_with_persona_config():
    config = pytest.importorskip("persona.config")
    parsed = config.PersonaConfig.model_validate(default_config())
    assert set(parsed.sources) == {"crm_members", "online_orders", "store_pos", "app_events", "social"}


def test_config_covers_every_code_in_the_files(world, crm, orders, pos, events, social):
    ws, _ = world
    maps = {field: {str(code).strip().casefold(): v for code, v in mapping.items()}
            for field, mapping in default_config()["mappings"].items()}

    def codes(series: pd.Series) -> set[str]:
        return {v.strip().casefold() for v in series.dropna().astype(str) if v.strip()}

    assert codes(crm.city) | codes(orders.ship_city) <= set(maps["city"])
    assert {maps["city"][c] for c in codes(crm.city)} <= {c[0] for c in CITIES}
    cats = codes(orders.category) | codes(pos.category) | codes(events.category) | codes(social.topic)
    assert cats <= set(maps["category"])
    assert {maps["category"][c] for c in cats} == set(CATEGORIES)
    assert set(codes(pos.category)) == set(CATEGORY_ZH) and set(codes(events.category)) == {
        c.casefold() for c in CATEGORY_CODES}
    assert codes(events.event_type) <= set(maps["event_type"])
    assert {"pv", "view", "add_to_cart"} <= codes(events.event_type)
    assert codes(crm.gender) <= set(maps["gender"])
    partner = _csv(ws / "external/partner_spend.csv")
    spend_cols = {c for c in partner.columns if c.startswith("spend_")}
    assert spend_cols == set(default_config()["enrichment"]["partner"]["fields"].values())
    cities = _csv(ws / "external/city_stats.csv")
    assert set(cities.city) == {c[0] for c in CITIES} and set(cities.city_tier) == {"1", "2", "3", "4", "5"}


# ---------------------------------------------------------------------------------------------------------------
# ground truth and volumes
# ---------------------------------------------------------------------------------------------------------------


def test_truth_records_align_one_to_one(world):
    ws, summary = world
    raw = [f for f in summary["files"] if f.startswith("raw/")]
    records = {p.relative_to(ws / "truth/records").as_posix()[:-len(".parquet")]
               for p in (ws / "truth/records").rglob("*.parquet")}
    assert records == set(raw)
    for rel in raw:
        truth = pq.read_table(ws / "truth/records" / f"{rel}.parquet").to_pandas()
        assert list(truth.columns) == ["row", "person_id"]
        assert truth.row.tolist() == list(range(1, summary["files"][rel] + 1))
        assert truth.person_id.between(0, N - 1).all()


def test_truth_persons_hold_the_latents(persons):
    assert len(persons) == N and persons.person_id.tolist() == list(range(N))
    for col in ("gender", "birth_date", "city", "phone", "email", "income_band", "churn_at", "spend_level",
                "top_categories", "opt_out_enrichment", "opt_out_marketing"):
        assert col in persons.columns
    assert str(persons.churn_at.dtype) == "datetime64[ms, UTC]"
    age = (pd.Timestamp("2026-09-30") - pd.to_datetime(persons.birth_date)).dt.days / 365.25
    assert age.between(18, 71).all() and age.min() < 20 and age.max() > 65
    assert persons.phone.dropna().str.fullmatch(r"\+861[3-9]\d{9}").all()
    assert persons.phone.dropna().is_unique and persons.email.dropna().is_unique
    assert 0.03 < persons.phone.isna().mean() < 0.08
    assert 0.70 < persons.email.notna().mean() < 0.80
    assert (persons.phone.notna() | persons.email.notna()).all()
    assert 0.07 < persons.opt_out_enrichment.mean() < 0.13 and 0.05 < persons.opt_out_marketing.mean() < 0.11
    assert 0.25 < persons.churn_at.notna().mean() < 0.45
    assert set(persons.income_band) == {"low", "middle", "upper_middle", "high"}
    tiers = persons.groupby("city_tier").size()
    assert tiers[1] > tiers[5] * 2


def test_no_source_gives_the_answer_away(world):
    ws, _ = world
    for f in list(ws.glob("raw/**/*.csv")) + list(ws.glob("external/*.csv")):
        header = f.read_text(encoding="utf-8").split("\n", 1)[0].lower()
        assert not re.search(r"churn|segment|person|truth|spend_level|latent", header), f
    for f in ws.glob("raw/app_events/*.parquet"):
        assert not any(re.search(r"churn|segment|person", c) for c in pq.read_schema(f).names)


def test_volumes_per_person(world, crm, orders, pos, events, social, persons):
    per = {"online": len(orders) / N, "pos": len(pos) / N, "app": len(events) / N, "social": len(social) / N}
    assert 3.0 < per["online"] < 5.5, per
    assert 2.2 < per["pos"] < 4.5, per
    assert 32 < per["app"] < 60, per
    assert 2.0 < per["social"] < 4.5, per
    assert 0.65 < len(crm) / N < 0.85
    counts = orders.groupby("person_id").size().reindex(range(N), fill_value=0)
    assert counts.max() > 8 * counts.mean()                              # heavy-tailed
    only_online = persons.person_id[persons.channel == "online_only"]
    assert not pos.person_id.isin(only_online).any()
    store_only = persons.person_id[persons.channel == "store_only"]
    assert not orders.person_id.isin(store_only).any() and not events.person_id.isin(store_only).any()
    assert 0.6 < events.user_id.notna().mean() < 0.8


def test_hashed_external_keys_match_the_people(world, persons):
    ws, _ = world
    vendor = _csv(ws / "external/vendor_profiles.csv")
    phones = pd.concat([persons.phone, persons.phone_previous]).dropna()
    known = {hashlib.sha256(p.encode()).hexdigest() for p in phones}
    matched = vendor.phone_sha256.isin(known)
    with_phone = persons.phone.notna().sum()
    assert 0.45 < matched.sum() / with_phone < 0.65
    assert 0.05 < (~matched).sum() / matched.sum() < 0.15                # non-customers
    assert set(vendor.income_band) <= {"", "low", "middle", "upper_middle", "high"}
    assert vendor.interests[vendor.interests != ""].str.split("|").explode().isin(CATEGORIES).all()
    partner = _csv(ws / "external/partner_spend.csv")
    emails = {hashlib.sha256(e.strip().lower().encode()).hexdigest() for e in persons.email.dropna()}
    assert partner.email_sha256.isin(emails).all()
    assert 0.3 < len(partner) / persons.email.notna().sum() < 0.5
    spend = partner[[f"spend_{c}" for c in CATEGORIES]].astype(float)
    assert (spend >= 0).all().all() and spend.sum(axis=1).gt(0).mean() > 0.9


# ---------------------------------------------------------------------------------------------------------------
# messiness
# ---------------------------------------------------------------------------------------------------------------

PHONE_SHAPES = {
    "plain": r"1\d{10}", "+86 spaced": r"\+86 \d{3} \d{4} \d{4}", "+86 dashed": r"\+86-\d{3}-\d{4}-\d{4}",
    "0086": r"0086 1\d{10}", "86-": r"86-1\d{10}", "(+86)": r"\(\+86\)\d{3} \d{4} \d{4}", "0-prefixed": r"01\d{10}",
    "dashed": r"\d{3}-\d{4}-\d{4}", "padded": r" \d{3} \d{4} \d{4} ", "e164": r"\+861\d{10}",
}


def _shape(value: str) -> str:
    return next((name for name, rx in PHONE_SHAPES.items() if re.fullmatch(rx, value)), "other")


def test_phones_come_in_many_spellings_and_a_few_are_broken(crm, orders, pos, social):
    values = pd.concat([crm.mobile, orders.buyer_phone, pos.phone, social.bound_phone])
    values = values[values != ""]
    shapes = values.map(_shape).value_counts()
    assert set(PHONE_SHAPES) <= set(shapes.index)
    assert shapes["plain"] / len(values) > 0.4
    broken = values[values.map(_shape) == "other"]
    broken = broken[~broken.isin(["00000000000"])]
    assert 0 < len(broken) < 0.005 * len(values)
    assert broken.str.fullmatch(r"1\d{4}|1\d{9}x").all()
    assert 0.75 < (orders.buyer_phone != "").mean() < 0.95


def test_placeholders_duplicates_and_corrupt_rows(crm, orders, pos):
    placeholder = pos.phone.isin(["13800000000", "00000000000"])
    assert 0.004 < placeholder.mean() < 0.02
    assert placeholder.groupby(pos.phone).size().get("13800000000", 0) > 0
    assert crm.email.isin(["test@test.com", "noemail@none.com"]).sum() >= 1
    assert 0.005 < (pos[["member_card", "phone"]] == "").all(axis=1).mean() < 0.03      # anonymous receipts
    # exact duplicates (orders may repeat in the next month's file)
    cols = [c for c in orders.columns if c not in ("person_id", "file", "row", "t")]
    assert 0.002 < orders.duplicated(cols).mean() < 0.01
    assert orders[orders.duplicated(cols, keep=False)].groupby("order_id").file.nunique().max() >= 1
    pcols = [c for c in pos.columns if c not in ("person_id", "file", "row", "t")]
    assert 0.002 < pos.duplicated(pcols).mean() < 0.01
    ccols = [c for c in crm.columns if c not in ("person_id", "file", "row")]
    assert 0.005 < crm.duplicated(ccols).mean() < 0.02
    # corrupt values
    updated = pd.to_datetime(crm.updated_at, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    assert 2 <= updated.isna().sum() < 0.01 * len(crm)                  # impossible dates, cut lines
    assert orders.order_time.str.startswith("2099").sum() >= 1
    bad_amounts = ~pd.concat([orders.amount, pos.amount]).str.fullmatch(r"\d+\.\d\d")
    assert 0 < bad_amounts.sum() < 0.003 * len(bad_amounts)


def test_crm_has_truncated_lines_and_mixed_codes(world, crm):
    ws, _ = world
    lines = (ws / "raw/crm_members.csv").read_text(encoding="utf-8").splitlines()
    assert sum(line.count(",") < 9 for line in lines[1:]) >= 1
    assert {"M", "F", "男", "女", "1", "2", "U", ""} <= set(crm.gender) and {"male", "Female"} & set(crm.gender)
    assert {"上海", "上海市", "Shanghai", "shanghai ", "SH"} & set(crm.city) == {"上海", "上海市", "Shanghai",
                                                                              "shanghai ", "SH"}
    assert {"Y", "N", ""} == set(crm.opt_out_enrichment)
    assert (crm.birthday == "").mean() > 0.05
    assert (crm.member_id.str.fullmatch(r"M\d{8}")).all()


def test_emails_vary_in_case_and_space_and_rarely_have_typos(crm, orders, persons):
    shown = pd.concat([crm[["email", "person_id"]], orders[["buyer_email", "person_id"]].set_axis(
        ["email", "person_id"], axis=1)])
    shown = shown[(shown.email != "") & ~shown.email.isin(["test@test.com", "noemail@none.com"])]
    assert (shown.email != shown.email.str.strip()).any()
    assert (shown.email != shown.email.str.lower()).any()
    truth = shown.person_id.map(persons.set_index("person_id").email)
    typo = shown.email.str.strip().str.lower() != truth
    assert 0.002 < typo.mean() < 0.03


def test_late_orders_land_in_the_next_months_file(orders):
    ok = orders.t.notna() & (orders.t.dt.year < 2090)
    local = orders.t[ok].dt.tz_convert("Asia/Shanghai").dt.strftime("%Y-%m")
    file_month = orders.file[ok].str.extract(r"(\d{4}-\d\d)\.csv$")[0]
    late = local != file_month
    assert 0.015 < late.mean() < 0.05
    assert (local[late] < file_month[late]).all()


def test_identifiers_connect_each_person(crm, orders, pos, events, social):
    """Records linked through shared normalised identifiers (placeholders blocked) stay within one person."""
    sparse = pytest.importorskip("scipy.sparse")
    csgraph = pytest.importorskip("scipy.sparse.csgraph")
    blocked = {"13800000000", "test@test.com", "noemail@none.com"}

    def phone(s: pd.Series) -> pd.Series:
        d = s.str.replace(r"[^0-9x]", "", regex=True).str.replace(r"^(0086|86|0)(?=1\d{10}$)", "", regex=True)
        return ("p" + d).where(d.str.fullmatch(r"1[3-9]\d{9}") & ~d.isin(blocked))

    def email(s: pd.Series) -> pd.Series:
        e = s.str.strip().str.lower()
        return ("e" + e).where(e.str.contains("@") & ~e.isin(blocked))

    def ident(prefix: str, s: pd.Series) -> pd.Series:
        return (prefix + s.astype("string")).where(s.notna() & (s != ""))

    tables = [
        (crm, [ident("m", crm.member_id), phone(crm.mobile), email(crm.email)]),
        (orders, [ident("a", orders.account_id), phone(orders.buyer_phone), email(orders.buyer_email)]),
        (pos, [ident("m", pos.member_card), phone(pos.phone)]),
        (events, [ident("d", events.device_id), ident("a", events.user_id)]),
        (social, [ident("s", social.social_id), phone(social.bound_phone), ident("m", social.member_id)]),
    ]
    pids, rec, tok = [], [], []
    offset = 0
    for df, cols in tables:
        pids.append(df.person_id.to_numpy())
        for col in cols:
            ok = col.notna().to_numpy()
            rec.append(np.nonzero(ok)[0] + offset)
            tok.append(col[ok].astype(str).to_numpy())
        offset += len(df)
    rec, tok = np.concatenate(rec), np.concatenate(tok)
    codes, uniques = pd.factorize(tok)
    size = offset + len(uniques)
    graph = sparse.coo_matrix((np.ones(rec.size), (rec, offset + codes)), shape=(size, size))
    _, label = csgraph.connected_components(graph, directed=False)
    has_id = np.zeros(offset, bool)
    has_id[rec] = True
    frame = pd.DataFrame({"person": np.concatenate(pids), "comp": label[:offset]})[has_id]
    assert has_id.mean() > 0.99
    sizes = frame.groupby(["person", "comp"]).size()
    main = sizes.groupby(level=0).max()
    assert main.sum() / sizes.sum() > 0.99                              # a person's records reach each other
    persons_per_comp = frame.groupby("comp").person.nunique()
    assert persons_per_comp.max() <= 2                                  # only shared household devices join two
    assert 0 < (persons_per_comp == 2).sum() < 0.02 * N


# ---------------------------------------------------------------------------------------------------------------
# signal
# ---------------------------------------------------------------------------------------------------------------


def _purchases(orders: pd.DataFrame, pos: pd.DataFrame) -> pd.DataFrame:
    zh = dict(zip(CATEGORY_ZH, CATEGORIES))
    return pd.concat([
        orders.loc[orders.status == "paid", ["person_id", "t", "amount"]].assign(
            category=orders.category.str.lower()),
        pos.loc[pos.is_return == "0", ["person_id", "t", "amount"]].assign(category=pos.category.map(zh)),
    ], ignore_index=True)


def test_churners_fade_before_they_stop_and_app_fades_first(orders, pos, events, persons):
    start = pd.Timestamp("2024-10-01", tz="Asia/Shanghai")                # whole windows inside the span
    churners = persons.loc[(persons.churn_at > start + 300 * DAY) & (persons.joined_at < persons.churn_at - 300 * DAY),
                           ["person_id", "churn_at"]]
    assert len(churners) > 100

    def per_day(df: pd.DataFrame, lo: int, hi: int) -> float:
        m = df[["person_id", "t"]].merge(churners, on="person_id")
        days = (m.churn_at - m.t) / DAY
        return float(((days >= lo) & (days < hi)).sum()) / (hi - lo)

    buys = _purchases(orders, pos)
    buy_recent, buy_before = per_day(buys, 0, 90), per_day(buys, 90, 270)
    assert buy_recent < 0.8 * buy_before
    assert per_day(buys, -200, 0) == 0                                   # nothing after churn
    app_ratio = per_day(events, 30, 120) / per_day(events, 150, 300)
    buy_ratio = per_day(buys, 30, 120) / per_day(buys, 150, 300)
    assert app_ratio < buy_ratio                                         # engagement drifts away earlier
    # the individual signal: most churners bought less in their last 90 days than the 90 before
    m = buys.merge(churners, on="person_id")
    days = (m.churn_at - m.t) / DAY
    last = m[days.between(0, 90, inclusive="left")].groupby("person_id").size()
    prev = m[days.between(90, 180, inclusive="left")].groupby("person_id").size()
    both = pd.concat([last, prev], axis=1).fillna(0)
    assert (both[0] < both[1]).sum() > (both[0] > both[1]).sum()


def test_heavy_spenders_spend_more(orders, pos, persons):
    buys = _purchases(orders, pos)
    amount = pd.to_numeric(buys.amount, errors="coerce")
    total = amount.groupby(buys.person_id).sum().reindex(persons.person_id, fill_value=0)
    by_level = total.groupby(persons.spend_level.to_numpy()).mean()
    assert by_level["low"] < by_level["medium"] < by_level["high"] < by_level["vip"]
    assert by_level["vip"] > 4 * by_level["low"]
    income = total.groupby(persons.income_band.to_numpy()).median()
    assert income["low"] < income["high"]
    # channel mix: online-only people buy online only
    online = persons.set_index("person_id").channel
    assert set(online[orders.person_id.unique()]) <= {"online_only", "omni"}


def test_category_preferences_show_in_purchases(orders, pos, persons):
    buys = _purchases(orders, pos)
    top = buys.person_id.map(persons.set_index("person_id").top_category)
    assert (buys.category == top).mean() > 0.35                          # concentrated, not uniform (1/12)


def test_new_interests_show_in_browsing_before_buying(orders, pos, events, persons):
    code = dict(zip(CATEGORY_CODES, CATEGORIES))
    interest = persons.loc[persons.new_interest_1.notna(), ["person_id", "new_interest_1", "new_interest_1_buy_at"]]
    interest.columns = ["person_id", "interest", "buy_at"]
    assert len(interest) > 200

    def share(df: pd.DataFrame, lo: int, hi: int) -> float:
        m = df.merge(interest, on="person_id")
        days = (m.buy_at - m.t) / DAY
        window = m[(days >= lo) & (days < hi)]
        return float((window.category == window.interest).mean())

    browse = events[events.category.notna()].assign(category=lambda d: d.category.map(code))
    buys = _purchases(orders, pos)
    # in the weeks before the first purchase, browsing already leans to the new category; buying does not
    assert share(browse, 0, 14) > 5 * share(browse, 60, 200)
    assert share(browse, 0, 14) > 5 * share(buys, 0, 14)
    assert share(buys, -60, 0) > 5 * share(buys, 0, 60)
    # on average the first browse in the new category comes before the first purchase in it
    def first(df: pd.DataFrame) -> pd.Series:
        m = df.merge(interest, on="person_id")
        m = m[(m.category == m.interest) & (m.t > m.buy_at - 60 * DAY)]
        return m.groupby("person_id").t.min()

    lead = (first(buys) - first(browse)).dropna() / DAY
    assert len(lead) > 50 and lead.mean() > 7
