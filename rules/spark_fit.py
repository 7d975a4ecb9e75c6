"""`TagSet.fit` on a Spark DataFrame: the same population statistics, to the bit where numpy's are reproducible.

The values each fitted tag reduces are computed per partition by the tag set's own code (`TagSet.fit_inputs`, with the
statistics fitted so far: a tag whose fit reads another fitted tag waits for that one's level). Only small exact
aggregates come back to the driver, never rows:

- quantile edges (numpy's default "linear" method): the population size, then the two order statistics around each
  virtual index with Spark's exact `percentile_disc`, then numpy's own interpolation formula (`quantile_from`);
- medians: the one or two middle order statistics, averaged as numpy averages them (`median_from`);
- means: the exact sum of each partition as an integer times a power of two, added on the driver with no rounding and
  divided once (`mean_from`), so the result is the correctly rounded mean whatever the partitioning. numpy's mean
  sums pairwise in row order and may differ from it in the last bits: the one statistic that is not bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from rules.tags import TagSet, fit_result

_CHUNK = 1024  # mantissas (< 2**53) summed in int64 at a time: 1024 of them stay below 2**63


def fit_levels(tagset: TagSet) -> list[list[str]]:
    """The tags that need fitting, in rounds: a tag's fit reads (through any chain of tags) only tags fitted in an
    earlier round, so every tag of a round is fitted in the same pass over the data."""
    level: dict[str, int] = {}
    for tag in tagset.tags:  # dependency order: what a tag reads has its level already
        if not tag.needs_fit:
            continue
        seen, stack, deps = set(), list(tag.tag_refs), []
        while stack:
            ref = stack.pop()
            if ref in seen:
                continue
            seen.add(ref)
            if ref in level:
                deps.append(level[ref])
            stack.extend(tagset[ref].tag_refs)
        level[tag.id] = 1 + max(deps, default=-1)
    return [[t for t, lv in level.items() if lv == i] for i in range(1 + max(level.values(), default=-1))]


def fit(frame, tagset: TagSet, *, columns: Sequence[str] | None = None) -> dict:
    """`tagset.fit` over the Spark DataFrame `frame` (features and model scores, one row per persona); see the module.

    `columns`: the columns of `frame` the tags may read (default: all)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    stats: dict[str, Any] = {}
    source = frame.select(*columns) if columns is not None else frame
    for ids in fit_levels(tagset):
        roles = {t: _roles(tagset[t].kind) for t in ids}
        names = {(t, r): f"v{i}_{j}" for i, t in enumerate(ids) for j, r in enumerate(roles[t])}
        schema = ", ".join(f"{c} double" for c in names.values())
        fitted = dict(stats)  # the closure gets a copy: later rounds do not change what this one used
        values = source.mapInPandas(_fit_inputs_fn(tagset, fitted, ids, names), schema)
        values = values.select(*[F.nanvl(c, F.lit(None).cast("double")).alias(c) for c in names.values()])
        values = values.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            first = {t: names[(t, roles[t][0])] for t in ids}
            counts = values.agg(*[F.count(c).alias(c) for c in first.values()]).first().asDict()
            sizes = {t: int(counts[first[t]]) for t in ids}
            ranks = {t: _ranks(tagset[t], sizes[t]) for t in ids}
            wanted = {(names[(t, r)], k, sizes[t]) for t in ids for r in roles[t] for k in ranks[t]}
            order = _order_statistics(values, wanted)
            means = [t for t in ids if tagset[t].kind == "rfm" and tagset[t].spec.split == "mean" and sizes[t]]
            sums = _exact_sums(values, [names[(t, r)] for t in means for r in roles[t]])
        finally:
            values.unpersist()
        for t in ids:
            tag, n = tagset[t], sizes[t]
            at = {r: {k: order[(names[(t, r)], k)] for k in ranks[t]} for r in roles[t]}
            if tag.kind == "bucket":
                edges = quantile_from(at["input"], n, tag.spec.quantiles) if n else None
                stats[t] = fit_result(tag, n, {"edges": edges})
            elif not n:
                stats[t] = fit_result(tag, 0, {r: None for r in roles[t]})
            elif tag.spec.split == "mean":
                stats[t] = fit_result(tag, n, {r: mean_from(sums[names[(t, r)]], n) for r in roles[t]})
            else:
                stats[t] = fit_result(tag, n, {r: median_from(at[r], n) for r in roles[t]})
    return stats


def _roles(kind: str) -> list[str]:
    return ["input"] if kind == "bucket" else ["recency", "frequency", "monetary"]


def _fit_inputs_fn(tagset: TagSet, stats: Mapping[str, Any], ids: list[str], names: Mapping[tuple[str, str], str]):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            got = tagset.fit_inputs(batch, len(batch), stats, ids)
            out = {}
            for t, (roles, keep) in got.items():
                for role, x in roles.items():
                    out[names[(t, role)]] = np.where(keep, x, np.nan)  # kept values are never NaN
            yield pd.DataFrame(out, columns=list(names.values()))
    return run


