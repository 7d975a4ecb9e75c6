"""The per-channel records: CRM members, online shop orders, store tills (POS), app/web events, social interactions.

Each month of a source is drawn from its own rng stream (``[seed, stream, month]``), so a month comes out the same
whatever was drawn before it. Events are inhomogeneous Poisson processes (``_thin``): a person's rate times the
season, the hour and weekday profile and the fade before churn (the app fades earlier than buying); categories follow
the person's preferences plus any new interest, which shows in browsing weeks before the first purchase. The CRM
export is written whole; the month sources return formatted rows and the caller decides which file each lands in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.generate.files import Rows, write_csv_rows
from features.generate.mess import at_least_one, city_text, email_text, phone_codes
from features.generate.people import World
from features.generate.strings import concat, fmt_cents, fmt_phone, fmt_time, id_text, null_where, take
from features.generate.vocabulary import (
    CAT_LOGP, CAT_RET, CATEGORIES, CATEGORY_CODES, CATEGORY_ZH, CITY_W, DAY, HOURS_APP, HOURS_ONLINE, HOURS_POS,
    NCAT, NCITY, PLACEHOLDER_EMAILS, PLACEHOLDER_PHONES, S_APP, S_CRM, S_ONLINE, S_POS, S_SOCIAL, SEASON_APP,
    SEASON_ONLINE, SEASON_POS, TZ, WEEKDAY_POS,
)

_CRM_HEADER = ["member_id", "mobile", "email", "gender", "birthday", "city", "register_time", "opt_out_enrichment",
               "opt_out_marketing", "updated_at"]
ORDER_HEADER = ["order_id", "account_id", "buyer_email", "buyer_phone", "order_time", "amount", "quantity", "category",
                "discount_amount", "status", "ship_city"]
POS_HEADER = ["txn_id", "store_id", "member_card", "phone", "txn_time", "amount", "qty", "category", "discount",
              "is_return"]
SOCIAL_HEADER = ["interaction_id", "social_id", "bound_phone", "member_id", "interaction_time", "action", "topic"]


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
    k = rng.poisson(rate_day * wmax * dur / DAY)
    p = np.repeat(idx, k)
    lo_r, hi_r = np.repeat(lo, k), np.repeat(hi, k)
    t = lo_r + (rng.random(p.size) * (hi_r - lo_r)).astype(np.int64)
    day = np.floor_divide(t, DAY)
    t = day * DAY + rng.choice(24, p.size, p=hours / hours.sum()) * 3600 + rng.integers(0, 3600, p.size)
    acc = mult(p, t)
    if weekday is not None:
        acc = acc * weekday[(day + 3) % 7] / wmax
    keep = (t >= lo_r) & (t < hi_r) & (rng.random(p.size) < acc)
    return p[keep], t[keep]


def _sample_cats(rng: np.random.Generator, W: World, p: np.ndarray, t: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Category per event from the person's preferences, plus any new interest active at ``t``."""
    base = np.searchsorted(W.cum_flat, p + rng.random(p.size), side="right") - p * NCAT
    base = np.clip(base, 0, NCAT - 1)
    w0 = np.where(t >= starts[p, 0], W.ni_w[p, 0], 0.0)
    w1 = np.where(t >= starts[p, 1], W.ni_w[p, 1], 0.0)
    v = rng.random(p.size) * (1 + w0 + w1)
    return np.where(v < w0, W.ni_cat[p, 0], np.where(v < w0 + w1, W.ni_cat[p, 1], base))


