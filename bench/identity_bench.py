#!/usr/bin/env python
"""OneID resolution benchmark: `features.integration.oneid.resolve` from 100k to 1M customers, against a scipy floor.

For each size N (customers) it
  1. builds synthetic mentions for N customers (vectorised numpy, not timed), shaped like the demo's five
     sources (CRM, online orders, store POS, app events, social) and configured like docs/persona.example.yaml;
     text columns are Arrow strings, as features/integration/run.py hands them over (--strings object for Python str);
  2. times `resolve(...)` end to end (one cold call in a fresh process; peak RSS of that call via VmHWM);
  3. times the floor: scipy `connected_components` (edge list -> CSR -> components) on the very graph resolve
     links: the star edges among the linkable identifiers, built with the module's own `_star_edges`
     (best of 3);
  4. times a re-run with `previous=` the first result's nodes and 2% more customers' mentions (stable ids);
  5. checks pairwise precision/recall of the result against the synthetic truth (not timed).
Each size runs in its own child process so that peak RSS and allocator state do not leak between sizes.

    .venv/bin/python bench/identity_bench.py                 # 100k, 300k, 1M (about 5 minutes)
    .venv/bin/python bench/identity_bench.py --quick         # 20k, 50k smoke run
    .venv/bin/python bench/identity_bench.py --sizes 1000000 --profile   # + cProfile of resolve at each size
    .venv/bin/python bench/identity_bench.py --rev HEAD      # features/integration/oneid.py as committed (before/after)

Writes bench/out/identity.json. Exits 1 when resolve at 1M customers takes longer than the 60 s budget.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import hashlib
import importlib.util
import io
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy
import yaml
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import features.integration.oneid  # noqa: E402
from persona.config import IdentityConfig  # noqa: E402

IDENTITY = features.integration.oneid  # the module under test; --rev swaps in a committed version of it

OUT = ROOT / "bench" / "out" / "identity.json"
BUDGET_S = 60.0
BUDGET_SIZE = 1_000_000
RERUN_GROWTH = 0.02  # the re-run adds this many more customers (as a fraction of N)
BUSY_STALL = 0.2  # a run where some task waited for a CPU more than this share of the time is flagged as busy

TYPES = ["member_id", "account_id", "social_id", "phone", "email", "device_id"]
SOURCES = ["crm_members", "online_orders", "store_pos", "app_events", "social"]
PLACEHOLDER_PHONE = "+8613800000000"

# Mobile prefixes of the three Chinese carriers (the generator's numbers look like real ones).
PHONE_PREFIXES = np.array([130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 145, 147, 150, 151, 152, 153, 155,
                           156, 157, 158, 159, 166, 172, 175, 176, 177, 178, 180, 181, 182, 183, 184, 185, 186, 187,
                           188, 189, 198, 199])
EMAIL_NAMES = np.array(["zhangwei", "wangfang", "liuyang", "lina", "chenjie", "yangli", "huangmin", "zhaolei",
                        "wujing", "zhoutao", "xuhui", "sunyan", "mali", "zhuqiang", "hujun", "guoxin", "linlin",
                        "heping", "gaoyuan", "luoqing", "amy", "jack", "kevin", "lucy", "tony", "vivian", "sky",
                        "happy", "sunny", "xiaoyu"])
EMAIL_DOMAINS = np.array(["qq.com", "163.com", "126.com", "gmail.com", "sina.com", "hotmail.com", "foxmail.com",
                          "139.com", "outlook.com"])
EMAIL_DOMAIN_P = np.array([0.42, 0.18, 0.08, 0.07, 0.05, 0.05, 0.05, 0.05, 0.05])


# --------------------------------------------------------------------------------------------------------------
# configuration (the demo's identity section)
# --------------------------------------------------------------------------------------------------------------

def demo_identity() -> tuple[IdentityConfig, dict[str, set[str]]]:
    """IdentityConfig from docs/persona.example.yaml, and its blocked values normalised per identifier type.

    The normalisation mirrors `features.integration.run.blocked_values` for the values the demo lists (CN mobile numbers
    -> E.164, e-mails casefolded); the raw spellings are kept as well, exactly as blocked_values does.
    """
    doc = yaml.safe_load((ROOT / "docs" / "persona.example.yaml").read_text(encoding="utf-8"))
    cfg = IdentityConfig.model_validate(doc["identity"])
    assert cfg.priority == TYPES, f"the demo's identifier types changed: {cfg.priority}"
    blocked: dict[str, set[str]] = {}
    for t, spec in cfg.identifiers.items():
        if not spec.blocked:
            continue
        if spec.normalise == "phone":
            norm = {"+86" + v if len(v) == 11 and v.isdigit() else v for v in spec.blocked}
        elif spec.normalise == "email":
            norm = {v.strip().casefold() for v in spec.blocked}
        else:
            norm = {v.strip() for v in spec.blocked}
        blocked[t] = norm | set(spec.blocked)
    assert PLACEHOLDER_PHONE in blocked["phone"]
    return cfg, blocked


# --------------------------------------------------------------------------------------------------------------
# synthetic mentions
# --------------------------------------------------------------------------------------------------------------

def _text(a: np.ndarray) -> np.ndarray:
    """numpy unicode array -> object array of str (what duckdb's .df() hands resolve in the pipeline)."""
    return np.asarray(a, dtype=str).astype(object)


def _zfill(ints: np.ndarray, width: int) -> np.ndarray:
    return np.strings.zfill(np.asarray(ints, dtype=np.int64).astype(str), width)


def _hex(rng: np.random.Generator, n: int, chars: int) -> np.ndarray:
    """n random lowercase hex strings of `chars` characters, as an (n, chars) uint8 matrix."""
    raw = np.frombuffer(rng.bytes(n * chars // 2), dtype=np.uint8)
    nibbles = np.stack([raw >> 4, raw & 15], axis=1).reshape(n, chars)
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]


def _bytes_rows(m: np.ndarray) -> np.ndarray:
    """(n, k) uint8 matrix -> n strings of k characters."""
    m = np.ascontiguousarray(m)
    return m.view(f"S{m.shape[1]}").ravel().astype(str)


def member_values(rng, n):  # 'M00001234': 8-digit membership numbers, sparse over the range
    return _text(np.strings.add("M", _zfill(rng.choice(10**8, n, replace=False), 8)))


def account_values(rng, n):  # shop accounts as the demo writes them: 'A' + 9 digits
    return _text(np.strings.add("A", _zfill(rng.choice(10**9, n, replace=False), 9)))


def social_values(rng, n):  # as the demo: 'wx_' + 16 base62 characters
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    return _text(np.strings.add("wx_", _bytes_rows(alphabet[rng.integers(0, 62, (n, 16))])))


def phone_values(rng, n, blocked: set[str]):  # '+86138xxxxxxxx', unique, never a blocked number
    x = rng.choice(len(PHONE_PREFIXES) * 10**8, n + 16, replace=False)
    text = np.strings.add("+86", np.strings.add(PHONE_PREFIXES[x // 10**8].astype(str), _zfill(x % 10**8, 8)))
    text = text[~np.isin(text, list(blocked))][:n]
    return _text(text)


def email_values(rng, n):  # 'zhangwei1234@qq.com': a name, a unique number, a weighted domain
    name = EMAIL_NAMES[rng.integers(0, len(EMAIL_NAMES), n)]
    num = rng.choice(10**8, n, replace=False).astype(str)
    domain = EMAIL_DOMAINS[rng.choice(len(EMAIL_DOMAINS), n, p=EMAIL_DOMAIN_P)]
    return _text(np.strings.add(np.strings.add(name, num), np.strings.add("@", domain)))


def device_values(rng, n):  # lower-case uuid4 strings, as the demo's app events carry
    h = _hex(rng, n, 32)
    h[:, 12] = ord("4")
    h[:, 16] = np.frombuffer(b"89ab", dtype=np.uint8)[rng.integers(0, 4, n)]
    h = np.insert(h, [8, 12, 16, 20], np.uint8(ord("-")), axis=1)
    return _text(_bytes_rows(h))


@dataclass
class Population:
    """Synthetic source records reduced to mentions, with the truth.

    rows: one row per (mention, true person): mention_key, person, source and one code column per identifier
    type (-1 = absent); values[t][code] is the identifier's text.
    """

    rows: pd.DataFrame
    values: dict[str, np.ndarray]
    n_people: int

    def mentions(self, max_person: int, seed: int = 0, strings: str = "arrow") -> pd.DataFrame:
        """Long mention table (mention_key, id_type, value) of every mention that a person < max_person carried.

        Shuffled: the pipeline reads it back with SELECT DISTINCT, in no particular order. `strings`: "arrow" gives
        Arrow-backed string columns, as features.integration.run hands them to resolve; "object" gives Python str objects
        (what DuckDB's .df() returns).
        """
        rows = self.rows[self.rows["person"].to_numpy() < max_person].drop_duplicates("mention_key")
        key = rows["mention_key"].to_numpy()
        parts = []
        for t in TYPES:
            code = rows[t].to_numpy()
            has = code >= 0
            parts.append(pd.DataFrame({"mention_key": key[has], "id_type": np.full(int(has.sum()), t, dtype=object),
                                       "value": self.values[t][code[has]]}))
        long = pd.concat(parts, ignore_index=True)
        order = np.random.default_rng(seed).permutation(len(long))
        long = long.iloc[order].reset_index(drop=True)
        if strings == "arrow":
            for col in ("id_type", "value"):
                long[col] = pd.arrays.ArrowStringArray(pa.array(long[col].to_numpy(), type=pa.string()))
        return long

    def units(self, max_person: int) -> pd.DataFrame:
        """(mention_key, person) pairs: one scoring unit per identifier combination and true person."""
        rows = self.rows[self.rows["person"].to_numpy() < max_person]
        return rows[["mention_key", "person"]].drop_duplicates().reset_index(drop=True)


def generate(n_people: int, blocked: dict[str, set[str]], seed: int = 42) -> Population:
    """Vectorised generator: per-person identifiers, then the mentions each source would carry for them."""
    rng = np.random.default_rng(seed)
    P = n_people
    people = np.arange(P)
    u = lambda: rng.random(P)  # noqa: E731

    has_member = u() < 0.70
    dup_member = has_member & (u() < 0.02)  # a second membership (signed up twice)
    has_account = u() < 0.60
    has_social = u() < 0.30
    has_phone = u() < 0.95
    phone2 = has_phone & (u() < 0.02)  # a second mobile number
    has_email = u() < 0.75
    app_user = has_account & (u() < 0.45)
    device2 = app_user & (u() < 0.10)  # phone and tablet

    def slots(*masks):
        """Give every person in each mask its own identifier; returns per-person code arrays and the count."""
        out, n = [], 0
        for m in masks:
            code = np.full(P, -1, dtype=np.int64)
            k = int(m.sum())
            code[m] = n + np.arange(k)
            out.append(code)
            n += k
        return out, n

    (member1, member2), n_member = slots(has_member, dup_member)
    (account,), n_account = slots(has_account)
    (social,), n_social = slots(has_social)
    (phone1, phone_2), n_phone = slots(has_phone, phone2)
    (email,), n_email = slots(has_email)
    (device_a, device_b), n_device = slots(app_user, device2)
    placeholder = n_phone  # one extra phone code: the cashier's placeholder number

    values = {
        "member_id": member_values(rng, n_member),
        "account_id": account_values(rng, n_account),
        "social_id": social_values(rng, n_social),
        "phone": np.concatenate([phone_values(rng, n_phone, blocked.get("phone", set())),
                                 np.array([PLACEHOLDER_PHONE], dtype=object)]),
        "email": email_values(rng, n_email),
        "device_id": device_values(rng, n_device),
    }

    parts: list[dict[str, np.ndarray]] = []

    def add(source: str, person: np.ndarray, **codes: np.ndarray) -> None:
        part = {"source": np.full(len(person), SOURCES.index(source), dtype=np.int8), "person": person}
        for t in TYPES:
            part[t] = codes.get(t, np.full(len(person), -1, dtype=np.int64))
        parts.append(part)

    def maybe(code: np.ndarray, p: float) -> np.ndarray:
        return np.where(rng.random(len(code)) < p, code, -1)

    # CRM: one record per membership, with the phone and e-mail given at sign-up.
    p = people[has_member]
    add("crm_members", p, member_id=member1[p], phone=maybe(phone1[p], 0.97), email=maybe(email[p], 0.75))
    p = people[dup_member]
    add("crm_members", p, member_id=member2[p], phone=maybe(phone1[p], 0.90), email=maybe(email[p], 0.30))

    # Online orders: account plus the buyer's phone and/or e-mail, in a few distinct combinations per buyer.
    p = people[has_account]
    add("online_orders", p, account_id=account[p], phone=maybe(phone1[p], 0.85), email=maybe(email[p], 0.40))
    p = p[rng.random(len(p)) < 0.30]
    add("online_orders", p, account_id=account[p], email=np.where(email[p] >= 0, email[p], -1),
        phone=np.where(email[p] >= 0, -1, phone1[p]))
    p = people[has_account & phone2]
    add("online_orders", p, account_id=account[p], phone=phone_2[p])

    # Store POS: the member card and/or the phone the cashier typed; 1% of records carry the placeholder number.
    p = people[has_member & (u() < 0.50)]
    pos_member, pos_phone = member1[p], maybe(phone1[p], 0.50)
    w = people[has_phone & ~has_member & (u() < 0.20)]  # walk-ins who give only a phone number
    pos_person = np.concatenate([p, w])
    pos_member = np.concatenate([pos_member, np.full(len(w), -1)])
    pos_phone = np.concatenate([pos_phone, phone1[w]])
    fake = rng.random(len(pos_person)) < 0.01
    pos_phone = np.where(fake, placeholder, pos_phone)
    add("store_pos", pos_person, member_id=pos_member, phone=pos_phone)

    # App events: device + logged-in account; 40% of devices also browse anonymously (device alone).
    own = np.concatenate([people[app_user], people[device2]])
    dev = np.concatenate([device_a[app_user], device_b[device2]])
    add("app_events", own, device_id=dev, account_id=account[own])
    anon = rng.random(len(own)) < 0.4
    add("app_events", own[anon], device_id=dev[anon])
    # 2% of devices are shared: a second person logs in on it with their own account.
    shared = rng.random(len(dev)) < 0.02
    app_people = people[app_user]
    other = app_people[rng.integers(0, len(app_people), int(shared.sum()))]
    ok = other != own[shared]
    add("app_events", other[ok], device_id=dev[shared][ok], account_id=account[other[ok]])

    # Social: the social id, with the bound phone and/or the member id when the customer linked them.
    p = people[has_social]
    add("social", p, social_id=social[p], phone=maybe(phone1[p], 0.70), member_id=maybe(member1[p], 0.30))

    rows = pd.DataFrame({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
    # The pipeline's mention key: a hash of (source, identifier combination), as features.integration.ingest computes it.
    rows.insert(0, "mention_key", pd.util.hash_pandas_object(rows[["source", *TYPES]], index=False).to_numpy())
    rows = rows.drop_duplicates(["mention_key", "person"]).reset_index(drop=True)
    return Population(rows, values, P)


# --------------------------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so the next reading is the peak of what follows; False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole-process peak


def floor_graph(mentions: pd.DataFrame, res) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The edge list resolve links: star edges over the linkable identifiers of each mention; and the link count.

    Node codes are the row positions of res.nodes (resolve builds that table in code order); identifiers blocked,
    shared or of a non-linking type are left out, exactly as resolve leaves them out before its components call.
    """
    node_types = res.nodes["id_type"].to_numpy(dtype=object)
    node_values = res.nodes["value"].to_numpy(dtype=object)
    link_types = mentions["id_type"].to_numpy(dtype=object)
    link_values = mentions["value"].to_numpy(dtype=object)
    code = np.full(len(mentions), -1, dtype=np.int64)
    for t in pd.unique(node_types):
        here = np.flatnonzero(node_types == t)
        there = np.flatnonzero(link_types == t)
        hit = pd.Index(node_values[here]).get_indexer(link_values[there])
        code[there] = np.where(hit >= 0, here[hit], -1)
    assert (code >= 0).all(), "an input identifier is missing from resolve's node table"
    links = pd.DataFrame({"mention": mentions["mention_key"].to_numpy(), "node": code}).drop_duplicates()
    linkable_node = ~res.nodes["status"].isin(["blocked", "shared", "no_link"]).to_numpy()
    keep = linkable_node[links["node"].to_numpy()]
    src, dst = IDENTITY._star_edges(links["mention"].to_numpy()[keep], links["node"].to_numpy()[keep])
    return src, dst, linkable_node, len(links)


def scipy_floor(src: np.ndarray, dst: np.ndarray, n: int, repeat: int = 3) -> tuple[float, float, np.ndarray]:
    """Best-of-`repeat` seconds for edge list -> CSR -> connected_components, the components call alone, labels."""
    total, cc_only, labels = [], [], np.zeros(0)
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
        t1 = time.perf_counter()
        _n, labels = connected_components(graph, directed=False)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        cc_only.append(t2 - t1)
    return min(total), min(cc_only), labels


def cpu_stall_us() -> int | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI); None when PSI is not available."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Timed:
    result: object
    wall_s: float
    cpu_s: float  # this process's user + system time: what the call cost, whatever else the machine ran
    contention: float | None  # share of the wall time during which some task on the machine waited for a CPU
    load1: float  # 1-minute load average when the call started
    rss_before: int
    peak_rss: int


def timed_resolve(mentions, cfg, blocked, profile_to: Path | None = None, **kw) -> Timed:
    gc.collect()
    rss_before = _status_kib("VmRSS") * 1024
    reset_ok = reset_peak_rss()
    prof = cProfile.Profile() if profile_to else None
    load1 = os.getloadavg()[0]
    stall0 = cpu_stall_us()
    c0, t0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    res = IDENTITY.resolve(mentions, cfg, blocked=blocked, **kw)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stall1 = cpu_stall_us()
    peak = peak_rss_bytes(reset_ok)
    if prof:
        prof.dump_stats(str(profile_to))
    contention = (stall1 - stall0) / 1e6 / wall if stall0 is not None and stall1 is not None and wall else None
    return Timed(res, wall, cpu, contention, load1, rss_before, peak)


def profile_summary(path: Path, top: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# one size (runs in a child process)
# --------------------------------------------------------------------------------------------------------------

IDENTITY_INFO: dict = {}


def use_identity(rev: str | None) -> None:
    """Point the benchmark at features/integration/oneid.py of the work tree, or of git revision `rev`; note which."""
    global IDENTITY
    if rev:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:features/integration/oneid.py"], check=True,
                                capture_output=True).stdout
        path = OUT.parent / f"identity_at_{rev.replace('/', '_')}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("features._identity_at_rev", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        IDENTITY = module
    else:
        source = Path(IDENTITY.__file__).read_bytes()
    IDENTITY_INFO.update({"rev": rev or "work tree", "sha256": hashlib.sha256(source).hexdigest()[:16]})


def run_size(n: int, seed: int, profile: bool, rev: str | None = None, strings: str = "arrow") -> dict:
    use_identity(rev)
    cfg, blocked = demo_identity()

    # Warm-up: first calls into pandas/scipy import and compile things that are not resolve's cost.
    warm = generate(2_000, blocked, seed=seed + 1)
    IDENTITY.resolve(warm.mentions(2_000, strings=strings), cfg, blocked=blocked)

    t = time.perf_counter()
    n_extra = int(round(n * RERUN_GROWTH))
    pop = generate(n + n_extra, blocked, seed=seed)
    mentions = pop.mentions(n, seed=seed, strings=strings)
    gen_s = time.perf_counter() - t
    log(f"N={n:,}: generated {len(mentions):,} links in {gen_s:.1f}s; resolving")

    out_dir = OUT.parent
    prof_path = out_dir / f"identity_resolve_{n}.prof" if profile else None
    first = timed_resolve(mentions, cfg, blocked, profile_to=prof_path)
    res, resolve_s = first.result, first.wall_s
    log(f"N={n:,}: resolve {resolve_s:.2f}s (cpu {first.cpu_s:.2f}s, load {first.load1:.1f}), "
        f"peak RSS {first.peak_rss / 2**30:.2f} GiB")
    st = res.stats

    # Floor: the same graph, through scipy only.
    src, dst, linkable, n_links = floor_graph(mentions, res)
    if st.get("links") != n_links:
        log(f"N={n:,}: WARNING resolve's stats['links'] = {st.get('links'):,} but the input has {n_links:,} distinct "
            f"(mention, identifier) links; the table uses the latter")
    assert len(src) == st["edges"], (len(src), st["edges"])
    floor_s, cc_s, labels = scipy_floor(src, dst, len(linkable))
    n_comp = int(len(np.unique(labels[linkable])))  # persons among linkable identifiers
    # Hashing the value strings once (Arrow dictionary encoding): the string work any implementation pays.
    t = time.perf_counter()
    values = mentions["value"].array
    values = (pa.array(values) if isinstance(values, pd.arrays.ArrowStringArray)
              else pa.array(values.to_numpy(dtype=object), type=pa.string()))
    pc.dictionary_encode(values)
    factorize_s = time.perf_counter() - t
    del src, dst
    log(f"N={n:,}: floor {floor_s:.3f}s (CC alone {cc_s:.3f}s)")

    # Sanity: pairwise precision / recall against the synthetic truth (units = mention x true person).
    units = pop.units(n)
    pred = units[["mention_key"]].merge(res.mention_persona, on="mention_key", how="left")["persona_id"]
    scores = IDENTITY.pairwise_scores(units["person"], pred)

    # Re-run: previous nodes, 2% more customers' mentions.
    mentions2 = pop.mentions(n + n_extra, seed=seed + 2, strings=strings)
    again = timed_resolve(mentions2, cfg, blocked, previous=res.nodes, previous_aliases=res.aliases,
                          next_seq=res.next_seq)
    res2, rerun_s = again.result, again.wall_s
    log(f"N={n:,}: re-run {rerun_s:.2f}s (cpu {again.cpu_s:.2f}s)")
    before = res.nodes.dropna(subset=["persona_id"])[["id_type", "value", "persona_id"]]
    after = before.merge(res2.nodes[["id_type", "value", "persona_id"]], on=["id_type", "value"], how="left",
                         suffixes=("", "_after"))
    stable = float((after["persona_id"] == after["persona_id_after"]).mean()) if len(after) else 1.0

    result = {
        "customers": n,
        "mentions": int(mentions["mention_key"].nunique()),
        "links": n_links,
        "links_per_customer": n_links / n,
        "stats_links": st.get("links"),
        "identifiers": st["identifiers"],
        "edges": st["edges"],
        "personas": st["personas"],
        "components_scipy": n_comp,
        "shared_values": st["shared_values"],
        "blocked_values": st["blocked_values"],
        "oversized_components": len(st["oversized_components"]),
        "resolve_s": resolve_s,
        "resolve_cpu_s": first.cpu_s,
        "resolve_load1": first.load1,
        "resolve_cpu_contention": first.contention,
        "rerun_s": rerun_s,
        "rerun_cpu_s": again.cpu_s,
        "rerun_cpu_contention": again.contention,
        "floor_s": floor_s,
        "floor_cc_only_s": cc_s,
        "dictionary_encode_s": factorize_s,
        "resolve_over_floor": resolve_s / floor_s if floor_s else None,
        "links_per_s": n_links / resolve_s,
        "rss_before_resolve_bytes": first.rss_before,
        "peak_rss_bytes": first.peak_rss,
        "rerun_peak_rss_bytes": again.peak_rss,
        "generate_s": gen_s,
        "identity_module": IDENTITY_INFO,
        "input_strings": strings,
        "resolve_phases_s": st.get("seconds"),  # resolve's own per-phase clock, when the module reports one
        "rerun_phases_s": res2.stats.get("seconds"),
        "rerun": {
            "customers": n + n_extra,
            "links": int(len(mentions2[["mention_key", "id_type", "value"]].drop_duplicates())),
            "new_personas": res2.stats["new_personas"],
            "merges": res2.stats["merges"],
            "splits": res2.stats["splits"],
            "previous_ids_kept": stable,
        },
        "pairwise": scores,
    }
    if prof_path:
        result["profile"] = str(prof_path.relative_to(ROOT))
        result["profile_text"] = profile_summary(prof_path)
    return result


# --------------------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "features/integration/oneid.py"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(ram / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit,
        "identity_py_modified": dirty,
    }


def busy(r: dict, info: dict) -> bool:
    """Whether other work competed for the CPUs during the timed resolve (wall times then overstate its cost)."""
    c = r["resolve_cpu_contention"]
    return c > BUSY_STALL if c is not None else r["resolve_load1"] > info["nproc"]


def fmt_table(results: list[dict]) -> str:
    cols = [("customers", "{:,}"), ("mentions", "{:,}"), ("links", "{:,}"), ("identifiers", "{:,}"),
            ("edges", "{:,}"), ("resolve s", "{:.2f}"), ("(cpu s)", "{:.2f}"), ("rerun s", "{:.2f}"),
            ("floor s", "{:.3f}"), ("resolve/floor", "{:.0f}x"), ("links/s", "{:,.0f}"), ("peak RSS", "{:.2f} GiB")]
    keys = ["customers", "mentions", "links", "identifiers", "edges", "resolve_s", "resolve_cpu_s", "rerun_s",
            "floor_s", "resolve_over_floor", "links_per_s", "peak_rss_bytes"]
    rows = []
    for r in results:
        vals = [r[k] for k in keys]
        vals[-1] = vals[-1] / 2**30
        rows.append([f.format(v) for (_, f), v in zip(cols, vals)])
    head = [c for c, _ in cols]
    width = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, width))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in width]), *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000", help="customers per run, comma separated")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k and 50k customers")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each first resolve (slower); .prof files and top functions in bench/out/")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rev", help="benchmark features/integration/oneid.py as of this git revision (default: the work tree)")
    ap.add_argument("--strings", choices=["arrow", "object"], default="arrow",
                    help="dtype of the mentions' text columns: arrow (what integrate passes, default) or object")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(run_size(args.child, args.seed, args.profile, args.rev, args.strings)))
        return 0

    sizes = [20_000, 50_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    modified = " (modified vs HEAD)" if info["identity_py_modified"] else ""
    under_test = (f"features/integration/oneid.py at {args.rev}" if args.rev
                  else f"features/integration/oneid.py of the work tree{modified}")
    header = (f"OneID resolve benchmark  {info['date']}  commit {info['git_commit']}  {under_test}  "
              f"(mention text as {args.strings} strings)\n"
              f"machine: {info['nproc']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM | Python {info['python']}, "
              f"numpy {info['numpy']}, pandas {info['pandas']}, scipy {info['scipy']}")
    print(header, flush=True)

    results = []
    for n in sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--seed", str(args.seed)]
        cmd += ["--strings", args.strings]
        if args.rev:
            cmd += ["--rev", args.rev]
        if args.profile:
            cmd.append("--profile")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"size {n:,} failed (exit {proc.returncode})", file=sys.stderr)
            return 2
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print()
    print(fmt_table(results))
    print()
    for r in results:
        rr, pw = r["rerun"], r["pairwise"]
        stall = r["resolve_cpu_contention"]
        print(f"N={r['customers']:,}: {r['links_per_customer']:.2f} links/customer; {r['personas']:,} personas "
              f"(scipy: {r['components_scipy']:,} components of linkable identifiers); shared {r['shared_values']}; "
              f"blocked {r['blocked_values']}; oversized {r['oversized_components']}\n"
              f"    floor = CSR build + CC (CC alone {r['floor_cc_only_s']:.3f}s); hashing the value strings once "
              f"(Arrow dictionary_encode) {r['dictionary_encode_s']:.2f}s; load {r['resolve_load1']:.1f} at start, "
              f"other tasks waited for "
              f"a CPU {'?' if stall is None else f'{stall:.0%}'} of the resolve\n"
              f"    pairwise P={pw['precision']:.4f} R={pw['recall']:.4f} over {pw['units']:,} units; re-run "
              f"+{rr['customers'] - r['customers']:,} customers: {rr['new_personas']:,} new personas, "
              f"{rr['merges']} merges, {rr['splits']} splits, {rr['previous_ids_kept']:.4%} of previous "
              f"identifiers kept their id")
    for r in results:
        for label, phases in (("resolve", r.get("resolve_phases_s")), ("re-run", r.get("rerun_phases_s"))):
            if isinstance(phases, dict) and phases:
                print(f"N={r['customers']:,} {label} phases (resolve's own clock): "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items() if isinstance(v, (int, float))))
    shas = {r["identity_module"]["sha256"] for r in results}
    if len(shas) > 1:
        print(f"WARNING: features/integration/oneid.py changed during the run ({len(shas)} versions: "
              f"{', '.join(sorted(shas))}): the sizes did not all measure the same code")
    if any(busy(r, info) for r in results):
        print("WARNING: other processes competed for the CPUs during some runs (wall > cpu): the wall times "
              "overstate resolve's cost; compare the (cpu s) column or re-run on an idle machine")
    for r in results:
        if "profile_text" in r:
            print(f"\n--- cProfile of resolve at N={r['customers']:,} ({r['profile']}) ---")
            print(r["profile_text"])

    payload = {"machine": info, "budget": {"customers": BUDGET_SIZE, "seconds": BUDGET_S},
               "args": {"sizes": sizes, "seed": args.seed, "profile": args.profile, "rev": args.rev,
                        "strings": args.strings},
               "results": [{k: v for k, v in r.items() if k != "profile_text"} for r in results]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")

    at_budget = [r for r in results if r["customers"] == BUDGET_SIZE]
    if not at_budget:
        print(f"note: {BUDGET_SIZE:,} customers not in this run; the {BUDGET_S:.0f}s budget was not checked")
        return 0
    over = [r for r in at_budget if r["resolve_s"] > BUDGET_S]
    if over:
        r = over[0]
        print(f"FAIL: resolve of {r['customers']:,} customers ({r['links']:,} links) took {r['resolve_s']:.1f}s, "
              f"over the {BUDGET_S:.0f}s budget ({r['resolve_s'] / BUDGET_S:.1f}x); its own CPU time was "
              f"{r['resolve_cpu_s']:.1f}s"
              f"{'; timed under cProfile, which inflates it' if args.profile else ''}"
              f"{'; the machine was busy (see above): re-run it on an idle machine' if busy(r, info) else ''}")
        return 1
    print(f"OK: resolve of {BUDGET_SIZE:,} customers took {at_budget[0]['resolve_s']:.1f}s "
          f"(budget {BUDGET_S:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