def _ranks(tag, n: int) -> list[int]:
    """The order statistics (0-based ranks in the sorted population of `n`) the tag's statistic needs."""
    if not n:
        return []
    if tag.kind == "bucket":
        lo, hi = _neighbours(n, tag.spec.quantiles)
        return sorted({*lo.tolist(), *hi.tolist()})
    if tag.spec.split == "mean":
        return []
    return sorted({(n - 1) // 2, n // 2})


def _neighbours(n: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """numpy's "linear" quantile: the virtual indexes and the ranks of the values either side (numpy 2's
    `_get_indexes`: past the last index both sides are the last value)."""
    virtual = (n - 1) * np.asarray(quantiles, dtype=np.float64)
    lo = np.floor(virtual)
    hi = lo + 1
    above = virtual >= n - 1
    lo[above] = n - 1
    hi[above] = n - 1
    below = virtual < 0
    lo[below] = 0
    hi[below] = 0
    return lo.astype(np.int64), hi.astype(np.int64)


def quantile_from(order: Mapping[int, float], n: int, quantiles: Sequence[float]) -> list[float]:
    """`np.quantile(values, quantiles).tolist()` from the order statistics of `values` (by rank) and their count:
    numpy's "linear" method step by step (virtual index (n-1)q, gamma, `_lerp`), with the same float operations."""
    virtual = (n - 1) * np.asarray(quantiles, dtype=np.float64)
    lo, hi = _neighbours(n, quantiles)
    a = np.array([order[int(k)] for k in lo], dtype=np.float64)
    b = np.array([order[int(k)] for k in hi], dtype=np.float64)
    # numpy takes gamma against the floor it indexes with: -1 past the end (a == b there, so gamma does not matter)
    floor = np.where(virtual >= n - 1, -1.0, np.floor(virtual))
    gamma = virtual - floor
    diff = b - a
    out = a + diff * gamma
    out = np.where(gamma >= 0.5, b - diff * (1 - gamma), out)
    return out.tolist()


def median_from(order: Mapping[int, float], n: int) -> float:
    """`np.median(values)` from its middle order statistics: numpy averages the one or two middle values."""
    middle = sorted({(n - 1) // 2, n // 2})
    return float(np.median(np.array([order[k] for k in middle], dtype=np.float64)))


def mean_from(total: Fraction, n: int) -> float:
    """The correctly rounded mean of values whose exact sum is `total`."""
    return float(total / n)


def _order_statistics(values, wanted: set[tuple[str, int, int]]) -> dict[tuple[str, int], float]:
    """(column, rank) -> the value of that rank among the column's non-null values, by Spark's exact
    `percentile_disc` (the smallest value whose cumulative share reaches p): p = (rank + 1/2) / n picks the rank
    with half a row to spare either side of any rounding."""
    from pyspark.sql import functions as F

    if not wanted:
        return {}
    keyed = sorted(wanted)
    exprs = [F.expr(f"percentile_disc({(k + 0.5) / n!r}) WITHIN GROUP (ORDER BY {c})").alias(f"s{i}")
             for i, (c, k, n) in enumerate(keyed)]
    row = values.agg(*exprs).first()
    return {(c, k): float(row[f"s{i}"]) for i, (c, k, _) in enumerate(keyed)}


def exact_sum_parts(x: np.ndarray) -> list[tuple[int, str]]:
    """The exact sum of the finite values `x` as (exponent, integer) pairs, the sum being sum(integer * 2**exponent):
    each double is an integer mantissa times a power of two, and mantissas of one exponent add exactly."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x) & (x != 0)]
    if not x.size:
        return []
    mant, exp = np.frexp(x)
    ints = np.ldexp(mant, 53).astype(np.int64)  # exact: 53 significant bits
    exp = exp.astype(np.int64) - 53
    order = np.argsort(exp, kind="stable")
    ints, exp = ints[order], exp[order]
    starts = np.flatnonzero(np.r_[True, exp[1:] != exp[:-1]])
    out = []
    for s, e in zip(starts, np.r_[starts[1:], len(exp)]):
        chunk = ints[s:e]
        total = sum(int(v) for v in np.add.reduceat(chunk, np.arange(0, len(chunk), _CHUNK)))
        out.append((int(exp[s]), str(total)))
    return out


def _exact_sums(values, columns: list[str]) -> dict[str, Fraction]:
    """The exact sum of each of `columns` (nulls skipped): per Arrow batch as `exact_sum_parts`, added on the driver
    (a few numbers per batch and column come back, not the values)."""
    if not columns:
        return {}

    def parts(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = [(c, e, v) for c in columns for e, v in exact_sum_parts(batch[c].to_numpy(dtype=np.float64,
                                                                                              na_value=np.nan))]
            yield pd.DataFrame(rows, columns=["column", "exponent", "value"])

    from pyspark.sql import functions as F

    summed = (values.select(*columns).mapInPandas(parts, "column string, exponent long, value string")
              .groupBy("column", "exponent").agg(F.collect_list("value").alias("values")))
    out = {c: Fraction(0) for c in columns}
    for row in summed.toLocalIterator():  # one row per column and exponent: a few hundred at most
        out[row["column"]] += Fraction(sum(int(v) for v in row["values"])) * Fraction(2) ** row["exponent"]
    return out