def _phone_at(W: World, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The number each person ``p`` had at ``t`` (the old one before a change of number)."""
    return np.where((W.phone_old[p] > 0) & (t < W.phone_change[p]), W.phone_old[p], W.phone[p])


# ----------------------------------------------------------------------------------------------------------------
# the sources
# ----------------------------------------------------------------------------------------------------------------


def write_crm(seed: int, W: World, ws: Path, written: dict) -> int:
    """raw/crm_members.csv: one row per membership (a few people hold two), as last updated, with ~1% exact
    duplicates, placeholder and misspelt e-mails and a few corrupt rows (impossible dates, cut lines)."""
    rng = np.random.default_rng([seed, S_CRM])
    m1 = np.nonzero(W.member1 >= 0)[0]
    m2 = np.nonzero(W.member2 >= 0)[0]
    p = np.concatenate([m1, m2])
    second = np.concatenate([np.zeros(m1.size, bool), np.ones(m2.size, bool)])
    n = p.size
    mid = np.where(second, W.member2[p], W.member1[p])
    reg = np.where(second, np.maximum(W.member2_reg[p], W.join[p]), W.join[p])
    hi = np.maximum(np.minimum(W.churn[p] + 90 * DAY, W.span.end), reg + 60)
    upd = reg + (rng.random(n) * (hi - reg)).astype(np.int64)

    phone = np.where(W.phone[p] > 0, _phone_at(W, p, upd), -1)
    show_email = W.has_email[p] & ((rng.random(n) < np.where(second, 0.5, 0.95)) | ((phone < 0) & ~second))
    valid_phone_row = phone > 0
    invalid = valid_phone_row & show_email & (rng.random(n) < 0.002)
    mobile = fmt_phone(phone, phone_codes(rng, n, "crm", invalid))
    email, typo = email_text(rng, W, p, show_email, valid_phone_row & ~invalid, 0.011)
    eligible = valid_phone_row & ~invalid & ~typo
    placeholder = eligible & (rng.random(n) < 0.003)
    if not placeholder.any() and eligible.sum() >= 100:
        placeholder[rng.choice(np.nonzero(eligible)[0])] = True
    email = pc.if_else(pa.array(placeholder), take(PLACEHOLDER_EMAILS, rng.integers(0, 2, n)), email)

    fem = W.female[p]
    gcode = np.where(fem, 5, 0) + rng.choice(5, n, p=[.35, .15, .1, .25, .15])
    unknown = rng.random(n)
    gcode = np.where(unknown < 0.02, 10, np.where(unknown < 0.04, 11, gcode))
    gender = take(["M", "male", "Male", "男", "1", "F", "female", "Female", "女", "2", "U", ""], gcode)
    birthday = null_where(fmt_time(W.birth_days[p] * DAY, "%Y-%m-%d"), rng.random(n) < 0.12)
    city = city_text(rng, W.city[p])

    def yn(flag: np.ndarray) -> pa.Array:                 # Y/N, ~3% blank
        return take(["N", "Y"], flag.astype(np.int64), rng.random(n) >= 0.03)

    upd_s = fmt_time(upd, "%Y-%m-%d %H:%M:%S")
    # ~0.1% corrupt rows (at least a couple, so small demos show them too): impossible dates or truncated lines
    corrupt = np.zeros(n, bool)
    kind = np.zeros(n, np.int64)
    bad_idx = rng.choice(n, min(n // 20, max(2, int(rng.binomial(n, 0.001)))), replace=False)
    corrupt[bad_idx] = True
    kind[bad_idx] = np.arange(bad_idx.size) % 2
    bad_dates = take(["2025-13-45 99:00:00", "2024-02-30 25:61:00", "0000-00-00 00:00:00", "2025-00-12 24:00:00"],
                     rng.integers(0, 4, n))
    upd_s = pc.if_else(pa.array(corrupt & (kind == 0)), bad_dates, upd_s)
    truncate = np.where(corrupt & (kind == 1), rng.integers(3, 7, n), 0)
    rows = Rows([id_text("M", mid, 8), mobile, email, gender, birthday, city, fmt_time(reg, "%Y-%m-%d %H:%M:%S"),
                 yn(W.opt_enrich[p]), yn(W.opt_mkt[p]), upd_s], p, reg * 4)
    trunc_all = truncate
    dup = np.nonzero(rng.random(n) < 0.01)[0]
    if dup.size:
        rows = Rows.concat([rows, rows.take(dup)])
        rows.key[n:] += 1
        trunc_all = np.concatenate([truncate, truncate[dup]])
    order = np.argsort(rows.key, kind="stable")
    rows = rows.take(order)
    return write_csv_rows(ws, "raw/crm_members.csv", _CRM_HEADER, rows, trunc_all[order], written)


def online_month(seed: int, W: World, mi: int, label: str, cal: int, ms: int, me: int,
                 rare: bool) -> tuple[Rows, np.ndarray]:
    """A month of online orders (formatted), and per row whether it arrives late (in the next month's file).

    ``rare``: make sure this month has at least one of each rare corruption, so small demos show them too."""
    rng = np.random.default_rng([seed, S_ONLINE, mi])
    idx = np.nonzero(W.online_share > 0)[0]
    rate = W.rate[idx] * W.online_share[idx] * SEASON_ONLINE[cal - 1]
    p, t = _thin(rng, idx, rate, W.join[idx], W.churn[idx], ms, me, HOURS_ONLINE,
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
    value = np.exp(W.mu[p] + CAT_LOGP[cat] + W.sigma[p] * rng.standard_normal(n)) * (1 + 0.6 * (qty - 1))
    cents = np.maximum(np.round(value * 100), 100).astype(np.int64)
    ending = rng.random(n)
    cents = np.where(ending < .4, cents // 100 * 100 + 90, np.where(ending < .7, cents // 100 * 100, cents))
    promo = 1.6 if cal in (6, 11) else 1.0
    discounted = rng.random(n) < np.clip((0.08 + 0.6 * W.disc[p]) * promo, 0, 0.95)
    disc = np.where(discounted, np.round(cents * rng.uniform(.05, .35, n) / 10) * 10, 0).astype(np.int64)
    returned = rng.random(n) < np.clip(W.ret[p] * CAT_RET[cat], 0, 0.9)
    ship = np.where(rng.random(n) < 0.94, W.city[p], rng.choice(NCITY, n, p=CITY_W))

    acct = W.acct[p, slot]
    a_ph, a_em = W.acct_phone[p, slot], W.acct_email[p, slot]
    fill_ph = a_ph & ((rng.random(n) < 0.80) | (anchor & a_ph))
    fill_em = a_em & ((rng.random(n) < 0.75) & ~(anchor & a_ph) | (anchor & ~a_ph))
    neither = ~fill_ph & ~fill_em
    fill_ph |= neither & a_ph
    fill_em |= neither & ~a_ph & a_em
    phone = _phone_at(W, p, t)
    invalid = fill_ph & fill_em & ~anchor & (rng.random(n) < 0.002)
    phone_s = fmt_phone(np.where(fill_ph, phone, -1), phone_codes(rng, n, "online", invalid))
    email_s, _ = email_text(rng, W, p, fill_em, fill_ph & ~invalid & ~anchor, 0.016)

    time_s = fmt_time(t, "%Y-%m-%dT%H:%M:%S+08:00")
    future = at_least_one(rng, rng.random(n) < 0.0005, rare)
    if future.any():
        time_s = pc.if_else(pa.array(future), concat("2099", pc.utf8_slice_codeunits(time_s, 4)), time_s)
    amount = fmt_cents(cents)
    bad = at_least_one(rng, rng.random(n) < 0.0005, rare)
    if bad.any():
        kinds = rng.integers(0, 3, n)
        amount = pc.if_else(pa.array(bad & (kinds == 0)), pa.scalar("N/A"), amount)
        amount = pc.if_else(pa.array(bad & (kinds == 1)), pc.replace_substring(amount, ".", "..", max_replacements=1),
                            amount)
        amount = null_where(amount, bad & (kinds == 2))
    cat_vocab = list(CATEGORIES) + [c.title() for c in CATEGORIES] + [c.upper() for c in CATEGORIES]
    cat_s = take(cat_vocab, cat + NCAT * rng.choice(3, n, p=[.7, .25, .05]))
    seq = int(label[:4]) * 100 + int(label[5:])
    cols = [id_text(f"OD{seq}", np.arange(1, n + 1), 7), id_text("A", acct, 9), email_s, phone_s, time_s, amount,
            pc.cast(pa.array(qty), pa.string()), cat_s, fmt_cents(disc), take(["paid", "returned"], returned),
            city_text(rng, ship)]
    late = rng.random(n) < 0.03
    return Rows(cols, p, t), late


def pos_month(seed: int, W: World, mi: int, label: str, cal: int, ms: int, me: int, rare: bool) -> Rows:
    """A month of store transactions, plus returns (which may fall in a later month: key says when)."""
    rng = np.random.default_rng([seed, S_POS, mi])
    idx = np.nonzero(W.online_share < 1)[0]
    rate = W.rate[idx] * (1 - W.online_share[idx]) * SEASON_POS[cal - 1]
    p, t = _thin(rng, idx, rate, W.join[idx], W.churn[idx], ms, me, HOURS_POS,
                 lambda p, t: _life(t, W.churn[p], W.decay[p], 0.08), WEEKDAY_POS / WEEKDAY_POS.mean())
    n = p.size
    cat = _sample_cats(rng, W, p, t, W.ni_buy)
    qty = rng.geometric(0.6, n)
    value = np.exp(W.mu[p] + CAT_LOGP[cat] + W.sigma[p] * rng.standard_normal(n) + 0.1) * (1 + 0.5 * (qty - 1))
    cents = np.maximum(np.round(value * 100), 100).astype(np.int64)
    cents = np.where(rng.random(n) < .6, cents // 100 * 100, cents)
    discounted = rng.random(n) < np.clip(0.05 + 0.5 * W.disc[p], 0, 0.9)
    disc = np.where(discounted, np.round(cents * rng.uniform(.05, .3, n) / 100) * 100, 0).astype(np.int64)
    away = rng.random(n) < 0.2
    travel = rng.random(n) < 0.03
    city = np.where(travel, rng.choice(NCITY, n, p=CITY_W), W.city[p])
    store = np.where(away | travel, W.store_offset[city] + (rng.random(n) * W.n_stores[city]).astype(np.int64),
                     W.home_store[p])

    member = W.member1[p] > 0
    card_shown = member & (rng.random(n) < 0.95)
    card = np.where((W.member2[p] > 0) & (rng.random(n) < 0.3), W.member2[p], W.member1[p])
    has_phone = W.phone[p] > 0
    phone_shown = has_phone & (rng.random(n) < np.where(card_shown, 0.25, np.where(member, 0.8, 0.985)))
    # returns: a second row with the same receipt a few days later
    ret = rng.random(n) < np.clip(W.ret[p] * CAT_RET[cat] * 0.7, 0, 0.9)
    ri = np.nonzero(ret)[0]
    rt = t[ri] + (rng.uniform(1, 14, ri.size) * DAY).astype(np.int64)
    rt = np.clip(rt // DAY * DAY + rng.integers(10, 21, ri.size) * 3600 + rng.integers(0, 3600, ri.size),
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
    phone_s = fmt_phone(phone, phone_codes(rng, m, "pos", invalid))
    placeholder = (phone < 0) & (rng.random(m) < 0.014)
    phone_s = pc.if_else(pa.array(placeholder), take(PLACEHOLDER_PHONES, rng.integers(0, 2, m)), phone_s)
    amount = fmt_cents(cents[allx])
    bad = at_least_one(rng, rng.random(m) < 0.0005, rare)
    if bad.any():
        kinds = rng.integers(0, 3, m)
        amount = pc.if_else(pa.array(bad & (kinds == 0)), pa.scalar("#VALUE!"), amount)
        amount = pc.if_else(pa.array(bad & (kinds == 1)), pc.replace_substring(amount, ".", "..", max_replacements=1),
                            amount)
        amount = null_where(amount, bad & (kinds == 2))
    seq = int(label[:4]) * 100 + int(label[5:])
    cols = [id_text(f"T{seq}", np.arange(1, m + 1), 8),
            _store_ids(W, store[allx]),
            id_text("M", card[allx], 8, card_shown[allx]), phone_s, fmt_time(tt, "%Y/%m/%d %H:%M"), amount,
            pc.cast(pa.array(qty[allx]), pa.string()), take(CATEGORY_ZH, cat[allx]), fmt_cents(disc[allx]),
            take(["0", "1"], is_ret)]
    return Rows(cols, pp, tt)


def _store_ids(W: World, store: np.ndarray) -> pa.Array:
    """'S' + city number (2 digits) + store number within the city (3 digits), e.g. S01003."""
    city = np.searchsorted(W.store_offset, store, side="right") - 1
    return id_text("S", (city + 1) * 1000 + store - W.store_offset[city] + 1, 5)


def app_month(seed: int, W: World, mi: int, label: str, cal: int, ms: int, me: int) -> tuple[pa.Table, np.ndarray]:
    """A month of app/web events (sessions of a few events on one of the person's devices, logged in or not) as a
    table, and the person behind each event."""
    rng = np.random.default_rng([seed, S_APP, mi])
    idx = np.nonzero(W.app)[0]
    p, t = _thin(rng, idx, W.sess_rate[idx] * SEASON_APP[cal - 1], W.join[idx], W.churn[idx], ms, me, HOURS_APP,
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
    et = (t[sidx] - TZ) * 1000 + offset_ms
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
        "event_id": id_text(f"E{seq}", np.arange(1, e + 1), 9),
        "device_id": W.dev_str.take(pa.array(dev[sidx])),
        "user_id": id_text("A", user[sidx], 9, logged[sidx]),
        "event_time": pa.array(et, pa.int64()),
        "event_type": take(["session_start", "product_view", "search", "cart_add", "pv", "view", "add_to_cart"],
                           tcode),
        "category": take(CATEGORY_CODES, ecat, pos > 0),
        "platform": take(["ios", "android", "web"], plat[sidx]),
    })
    return table, ep


def social_month(seed: int, W: World, mi: int, ms: int, me: int, first_id: int) -> tuple[list[pa.Array], np.ndarray]:
    """A month of social interactions (columns) and the person behind each row; ids continue from ``first_id``
    because the months are appended to one file."""
    rng = np.random.default_rng([seed, S_SOCIAL, mi])
    idx = np.nonzero(W.social)[0]
    p, t = _thin(rng, idx, W.soc_rate[idx], W.join[idx], W.churn[idx], ms, me, HOURS_APP,
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
    cols = [id_text("SI", first_id + np.arange(n), 10), W.soc_str.take(pa.array(p)),
            fmt_phone(phone, phone_codes(rng, n, "social")),
            id_text("M", W.member1[p], 8, W.soc_member[p]), fmt_time(t - TZ, "%Y-%m-%dT%H:%M:%SZ"),
            take(["like", "comment", "share", "follow", "click"], action), take(CATEGORIES, topic, ~blank)]
    return cols, p
