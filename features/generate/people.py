"""The synthetic population: every person's latent traits, identifiers and lifecycle, and its ground truth.

``make_world`` draws everyone at once (vectorised over people, one rng stream): demographics, income, channel mix,
purchase rate and order value, Dirichlet category preferences, joining, churn and the fade before it, new interests,
unique phones and e-mails, memberships, shop accounts, app devices (a few shared within a household), social
accounts and home stores, plus anchor records (an order per shop account, a session per device and user, an
interaction per social account) so every identifier shows up somewhere. The sources only ever see noisy evidence
of all this; ``write_persons`` writes the latents to truth/persons.parquet, the answer identity resolution and the
models are scored against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.generate.files import write_parquet
from features.generate.strings import concat, days_to_civil, fixed_strings, id_text, null_where, take
from features.generate.vocabulary import (
    CAT_LOGP, CAT_POP, CATEGORIES, CHANNELS, CITIES, CITY_TIER, CITY_W, DAY, DOMAIN_P, DOMAINS, EPOCH, GIVEN_NAMES,
    HOURS_APP, HOURS_ONLINE, INCOME_BANDS, INF, NCAT, NCITY, PHONE_PREFIXES, RESERVED_PHONES, S_WORLD,
    SPEND_LEVELS, STORES_PER_TIER, SURNAMES, TZ, Span,
)


@dataclass
class World:
    """Everyone's latents as arrays indexed by person id (``W.rate`` is ``W.arrays["rate"]``)."""

    n: int
    span: Span
    arrays: dict = field(default_factory=dict)

    def __getattr__(self, name):
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
    return PHONE_PREFIXES[rng.integers(0, PHONE_PREFIXES.size, k)] * 100_000_000 + rng.integers(0, 100_000_000, k)


def _window_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """A time in [lo, hi) per row, at a plausible hour of day when that stays inside the window."""
    t = lo + (rng.random(lo.size) * (hi - lo)).astype(np.int64)
    tod = rng.choice(24, lo.size, p=hours / hours.sum()) * 3600 + rng.integers(0, 3600, lo.size)
    t2 = np.floor_divide(t, DAY) * DAY + tod
    return np.where((t2 >= lo) & (t2 < hi), t2, t)


