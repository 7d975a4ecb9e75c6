"""Batch rescoring: every persona scored with the champion models and the rules, as one dated tag snapshot.

    features at the scoring date (offline snapshot) -> model_outputs in chunks, then Scorer.rule_tags -> tag snapshot (atomic) -> online

Statistics the rules learn from the population (quantile edges, RFM averages) are fitted on the model scores of
everyone first, then every chunk is tagged with them and they are saved in the snapshot's metadata, where the
online service reads them. Re-running on the same data writes the same snapshot; a run that crashes leaves the
previous snapshot in place and the next run writes the whole date again.

With `explain`, the snapshot also holds one `<output>_reasons` column per model output: each persona's top factors
of that score as JSON (`serving.explaining`); they stay offline (the service explains on request). Embedded engine
only for now: on Spark the reference values would need a pass over the features before scoring.

`as_of` is a calendar date: score the data up to and including it, i.e. the feature snapshot at the midnight after
it (`features.snapshots.snapshot_for`). No snapshot at exactly that date is an error naming the dates there are,
unless `nearest` allows the latest one before. Tags go online only when an online store was loaded for this
workspace (`persona features` without --no-online): a batch-only workspace has none to keep current.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo import definitions as defs
from features import offline, snapshots
from features import store as feature_store
from persona.errors import InsufficientDataError
from persona.faults import kill_point
from persona.workspace import Workspace, read_json
from rules import catalog, history, segments
from serving import explaining, scoring
from training import tracking

Progress = Callable[[str, float], None]
EXPLAIN_EMBEDDED_ONLY = ("explanations in the tag snapshot (--explain) are computed by the embedded engine only for "
                         "now: rescore without --explain, or set `engine: duckdb` in persona.yaml for that run")


def resolve_snapshot(dates: list[pd.Timestamp], as_of: pd.Timestamp | None, *, nearest: bool = False) -> pd.Timestamp:
    """The feature snapshot to score: the latest of `dates` without `as_of`; else the one holding the data up to
    and including the day `as_of`, or with `nearest` the latest snapshot on or before that one."""
    if as_of is None:
        return dates[-1]
    wanted = snapshots.snapshot_for(as_of)
    day = snapshots.data_through(wanted).date()
    if wanted in dates:
        return wanted
    usable = [d for d in dates if d <= wanted]
    if nearest and usable:
        return usable[-1]
    shown = ", ".join(str(snapshots.data_through(d).date()) for d in dates[-12:])
    more = f" (and {len(dates) - 12} earlier)" if len(dates) > 12 else ""
    hint = (f"pass --nearest to score the latest one before it (data through "
            f"{snapshots.data_through(usable[-1]).date()}), or " if usable else "")
    raise FileNotFoundError(
        f"no feature snapshot holds the data up to and including {day} (it would be the snapshot at "
        f"{wanted.date()} 00:00 UTC); snapshots hold the data through {shown}{more}: {hint}run "
        f"`persona features --as-of {day}` to compute it")


def online_loaded(ws: Workspace) -> bool:
    """Whether an online store was ever loaded for this workspace (the marker `persona features` leaves)."""
    return read_json(ws.state / feature_store.ONLINE_STATE, None) is not None


def rescore(ws: Workspace, *, as_of: pd.Timestamp | None = None, nearest: bool = False, push: bool = True,
            explain: bool = False, progress: Progress | None = None) -> dict:
    """Score every persona at the latest feature snapshot, or with the data up to and including the day `as_of`
    (see `resolve_snapshot`); see the module. With `engine: spark` the steps run on Spark (`serving.spark_batch`)
    and write the same snapshot. `explain`: add the `<output>_reasons` columns (embedded engine only)."""
    t0 = time.perf_counter()
    say = progress or (lambda stage, frac: None)
    cfg = ws.config()
    if explain and cfg.engine == "spark":
        raise ValueError(EXPLAIN_EMBEDDED_ONLY)
    timings: dict[str, float] = {}
    date = resolve_snapshot(offline.feature_dates(ws), as_of, nearest=nearest)
    removed = history.clean_partial(ws)

    say("loading champion models", 0.02)
    client = tracking.connect(ws, cfg)
    models = scoring.ChampionLoader(client).load()
    if not models.models:
        raise InsufficientDataError("no champion model: run `persona train --promote` first (or promote a version "
                                    "with the MLflow UI: alias 'champion' on persona_<tag>)")
    if cfg.engine == "spark":
        from serving import spark_batch

        n, meta, folder = spark_batch.run(ws, cfg, date, models, say, timings, snapshot_meta=snapshot_meta)
        frames = lambda: spark_batch.read_chunks(ws, meta["date"], scoring.SCORE_CHUNK)  # noqa: E731
    else:
        n, meta, folder, out = _embedded(ws, cfg, date, models, say, timings, explain=explain)
        reasons = meta.get("reasons", [])
        frames = lambda: [out.drop(columns=reasons) if reasons else out]  # noqa: E731 (reasons stay offline)
    t = time.perf_counter()
    pruned = history.prune(ws, cfg.tags.keep_snapshots)
    timings["write"] += time.perf_counter() - t
    kill_point("rescore.written")

    pushed = skipped = None
    if push and not online_loaded(ws):
        skipped = ("no online store was loaded for this workspace (`persona features --no-online`): tags kept "
                   "offline; run `persona features` to load one")
    elif push:
        say("pushing tags to the online store", 0.9)
        t = time.perf_counter()
        pushed = _push_all(ws, cfg, frames(), date, meta)
        timings["push_online"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    tag_ids = list(meta["coverage"])
    return {
        "date": meta["date"], "data_through": str(snapshots.data_through(date).date()),
        "requested": None if as_of is None else str(pd.Timestamp(as_of).date()),
        "engine": cfg.engine, "personas": int(n), "models": models.versions(), "tags": len(tag_ids),
        "unavailable": meta["unavailable"], "coverage": meta["coverage"], "snapshot": str(folder),
        "pushed": pushed, "push_skipped": skipped, "pruned": pruned, "cleaned": removed,
        "seconds": {k: round(v, 2) for k, v in {**timings, "total": seconds}.items()},
        "personas_per_second": round(n / max(timings["read_features"] + timings["models"] + timings["rules"]
                                             + timings["write"], 1e-9)),
        **({"reasons": meta["reasons"]} if explain else {}),
    }


def _embedded(ws: Workspace, cfg, date: pd.Timestamp, models: scoring.ModelSet, say: Progress,
              timings: dict[str, float], *, explain: bool = False) -> tuple[int, dict, Path, pd.DataFrame]:
    """The steps of `rescore` in this process (`engine: duckdb`): the snapshot's personas, its metadata, its folder
    and its frame (what is pushed online, but for the reasons columns of `explain`)."""
    say("reading features", 0.05)
    t = time.perf_counter()
    frame = offline.offline_frame(ws, date)
    timings["read_features"] = time.perf_counter() - t
    if frame.empty:
        raise InsufficientDataError(f"no persona has features at {date.date()}")

    t = time.perf_counter()
    n = len(frame)
    chunks = range(0, n, scoring.SCORE_CHUNK)
    parts = []
    for i, start in enumerate(chunks):
        say("scoring models", 0.1 + 0.5 * i / len(chunks))
        chunk = frame.iloc[start:start + scoring.SCORE_CHUNK]
        parts.append(scoring.model_outputs(chunk, len(chunk), models))
    scores = {name: np.concatenate([p[name] for p in parts]) for name in models.outputs()}
    del parts
    timings["models"] = time.perf_counter() - t
    reasons: dict[str, list[str]] = {}
    if explain:
        say("explaining model scores", 0.55)
        t = time.perf_counter()
        refs = (explaining.reference_values(frame, models.features()) if explaining.needs_reference(models)
                else None)
        for start in range(0, n, explaining.EXPLAIN_CHUNK):
            chunk = frame.iloc[start:start + explaining.EXPLAIN_CHUNK]
            for name, values in explaining.reasons(chunk, len(chunk), models, refs).items():
                reasons.setdefault(name, []).extend(values)
        timings["explain"] = time.perf_counter() - t

    say("fitting and evaluating rule tags", 0.6)
    t = time.perf_counter()
    tagset = catalog.load_rules(ws, cfg, [*frame.columns, *scores])
    stats = tagset.fit(collections.ChainMap(scores, frame), n)  # the features and scores, not copied into one frame
    scorer = scoring.Scorer(models, tagset, stats, as_of=str(date.date()))
    tags = scorer.rule_tags(frame, scores, n)
    timings["rules"] = time.perf_counter() - t

    say("writing the tag snapshot", 0.8)
    t = time.perf_counter()
    out = pd.DataFrame({defs.JOIN_KEY: frame[defs.JOIN_KEY], **scores, **tags})
    # Consent as of this rescoring travels with the tags, so counting a segment never joins the profiles again.
    out[segments.OPT_OUT_COLUMN] = segments.opted_out_of(ws, pa.array(out[defs.JOIN_KEY].astype(str).to_numpy(),
                                                                      type=pa.string()))
    for name, values in reasons.items():
        out[name] = pd.Series(values, index=out.index, dtype=object)
    tag_ids = [c["id"] for c in tagset.catalog() if c["id"] in out.columns]
    meta = snapshot_meta(date, n, models, list(scores), stats, tagset, list(out.columns),
                         history.coverage(out, tag_ids))
    if explain:
        meta["reasons"] = list(reasons)
    kill_point("rescore.tagged")
    folder = history.write(ws, meta["date"], history.to_arrow(out), meta)
    timings["write"] = time.perf_counter() - t
    return n, meta, folder, out


def snapshot_meta(date: pd.Timestamp, n: int, models: scoring.ModelSet, outputs: list[str], stats: dict, tagset,
                  columns: list[str], coverage: dict[str, float]) -> dict:
    """The metadata of a tag snapshot (`_meta.json`): what the online service and `persona tags` read back.
    `columns`: the snapshot's columns; `coverage`: `history.coverage` of its tags."""
    entries = tagset.catalog()
    return {
        "date": str(date.date()), "as_of": str(date), "created": pd.Timestamp.now(tz="UTC").isoformat(),
        "personas": int(n), "models": models.versions(), "outputs": list(outputs),
        "stats": stats, "rules_hash": scoring.rules_hash(tagset), "unavailable": dict(tagset.unavailable),
        "tags": [{"id": c["id"], "value_type": c["value_type"], "category": c["category"], "type": c["type"]}
                 for c in entries if c["id"] in columns],
        "coverage": coverage,
    }


