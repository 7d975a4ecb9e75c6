"""Synthetic identity data for the OneID benchmark (bench/identity_bench.py): the demo's identity configuration and a
vectorised generator of the mentions its five sources would carry for N customers, with the truth.

Apart from the runner so that the data the benchmark feeds `resolve` can be read (and changed) on its own: nothing
here is timed, and nothing here depends on which version of features/integration/oneid.py is measured.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file (bench/ on the path): the project's packages live in the root
    sys.path.insert(0, str(ROOT))

from persona.config import IdentityConfig  # noqa: E402

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
