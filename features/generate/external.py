"""The external (enrichment) sources: a data vendor's profiles, a partner's spend, public city statistics.

They are keyed the way real enrichment data is: by hashed phone (SHA-256 of the E.164 number), by hashed e-mail (of
the trimmed, lower-case address) or by city. They cover only part of the customers, the vendor also knows people who
never bought, and their values are noisy on their own account (the vendor's income band is sometimes a band off).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.generate.files import Rows, csv_lines, string_bytes, write_atomic
from features.generate.people import World
from features.generate.strings import concat, fmt_cents, null_where, sha256_hex, take
from features.generate.vocabulary import (
    CAT_POP, CATEGORIES, CITIES, DAY, INCOME_BANDS, NCAT, S_PARTNER, S_VENDOR, Span,
)


def _month_end(span: Span, back: int) -> str:
    """The last day in the span of the month ``back`` months before its last one (ISO date)."""
    label = span.months[max(len(span.months) - 1 - back, 0)]
    return date.fromordinal(date(1970, 1, 1).toordinal() + label[3] // DAY - 1).isoformat()


def _interest_text(rng: np.random.Generator, prefs: np.ndarray) -> pa.Array:
    """The vendor's interests: categories picked with odds growing with the preference, '|'-separated; null if none."""
    n = prefs.shape[0]
    pick = rng.random((n, NCAT)) < np.clip(2.2 * prefs, 0, 0.9) + 0.03
    parts = [take(["", c], pick[:, k].astype(np.int64)) for k, c in enumerate(CATEGORIES)]
    text = pc.binary_join_element_wise(*parts, "|")       # (null_handling="skip" drops all-null rows in pyarrow 25)
    text = pc.utf8_trim(pc.replace_substring_regex(text, r"\|{2,}", "|"), "|")
    return null_where(text, np.logical_not(pick.any(axis=1)))


def write_vendor(seed: int, W: World, ws: Path, written: dict) -> int:
    """external/vendor_profiles.csv: ~55% of the people with a phone (keyed by their current or previous number) and
    ~10% as many non-customers, with a noisy income band and interests, as of the last month's end or 3, 6, 9 before."""
    rng = np.random.default_rng([seed, S_VENDOR])
    cand = np.nonzero(W.phone > 0)[0]
    p = cand[rng.random(cand.size) < 0.55]
    n = p.size
    phone = np.where((W.phone_old[p] > 0) & (rng.random(n) < 0.5), W.phone_old[p], W.phone[p])
    inc = W.income[p]
    noisy = np.clip(inc + rng.choice([-1, 0, 1], n, p=[.12, .76, .12]), 0, 3)
    band = take(INCOME_BANDS, noisy, rng.random(n) >= 0.08)
    interests = _interest_text(rng, W.prefs[p])
    extra = W.non_customer_phones[:int(round(n * 0.10))]
    x = extra.size
    xprefs = rng.dirichlet(2.4 * CAT_POP, x)
    phones = np.concatenate([phone, extra])
    dates = [_month_end(W.span, b) for b in (0, 3, 6, 9)]
    m = n + x
    table = [
        sha256_hex(concat("+86", pc.cast(pa.array(phones), pa.string()))),
        pa.concat_arrays([band, take(INCOME_BANDS, rng.choice(4, x, p=[.3, .4, .2, .1]), rng.random(x) >= 0.08)]),
        pa.concat_arrays([interests, _interest_text(rng, xprefs)]),
        take(dates, rng.choice(4, m, p=[.4, .3, .2, .1])),
    ]
    pid = np.concatenate([p, np.full(x, -1, np.int64)])
    order = rng.permutation(m)
    rows = Rows(table, pid, np.arange(m)).take(order)
    header = ["phone_sha256", "income_band", "interests", "as_of_date"]
    write_atomic(ws / "external/vendor_profiles.csv", [(",".join(header) + "\n").encode(),
                                                       string_bytes(csv_lines(rows.cols))])
    written["external/vendor_profiles.csv"] = m
    return m


def write_partner(seed: int, W: World, ws: Path, written: dict) -> int:
    """external/partner_spend.csv: ~40% of the people with an e-mail, keyed by the hashed address, with a yearly spend
    per category that loosely follows their own spend and preferences."""
    rng = np.random.default_rng([seed, S_PARTNER])
    cand = np.nonzero(W.has_email)[0]
    p = cand[rng.random(cand.size) < 0.40]
    n = p.size
    local = W.email_local.take(pa.array(p))
    email = concat(local, "@", W.email_dom.take(pa.array(p)), ".com")
    total = W.annual_spend[p] * 0.6 * rng.lognormal(0, 0.6, n)
    g = rng.gamma(W.prefs[p] * 8 + 0.15)
    share = g / g.sum(axis=1, keepdims=True)
    share = np.where(share < 0.03, 0, share)
    spend = np.round(total[:, None] * share * 100).astype(np.int64)
    cols = [sha256_hex(email), take([_month_end(W.span, 1)], np.zeros(n, np.int64))]
    cols += [fmt_cents(spend[:, k]) for k in range(NCAT)]
    order = rng.permutation(n)
    rows = Rows(cols, p, np.arange(n)).take(order)
    header = ["email_sha256", "as_of_date"] + [f"spend_{c}" for c in CATEGORIES]
    write_atomic(ws / "external/partner_spend.csv", [(",".join(header) + "\n").encode(),
                                                     string_bytes(csv_lines(rows.cols))])
    written["external/partner_spend.csv"] = n
    return n


def write_city_stats(ws: Path, written: dict) -> int:
    """external/city_stats.csv: population, income index and tier of every city, keyed by its canonical name."""
    header = ["city", "population", "income_index", "city_tier"]
    lines = [",".join(header)] + [f"{c[0]},{c[5]},{c[6]},{c[4]}" for c in CITIES]
    write_atomic(ws / "external/city_stats.csv", [("\n".join(lines) + "\n").encode()])
    written["external/city_stats.csv"] = len(CITIES)
    return len(CITIES)