def _push_all(ws: Workspace, cfg, frames, date: pd.Timestamp, meta: dict) -> dict | None:
    """`push_tags` over the snapshot's frames (one frame, or bounded chunks read back from the written snapshot),
    totalled."""
    total = None
    for frame in frames:
        got = push_tags(ws, cfg, frame, date, meta)
        if total is None:
            total = dict(got)
        else:
            total["rows"] += got["rows"]
            total["seconds"] = round(total["seconds"] + got["seconds"], 2)
    return total


def push_tags(ws: Workspace, cfg, out: pd.DataFrame, date: pd.Timestamp, meta: dict) -> dict:
    """Write the snapshot's tags to the online store's `tags` view, one row per persona (latest wins).

    Every row also carries what the online engine serves from (see `serving.online`): `scoring.SCORED_AT`, the run
    that computed it (`created` of the snapshot's metadata `meta`: the engine serves a row only when it comes from
    the run whose statistics and model versions it has loaded), and `scoring.PACKED`, its outputs and tags as one
    JSON array (`scoring.pack`, in the order of `scoring.packed_layout(meta)`)."""
    store = feature_store.open_store(ws, cfg)
    frame = out.copy()
    frame[scoring.PACKED] = pd.Series(scoring.pack(out, scoring.packed_layout(meta)), index=frame.index,
                                      dtype="string")
    frame[scoring.SCORED_AT] = pd.Series(meta.get("created"), index=frame.index, dtype="string")
    for name, col in frame.items():
        if name == defs.JOIN_KEY:
            continue  # an object column too: the list rule below would turn every id into None (one online row)
        if isinstance(col.dtype, pd.CategoricalDtype):
            frame[name] = col.astype("object").where(col.notna(), None).astype("string")
        elif str(col.dtype) in ("boolean", "bool"):
            frame[name] = col.astype("float64")  # Feast's online store has no nullable bool: 1 / 0 / NaN
        elif col.dtype == object or isinstance(col.dtype, pd.ArrowDtype):
            frame[name] = col.map(lambda v: "|".join(v) if isinstance(v, (tuple, list, np.ndarray)) else None
                                  ).astype("string")
    return feature_store.push_tags(store, frame, date.to_pydatetime())