def make_world(seed: int, n: int, span: Span, end: date) -> World:
    """``n`` people living over ``span`` (ages counted at ``end``), drawn from the stream ``[seed, S_WORLD]``."""
    rng = np.random.default_rng([seed, S_WORLD])
    W = World(n, span)
    A = W.arrays
    start, stop = span.start, span.end

    # demographics
    female = rng.random(n) < 0.54
    age = 18 + 52.99 * rng.beta(2.0, 3.0, n)                     # years at the end of the span: 18 .. 70
    A["female"] = female
    A["birth_days"] = np.minimum((end - EPOCH).days - age * 365.2425, (end - EPOCH).days - 18 * 366).astype(np.int64)
    city = rng.choice(NCITY, n, p=CITY_W)
    tier = CITY_TIER[city]
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
    tilt = np.ones((n, NCAT))
    fem = female[:, None]
    tilt *= np.where(fem, [1.4, 1.1, 3.0, 2.2, .5, 1.1, 1, 1.2, .7, 1, 1.5, 1],
                     [.8, 1.0, .25, .5, 2.2, .9, 1, .8, 1.6, 1, .6, 1])
    young = (age < 30)[:, None]
    parent = ((age >= 25) & (age <= 40))[:, None]
    older = (age > 50)[:, None]
    tilt[:, 7:8] *= np.where(parent, 2.5, 0.4)
    tilt *= np.where(young, [1, 1.2, 1.2, 1, 1.2, .8, 1, 1, 1.2, 1, .8, 1], 1.0)
    tilt *= np.where(older, [.9, .9, .8, 1, .8, 1.5, 1.4, 1, .8, 1.2, 1.1, 1], 1.0)
    alpha = CAT_POP * tilt
    alpha = 2.4 * alpha / alpha.sum(axis=1, keepdims=True)
    g = rng.gamma(alpha) + 1e-12
    prefs = g / g.sum(axis=1, keepdims=True)
    A["prefs"] = prefs
    cum = np.cumsum(prefs, axis=1)
    cum[:, -1] = 1.0
    A["cum_flat"] = (cum + np.arange(n)[:, None]).ravel()

    # lifecycle
    before = rng.random(n) < 0.42
    join = np.where(before, start - rng.random(n) * 3 * 365.25 * DAY,
                    start + rng.random(n) * (stop - 14 * DAY - start)).astype(np.int64)
    churn_lo = np.maximum(join + 75 * DAY, start + 40 * DAY)
    churner = (rng.random(n) < 0.36) & (churn_lo < stop - DAY)
    churn_at = churn_lo + (rng.random(n) * (stop - churn_lo)).astype(np.int64)
    A["join"] = join
    A["churn"] = np.where(churner, churn_at, INF)
    A["decay"] = (rng.uniform(30, 120, n) * DAY).astype(np.int64)
    A["decay_app"] = A["decay"] + (rng.uniform(30, 90, n) * DAY).astype(np.int64)   # the app fades first
    act_lo = np.maximum(join, start)
    act_hi = np.minimum(A["churn"], stop)
    A["act_lo"], A["act_hi"] = act_lo, act_hi

    # new interests (0-2), chosen among the person's least preferred categories
    k_new = rng.choice(3, n, p=[.55, .33, .12])
    lo, hi = act_lo + 30 * DAY, act_hi - 7 * DAY
    ok = hi > lo + 14 * DAY
    ranked = np.argsort(prefs + rng.random((n, NCAT)) * 1e-9, axis=1)
    r0 = rng.integers(0, 6, n)
    r1 = (r0 + 1 + rng.integers(0, 5, n)) % 6
    rows = np.arange(n)
    ni_cat = np.full((n, 2), -1, np.int64)
    ni_buy = np.full((n, 2), INF, np.int64)
    ni_browse = np.full((n, 2), INF, np.int64)
    ni_w = np.zeros((n, 2))
    for j, r in enumerate((r0, r1)):
        has = ok & (k_new > j)
        buy = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
        lead = (rng.uniform(14, 42, n) * DAY).astype(np.int64)
        ni_cat[:, j] = np.where(has, ranked[rows, r], -1)
        ni_buy[:, j] = np.where(has, buy, INF)
        ni_browse[:, j] = np.where(has, buy - lead, INF)
        ni_w[:, j] = np.where(has, rng.uniform(.15, .7, n), 0.0)
    A["ni_cat"], A["ni_buy"], A["ni_browse"], A["ni_w"] = ni_cat, ni_buy, ni_browse, ni_w

    # phones (unique; ~2% change number mid-span) and e-mails (unique)
    has_phone = rng.random(n) >= 0.05
    changer = has_phone & (rng.random(n) < 0.02)
    n_ph, n_ch = int(has_phone.sum()), int(changer.sum())
    n_extra = int(round(0.55 * n_ph * 0.10)) + 1
    pool = _unique_draw(rng, lambda k: _draw_phones(rng, k), n_ph + n_ch + n_extra, RESERVED_PHONES)
    phone = np.full(n, -1, np.int64)
    phone[has_phone] = pool[:n_ph]
    phone_old = np.full(n, -1, np.int64)
    phone_old[changer] = pool[n_ph:n_ph + n_ch]
    A["non_customer_phones"] = pool[n_ph + n_ch:]
    A["phone"], A["phone_old"] = phone, phone_old
    A["phone_change"] = np.where(changer, act_lo + (rng.random(n) * (act_hi - act_lo)).astype(np.int64), INF)
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
    A["anchor_order_t"] = _window_times(rng, act_lo[ap], act_hi[ap], HOURS_ONLINE)

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
    A["anchor_app_t"] = _window_times(rng, act_lo[use_p], act_hi[use_p], HOURS_APP)

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
    A["anchor_soc_t"] = _window_times(rng, act_lo[sp], act_hi[sp], HOURS_APP)

    # stores: a home store in the person's city
    n_stores = STORES_PER_TIER[CITY_TIER]
    A["store_offset"] = np.cumsum(n_stores) - n_stores
    A["n_stores"] = n_stores
    A["home_store"] = A["store_offset"][city] + (rng.random(n) * n_stores[city]).astype(np.int64)

    # value: expected yearly spend and its level
    price = np.exp(A["mu"] + A["sigma"] ** 2 / 2) * (prefs @ np.exp(CAT_LOGP))
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
    return fixed_strings(mat)


def _base62_ids(rng: np.random.Generator, k: int, prefix: str, width: int) -> pa.StringArray:
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)
    p = prefix.encode()
    mat = np.empty((k, len(p) + width), np.uint8)
    mat[:, :len(p)] = np.frombuffer(p, np.uint8)
    mat[:, len(p):] = alphabet[rng.integers(0, 62, (k, width))]
    return fixed_strings(mat)


def _make_emails(rng: np.random.Generator, W: World, has_email: np.ndarray) -> None:
    """Unique lower-case addresses: local part and domain name (every domain is '<name>.com')."""
    idx = np.nonzero(has_email)[0]
    k = idx.size
    sn = take(SURNAMES, rng.integers(0, len(SURNAMES), k))
    gn = take(GIVEN_NAMES, rng.integers(0, len(GIVEN_NAMES), k))
    byear = days_to_civil(W.arrays["birth_days"][idx])[0]
    nn = pc.cast(pa.array(rng.integers(1, 100, k)), pa.string())
    yy = pc.utf8_lpad(pc.cast(pa.array(byear % 100), pa.string()), width=2, padding="0")
    yyyy = pc.cast(pa.array(byear), pa.string())
    qq = pc.cast(pa.array(rng.integers(10_000, 3_000_000_000, k)), pa.string())
    forms = [concat(gn, ".", sn), concat(sn, gn, nn), concat(gn, "_", sn, yy), qq, concat(sn, ".", gn, nn),
             concat(pc.utf8_slice_codeunits(sn, 0, 1), gn, yyyy)]
    style = rng.choice(len(forms), k, p=[.22, .18, .14, .20, .14, .12])
    local = pc.choose(pa.array(style.astype(np.int8)), *forms)
    dom_idx = np.where(style == 3, 0, rng.choice(len(DOMAINS), k, p=DOMAIN_P))
    dom = take(DOMAINS, dom_idx)
    while True:                                             # make every address unique (a few rounds at most)
        full = pc.binary_join_element_wise(local, dom, "@").to_pandas()
        dup = full.duplicated().to_numpy()
        if not dup.any():
            break
        extra = pc.cast(pa.array(rng.integers(100, 10_000, k)), pa.string())
        local = pc.if_else(pa.array(dup), concat(local, extra), local)
    pos = np.full(W.n, -1, np.int64)
    pos[idx] = np.arange(k)
    take_idx = pa.array(np.maximum(pos, 0).astype(np.int32), mask=pos < 0)
    W.arrays["email_local"] = local.take(take_idx)
    W.arrays["email_dom"] = dom.take(take_idx)


