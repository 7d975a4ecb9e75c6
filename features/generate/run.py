"""generate(): the demo world, drawn and written month by month into a workspace.

The people are drawn first, then every month of every source in turn; only one month of rows is held at a time
(plus the few carried into the next month's file), so memory stays bounded whatever the span.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np

from features.generate.external import write_city_stats, write_partner, write_vendor
from features.generate.files import (
    CsvStream, Rows, remove_stale, summary, write_config, write_csv_rows, write_parquet, write_truth,
)
from features.generate.mess import duplicate_rows
from features.generate.people import make_world, write_persons
from features.generate.sources import (
    ORDER_HEADER, POS_HEADER, SOCIAL_HEADER, app_month, online_month, pos_month, social_month, write_crm,
)
from features.generate.vocabulary import DAY, S_ONLINE, S_POS, month_span


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
    span = month_span(end, months)
    written: dict[str, int] = {}

    report("people", 0.0)
    W = make_world(seed, customers, span, end)
    report("crm", 0.05)
    write_crm(seed, W, ws, written)

    social = CsvStream(ws / "raw/social_interactions.csv", SOCIAL_HEADER)
    try:
        carry_online: Rows | None = None
        carry_pos: Rows | None = None
        n_months = len(span.months)
        for mi, (label, cal, ms, me) in enumerate(span.months):
            report(f"month {label}", 0.08 + 0.8 * mi / n_months)
            last = mi == n_months - 1
            # online orders: ~3% arrive late (next month's file), ~0.5% are repeated (some in the next file)
            rare = mi == n_months // 2
            rows, late = online_month(seed, W, mi, label, cal, ms, me, rare)
            rng = np.random.default_rng([seed, S_ONLINE, mi, 1])
            if last:
                late[:] = False
            n = len(rows.pid)
            dup_next = ~late & (rng.random(n) < 0.002) & (not last)
            now = rows.take(np.nonzero(~late)[0])
            now = duplicate_rows(rng, now, 0.003, 7200)
            nxt = rows.take(np.nonzero(late | dup_next)[0])
            nxt.key = me + rng.integers(0, 3 * DAY, len(nxt.pid))
            file_rows = Rows.concat([carry_online, now]).sorted()
            write_csv_rows(ws, f"raw/online_orders/{label}.csv", ORDER_HEADER, file_rows, written=written)
            carry_online = nxt
            # store POS: returns dated next month go to next month's file; ~0.5% duplicate rows
            rows = Rows.concat([carry_pos, pos_month(seed, W, mi, label, cal, ms, me, rare)])
            rng = np.random.default_rng([seed, S_POS, mi, 1])
            inside = rows.key < me
            now = duplicate_rows(rng, rows.take(np.nonzero(inside)[0]), 0.005, 1800).sorted()
            carry_pos = rows.take(np.nonzero(~inside)[0])
            write_csv_rows(ws, f"raw/pos/{label}.csv", POS_HEADER, now, written=written)
            # app events
            table, ep = app_month(seed, W, mi, label, cal, ms, me)
            rel = f"raw/app_events/{label}.parquet"
            write_parquet(ws / rel, table)
            write_truth(ws, rel, ep)
            written[rel] = table.num_rows
            # social interactions (one file, appended month by month)
            cols, sp = social_month(seed, W, mi, ms, me, social.rows + 1)
            social.write(cols, sp)
            del table, ep, rows, now
        social.close()
    except BaseException:
        social.abort()
        raise
    write_truth(ws, "raw/social_interactions.csv", np.concatenate(social.pids) if social.pids else np.zeros(0))
    written["raw/social_interactions.csv"] = social.rows

    report("enrichment", 0.9)
    write_vendor(seed, W, ws, written)
    write_partner(seed, W, ws, written)
    write_city_stats(ws, written)
    report("truth", 0.95)
    write_persons(W, ws, written)
    remove_stale(ws, written)

    write_config(ws)
    report("done", 1.0)
    return summary(customers, written, round(time.perf_counter() - began, 3))
