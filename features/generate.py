"""Demo data generator: a synthetic, messy, multi-channel customer world with ground truth.

``generate(workspace, customers)`` writes, into ``workspace``:

* ``raw/``       the five raw sources (CRM members, online orders and store POS month by month, app events month by
                 month as Parquet, social interactions), with the mess real exports have: mixed phone / e-mail / city /
                 gender spellings, duplicate and corrupt rows, late arrivals, placeholder identifiers;
* ``external/``  enrichment sources keyed by hashed phone / hashed e-mail / city;
* ``truth/``     the latent traits of every person (``persons.parquet``) and, for every raw file ``F``, which person
                 produced each data row (``records/F.parquet``: ``row`` 1-based, header excluded; ``person_id``);
* ``persona.yaml`` (``default_config()``) and ``secrets.env`` (a random salt, written only when missing).

Everything is drawn from ``numpy.random.default_rng`` streams derived from ``seed`` (one per stage and month), so
the same seed gives the same bytes whatever the date or machine; nothing global is touched. The work is vectorised
over people and rows (Python loops only run over months, categories, files or formats) and memory is bounded by
one month of events, so a million customers fit in a couple of GB.

The world, in short: people with demographics, an income band, a purchase rate (Gamma), a log-normal order value,
a channel mix (store-only / online-only / omni), discount and return habits and concentrated category preferences
(Dirichlet). Some acquire a new interest mid-span, visible in browsing two to six weeks before the first purchase.
People join over time; a share churn, with purchases fading over the 30-120 days before churn and app engagement
fading earlier still. Latents are written to ``truth/`` only; the sources carry noisy evidence of them.
"""

from __future__ import annotations

import hashlib

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

__all__ = ["generate", "default_config", "CATEGORIES", "CATEGORY_ZH", "CATEGORY_CODES", "CITIES"]

# ----------------------------------------------------------------------------------------------------------------
# the world's vocabulary
# ----------------------------------------------------------------------------------------------------------------

CATEGORIES = ("apparel", "shoes", "beauty", "skincare", "electronics", "home",
              "food", "baby", "sports", "books", "jewelry", "pets")
CATEGORY_ZH = ("服装", "鞋靴", "彩妆", "护肤", "数码", "家居", "食品", "母婴", "运动", "图书", "珠宝", "宠物")
CATEGORY_CODES = tuple(f"C{i + 1:02d}" for i in range(len(CATEGORIES)))
_NCAT = len(CATEGORIES)
# popularity, price level (log multiplier of a person's typical order value), return-rate multiplier
_CAT_POP = np.array([.16, .09, .10, .10, .10, .10, .10, .05, .06, .05, .03, .06])
_CAT_LOGP = np.log(np.array([1.0, 1.2, 0.8, 1.0, 2.6, 1.3, 0.5, 0.9, 1.0, 0.4, 3.0, 0.7]))
_CAT_RET = np.array([1.8, 1.7, 0.8, 0.7, 1.0, 0.9, 0.3, 0.8, 1.2, 0.4, 0.9, 0.6])

# (canonical pinyin, Chinese, English, abbreviation or None, tier, population in thousands, income index)
CITIES = (
    ("shanghai", "上海", "Shanghai", "SH", 1, 24870, 182), ("beijing", "北京", "Beijing", "BJ", 1, 21890, 178),
    ("guangzhou", "广州", "Guangzhou", "GZ", 1, 18730, 151), ("shenzhen", "深圳", "Shenzhen", "SZ", 1, 17560, 169),
    ("chengdu", "成都", "Chengdu", None, 2, 21190, 112), ("chongqing", "重庆", "Chongqing", None, 2, 32050, 96),
    ("hangzhou", "杭州", "Hangzhou", None, 2, 12370, 146), ("wuhan", "武汉", "Wuhan", None, 2, 13650, 117),
    ("xian", "西安", "Xi'an", None, 2, 12950, 101), ("suzhou", "苏州", "Suzhou", None, 2, 12910, 141),
    ("nanjing", "南京", "Nanjing", None, 2, 9420, 137), ("tianjin", "天津", "Tianjin", None, 2, 13730, 116),
    ("changsha", "长沙", "Changsha", None, 2, 10420, 121), ("zhengzhou", "郑州", "Zhengzhou", None, 2, 12820, 99),
    ("qingdao", "青岛", "Qingdao", None, 3, 10250, 114), ("ningbo", "宁波", "Ningbo", None, 3, 9620, 131),
    ("xiamen", "厦门", "Xiamen", None, 3, 5300, 126), ("hefei", "合肥", "Hefei", None, 3, 9630, 108),
    ("kunming", "昆明", "Kunming", None, 3, 8500, 94), ("shenyang", "沈阳", "Shenyang", None, 3, 9140, 93),
    ("dalian", "大连", "Dalian", None, 3, 7450, 104), ("nanning", "南宁", "Nanning", None, 4, 8890, 84),
    ("wenzhou", "温州", "Wenzhou", None, 4, 9670, 109), ("luoyang", "洛阳", "Luoyang", None, 4, 7070, 79),
    ("guilin", "桂林", "Guilin", None, 4, 4930, 76), ("yangzhou", "扬州", "Yangzhou", None, 4, 4580, 101),
    ("sanya", "三亚", "Sanya", None, 5, 1030, 93), ("lijiang", "丽江", "Lijiang", None, 5, 1250, 71),
    ("zunyi", "遵义", "Zunyi", None, 5, 6600, 69), ("ganzhou", "赣州", "Ganzhou", None, 5, 8970, 64),
    ("qujing", "曲靖", "Qujing", None, 5, 5760, 66),
)
_NCITY = len(CITIES)
_CITY_TIER = np.array([c[4] for c in CITIES])
_CITY_W = np.array([c[5] for c in CITIES], float) * np.array([0, 2.2, 1.3, 1.0, 0.7, 0.5])[_CITY_TIER]
_CITY_W /= _CITY_W.sum()
_STORES_PER_TIER = np.array([0, 24, 12, 8, 5, 3])


def _city_variants(city: tuple) -> list[str]:
    """The five spellings a city is written in, in a fixed order (see _CITY_VARIANT_P)."""
    slug, zh, en, abbr = city[:4]
    return [zh, zh + "市", en, slug + " ", abbr if abbr else en.upper()]


_CITY_VARIANT_P = np.array([.45, .20, .15, .10, .10])
INCOME_BANDS = ("low", "middle", "upper_middle", "high")
SPEND_LEVELS = ("low", "medium", "high", "vip")
CHANNELS = ("store_only", "online_only", "omni")

_SURNAMES = ("wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he lin gao luo zheng liang xie "
             "song tang han feng deng cao peng zeng xiao tian dong pan yuan cai jiang yu du ye cheng wei su lu ding "
             "ren shen yao").split()
_GIVEN = ("wei fang na min jing li qiang lei jun yang yong yan jie tao ming chao xiuying xia ping gang hua hui dan "
          "ling kai xin yu hao yi jia qian ting fei bo lin peng xue mei qing rui chen long hong bin zhen han lu ning "
          "xuan zihan yuxuan haoran yichen zixuan xinyi").split()
_DOMAINS = ("qq", "163", "126", "gmail", "outlook", "hotmail", "sina", "foxmail", "139", "icloud")
_DOMAIN_P = np.array([.20, .22, .10, .10, .08, .06, .08, .06, .05, .05])
_PHONE_PREFIXES = np.array([130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 145, 147, 150, 151, 152, 153, 155, 156,
                            157, 158, 159, 166, 170, 171, 173, 175, 176, 177, 178, 180, 181, 182, 183, 184, 185, 186,
                            187, 188, 189, 191, 198, 199])
PLACEHOLDER_PHONES = ("13800000000", "00000000000")
PLACEHOLDER_EMAILS = ("test@test.com", "noemail@none.com")
_RESERVED_PHONES = np.array([13800000000, 13888888888, 13900000000])

# Phone spellings: 0 13812345678, 1 +86 138 1234 5678, 2 +86-138-1234-5678, 3 0086 13812345678, 4 86-13812345678,
# 5 (+86)138 1234 5678, 6 013812345678, 7 138-1234-5678, 8 " 138 1234 5678 ", 9 +8613812345678;
# invalid: 10 12345 (cut short), 11 1381234567x.
_PHONE_FMT = {
    "crm": np.array([.52, .08, .05, .05, .04, .04, .04, .08, .04, .06]),
    "online": np.array([.58, .10, .04, .03, .03, .03, .02, .06, .03, .08]),
    "pos": np.array([.74, 0, 0, 0, 0, 0, .05, .16, .05, 0]),
    "social": np.array([.55, .15, .05, .05, .05, .05, 0, .03, 0, .07]),
}

_HOURS_ONLINE = np.array([3, 2, 1, .5, .3, .3, .5, 1, 2, 3, 4, 4, 5, 4, 3, 3, 3, 4, 5, 6, 8, 9, 8, 5], float)
_HOURS_POS = np.array([0] * 10 + [3, 4, 5, 5, 5, 6, 6, 6, 7, 8, 7, 5] + [0, 0], float)
_HOURS_APP = np.array([3, 2, 1, .5, .3, .4, 1, 2, 3, 3, 3, 4, 5, 4, 3, 3, 3, 4, 5, 6, 7, 8, 7, 5], float)
_WEEKDAY_POS = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.6, 1.5])      # Monday .. Sunday
# calendar-month seasonality (618 in June, Double 11 in November, Spring Festival dip)
_SEASON_ONLINE = np.array([1.0, .8, .95, .95, 1.0, 1.3, .95, .95, 1.0, 1.05, 1.6, 1.15])
_SEASON_POS = np.array([1.15, 1.05, .95, .95, 1.0, 1.05, 1.0, 1.0, 1.0, 1.1, 1.1, 1.15])
_SEASON_APP = np.array([1.0, .9, 1.0, 1.0, 1.0, 1.15, 1.0, 1.0, 1.0, 1.05, 1.3, 1.1])

_DAY = 86400
_TZ = 8 * 3600                      # Asia/Shanghai, no DST
_INF = np.int64(2 ** 61)
_EPOCH = date(1970, 1, 1)

# stream ids for np.random.default_rng([seed, stream, month])
_S_WORLD, _S_CRM, _S_ONLINE, _S_POS, _S_APP, _S_SOCIAL, _S_VENDOR, _S_PARTNER = range(1, 9)


# ----------------------------------------------------------------------------------------------------------------
# the config contract
# ----------------------------------------------------------------------------------------------------------------


