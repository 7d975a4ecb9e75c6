"""A campaign with a known effect, planted in a generated world: the orders its window would bring.

Used by `persona campaign plant` (demo and tests): after `persona campaign create`, every member of the campaign
buys in its window with probability `base_rate`, plus `lift` when they were contacted (the treatment group), one
order each of a log-normal amount with mean `order_value`. The true effect is then known: `lift` on the conversion
rate and `lift x order_value` on revenue per customer, which `persona campaign report` must recover within its
interval (and an interval covering zero when `lift` is 0). The purchases go into the online shop's and the store
tills' sources as one more CSV file each, spelled as those systems export them, so they reach the campaign through
`persona integrate` like any other data.
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from features.generate.sources import ORDER_HEADER, POS_HEADER
from features.generate.vocabulary import CAT_POP, CATEGORIES, CATEGORY_ZH

ORDERS_DIR = "raw/online_orders"  # the generated sources' folders (features/generate/run.py)
POS_DIR = "raw/pos"


def campaign_orders(contacts: pd.DataFrame, *, name: str, start: dt.date, end: dt.date, base_rate: float,
                    lift: float, order_value: float = 250.0,
                    seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The window's purchases of `contacts` (persona_id, group, and raw account_id, email, phone, member_id, any of
    them missing): shop orders (ORDER_HEADER) for members the shop knows, till rows (POS_HEADER) for those known by
    their member card only, and the truth of what was planted (the expected lifts, diluted by members neither
    source can name)."""
    if not 0 <= base_rate <= 1 or not 0 <= base_rate + lift <= 1:
        raise ValueError(f"rates must stay within [0, 1]: base {base_rate}, treated {base_rate + lift}")
    if end < start:
        raise ValueError(f"the window ends ({end}) before it starts ({start})")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # campaigns planted alike draw apart
    n = len(contacts)
    treated = (contacts["group"] == "treatment").to_numpy()
    online = contacts[["account_id", "email", "phone"]].notna().any(axis=1).to_numpy()
    store = ~online & contacts["member_id"].notna().to_numpy()
    buys = (rng.random(n) < np.where(treated, base_rate + lift, base_rate)) & (online | store)
    k = int(buys.sum())
    days = (end - start).days + 1
    local = pd.DatetimeIndex(pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, days, k), unit="D")
                             + pd.to_timedelta(rng.integers(8 * 3600, 22 * 3600, k), unit="s"))
    sigma = 0.6  # log-normal spread; the mean is order_value exactly: exp(mu + sigma^2 / 2)
    amount = np.round(np.exp(np.log(order_value) - sigma ** 2 / 2 + sigma * rng.standard_normal(k)), 2)
    category = rng.choice(len(CATEGORIES), k, p=CAT_POP / CAT_POP.sum())
    ids = np.char.add(f"CMP-{name}-", np.char.zfill(np.arange(k).astype(str), 7))
    who = contacts[buys].reset_index(drop=True)
    by_shop = online[buys]
    orders = pd.DataFrame({
        "order_id": ids, "account_id": who["account_id"], "buyer_email": who["email"], "buyer_phone": who["phone"],
        "order_time": local.strftime("%Y-%m-%dT%H:%M:%S"), "amount": amount, "quantity": 1,
        "category": np.asarray(CATEGORIES)[category],
        "discount_amount": 0.0, "status": "paid", "ship_city": "",
    })[ORDER_HEADER][by_shop]
    till = pd.DataFrame({
        "txn_id": ids, "store_id": "S90000", "member_card": who["member_id"], "phone": None,
        "txn_time": local.strftime("%Y/%m/%d %H:%M"), "amount": amount, "qty": 1,
        "category": np.asarray(CATEGORY_ZH)[category], "discount": 0.0, "is_return": 0,
    })[POS_HEADER][~by_shop]
    plantable = online | store  # a member with no shop or till identifier cannot buy: the effect is diluted by it
    share_t = plantable[treated].mean() if treated.any() else 0.0
    share_h = plantable[~treated].mean() if (~treated).any() else 0.0
    expected = (base_rate + lift) * share_t - base_rate * share_h
    truth = {"campaign": name, "window": [start.isoformat(), end.isoformat()], "base_rate": base_rate, "lift": lift,
             "order_value": order_value, "seed": seed, "members": int(n), "treatment": int(treated.sum()),
             "holdout": int((~treated).sum()), "unreachable": int((~plantable).sum()), "orders": k,
             "expected_conversion_lift": float(expected), "expected_revenue_lift": float(expected * order_value)}
    return orders, till, truth


def write_orders(workspace: Path, name: str, orders: pd.DataFrame, till: pd.DataFrame) -> list[Path]:
    """raw/online_orders/campaign_<name>.csv and raw/pos/campaign_<name>.csv, each written aside and renamed in (a
    rerun replaces them whole)."""
    written = []
    for folder, frame in ((ORDERS_DIR, orders), (POS_DIR, till)):
        target = Path(workspace) / folder / f"campaign_{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # not matched by the source's *.csv
        frame.to_csv(tmp, index=False)
        tmp.replace(target)
        written.append(target)
    return written