# ----------------------------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------------------------


def write_persons(W: World, ws: Path, written: dict) -> None:
    """truth/persons.parquet: every person's latents, identifiers and key dates (UTC), one row per person id."""
    n = W.n

    def utc(local: np.ndarray, ok: np.ndarray) -> pa.Array:
        ms = (np.where(ok, local, TZ) - TZ) * 1000
        return pa.array(ms, pa.timestamp("ms", tz="UTC"), mask=np.ascontiguousarray(~ok))

    def e164(digits: np.ndarray) -> pa.Array:
        return null_where(concat("+86", pc.cast(pa.array(np.maximum(digits, 0)), pa.string())), digits <= 0)

    prefs = W.prefs
    top = np.argsort(-prefs, axis=1)[:, :3]
    top_cats = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)),
                                        take(CATEGORIES, top.ravel()))
    email = concat(W.email_local, "@", W.email_dom, ".com")
    cols = {
        "person_id": pa.array(np.arange(n, dtype=np.int64)),
        "gender": take(["male", "female"], W.female.astype(np.int64)),
        "birth_date": pa.array(W.birth_days.astype(np.int32), pa.date32()),
        "city": take([c[0] for c in CITIES], W.city),
        "city_tier": pa.array(W.tier.astype(np.int8)),
        "phone": e164(W.phone),
        "phone_previous": e164(W.phone_old),
        "phone_changed_at": utc(W.phone_change, W.phone_old > 0),
        "email": email,
        "income_band": take(INCOME_BANDS, W.income),
        "joined_at": utc(W.join, np.ones(n, bool)),
        "churn_at": utc(W.churn, W.churn < INF),
        "churn_decay_days": pa.array((W.decay / DAY).astype(np.float32)),
        "channel": take(CHANNELS, W.channel),
        "online_share": pa.array(W.online_share.astype(np.float32)),
        "purchase_rate": pa.array((W.rate * 365).astype(np.float32)),
        "avg_order_value": pa.array(W.aov.astype(np.float32)),
        "expected_annual_spend": pa.array(W.annual_spend.astype(np.float32)),
        "spend_level": take(SPEND_LEVELS, W.spend_level),
        "discount_affinity": pa.array(W.disc.astype(np.float32)),
        "return_rate": pa.array(W.ret.astype(np.float32)),
        "top_category": take(CATEGORIES, top[:, 0]),
        "top_categories": top_cats,
    }
    for k, c in enumerate(CATEGORIES):
        cols[f"pref_{c}"] = pa.array(prefs[:, k].astype(np.float32))
    for j in range(2):
        has = W.ni_cat[:, j] >= 0
        cols[f"new_interest_{j + 1}"] = take(CATEGORIES, np.maximum(W.ni_cat[:, j], 0), has)
        cols[f"new_interest_{j + 1}_browse_at"] = utc(W.ni_browse[:, j], has)
        cols[f"new_interest_{j + 1}_buy_at"] = utc(W.ni_buy[:, j], has)
    cols.update({
        "opt_out_enrichment": pa.array(W.opt_enrich),
        "opt_out_marketing": pa.array(W.opt_mkt),
        "member_id": id_text("M", W.member1, 8, W.member1 > 0),
        "member_id_2": id_text("M", W.member2, 8, W.member2 > 0),
        "account_id": id_text("A", W.acct[:, 0], 9, W.acct[:, 0] > 0),
        "account_id_2": id_text("A", W.acct[:, 1], 9, W.acct[:, 1] > 0),
        "social_id": null_where(W.soc_str, ~W.social),
        "app_user": pa.array(W.app),
        "device_ids": _device_lists(W),
        "shares_device_with": pa.array(W.shared_partner, mask=W.shared_partner < 0),
    })
    write_parquet(ws / "truth/persons.parquet", pa.table(cols))
    written["truth/persons.parquet"] = n


def _device_lists(W: World) -> pa.Array:
    own = W.dev[:, :2]
    counts = (own >= 0).sum(axis=1)
    flat = own[own >= 0]
    offsets = np.zeros(W.n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), W.dev_str.take(pa.array(flat)))