def default_config(name: str = "demo") -> dict:
    """The persona.yaml content (a plain dict) that matches the files generate() writes."""
    city_map: dict[str, str] = {}
    for city in CITIES:
        for variant in _city_variants(city) + [city[0]]:
            city_map[variant.strip().casefold()] = city[0]
    category_map: dict[str, str] = {}
    for slug, zh, code in zip(CATEGORIES, CATEGORY_ZH, CATEGORY_CODES):
        category_map[zh] = slug
        category_map[code.casefold()] = slug
        category_map[slug] = slug
    return {
        "version": 1,
        "name": name,
        "timezone": "Asia/Shanghai",
        "phone_region": "CN",
        "sources": {
            "crm_members": {
                "channel": "crm", "kind": "profile", "path": "raw/crm_members.csv", "key": ["member_id"],
                "timestamp": {"column": "updated_at", "format": "%Y-%m-%d %H:%M:%S"},
                "identifiers": {"member_id": "member_id", "phone": "mobile", "email": "email"},
                "fields": {"gender": "gender", "birth_date": "birthday", "city": "city", "signup_at": "register_time",
                           "opt_out_enrichment": "opt_out_enrichment", "opt_out_marketing": "opt_out_marketing"},
            },
            "online_orders": {
                "channel": "online", "kind": "transactions", "path": "raw/online_orders/*.csv", "key": ["order_id"],
                "timestamp": {"column": "order_time", "format": "iso"},
                "identifiers": {"account_id": "account_id", "email": "buyer_email", "phone": "buyer_phone"},
                "fields": {"order_id": "order_id", "amount": "amount", "quantity": "quantity", "category": "category",
                           "discount": "discount_amount", "status": "status", "city": "ship_city"},
            },
            "store_pos": {
                "channel": "store", "kind": "transactions", "path": "raw/pos/*.csv", "key": ["txn_id"],
                "timestamp": {"column": "txn_time", "format": "%Y/%m/%d %H:%M"},
                "identifiers": {"member_id": "member_card", "phone": "phone"},
                "fields": {"order_id": "txn_id", "store_id": "store_id", "amount": "amount", "quantity": "qty",
                           "category": "category", "discount": "discount", "is_return": "is_return"},
            },
            "app_events": {
                "channel": "app", "kind": "events", "path": "raw/app_events/*.parquet", "key": ["event_id"],
                "timestamp": {"column": "event_time", "format": "epoch_ms"},
                "identifiers": {"device_id": "device_id", "account_id": "user_id"},
                "fields": {"event_type": "event_type", "category": "category", "platform": "platform"},
            },
            "social": {
                "channel": "social", "kind": "interactions", "path": "raw/social_interactions.csv",
                "key": ["interaction_id"],
                "timestamp": {"column": "interaction_time", "format": "iso"},
                "identifiers": {"social_id": "social_id", "phone": "bound_phone", "member_id": "member_id"},
                "fields": {"action": "action", "category": "topic"},
            },
        },
        "identity": {
            "max_component_size": 40,
            "identifiers": {
                "member_id": {"normalise": "id", "account": True},
                "account_id": {"normalise": "id", "account": True},
                "social_id": {"normalise": "id", "account": True},
                "phone": {"normalise": "phone", "max_accounts": 2,
                          "blocked": ["13800000000", "13888888888", "13900000000"]},
                "email": {"normalise": "email", "max_accounts": 2,
                          "blocked": ["test@test.com", "noemail@none.com", "a@a.com"]},
                "device_id": {"normalise": "id", "max_accounts": 1},
            },
        },
        "mappings": {
            "gender": {"m": "male", "male": "male", "男": "male", "1": "male",
                       "f": "female", "female": "female", "女": "female", "2": "female",
                       "u": None, "unknown": None},
            "city": city_map,
            "category": category_map,
            "event_type": {"pv": "product_view", "view": "product_view", "add_to_cart": "cart_add",
                           "session_start": "session_start", "product_view": "product_view",
                           "search": "search", "cart_add": "cart_add"},
        },
        "profile": {
            "attributes": {
                "gender": {"rule": "most_trusted", "sources": ["crm_members"]},
                "birth_date": {"rule": "most_trusted", "sources": ["crm_members"]},
                "city": {"rule": "most_frequent"},
                "opt_out_enrichment": {"rule": "most_recent"},
                "opt_out_marketing": {"rule": "most_recent"},
            },
        },
        "consent": {"missing": "granted"},
        "enrichment": {
            "vendor": {
                "provider": "third_party", "path": "external/vendor_profiles.csv",
                "key": {"column": "phone_sha256", "type": "phone_sha256"},
                "as_of": {"column": "as_of_date"},
                "fields": {"income_band": "income_band", "vendor_interests": "interests"},
            },
            "partner": {
                "provider": "partner", "path": "external/partner_spend.csv",
                "key": {"column": "email_sha256", "type": "email_sha256"},
                "as_of": {"column": "as_of_date"},
                "fields": {f"partner_spend_{c}": f"spend_{c}" for c in CATEGORIES},
            },
            "city_stats": {
                "provider": "public", "path": "external/city_stats.csv",
                "key": {"column": "city", "type": "city"},
                "as_of": {"date": "2026-06-30"},
                "fields": {"city_population": "population", "city_income_index": "income_index",
                           "city_tier": "city_tier"},
            },
        },
        "truth": {"path": "truth"},
    }


# ----------------------------------------------------------------------------------------------------------------
# vectorised string building
# ----------------------------------------------------------------------------------------------------------------


def _fixed_strings(mat: np.ndarray) -> pa.StringArray:
    """A string array from an (n, width) uint8 matrix of ASCII/UTF-8 bytes, every value exactly ``width`` bytes."""
    mat = np.ascontiguousarray(mat, dtype=np.uint8)
    n, width = mat.shape
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(mat))


