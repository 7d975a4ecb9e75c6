"""Feature logging for training/serving skew, through Feast's own feature logging.

Each model tag's FeatureService declares a `LoggingConfig` whose destination is a Parquet folder of the workspace
(`<ws>/features/feature_logs/<service>/`, Feast's `FileLoggingDestination`), so the logs are Feast's: the schema is
`FeatureServiceLoggingSource`'s (per feature its value, event timestamp and status; the join key; the log time, date
and request id) and `FeatureStore.write_logged_features` writes them.

The online engine offers every persona it answers to a `FeatureLogger`; a sampled share of them (`serving.feature_log_sample_rate`,
0 = off) is queued, and a flush, off the request path, reads their features through the public
`get_online_features` of each service and writes one log table per service. What was served can then be compared with
what training reads for the same persona and date (`skew`): the offline snapshot at the log's date.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureService, FeatureStore
from feast.feature_logging import LOG_DATE_FIELD, LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD, FeatureServiceLoggingSource

from feature_repo import definitions as defs
from persona.workspace import Workspace

logger = logging.getLogger("persona.features")

LOG_DIR = "feature_logs"
MAX_QUEUED = 50_000  # personas waiting for a flush; beyond it the oldest are dropped (logging never holds memory)


def log_root(ws: Workspace) -> Path:
    """Where the FeatureServices log what is served: `<ws>/features/feature_logs/<service>/` (Parquet)."""
    return ws.root / "features" / LOG_DIR


class FeatureLogger:
    """Samples the personas a service answers and writes their served features as Feast feature logs.

    `offer` is called on the request path and only appends ids to a bounded queue (sampling by a seeded generator
    per logger, so a test can count on it); `flush` does the reads and writes, from a background thread.
    """

    def __init__(self, store: FeatureStore, services: Sequence[FeatureService], sample_rate: float, *,
                 seed: int | None = None) -> None:
        self.store = store
        self.services = [s for s in services if s.logging_config is not None]
        self.sample_rate = float(sample_rate)
        self._rng = np.random.default_rng(seed)
        self._queue: deque[tuple[str, str, datetime]] = deque(maxlen=MAX_QUEUED)
        self._lock = threading.Lock()
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0 and bool(self.services)

    def offer(self, persona_ids: Sequence[str], request_id: str | None = None) -> None:
        if not self.enabled or not persona_ids:
            return
        with self._lock:
            keep = self._rng.random(len(persona_ids)) < self.sample_rate
        if keep.any():
            rid = request_id or uuid.uuid4().hex
            now = datetime.now(timezone.utc)
            self._queue.extend((pid, rid, now) for pid, k in zip(persona_ids, keep) if k)

    def pending(self) -> list[str]:
        """The persona ids queued for the next flush, oldest first."""
        return [pid for pid, _, _ in list(self._queue)]

    def flush(self) -> int:
        """Write what was queued (one log table per FeatureService); returns the rows written per service."""
        items = []
        while self._queue:
            try:
                items.append(self._queue.popleft())
            except IndexError:
                break
        if not items:
            return 0
        for service in self.services:
            table = served_table(self.store, service, items)
            # the file destination writes into its folder but does not make it (DuckDB's COPY)
            Path(service.logging_config.destination.path).mkdir(parents=True, exist_ok=True)
            self.store.write_logged_features(table, source=service)
        self.written += len(items)
        return len(items)


def served_table(store: FeatureStore, service: FeatureService, items: Sequence[tuple[str, str, datetime]]
                 ) -> pa.Table:
    """The Feast log table of `items` (persona id, request id, time served) for one service, read online now."""
    ids = [pid for pid, _, _ in items]
    response = store.get_online_features(features=service, entity_rows=[{defs.JOIN_KEY: p} for p in ids],
                                         full_feature_names=True)
    values = response.to_dict(include_event_timestamps=False)
    results = dict(zip(response.proto.metadata.feature_names.val, response.proto.results))
    schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    columns = {}
    for field in schema:
        name = field.name
        if name == LOG_TIMESTAMP_FIELD:
            columns[name] = pa.array([t for _, _, t in items], type=field.type)
        elif name == LOG_DATE_FIELD:
            columns[name] = pa.array([t.date() for _, _, t in items], type=field.type)
        elif name == REQUEST_ID_FIELD:
            columns[name] = pa.array([r for _, r, _ in items], type=field.type)
        elif name == defs.JOIN_KEY:
            columns[name] = pa.array(ids, type=field.type)
        elif name.endswith("__timestamp"):
            vector = results[name.removesuffix("__timestamp")]
            columns[name] = pa.array([datetime.fromtimestamp(ts.seconds, timezone.utc) if ts.seconds else None
                                      for ts in vector.event_timestamps], type=field.type)
        elif name.endswith("__status"):
            columns[name] = pa.array(list(results[name.removesuffix("__status")].statuses), type=field.type)
        else:
            columns[name] = pa.array(values[name], type=field.type)
    return pa.table(columns, schema=schema)


def read_logs(root: Path, service: str) -> pd.DataFrame:
    """Every logged row of one service (empty when nothing was logged)."""
    folder = root / service
    files = sorted(folder.rglob("*.parquet")) if folder.exists() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def skew(logged: pd.DataFrame, offline: pd.DataFrame, *, tolerance: float = 1e-6) -> pd.DataFrame:
    """Per feature: how many logged (served) values differ from the offline frame's value for the same persona.

    `offline` is the offline snapshot read at the logged date (`features.offline.offline_frame`), one row per
    persona. Features are matched by their name after the view prefix (`view__feature` -> `feature`); only values
    the online store held (status PRESENT) are compared. Real-time features (`rt_*`) are expected to differ: events
    arrive after the snapshot.
    """
    if logged.empty:
        return pd.DataFrame(columns=["feature", "compared", "differ", "share"])
    base = offline.set_index(defs.JOIN_KEY)
    rows = []
    for column in logged.columns:
        if "__" not in column or column.endswith(("__timestamp", "__status")) or column.startswith("__"):
            continue
        feature = column.split("__", 1)[1]
        if feature not in base.columns:
            continue
        present = logged[f"{column}__status"].to_numpy() == 1
        ids = logged.loc[present, defs.JOIN_KEY].astype(str)
        served = pd.to_numeric(logged.loc[present, column], errors="coerce").to_numpy(dtype=float)
        truth = base[feature].reindex(ids).to_numpy(dtype=float)
        both = ~(np.isnan(served) | np.isnan(truth))
        differ = int((np.abs(served[both] - truth[both]) > tolerance).sum())
        rows.append({"feature": feature, "compared": int(both.sum()), "differ": differ,
                     "share": differ / both.sum() if both.sum() else 0.0})
    return pd.DataFrame(rows).sort_values(["share", "feature"], ascending=[False, True], ignore_index=True)