def _to_matrix(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(n, max_len) uint8 matrix (zero padded) and byte lengths of a string array (nulls read as empty)."""
    arr = pc.fill_null(arr, "") if arr.null_count else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    off = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    lens = np.diff(off)
    width = int(lens.max()) if n else 0
    if width == 0:
        return np.zeros((n, 0), np.uint8), lens
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    cols = np.arange(width)
    idx = np.minimum(off[:-1, None] + cols, data.size - 1)
    return np.where(cols < lens[:, None], data[idx], 0).astype(np.uint8), lens


def _from_matrix(mat: np.ndarray, lens: np.ndarray) -> pa.StringArray:
    n = len(lens)
    data = mat[np.arange(mat.shape[1]) < lens[:, None]]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)))


def _put_digits(mat: np.ndarray, pos: int, values: np.ndarray, width: int) -> None:
    v = values.astype(np.int64)
    for k in range(width):
        mat[:, pos + width - 1 - k] = 48 + (v % 10)
        v = v // 10


def _ids(prefix: str, values: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """``prefix`` + zero-padded decimal ``values``; null where not ``valid``."""
    p = prefix.encode()
    mat = np.empty((len(values), len(p) + width), np.uint8)
    mat[:, :len(p)] = np.frombuffer(p, np.uint8)
    _put_digits(mat, len(p), np.maximum(values, 0), width)
    out = _fixed_strings(mat)
    if valid is not None and not valid.all():
        out = pc.if_else(pa.array(valid), out, pa.scalar(None, pa.string()))
    return out


def _days_to_civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month, day) of days since 1970-01-01 (proleptic Gregorian, vectorised)."""
    z = days.astype(np.int64) + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


def _fmt_time(secs: np.ndarray, fmt: str) -> pa.StringArray:
    """Format seconds since the epoch (wall clock, no zone arithmetic) with %Y %m %d %H %M %S and literals."""
    secs = secs.astype(np.int64)
    days = np.floor_divide(secs, _DAY)
    sod = secs - days * _DAY
    y, mo, d = _days_to_civil(days)
    fields = {"Y": (y, 4), "m": (mo, 2), "d": (d, 2), "H": (sod // 3600, 2), "M": (sod // 60 % 60, 2),
              "S": (sod % 60, 2)}
    tokens = re.findall(r"%[YmdHMS]|[^%]", fmt)
    width = sum(fields[t[1]][1] if t.startswith("%") else len(t.encode()) for t in tokens)
    mat = np.empty((len(secs), width), np.uint8)
    pos = 0
    for t in tokens:
        if t.startswith("%"):
            values, w = fields[t[1]]
            _put_digits(mat, pos, values, w)
        else:
            raw = t.encode()
            w = len(raw)
            mat[:, pos:pos + w] = np.frombuffer(raw, np.uint8)
        pos += w
    return _fixed_strings(mat)


def _cents(cents: np.ndarray) -> pa.StringArray:
    """Integer cents -> '129.90'."""
    cents = np.maximum(cents.astype(np.int64), 0)
    yuan = pc.cast(pa.array(cents // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), width=2, padding="0")
    return pc.binary_join_element_wise(yuan, frac, ".")


def _take(vocab: Iterable[str], idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """vocab[idx] as a string array; null where not ``valid``."""
    voc = pa.array(list(vocab), pa.string())
    mask = None if valid is None else np.ascontiguousarray(~np.asarray(valid, bool))
    ia = pa.array(np.ascontiguousarray(idx, np.int32), mask=mask)
    return voc.take(ia)


def _join(*parts, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in parts], sep)


def _null_where(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    if not mask.any():
        return arr
    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


def _fmt_phone(digits: np.ndarray, codes: np.ndarray) -> pa.Array:
    """Spell 11-digit numbers (int64) in format ``codes`` (see _PHONE_FMT); null where digits < 0 or code < 0."""
    valid = (digits > 0) & (codes >= 0)
    s = pc.cast(pa.array(np.where(valid, digits, 10000000000)), pa.string())
    a = pc.utf8_slice_codeunits(s, 0, 3)
    b = pc.utf8_slice_codeunits(s, 3, 7)
    c = pc.utf8_slice_codeunits(s, 7, 11)
    forms = [
        s, _join("+86 ", a, " ", b, " ", c), _join("+86-", a, "-", b, "-", c), _join("0086 ", s), _join("86-", s),
        _join("(+86)", a, " ", b, " ", c), _join("0", s), _join(a, "-", b, "-", c), _join(" ", a, " ", b, " ", c, " "),
        _join("+86", s), pc.utf8_slice_codeunits(s, 0, 5), _join(pc.utf8_slice_codeunits(s, 0, 10), "x"),
    ]
    used = np.unique(codes[valid])
    if used.size == 0:
        return pa.nulls(len(digits), pa.string())
    if used.size == 1:
        out = forms[int(used[0])]
    else:
        out = pc.choose(pa.array(np.where(valid, codes, used[0]).astype(np.int8)), *forms)
    return _null_where(out, ~valid)


def _phone_codes(rng: np.random.Generator, n: int, source: str, invalid: np.ndarray | None = None) -> np.ndarray:
    """Per-row phone spelling; rows in ``invalid`` get one of the two broken spellings."""
    codes = rng.choice(10, n, p=_PHONE_FMT[source] / _PHONE_FMT[source].sum())
    if invalid is not None:
        codes = np.where(invalid, 10 + rng.integers(0, 2, n), codes)
    return codes


def _sha256_hex(arr: pa.Array) -> pa.StringArray:
    """Lower-case hex SHA-256 of each (UTF-8) value of a string array (hashlib: C speed, a few hundred ns a value)."""
    return pa.array([None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest() for v in arr.to_pylist()],
                    pa.string())


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------

_QUOTE_RE = r'[",\r\n]'


def _csv_lines(columns: list[pa.Array], truncate: np.ndarray | None = None) -> pa.Array:
    """One CSV line (with its newline) per row. Rows with ``truncate`` > 0 keep only that many fields."""
    cols = []
    for col in columns:
        col = pc.fill_null(col, "") if col.null_count else col
        needs = pc.match_substring_regex(col, _QUOTE_RE)
        if pc.any(needs).as_py():
            quoted = _join('"', pc.replace_substring(col, '"', '""'), '"')
            col = pc.if_else(needs, quoted, col)
        cols.append(col)
    line = pc.binary_join_element_wise(*cols, ",")
    if truncate is not None and truncate.any():
        for k in np.unique(truncate[truncate > 0]):
            short = pc.binary_join_element_wise(*cols[:int(k)], ",") if k > 1 else cols[0]
            line = pc.if_else(pa.array(truncate == k), short, line)
    return _join(line, "\n")


def _string_bytes(arr: pa.Array) -> memoryview:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return memoryview(b"")
    off = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    return memoryview(arr.buffers()[2])[int(off[0]):int(off[-1])]


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_atomic(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _CsvStream:
    """A CSV written chunk by chunk under a temporary name and moved into place on close."""

    def __init__(self, path: Path, header: list[str]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_path(path)
        self.fh = open(self.tmp, "wb")
        self.fh.write((",".join(header) + "\n").encode())
        self.rows = 0
        self.pids: list[np.ndarray] = []

    def write(self, columns: list[pa.Array], pid: np.ndarray) -> None:
        if len(pid):
            self.fh.write(_string_bytes(_csv_lines(columns)))
            self.rows += len(pid)
            self.pids.append(pid)

    def close(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        if self.tmp.exists():
            self.tmp.unlink()


# ----------------------------------------------------------------------------------------------------------------
# the span
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Span:
    start: int                                   # local wall-clock seconds since the epoch, inclusive
    end: int                                     # exclusive
    months: list[tuple[str, int, int, int]]      # (YYYY-MM, calendar month 1..12, start, end)


def _span(end: date, months: int) -> _Span:
    y, m = end.year, end.month
    first_y, first_m = divmod(y * 12 + m - 1 - (months - 1), 12)
    out = []
    for i in range(months):
        yy, mm = divmod(first_y * 12 + first_m + i, 12)
        ms = date(yy, mm + 1, 1)
        ny, nm = divmod(yy * 12 + mm + 1, 12)
        me = min(date(ny, nm + 1, 1), end + timedelta(days=1))
        out.append((f"{yy:04d}-{mm + 1:02d}", mm + 1, _secs(ms), _secs(me)))
    return _Span(out[0][2], out[-1][3], out)


def _secs(d: date) -> int:
    return (d - _EPOCH).days * _DAY


# ----------------------------------------------------------------------------------------------------------------
# people
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _World:
    n: int
    span: _Span
    arrays: dict = field(default_factory=dict)

    def __getattr__(self, name):               # W.rate is W.arrays["rate"]
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None


def _unique_draw(rng: np.random.Generator, draw: Callable[[int], np.ndarray], k: int,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    vals = draw(k)
    while True:
        _, first = np.unique(vals, return_index=True)
        bad = np.ones(k, bool)
        bad[first] = False
        if exclude is not None:
            bad |= np.isin(vals, exclude)
        if not bad.any():
            return vals
        vals[bad] = draw(int(bad.sum()))


def _draw_phones(rng: np.random.Generator, k: int) -> np.ndarray:
    return _PHONE_PREFIXES[rng.integers(0, _PHONE_PREFIXES.size, k)] * 100_000_000 + rng.integers(0, 100_000_000, k)


def _window_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """A time in [lo, hi) per row, at a plausible hour of day when that stays inside the window."""
    t = lo + (rng.random(lo.size) * (hi - lo)).astype(np.int64)
    tod = rng.choice(24, lo.size, p=hours / hours.sum()) * 3600 + rng.integers(0, 3600, lo.size)
    t2 = np.floor_divide(t, _DAY) * _DAY + tod
    return np.where((t2 >= lo) & (t2 < hi), t2, t)


def _make_world(seed: int, n: int, span: _Span, end: date) -> _World:
    rng = np.random.default_rng([seed, _S_WORLD])
    W = _World(n, span)
    A = W.arrays
    start, stop = span.start, span.end

    # demographics
    female = rng.random(n) < 0.54
    age = 18 + 52.99 * rng.beta(2.0, 3.0, n)                     # years at the end of the span: 18 .. 70
    A["female"] = female
    A["birth_days"] = np.minimum((end - _EPOCH).days - age * 365.2425, (end - _EPOCH).days - 18 * 366).astype(np.int64)
    city = rng.choice(_NCITY, n, p=_CITY_W)
    tier = _CITY_TIER[city]
    A["city"], A["tier"] = city, tier
    z_income = rng.normal(0, 1, n) + np.array([0, .6, .3, 0, -.3, -.5])[tier] + np.where(age > 30, .2, -.2)
    income = np.searchsorted(np.array([-0.55, 0.55, 1.35]), z_income)
    A["income"] = income
    A["opt_enrich"] = rng.random(n) < 0.10
    A["opt_mkt"] = rng.random(n) < np.where(A["opt_enrich"], 0.30, 0.056)

    # channel mix and shopping habits
    u = rng.random(n)
    channel = np.where(u < 0.27, 0, np.where(u < 0.55, 1, 2))
    A["channel"] = channel
    A["online_share"] = np.where(channel == 0, 0.0, np.where(channel == 1, 1.0, rng.beta(2, 2, n)))
    A["rate"] = rng.gamma(1.0, 5.2, n) / 365.0                                 # orders per day while active
    A["mu"] = (np.log(150) + np.array([-.35, 0, .3, .6])[income] + np.array([0, .15, .08, 0, -.08, -.15])[tier]
               + rng.normal(0, .3, n))
    A["sigma"] = rng.uniform(.3, .75, n)
    A["disc"] = rng.beta(1.5, 4, n)
    A["ret"] = rng.beta(1.2, 12, n)

    # category preferences: concentrated Dirichlet tilted by gender and age
    tilt = np.ones((n, _NCAT))
    fem = female[:, None]
    tilt *= np.where(fem, [1.4, 1.1, 3.0, 2.2, .5, 1.1, 1, 1.2, .7, 1, 1.5, 1],
                     [.8, 1.0, .25, .5, 2.2, .9, 1, .8, 1.6, 1, .6, 1])
    young = (age < 30)[:, None]
    parent = ((age >= 25) & (age <= 40))[:, None]
    older = (age > 50)[:, None]
    tilt[:, 7:8] *= np.where(parent, 2.5, 0.4)
    tilt *= np.where(young, [1, 1.2, 1.2, 1, 1.2, .8, 1, 1, 1.2, 1, .8, 1], 1.0)
    tilt *= np.where(older, [.9, .9, .8, 1, .8, 1.5, 1.4, 1, .8, 1.2, 1.1, 1], 1.0)
    alpha = _CAT_POP * tilt
    alpha = 2.4 * alpha / alpha.sum(axis=1, keepdims=True)
    g = rng.gamma(alpha) + 1e-12
    prefs = g / g.sum(axis=1, keepdims=True)
    A["prefs"] = prefs
    cum = np.cumsum(prefs, axis=1)
    cum[:, -1] = 1.0
    A["cum_flat"] = (cum + np.arange(n)[:, None]).ravel()

    # lifecycle
    before = rng.random(n) < 0.42
    join = np.where(before, start - rng.random(n) * 3 * 365.25 * _DAY,
                    start + rng.random(n) * (stop - 14 * _DAY - start)).astype(np.int64)
    churn_lo = np.maximum(join + 75 * _DAY, start + 40 * _DAY)
    churner = (rng.random(n) < 0.36) & (churn_lo < stop - _DAY)
    churn_at = churn_lo + (rng.random(n) * (stop - churn_lo)).astype(np.int64)
    A["join"] = join
    A["churn"] = np.where(churner, churn_at, _INF)
    A["decay"] = (rng.uniform(30, 120, n) * _DAY).astype(np.int64)
    A["decay_app"] = A["decay"] + (rng.uniform(30, 90, n) * _DAY).astype(np.int64)   # the app fades first
    act_lo = np.maximum(join, start)
    act_hi = np.minimum(A["churn"], stop)
    A["act_lo"], A["act_hi"] = act_lo, act_hi

    # new interests (0-2), chosen among the person's least preferred categories
    k_new = rng.choice(3, n, p=[.55, .33, .12])
    lo, hi = act_lo + 30 * _DAY, act_hi - 7 * _DAY
    ok = hi > lo + 14 * _DAY
    ranked = np.argsort(prefs + rng.random((n, _NCAT)) * 1e-9, axis=1)
    r0 = rng.integers(0, 6, n)
    r1 = (r0 + 1 + rng.integers(0, 5, n)) % 6
    rows = np.arange(n)
    ni_cat = np.full((n, 2), -1, np.int64)
    ni_buy = np.full((n, 2), _INF, np.int64)
    ni_browse = np.full((n, 2), _INF, np.int64)
    ni_w = np.zeros((n, 2))
    for j, r in enumerate((r0, r1)):
        has = ok & (k_new > j)
        buy = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
        lead = (rng.uniform(14, 42, n) * _DAY).astype(np.int64)
        ni_cat[:, j] = np.where(has, ranked[rows, r], -1)
        ni_buy[:, j] = np.where(has, buy, _INF)
        ni_browse[:, j] = np.where(has, buy - lead, _INF)
        ni_w[:, j] = np.where(has, rng.uniform(.15, .7, n), 0.0)
    A["ni_cat"], A["ni_buy"], A["ni_browse"], A["ni_w"] = ni_cat, ni_buy, ni_browse, ni_w

    # phones (unique; ~2% change number mid-span) and e-mails (unique)
    has_phone = rng.random(n) >= 0.05
    changer = has_phone & (rng.random(n) < 0.02)
    n_ph, n_ch = int(has_phone.sum()), int(changer.sum())
    n_extra = int(round(0.55 * n_ph * 0.10)) + 1
    pool = _unique_draw(rng, lambda k: _draw_phones(rng, k), n_ph + n_ch + n_extra, _RESERVED_PHONES)
    phone = np.full(n, -1, np.int64)
    phone[has_phone] = pool[:n_ph]
    phone_old = np.full(n, -1, np.int64)
    phone_old[changer] = pool[n_ph:n_ph + n_ch]
    A["non_customer_phones"] = pool[n_ph + n_ch:]
    A["phone"], A["phone_old"] = phone, phone_old
    A["phone_change"] = np.where(changer, act_lo + (rng.random(n) * (act_hi - act_lo)).astype(np.int64), _INF)
    has_email = np.where(has_phone, rng.random(n) < 0.737, True)
    A["has_email"] = has_email
    _make_emails(rng, W, has_email)

    # CRM membership (~70%; store shoppers without a phone are always members so their receipts link)
    p_member = np.array([.9, .45, .8])[channel]
    member = (rng.random(n) < p_member) | ((channel != 1) & ~has_phone)
    member2 = member & has_phone & (rng.random(n) < 0.02)
    ids = rng.choice(90_000_000, int(member.sum() + member2.sum()), replace=False) + 10_000_000
    A["member1"] = np.full(n, -1, np.int64)
    A["member1"][member] = ids[:member.sum()]
    A["member2"] = np.full(n, -1, np.int64)
    A["member2"][member2] = ids[member.sum():]
    A["member2_reg"] = act_lo + (rng.random(n) * (act_hi - act_lo)).astype(np.int64)

    # shop accounts (everyone who buys online or uses the app; ~3% have two)
    has_acct = channel != 0
    acct2 = has_acct & (rng.random(n) < 0.03)
    ids = rng.choice(900_000_000, int(has_acct.sum() + acct2.sum()), replace=False) + 100_000_000
    A["acct"] = np.full((n, 2), -1, np.int64)
    A["acct"][has_acct, 0] = ids[:has_acct.sum()]
    A["acct"][acct2, 1] = ids[has_acct.sum():]
    # which of the person's contacts each account was registered with (at least one when the person has any)
    a_phone = np.zeros((n, 2), bool)
    a_email = np.zeros((n, 2), bool)
    a_phone[:, 0] = has_acct & has_phone
    a_email[:, 0] = has_acct & has_email
    p2 = acct2 & has_phone & ((rng.random(n) < 0.6) | ~has_email)
    a_phone[:, 1] = p2
    a_email[:, 1] = acct2 & has_email & ((rng.random(n) < 0.7) | ~p2)
    A["acct_phone"], A["acct_email"] = a_phone, a_email

    # anchor orders: every account places at least one order in the span
    ap = np.concatenate([np.nonzero(has_acct)[0], np.nonzero(acct2)[0]])
    A["anchor_order_p"] = ap
    A["anchor_order_slot"] = np.concatenate([np.zeros(has_acct.sum(), np.int64), np.ones(acct2.sum(), np.int64)])
    A["anchor_order_t"] = _window_times(rng, act_lo[ap], act_hi[ap], _HOURS_ONLINE)

    # app users, their devices (1-2; some households share one) and sessions
    app = has_acct & (rng.random(n) < np.array([0, .9, .85])[channel])
    app_idx = np.nonzero(app)[0]
    A["app"] = app
    A["sess_rate"] = np.where(app, rng.gamma(0.8, 11.0 / 0.8, n), 0.0) / 365.0
    A["depth"] = rng.uniform(2, 6, n)
    n_dev = np.where(app, 1 + (rng.random(n) < 0.3), 0)
    dev_owner = np.repeat(np.arange(n), n_dev)
    second = np.zeros(dev_owner.size, bool)
    second[1:] = dev_owner[1:] == dev_owner[:-1]
    platform = np.where(second, rng.choice(3, dev_owner.size, p=[.3, .3, .4]),
                        rng.choice(3, dev_owner.size, p=[.47, .43, .10]))
    A["dev_platform"] = platform
    A["dev_str"] = _uuid4(rng, dev_owner.size)
    dev = np.full((n, 3), -1, np.int64)
    dev_w = np.zeros((n, 3))
    first_dev = np.cumsum(n_dev) - n_dev
    dev[app, 0] = first_dev[app]
    dev_w[app, 0] = 1.0
    two = n_dev == 2
    dev[two, 1] = first_dev[two] + 1
    dev_w[two, 0], dev_w[two, 1] = 0.7, 0.3
    sharers = rng.permutation(app_idx)[:int(round(app_idx.size * 0.02)) // 2 * 2].reshape(-1, 2)
    owners, partners = sharers[:, 0], sharers[:, 1]
    dev[partners, 2] = dev[owners, 0]
    dev_w[partners, 2] = 0.35
    dev_w[partners] = dev_w[partners] / dev_w[partners].sum(axis=1, keepdims=True)
    A["dev"], A["dev_cw"] = dev, np.cumsum(dev_w, axis=1)
    A["shared_partner"] = np.full(n, -1, np.int64)
    A["shared_partner"][partners] = owners
    A["shared_partner"][owners] = partners
    # anchor sessions: each (device, user) pair has a logged-in session
    use_p = np.concatenate([np.repeat(np.arange(n), n_dev), partners])
    use_slot = np.concatenate([second.astype(np.int64), np.full(partners.size, 2)])
    A["anchor_app_p"], A["anchor_app_slot"] = use_p, use_slot
    A["anchor_app_t"] = _window_times(rng, act_lo[use_p], act_hi[use_p], _HOURS_APP)

    # social accounts (~30%), bound to a phone and/or a membership so they can be linked
    eligible = has_phone | member
    social = eligible & (rng.random(n) < 0.30 / max(eligible.mean(), 1e-9))
    bound = social & has_phone & (rng.random(n) < 0.75)
    linked = social & member & (rng.random(n) < 0.5)
    bound |= social & ~bound & ~linked & has_phone
    linked |= social & ~bound & ~linked
    A["social"], A["soc_bound"], A["soc_member"] = social, bound, linked
    A["soc_str"] = _base62_ids(rng, n, "wx_", 16)
    A["soc_rate"] = np.where(social, rng.gamma(0.7, 8.5 / 0.7, n), 0.0) / 365.0
    sp = np.nonzero(social)[0]
    A["anchor_soc_p"] = sp
    A["anchor_soc_t"] = _window_times(rng, act_lo[sp], act_hi[sp], _HOURS_APP)

    # stores: a home store in the person's city
    n_stores = _STORES_PER_TIER[_CITY_TIER]
    A["store_offset"] = np.cumsum(n_stores) - n_stores
    A["n_stores"] = n_stores
    A["home_store"] = A["store_offset"][city] + (rng.random(n) * n_stores[city]).astype(np.int64)

    # value: expected yearly spend and its level
    price = np.exp(A["mu"] + A["sigma"] ** 2 / 2) * (prefs @ np.exp(_CAT_LOGP))
    A["aov"] = price
    A["annual_spend"] = A["rate"] * 365 * price
    A["spend_level"] = np.searchsorted(np.quantile(A["annual_spend"], [.4, .75, .93]), A["annual_spend"])
    return W


def _uuid4(rng: np.random.Generator, k: int) -> pa.StringArray:
    raw = rng.integers(0, 256, (k, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexchars = np.frombuffer(b"0123456789abcdef", np.uint8)
    hexed = np.empty((k, 32), np.uint8)
    hexed[:, 0::2] = hexchars[raw >> 4]
    hexed[:, 1::2] = hexchars[raw & 15]
    mat = np.full((k, 36), ord("-"), np.uint8)
    for dst, src, w in ((0, 0, 8), (9, 8, 4), (14, 12, 4), (19, 16, 4), (24, 20, 12)):
        mat[:, dst:dst + w] = hexed[:, src:src + w]
    return _fixed_strings(mat)


def _base62_ids(rng: np.random.Generator, k: int, prefix: str, width: int) -> pa.StringArray:
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)
    p = prefix.encode()
    mat = np.empty((k, len(p) + width), np.uint8)
    mat[:, :len(p)] = np.frombuffer(p, np.uint8)
    mat[:, len(p):] = alphabet[rng.integers(0, 62, (k, width))]
    return _fixed_strings(mat)


def _make_emails(rng: np.random.Generator, W: _World, has_email: np.ndarray) -> None:
    """Unique lower-case addresses: local part and domain name (every domain is '<name>.com')."""
    idx = np.nonzero(has_email)[0]
    k = idx.size
    sn = _take(_SURNAMES, rng.integers(0, len(_SURNAMES), k))
    gn = _take(_GIVEN, rng.integers(0, len(_GIVEN), k))
    byear = _days_to_civil(W.arrays["birth_days"][idx])[0]
    nn = pc.cast(pa.array(rng.integers(1, 100, k)), pa.string())
    yy = pc.utf8_lpad(pc.cast(pa.array(byear % 100), pa.string()), width=2, padding="0")
    yyyy = pc.cast(pa.array(byear), pa.string())
    qq = pc.cast(pa.array(rng.integers(10_000, 3_000_000_000, k)), pa.string())
    forms = [_join(gn, ".", sn), _join(sn, gn, nn), _join(gn, "_", sn, yy), qq, _join(sn, ".", gn, nn),
             _join(pc.utf8_slice_codeunits(sn, 0, 1), gn, yyyy)]
    style = rng.choice(len(forms), k, p=[.22, .18, .14, .20, .14, .12])
    local = pc.choose(pa.array(style.astype(np.int8)), *forms)
    dom_idx = np.where(style == 3, 0, rng.choice(len(_DOMAINS), k, p=_DOMAIN_P))
    dom = _take(_DOMAINS, dom_idx)
    while True:                                             # make every address unique (a few rounds at most)
        full = pc.binary_join_element_wise(local, dom, "@").to_pandas()
        dup = full.duplicated().to_numpy()
        if not dup.any():
            break
        extra = pc.cast(pa.array(rng.integers(100, 10_000, k)), pa.string())
        local = pc.if_else(pa.array(dup), _join(local, extra), local)
    pos = np.full(W.n, -1, np.int64)
    pos[idx] = np.arange(k)
    take_idx = pa.array(np.maximum(pos, 0).astype(np.int32), mask=pos < 0)
    W.arrays["email_local"] = local.take(take_idx)
    W.arrays["email_dom"] = dom.take(take_idx)


# ----------------------------------------------------------------------------------------------------------------
# per-row helpers shared by the sources
# ----------------------------------------------------------------------------------------------------------------


def _life(t: np.ndarray, churn: np.ndarray, decay: np.ndarray, floor: float) -> np.ndarray:
    """Intensity multiplier: 1 until ``decay`` before churn, then fading linearly to ``floor`` at churn."""
    x = (churn - t) / decay
    return np.clip(floor + (1 - floor) * x, floor, 1.0)


def _thin(rng: np.random.Generator, idx: np.ndarray, rate_day: np.ndarray, lo_w: np.ndarray, hi_w: np.ndarray,
          ms: int, me: int, hours: np.ndarray, mult: Callable[[np.ndarray, np.ndarray], np.ndarray],
          weekday: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inhomogeneous Poisson events in [ms, me) for people ``idx`` by thinning: (person, local time)."""
    lo = np.maximum(lo_w, ms)
    hi = np.minimum(hi_w, me)
    dur = np.maximum(hi - lo, 0)
    wmax = 1.0 if weekday is None else float(weekday.max())
    k = rng.poisson(rate_day * wmax * dur / _DAY)
    p = np.repeat(idx, k)
    lo_r, hi_r = np.repeat(lo, k), np.repeat(hi, k)
    t = lo_r + (rng.random(p.size) * (hi_r - lo_r)).astype(np.int64)
    day = np.floor_divide(t, _DAY)
    t = day * _DAY + rng.choice(24, p.size, p=hours / hours.sum()) * 3600 + rng.integers(0, 3600, p.size)
    acc = mult(p, t)
    if weekday is not None:
        acc = acc * weekday[(day + 3) % 7] / wmax
    keep = (t >= lo_r) & (t < hi_r) & (rng.random(p.size) < acc)
    return p[keep], t[keep]


def _sample_cats(rng: np.random.Generator, W: _World, p: np.ndarray, t: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Category per event from the person's preferences, plus any new interest active at ``t``."""
    base = np.searchsorted(W.cum_flat, p + rng.random(p.size), side="right") - p * _NCAT
    base = np.clip(base, 0, _NCAT - 1)
    w0 = np.where(t >= starts[p, 0], W.ni_w[p, 0], 0.0)
    w1 = np.where(t >= starts[p, 1], W.ni_w[p, 1], 0.0)
    v = rng.random(p.size) * (1 + w0 + w1)
    return np.where(v < w0, W.ni_cat[p, 0], np.where(v < w0 + w1, W.ni_cat[p, 1], base))


def _phone_at(W: _World, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.where((W.phone_old[p] > 0) & (t < W.phone_change[p]), W.phone_old[p], W.phone[p])


def _city_text(rng: np.random.Generator, city: np.ndarray) -> pa.Array:
    vocab = [v for c in CITIES for v in _city_variants(c)]
    return _take(vocab, city * 5 + rng.choice(5, city.size, p=_CITY_VARIANT_P))


def _emails(rng: np.random.Generator, W: _World, p: np.ndarray, show: np.ndarray, typo_ok: np.ndarray,
            typo_rate: float) -> tuple[pa.Array, np.ndarray]:
    """Per-row e-mail spelling (case / whitespace variants, rare typos where ``typo_ok``); null where not ``show``."""
    n = p.size
    ia = pa.array(p.astype(np.int64))
    local = W.email_local.take(ia)
    dom = W.email_dom.take(ia)
    case = rng.choice(4, n, p=[.86, .06, .05, .03])
    local_c = pc.choose(pa.array(case.astype(np.int8)), local, pc.utf8_title(local), pc.utf8_capitalize(local),
                        pc.utf8_upper(local))
    dom_c = pc.if_else(pa.array((case == 1) | (case == 3)), pc.utf8_upper(dom), dom)
    email = _join(local_c, "@", dom_c, ".", pc.if_else(pa.array(case == 3), pa.scalar("COM"), pa.scalar("com")))
    typo = show & typo_ok & (rng.random(n) < typo_rate)
    if typo.any():
        ti = np.nonzero(typo)[0]
        sub = email.take(pa.array(ti))
        mat, lens = _to_matrix(sub)
        llen = pc.utf8_length(local.take(pa.array(ti))).to_numpy().astype(np.int64)
        kind = rng.integers(0, 3, ti.size)
        pos = (rng.random(ti.size) * (llen - 1)).astype(np.int64)
        width = mat.shape[1]
        cols = np.broadcast_to(np.arange(width), mat.shape)
        src = np.where((kind == 0)[:, None] & (cols >= pos[:, None]), cols + 1, cols)          # drop a letter
        swap = kind == 1                                                                       # swap two letters
        src = np.where(swap[:, None] & (cols == pos[:, None]), cols + 1, src)
        src = np.where(swap[:, None] & (cols == pos[:, None] + 1), cols - 1, src)
        mat2 = np.take_along_axis(mat, np.minimum(src, width - 1), axis=1)
        lens2 = lens - (kind == 0)
        mat2 = np.where(np.arange(width) < lens2[:, None], mat2, 0).astype(np.uint8)
        fixed = _from_matrix(mat2, lens2)
        d = pc.replace_substring(sub, "gmail.", "gmial.")                                      # domain typos
        d = pc.replace_substring(d, "hotmail.", "hotmial.")
        d = pc.if_else(pc.equal(d, sub), pc.replace_substring_regex(sub, r"(?i)\.com$", ".con"), d)
        fixed = pc.if_else(pa.array(kind == 2), d, fixed)
        pos_all = np.full(n, -1, np.int64)
        pos_all[ti] = np.arange(ti.size)
        email = pc.if_else(pa.array(typo), fixed.take(pa.array(np.maximum(pos_all, 0))), email)
    ws = rng.random(n)
    email = pc.if_else(pa.array(ws < 0.02), _join(" ", email, " "), pc.if_else(pa.array(ws < 0.04),
                                                                                 _join(email, " "), email))
    return _null_where(email, ~show), typo


# ----------------------------------------------------------------------------------------------------------------
# chunks of formatted rows (a month's file may receive late rows from the previous month)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    cols: list[pa.Array]
    pid: np.ndarray
    key: np.ndarray         # sort key within the file

    def take(self, idx: np.ndarray) -> _Rows:
        ia = pa.array(idx.astype(np.int64))
        return _Rows([c.take(ia) for c in self.cols], self.pid[idx], self.key[idx])

    @staticmethod
    def concat(parts: list[_Rows | None]) -> _Rows:
        """The parts one after the other (None parts, such as an empty carry-over, are skipped)."""
        given = [q for q in parts if q is not None]
        full = [q for q in given if len(q.pid)]
        if not full:
            return given[0]
        if len(full) == 1:
            return full[0]
        cols = [pa.concat_arrays([q.cols[j] for q in full]) for j in range(len(full[0].cols))]
        return _Rows(cols, np.concatenate([q.pid for q in full]), np.concatenate([q.key for q in full]))

    def sorted(self) -> _Rows:
        return self.take(np.argsort(self.key, kind="stable"))


def _write_csv_rows(ws: Path, rel: str, header: list[str], rows: _Rows, truncate: np.ndarray | None = None,
                    written: dict | None = None) -> int:
    """A CSV file (header + rows) and its truth records."""
    n = len(rows.pid)
    body = _string_bytes(_csv_lines(rows.cols, truncate)) if n else b""
    _write_atomic(ws / rel, [(",".join(header) + "\n").encode(), body])
    _write_truth(ws, rel, rows.pid)
    if written is not None:
        written[rel] = n
    return n


def _write_truth(ws: Path, rel: str, pid: np.ndarray) -> None:
    table = pa.table({"row": pa.array(np.arange(1, pid.size + 1, dtype=np.int64)),
                      "person_id": pa.array(pid.astype(np.int64))})
    _write_parquet(ws / "truth" / "records" / (rel + ".parquet"), table)


def _at_least_one(rng: np.random.Generator, mask: np.ndarray, force: bool) -> np.ndarray:
    if force and mask.size and not mask.any():
        mask = mask.copy()
        mask[rng.integers(0, mask.size)] = True
    return mask


def _duplicates(rng: np.random.Generator, rows: _Rows, rate: float, jitter: int) -> _Rows:
    """Append exact copies of about ``rate`` of the rows, placed a little later in the file."""
    dup = np.nonzero(rng.random(len(rows.pid)) < rate)[0]
    if dup.size == 0:
        return rows
    copy = rows.take(dup)
    copy.key = copy.key + rng.integers(1, jitter, dup.size)
    return _Rows.concat([rows, copy])


# ----------------------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------------------

_CRM_HEADER = ["member_id", "mobile", "email", "gender", "birthday", "city", "register_time", "opt_out_enrichment",
               "opt_out_marketing", "updated_at"]
_ORDER_HEADER = ["order_id", "account_id", "buyer_email", "buyer_phone", "order_time", "amount", "quantity", "category",
                 "discount_amount", "status", "ship_city"]
_POS_HEADER = ["txn_id", "store_id", "member_card", "phone", "txn_time", "amount", "qty", "category", "discount",
               "is_return"]
_SOCIAL_HEADER = ["interaction_id", "social_id", "bound_phone", "member_id", "interaction_time", "action", "topic"]


def _crm(seed: int, W: _World, ws: Path, written: dict) -> int:
    rng = np.random.default_rng([seed, _S_CRM])
    m1 = np.nonzero(W.member1 >= 0)[0]
    m2 = np.nonzero(W.member2 >= 0)[0]
    p = np.concatenate([m1, m2])
    second = np.concatenate([np.zeros(m1.size, bool), np.ones(m2.size, bool)])
    n = p.size
    mid = np.where(second, W.member2[p], W.member1[p])
    reg = np.where(second, np.maximum(W.member2_reg[p], W.join[p]), W.join[p])
    hi = np.maximum(np.minimum(W.churn[p] + 90 * _DAY, W.span.end), reg + 60)
    upd = reg + (rng.random(n) * (hi - reg)).astype(np.int64)

    phone = np.where(W.phone[p] > 0, _phone_at(W, p, upd), -1)
    show_email = W.has_email[p] & ((rng.random(n) < np.where(second, 0.5, 0.95)) | ((phone < 0) & ~second))
    valid_phone_row = phone > 0
    invalid = valid_phone_row & show_email & (rng.random(n) < 0.002)
    mobile = _fmt_phone(phone, _phone_codes(rng, n, "crm", invalid))
    email, typo = _emails(rng, W, p, show_email, valid_phone_row & ~invalid, 0.011)
    eligible = valid_phone_row & ~invalid & ~typo
    placeholder = eligible & (rng.random(n) < 0.003)
    if not placeholder.any() and eligible.sum() >= 100:
        placeholder[rng.choice(np.nonzero(eligible)[0])] = True
    email = pc.if_else(pa.array(placeholder), _take(PLACEHOLDER_EMAILS, rng.integers(0, 2, n)), email)

    fem = W.female[p]
    gcode = np.where(fem, 5, 0) + rng.choice(5, n, p=[.35, .15, .1, .25, .15])
    unknown = rng.random(n)
    gcode = np.where(unknown < 0.02, 10, np.where(unknown < 0.04, 11, gcode))
    gender = _take(["M", "male", "Male", "男", "1", "F", "female", "Female", "女", "2", "U", ""], gcode)
    birthday = _null_where(_fmt_time(W.birth_days[p] * _DAY, "%Y-%m-%d"), rng.random(n) < 0.12)
    city = _city_text(rng, W.city[p])

    def yn(flag: np.ndarray) -> pa.Array:                 # Y/N, ~3% blank
        return _take(["N", "Y"], flag.astype(np.int64), rng.random(n) >= 0.03)

    upd_s = _fmt_time(upd, "%Y-%m-%d %H:%M:%S")
    # ~0.1% corrupt rows (at least a couple, so small demos show them too): impossible dates or truncated lines
    corrupt = np.zeros(n, bool)
    kind = np.zeros(n, np.int64)
    bad_idx = rng.choice(n, min(n // 20, max(2, int(rng.binomial(n, 0.001)))), replace=False)
    corrupt[bad_idx] = True
    kind[bad_idx] = np.arange(bad_idx.size) % 2
    bad_dates = _take(["2025-13-45 99:00:00", "2024-02-30 25:61:00", "0000-00-00 00:00:00", "2025-00-12 24:00:00"],
                      rng.integers(0, 4, n))
    upd_s = pc.if_else(pa.array(corrupt & (kind == 0)), bad_dates, upd_s)
    truncate = np.where(corrupt & (kind == 1), rng.integers(3, 7, n), 0)
    rows = _Rows([_ids("M", mid, 8), mobile, email, gender, birthday, city, _fmt_time(reg, "%Y-%m-%d %H:%M:%S"),
                  yn(W.opt_enrich[p]), yn(W.opt_mkt[p]), upd_s], p, reg * 4)
    trunc_all = truncate
    dup = np.nonzero(rng.random(n) < 0.01)[0]
    if dup.size:
        rows = _Rows.concat([rows, rows.take(dup)])
        rows.key[n:] += 1
        trunc_all = np.concatenate([truncate, truncate[dup]])
    order = np.argsort(rows.key, kind="stable")
    rows = rows.take(order)
    return _write_csv_rows(ws, "raw/crm_members.csv", _CRM_HEADER, rows, trunc_all[order], written)


def _online_month(seed: int, W: _World, mi: int, label: str, cal: int, ms: int, me: int,
                  rare: bool) -> tuple[_Rows, np.ndarray]:
    """A month of online orders (formatted), and per row whether it arrives late (in the next month's file).

    ``rare``: make sure this month has at least one of each rare corruption, so small demos show them too."""
    rng = np.random.default_rng([seed, _S_ONLINE, mi])
    idx = np.nonzero(W.online_share > 0)[0]
    rate = W.rate[idx] * W.online_share[idx] * _SEASON_ONLINE[cal - 1]
    p, t = _thin(rng, idx, rate, W.join[idx], W.churn[idx], ms, me, _HOURS_ONLINE,
                 lambda p, t: _life(t, W.churn[p], W.decay[p], 0.08))
    slot = np.where((W.acct[p, 1] > 0) & (rng.random(p.size) < 0.3), 1, 0)
    sel = (W.anchor_order_t >= ms) & (W.anchor_order_t < me)
    anchor = np.concatenate([np.zeros(p.size, bool), np.ones(sel.sum(), bool)])
    p = np.concatenate([p, W.anchor_order_p[sel]])
    t = np.concatenate([t, W.anchor_order_t[sel]])
    slot = np.concatenate([slot, W.anchor_order_slot[sel]])
    order = np.argsort(t, kind="stable")
    p, t, slot, anchor = p[order], t[order], slot[order], anchor[order]
    n = p.size

    cat = _sample_cats(rng, W, p, t, W.ni_buy)
    qty = rng.geometric(0.7, n)
    value = np.exp(W.mu[p] + _CAT_LOGP[cat] + W.sigma[p] * rng.standard_normal(n)) * (1 + 0.6 * (qty - 1))
    cents = np.maximum(np.round(value * 100), 100).astype(np.int64)
    ending = rng.random(n)
    cents = np.where(ending < .4, cents // 100 * 100 + 90, np.where(ending < .7, cents // 100 * 100, cents))
    promo = 1.6 if cal in (6, 11) else 1.0
    discounted = rng.random(n) < np.clip((0.08 + 0.6 * W.disc[p]) * promo, 0, 0.95)
    disc = np.where(discounted, np.round(cents * rng.uniform(.05, .35, n) / 10) * 10, 0).astype(np.int64)
    returned = rng.random(n) < np.clip(W.ret[p] * _CAT_RET[cat], 0, 0.9)
    ship = np.where(rng.random(n) < 0.94, W.city[p], rng.choice(_NCITY, n, p=_CITY_W))

    acct = W.acct[p, slot]
    a_ph, a_em = W.acct_phone[p, slot], W.acct_email[p, slot]
    fill_ph = a_ph & ((rng.random(n) < 0.80) | (anchor & a_ph))
    fill_em = a_em & ((rng.random(n) < 0.75) & ~(anchor & a_ph) | (anchor & ~a_ph))
    neither = ~fill_ph & ~fill_em
    fill_ph |= neither & a_ph
    fill_em |= neither & ~a_ph & a_em
    phone = _phone_at(W, p, t)
    invalid = fill_ph & fill_em & ~anchor & (rng.random(n) < 0.002)
    phone_s = _fmt_phone(np.where(fill_ph, phone, -1), _phone_codes(rng, n, "online", invalid))
    email_s, _ = _emails(rng, W, p, fill_em, fill_ph & ~invalid & ~anchor, 0.016)

    time_s = _fmt_time(t, "%Y-%m-%dT%H:%M:%S+08:00")
    future = _at_least_one(rng, rng.random(n) < 0.0005, rare)
    if future.any():
        time_s = pc.if_else(pa.array(future), _join("2099", pc.utf8_slice_codeunits(time_s, 4)), time_s)
    amount = _cents(cents)
    bad = _at_least_one(rng, rng.random(n) < 0.0005, rare)
    if bad.any():
        kinds = rng.integers(0, 3, n)
        amount = pc.if_else(pa.array(bad & (kinds == 0)), pa.scalar("N/A"), amount)
        amount = pc.if_else(pa.array(bad & (kinds == 1)), pc.replace_substring(amount, ".", "..", max_replacements=1),
                            amount)
        amount = _null_where(amount, bad & (kinds == 2))
    cat_vocab = list(CATEGORIES) + [c.title() for c in CATEGORIES] + [c.upper() for c in CATEGORIES]
    cat_s = _take(cat_vocab, cat + _NCAT * rng.choice(3, n, p=[.7, .25, .05]))
    seq = int(label[:4]) * 100 + int(label[5:])
    cols = [_ids(f"OD{seq}", np.arange(1, n + 1), 7), _ids("A", acct, 9), email_s, phone_s, time_s, amount,
            pc.cast(pa.array(qty), pa.string()), cat_s, _cents(disc), _take(["paid", "returned"], returned),
            _city_text(rng, ship)]
    late = rng.random(n) < 0.03
    return _Rows(cols, p, t), late


def _pos_month(seed: int, W: _World, mi: int, label: str, cal: int, ms: int, me: int, rare: bool) -> _Rows:
    """A month of store transactions, plus returns (which may fall in a later month: key says when)."""
    rng = np.random.default_rng([seed, _S_POS, mi])
    idx = np.nonzero(W.online_share < 1)[0]
    rate = W.rate[idx] * (1 - W.online_share[idx]) * _SEASON_POS[cal - 1]
    p, t = _thin(rng, idx, rate, W.join[idx], W.churn[idx], ms, me, _HOURS_POS,
                 lambda p, t: _life(t, W.churn[p], W.decay[p], 0.08), _WEEKDAY_POS / _WEEKDAY_POS.mean())
    n = p.size
    cat = _sample_cats(rng, W, p, t, W.ni_buy)
    qty = rng.geometric(0.6, n)
    value = np.exp(W.mu[p] + _CAT_LOGP[cat] + W.sigma[p] * rng.standard_normal(n) + 0.1) * (1 + 0.5 * (qty - 1))
    cents = np.maximum(np.round(value * 100), 100).astype(np.int64)
    cents = np.where(rng.random(n) < .6, cents // 100 * 100, cents)
    discounted = rng.random(n) < np.clip(0.05 + 0.5 * W.disc[p], 0, 0.9)
    disc = np.where(discounted, np.round(cents * rng.uniform(.05, .3, n) / 100) * 100, 0).astype(np.int64)
    away = rng.random(n) < 0.2
    travel = rng.random(n) < 0.03
    city = np.where(travel, rng.choice(_NCITY, n, p=_CITY_W), W.city[p])
    store = np.where(away | travel, W.store_offset[city] + (rng.random(n) * W.n_stores[city]).astype(np.int64),
                     W.home_store[p])

    member = W.member1[p] > 0
    card_shown = member & (rng.random(n) < 0.95)
    card = np.where((W.member2[p] > 0) & (rng.random(n) < 0.3), W.member2[p], W.member1[p])
    has_phone = W.phone[p] > 0
    phone_shown = has_phone & (rng.random(n) < np.where(card_shown, 0.25, np.where(member, 0.8, 0.985)))
    # returns: a second row with the same receipt a few days later
    ret = rng.random(n) < np.clip(W.ret[p] * _CAT_RET[cat] * 0.7, 0, 0.9)
    ri = np.nonzero(ret)[0]
    rt = t[ri] + (rng.uniform(1, 14, ri.size) * _DAY).astype(np.int64)
    rt = np.clip(rt // _DAY * _DAY + rng.integers(10, 21, ri.size) * 3600 + rng.integers(0, 3600, ri.size),
                 t[ri] + 3600, None)
    keep = rt < W.span.end
    ri, rt = ri[keep], rt[keep]
    allx = np.concatenate([np.arange(n), ri])
    tt = np.concatenate([t, rt])
    is_ret = np.concatenate([np.zeros(n, np.int64), np.ones(ri.size, np.int64)])
    order = np.argsort(tt, kind="stable")
    allx, tt, is_ret = allx[order], tt[order], is_ret[order]
    m = allx.size
    pp = p[allx]

    phone = np.where(phone_shown[allx], _phone_at(W, pp, tt), -1)
    invalid = (phone > 0) & card_shown[allx] & (rng.random(m) < 0.002)
    phone_s = _fmt_phone(phone, _phone_codes(rng, m, "pos", invalid))
    placeholder = (phone < 0) & (rng.random(m) < 0.014)
    phone_s = pc.if_else(pa.array(placeholder), _take(PLACEHOLDER_PHONES, rng.integers(0, 2, m)), phone_s)
    amount = _cents(cents[allx])
    bad = _at_least_one(rng, rng.random(m) < 0.0005, rare)
    if bad.any():
        kinds = rng.integers(0, 3, m)
        amount = pc.if_else(pa.array(bad & (kinds == 0)), pa.scalar("#VALUE!"), amount)
        amount = pc.if_else(pa.array(bad & (kinds == 1)), pc.replace_substring(amount, ".", "..", max_replacements=1),
                            amount)
        amount = _null_where(amount, bad & (kinds == 2))
    seq = int(label[:4]) * 100 + int(label[5:])
    cols = [_ids(f"T{seq}", np.arange(1, m + 1), 8),
            _store_ids(W, store[allx]),
            _ids("M", card[allx], 8, card_shown[allx]), phone_s, _fmt_time(tt, "%Y/%m/%d %H:%M"), amount,
            pc.cast(pa.array(qty[allx]), pa.string()), _take(CATEGORY_ZH, cat[allx]), _cents(disc[allx]),
            _take(["0", "1"], is_ret)]
    return _Rows(cols, pp, tt)


def _store_ids(W: _World, store: np.ndarray) -> pa.Array:
    """'S' + city number (2 digits) + store number within the city (3 digits), e.g. S01003."""
    city = np.searchsorted(W.store_offset, store, side="right") - 1
    return _ids("S", (city + 1) * 1000 + store - W.store_offset[city] + 1, 5)


def _app_month(seed: int, W: _World, mi: int, label: str, cal: int, ms: int, me: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng([seed, _S_APP, mi])
    idx = np.nonzero(W.app)[0]
    p, t = _thin(rng, idx, W.sess_rate[idx] * _SEASON_APP[cal - 1], W.join[idx], W.churn[idx], ms, me, _HOURS_APP,
                 lambda p, t: _life(t, W.churn[p], W.decay_app[p], 0.04))
    slot = (rng.random(p.size)[:, None] >= W.dev_cw[p]).sum(axis=1)
    slot = np.minimum(slot, 2)
    sel = (W.anchor_app_t >= ms) & (W.anchor_app_t < me)
    anchor = np.concatenate([np.zeros(p.size, bool), np.ones(sel.sum(), bool)])
    p = np.concatenate([p, W.anchor_app_p[sel]])
    t = np.concatenate([t, W.anchor_app_t[sel]])
    slot = np.concatenate([slot, W.anchor_app_slot[sel]])
    dev = W.dev[p, slot]
    bad = dev < 0                                       # cumulative weights rounding: fall back to the first device
    dev = np.where(bad, W.dev[p, 0], dev)
    s = p.size
    plat = W.dev_platform[dev]
    logged = anchor | (rng.random(s) < np.where(plat == 2, 0.4, 0.74))
    aslot = np.where((W.acct[p, 1] > 0) & (rng.random(s) < 0.3) & ~anchor, 1, 0)
    user = W.acct[p, aslot]
    legacy = (plat == 1) & (mi < 10) & (rng.random(s) < 0.25)
    sess_cat = _sample_cats(rng, W, p, t, W.ni_browse)

    k = 1 + rng.poisson(W.depth[p])
    k = np.where(anchor, np.maximum(k, 1), k)
    sidx = np.repeat(np.arange(s), k)
    starts = np.cumsum(k) - k
    pos = np.arange(sidx.size) - starts[sidx]
    gaps = rng.exponential(45.0, sidx.size)
    gaps[pos == 0] = 0
    cs = np.cumsum(gaps)
    offset_ms = ((cs - cs[starts][sidx]) * 1000).astype(np.int64) + rng.integers(0, 1000, sidx.size)
    ep = p[sidx]
    et = (t[sidx] - _TZ) * 1000 + offset_ms
    etype = np.where(pos == 0, 0, 1 + rng.choice(3, sidx.size, p=[.6, .22, .18]))
    own = _sample_cats(rng, W, ep, t[sidx], W.ni_browse)
    ecat = np.where(rng.random(sidx.size) < 0.65, sess_cat[sidx], own)
    # legacy app builds spell product_view as pv/view and cart_add as add_to_cart
    leg = legacy[sidx]
    tcode = np.where(leg & (etype == 1), 4 + rng.integers(0, 2, sidx.size), np.where(leg & (etype == 3), 6, etype))
    order = np.argsort(et, kind="stable")
    sidx, ep, et, tcode, ecat, pos = sidx[order], ep[order], et[order], tcode[order], ecat[order], pos[order]
    e = sidx.size
    seq = int(label[:4]) * 100 + int(label[5:])
    table = pa.table({
        "event_id": _ids(f"E{seq}", np.arange(1, e + 1), 9),
        "device_id": W.dev_str.take(pa.array(dev[sidx])),
        "user_id": _ids("A", user[sidx], 9, logged[sidx]),
        "event_time": pa.array(et, pa.int64()),
        "event_type": _take(["session_start", "product_view", "search", "cart_add", "pv", "view", "add_to_cart"],
                            tcode),
        "category": _take(CATEGORY_CODES, ecat, pos > 0),
        "platform": _take(["ios", "android", "web"], plat[sidx]),
    })
    return table, ep


def _social_month(seed: int, W: _World, mi: int, ms: int, me: int, first_id: int) -> tuple[list[pa.Array], np.ndarray]:
    rng = np.random.default_rng([seed, _S_SOCIAL, mi])
    idx = np.nonzero(W.social)[0]
    p, t = _thin(rng, idx, W.soc_rate[idx], W.join[idx], W.churn[idx], ms, me, _HOURS_APP,
                 lambda p, t: _life(t, W.churn[p], W.decay_app[p], 0.04))
    sel = (W.anchor_soc_t >= ms) & (W.anchor_soc_t < me)
    p = np.concatenate([p, W.anchor_soc_p[sel]])
    t = np.concatenate([t, W.anchor_soc_t[sel]])
    order = np.argsort(t, kind="stable")
    p, t = p[order], t[order]
    n = p.size
    action = rng.choice(5, n, p=[.45, .12, .10, .08, .25])
    topic = _sample_cats(rng, W, p, t, W.ni_browse)
    blank = rng.random(n) < np.where(action == 3, 0.6, 0.15)
    phone = np.where(W.soc_bound[p], _phone_at(W, p, t), -1)
    cols = [_ids("SI", first_id + np.arange(n), 10), W.soc_str.take(pa.array(p)),
            _fmt_phone(phone, _phone_codes(rng, n, "social")),
            _ids("M", W.member1[p], 8, W.soc_member[p]), _fmt_time(t - _TZ, "%Y-%m-%dT%H:%M:%SZ"),
            _take(["like", "comment", "share", "follow", "click"], action), _take(CATEGORIES, topic, ~blank)]
    return cols, p


# ----------------------------------------------------------------------------------------------------------------
# external sources
# ----------------------------------------------------------------------------------------------------------------


def _month_end(span: _Span, back: int) -> str:
    label = span.months[max(len(span.months) - 1 - back, 0)]
    return date.fromordinal(date(1970, 1, 1).toordinal() + label[3] // _DAY - 1).isoformat()


def _interest_text(rng: np.random.Generator, prefs: np.ndarray) -> pa.Array:
    n = prefs.shape[0]
    pick = rng.random((n, _NCAT)) < np.clip(2.2 * prefs, 0, 0.9) + 0.03
    parts = [_take(["", c], pick[:, k].astype(np.int64)) for k, c in enumerate(CATEGORIES)]
    text = pc.binary_join_element_wise(*parts, "|")       # (null_handling="skip" drops all-null rows in pyarrow 25)
    text = pc.utf8_trim(pc.replace_substring_regex(text, r"\|{2,}", "|"), "|")
    return _null_where(text, np.logical_not(pick.any(axis=1)))


def _vendor(seed: int, W: _World, ws: Path, written: dict) -> int:
    rng = np.random.default_rng([seed, _S_VENDOR])
    cand = np.nonzero(W.phone > 0)[0]
    p = cand[rng.random(cand.size) < 0.55]
    n = p.size
    phone = np.where((W.phone_old[p] > 0) & (rng.random(n) < 0.5), W.phone_old[p], W.phone[p])
    inc = W.income[p]
    noisy = np.clip(inc + rng.choice([-1, 0, 1], n, p=[.12, .76, .12]), 0, 3)
    band = _take(INCOME_BANDS, noisy, rng.random(n) >= 0.08)
    interests = _interest_text(rng, W.prefs[p])
    extra = W.non_customer_phones[:int(round(n * 0.10))]
    x = extra.size
    xprefs = rng.dirichlet(2.4 * _CAT_POP, x)
    phones = np.concatenate([phone, extra])
    dates = [_month_end(W.span, b) for b in (0, 3, 6, 9)]
    m = n + x
    table = [
        _sha256_hex(_join("+86", pc.cast(pa.array(phones), pa.string()))),
        pa.concat_arrays([band, _take(INCOME_BANDS, rng.choice(4, x, p=[.3, .4, .2, .1]), rng.random(x) >= 0.08)]),
        pa.concat_arrays([interests, _interest_text(rng, xprefs)]),
        _take(dates, rng.choice(4, m, p=[.4, .3, .2, .1])),
    ]
    pid = np.concatenate([p, np.full(x, -1, np.int64)])
    order = rng.permutation(m)
    rows = _Rows(table, pid, np.arange(m)).take(order)
    header = ["phone_sha256", "income_band", "interests", "as_of_date"]
    _write_atomic(ws / "external/vendor_profiles.csv", [(",".join(header) + "\n").encode(),
                                                         _string_bytes(_csv_lines(rows.cols))])
    written["external/vendor_profiles.csv"] = m
    return m


def _partner(seed: int, W: _World, ws: Path, written: dict) -> int:
    rng = np.random.default_rng([seed, _S_PARTNER])
    cand = np.nonzero(W.has_email)[0]
    p = cand[rng.random(cand.size) < 0.40]
    n = p.size
    local = W.email_local.take(pa.array(p))
    email = _join(local, "@", W.email_dom.take(pa.array(p)), ".com")
    total = W.annual_spend[p] * 0.6 * rng.lognormal(0, 0.6, n)
    g = rng.gamma(W.prefs[p] * 8 + 0.15)
    share = g / g.sum(axis=1, keepdims=True)
    share = np.where(share < 0.03, 0, share)
    spend = np.round(total[:, None] * share * 100).astype(np.int64)
    cols = [_sha256_hex(email), _take([_month_end(W.span, 1)], np.zeros(n, np.int64))]
    cols += [_cents(spend[:, k]) for k in range(_NCAT)]
    order = rng.permutation(n)
    rows = _Rows(cols, p, np.arange(n)).take(order)
    header = ["email_sha256", "as_of_date"] + [f"spend_{c}" for c in CATEGORIES]
    _write_atomic(ws / "external/partner_spend.csv", [(",".join(header) + "\n").encode(),
                                                       _string_bytes(_csv_lines(rows.cols))])
    written["external/partner_spend.csv"] = n
    return n


def _city_stats(ws: Path, written: dict) -> int:
    header = ["city", "population", "income_index", "city_tier"]
    lines = [",".join(header)] + [f"{c[0]},{c[5]},{c[6]},{c[4]}" for c in CITIES]
    _write_atomic(ws / "external/city_stats.csv", [("\n".join(lines) + "\n").encode()])
    written["external/city_stats.csv"] = len(CITIES)
    return len(CITIES)


def _truth_persons(W: _World, ws: Path, written: dict) -> None:
    n = W.n

    def utc(local: np.ndarray, ok: np.ndarray) -> pa.Array:
        ms = (np.where(ok, local, _TZ) - _TZ) * 1000
        return pa.array(ms, pa.timestamp("ms", tz="UTC"), mask=np.ascontiguousarray(~ok))

    def e164(digits: np.ndarray) -> pa.Array:
        return _null_where(_join("+86", pc.cast(pa.array(np.maximum(digits, 0)), pa.string())), digits <= 0)

    prefs = W.prefs
    top = np.argsort(-prefs, axis=1)[:, :3]
    top_cats = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)),
                                        _take(CATEGORIES, top.ravel()))
    email = _join(W.email_local, "@", W.email_dom, ".com")
    cols = {
        "person_id": pa.array(np.arange(n, dtype=np.int64)),
        "gender": _take(["male", "female"], W.female.astype(np.int64)),
        "birth_date": pa.array(W.birth_days.astype(np.int32), pa.date32()),
        "city": _take([c[0] for c in CITIES], W.city),
        "city_tier": pa.array(W.tier.astype(np.int8)),
        "phone": e164(W.phone),
        "phone_previous": e164(W.phone_old),
        "phone_changed_at": utc(W.phone_change, W.phone_old > 0),
        "email": email,
        "income_band": _take(INCOME_BANDS, W.income),
        "joined_at": utc(W.join, np.ones(n, bool)),
        "churn_at": utc(W.churn, W.churn < _INF),
        "churn_decay_days": pa.array((W.decay / _DAY).astype(np.float32)),
        "channel": _take(CHANNELS, W.channel),
        "online_share": pa.array(W.online_share.astype(np.float32)),
        "purchase_rate": pa.array((W.rate * 365).astype(np.float32)),
        "avg_order_value": pa.array(W.aov.astype(np.float32)),
        "expected_annual_spend": pa.array(W.annual_spend.astype(np.float32)),
        "spend_level": _take(SPEND_LEVELS, W.spend_level),
        "discount_affinity": pa.array(W.disc.astype(np.float32)),
        "return_rate": pa.array(W.ret.astype(np.float32)),
        "top_category": _take(CATEGORIES, top[:, 0]),
        "top_categories": top_cats,
    }
    for k, c in enumerate(CATEGORIES):
        cols[f"pref_{c}"] = pa.array(prefs[:, k].astype(np.float32))
    for j in range(2):
        has = W.ni_cat[:, j] >= 0
        cols[f"new_interest_{j + 1}"] = _take(CATEGORIES, np.maximum(W.ni_cat[:, j], 0), has)
        cols[f"new_interest_{j + 1}_browse_at"] = utc(W.ni_browse[:, j], has)
        cols[f"new_interest_{j + 1}_buy_at"] = utc(W.ni_buy[:, j], has)
    cols.update({
        "opt_out_enrichment": pa.array(W.opt_enrich),
        "opt_out_marketing": pa.array(W.opt_mkt),
        "member_id": _ids("M", W.member1, 8, W.member1 > 0),
        "member_id_2": _ids("M", W.member2, 8, W.member2 > 0),
        "account_id": _ids("A", W.acct[:, 0], 9, W.acct[:, 0] > 0),
        "account_id_2": _ids("A", W.acct[:, 1], 9, W.acct[:, 1] > 0),
        "social_id": _null_where(W.soc_str, ~W.social),
        "app_user": pa.array(W.app),
        "device_ids": _device_lists(W),
        "shares_device_with": pa.array(W.shared_partner, mask=W.shared_partner < 0),
    })
    _write_parquet(ws / "truth/persons.parquet", pa.table(cols))
    written["truth/persons.parquet"] = n


def _device_lists(W: _World) -> pa.Array:
    own = W.dev[:, :2]
    counts = (own >= 0).sum(axis=1)
    flat = own[own >= 0]
    offsets = np.zeros(W.n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), W.dev_str.take(pa.array(flat)))


# ----------------------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------------------

_MONTH_FILE = re.compile(r"^\d{4}-\d{2}\.(csv|parquet)(\.parquet)?$")


def generate(workspace: Path, customers: int, *, seed: int = 7, end: date = date(2026, 9, 30), months: int = 24,
             progress: Callable[[str, float], None] | None = None) -> dict:
    """Write realistic raw multi-channel data, external enrichment sources, ground truth, persona.yaml and secrets.env
    into workspace.

    Returns ``{"customers", "files": {relative path: data rows}, "rows": {source name: rows}, "seconds"}``;
    ``progress(stage, fraction_done)`` is called along the way. Same ``seed`` (and ``end``, ``months``): same bytes.
    """
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if months < 1:
        raise ValueError("months must be at least 1")
    began = time.perf_counter()
    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda stage, fraction: None)
    span = _span(end, months)
    written: dict[str, int] = {}

    report("people", 0.0)
    W = _make_world(seed, customers, span, end)
    report("crm", 0.05)
    _crm(seed, W, ws, written)

    social = _CsvStream(ws / "raw/social_interactions.csv", _SOCIAL_HEADER)
    try:
        carry_online: _Rows | None = None
        carry_pos: _Rows | None = None
        n_months = len(span.months)
        for mi, (label, cal, ms, me) in enumerate(span.months):
            report(f"month {label}", 0.08 + 0.8 * mi / n_months)
            last = mi == n_months - 1
            # online orders: ~3% arrive late (next month's file), ~0.5% are repeated (some in the next file)
            rare = mi == n_months // 2
            rows, late = _online_month(seed, W, mi, label, cal, ms, me, rare)
            rng = np.random.default_rng([seed, _S_ONLINE, mi, 1])
            if last:
                late[:] = False
            n = len(rows.pid)
            dup_next = ~late & (rng.random(n) < 0.002) & (not last)
            now = rows.take(np.nonzero(~late)[0])
            now = _duplicates(rng, now, 0.003, 7200)
            nxt = rows.take(np.nonzero(late | dup_next)[0])
            nxt.key = me + rng.integers(0, 3 * _DAY, len(nxt.pid))
            file_rows = _Rows.concat([carry_online, now]).sorted()
            _write_csv_rows(ws, f"raw/online_orders/{label}.csv", _ORDER_HEADER, file_rows, written=written)
            carry_online = nxt
            # store POS: returns dated next month go to next month's file; ~0.5% duplicate rows
            rows = _Rows.concat([carry_pos, _pos_month(seed, W, mi, label, cal, ms, me, rare)])
            rng = np.random.default_rng([seed, _S_POS, mi, 1])
            inside = rows.key < me
            now = _duplicates(rng, rows.take(np.nonzero(inside)[0]), 0.005, 1800).sorted()
            carry_pos = rows.take(np.nonzero(~inside)[0])
            _write_csv_rows(ws, f"raw/pos/{label}.csv", _POS_HEADER, now, written=written)
            # app events
            table, ep = _app_month(seed, W, mi, label, cal, ms, me)
            rel = f"raw/app_events/{label}.parquet"
            _write_parquet(ws / rel, table)
            _write_truth(ws, rel, ep)
            written[rel] = table.num_rows
            # social interactions (one file, appended month by month)
            cols, sp = _social_month(seed, W, mi, ms, me, social.rows + 1)
            social.write(cols, sp)
            del table, ep, rows, now
        social.close()
    except BaseException:
        social.abort()
        raise
    _write_truth(ws, "raw/social_interactions.csv", np.concatenate(social.pids) if social.pids else np.zeros(0))
    written["raw/social_interactions.csv"] = social.rows

    report("enrichment", 0.9)
    _vendor(seed, W, ws, written)
    _partner(seed, W, ws, written)
    _city_stats(ws, written)
    report("truth", 0.95)
    _truth_persons(W, ws, written)
    _remove_stale(ws, written)

    _write_atomic(ws / "persona.yaml",
                  [yaml.safe_dump(default_config(), allow_unicode=True, sort_keys=False).encode("utf-8")])
    env = ws / "secrets.env"
    if not env.exists():
        _write_atomic(env, [f"PERSONA_SALT={secrets.token_hex(16)}\n".encode()])
    report("done", 1.0)

    def total(prefix: str) -> int:
        return sum(v for k, v in written.items() if k.startswith(prefix))

    return {
        "customers": customers,
        "files": dict(sorted(written.items())),
        "rows": {
            "crm_members": written["raw/crm_members.csv"],
            "online_orders": total("raw/online_orders/"),
            "store_pos": total("raw/pos/"),
            "app_events": total("raw/app_events/"),
            "social": written["raw/social_interactions.csv"],
            "vendor": written["external/vendor_profiles.csv"],
            "partner": written["external/partner_spend.csv"],
            "city_stats": written["external/city_stats.csv"],
        },
        "seconds": round(time.perf_counter() - began, 3),
    }


def _remove_stale(ws: Path, written: dict) -> None:
    """Month files of an earlier run with another span would be read as data: remove the ones not written now."""
    for folder in ("raw/online_orders", "raw/pos", "raw/app_events"):
        for base, suffix in ((ws / folder, ""), (ws / "truth/records" / folder, ".parquet")):
            if not base.is_dir():
                continue
            for f in base.iterdir():
                rel = f"{folder}/{f.name[:-len(suffix)] if suffix else f.name}"
                if f.is_file() and _MONTH_FILE.match(f.name) and rel not in written:
                    f.unlink()
