"""What the console's pages show, read from the workspace: the same functions the command line and the API use
(the catalog, segments, campaigns, the online engine behind `/v1/profile`), plus the per-customer views only the
console has (the identity graph, the activity timeline).

Everything a page reads repeatedly is cached per published version and dropped when a new one appears: the identity
index and the identity graph per integration run (a run folder's name changes with every run), the audience per tag
snapshot date and its version folder. Activity is read per request straight from the integrated Parquet files, which
integration writes ordered by persona: DuckDB skips every row group whose persona range misses the one asked for.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona.workspace import Workspace, read_json
from rules import campaigns, catalog, history
from rules.segments import Audience, SegmentError, count, load_segments, overlap, profile
from serving.identity import IdentityIndex, UnknownIdentifierType

CONSOLE_SEGMENTS = "console_segments.yaml"  # under the first rule folder of persona.yaml (tags.paths)
TIMELINE_ROWS = 60  # most recent purchases and events shown per customer
# What the timeline says of a record, per activity table: these columns (those it has), space separated.
TIMELINE_TEXT = {"transactions": ("category", "amount"), "events": ("event_type",), "interactions": ("action", "topic")}
LOOKUP_TYPES = ("persona_id", "phone", "email", "member_id")  # the search box's choices, first; any declared type works


class NotFoundError(LookupError):
    """Nothing matches what was asked for (an unknown customer, tag or campaign)."""


def _mask(id_type: str, value: str | None) -> str:
    """A raw identifier as a marketer may see it: enough to recognise, not to reuse."""
    if value is None:
        return ""
    v = str(value)
    if id_type == "email" and "@" in v:
        user, _, domain = v.partition("@")
        return f"{user[:2]}***@{domain}"
    return v[:3] + "*" * max(len(v) - 7, 3) + v[-4:] if len(v) > 7 else v[:1] + "***"


class _Sorted:
    """A Parquet table sorted by persona_id, sliced per persona with a binary search (no scan per request)."""

    def __init__(self, path: Path, columns: list[str] | None = None) -> None:
        table = pq.read_table(path, columns=columns)
        table = table.filter(pc.is_valid(table.column("persona_id")))
        table = table.sort_by("persona_id")
        self.table = table
        self.ids = np.asarray(table.column("persona_id").to_numpy(zero_copy_only=False), dtype=object)

    def rows(self, persona_id: str) -> pd.DataFrame:
        lo, hi = np.searchsorted(self.ids, persona_id, "left"), np.searchsorted(self.ids, persona_id, "right")
        return self.table.slice(lo, hi - lo).to_pandas()


class ConsoleData:
    """The workspace as the console reads it; one per console process, shared by its requests (thread-safe)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[object, object]] = {}  # name -> (version stamp, value)
        self._engine = None
        self._engine_error: str | None = None
        self._clock = time.monotonic  # when the engine last refreshed, on this clock
        self._refreshed = float("-inf")

    # --- caching --------------------------------------------------------------------------------------------------
    def _cached(self, name: str, stamp: object, build: Callable[[], object]) -> object:
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = build()  # outside the lock: a slow build does not hold up pages that need something else
        with self._lock:
            self._cache[name] = (stamp, value)
        return value

    def _run(self) -> Path:
        """The integrated run folder now published (its name is the cache stamp of everything built from it)."""
        return self.ws.require_current("integrated", "run `persona integrate`").resolve()

    def _snapshot_stamp(self) -> tuple:
        date = history.latest_date(self.ws)
        folder = history.root(self.ws) / f"date={date}" if date else None
        return (date, str(folder.resolve()) if folder is not None and folder.exists() else None)

    # --- overview -------------------------------------------------------------------------------------------------
    def overview(self) -> dict:
        ws = self.ws
        current = ws.current("integrated")
        report = read_json(current / "report.json", {}) if current else {}
        features = read_json(ws.root / "features" / "manifest.json", {}) or {}
        date = history.latest_date(ws)
        meta = history.read_meta(ws, date) if date else {}
        sources = []
        fresh = self._freshness() if current else {}
        for name, s in (report.get("sources") or {}).items():
            sources.append({"name": name, "read": s.get("read"), "accepted": s.get("accepted"),
                            "quarantined": s.get("quarantined"), "latest": fresh.get(name)})
        stages = [
            {"stage": "integrate", "run": report.get("run_id"), "engine": report.get("engine"),
             "seconds": _total(report.get("seconds")), "detail": f"{report.get('personas', 0):,} personas" if report else None},
            {"stage": "features", "run": (features.get("dates") or [None])[-1], "engine": features.get("engine"),
             "seconds": _total(features.get("seconds")),
             "detail": f"data to {features.get('data_end')}" if features else None},
            {"stage": "rescore", "run": date, "engine": None, "seconds": None,
             "detail": f"{meta.get('personas', 0):,} scored, created {meta.get('created', '')[:19]}" if meta else None},
        ]
        return {"personas": report.get("personas"), "sources": sources, "stages": stages, "snapshot": date,
                "models": self.models(), "campaigns": len(campaigns.list_campaigns(ws))}

    def _freshness(self) -> dict:
        """Latest activity per source of the published run (one grouped scan per run, then cached)."""
        run = self._run()

        def build() -> dict:
            out = {}
            con = duckdb.connect()
            try:
                for kind in ("transactions", "events", "interactions"):
                    path = run / f"{kind}.parquet"
                    if path.exists():
                        for src, ts in con.execute("SELECT source, max(ts) FROM read_parquet(?) GROUP BY source",
                                                   [str(path)]).fetchall():
                            out[src] = str(ts)[:19] if ts is not None else None
            finally:
                con.close()
            return out
        return self._cached("freshness", str(run), build)

    def models(self) -> list[dict]:
        """One line per model tag (serving/console/models.py); empty with a note when the registry cannot be read."""
        try:
            from serving.console import models as model_data

            pages = model_data.model_pages(self.ws)
        except Exception as exc:  # the registry is optional for every other page
            return [{"error": f"{type(exc).__name__}: {exc}"}]
        return [{**m, "line": _quality_line(m)} for m in pages]

    # --- Profile 360 ----------------------------------------------------------------------------------------------
    def identity(self) -> IdentityIndex:
        run = self._run()
        return self._cached("identity", str(run), lambda: IdentityIndex.load(self.ws, self.ws.config()))

    def id_types(self) -> list[str]:
        declared = sorted(self.ws.config().identity.identifiers)
        return [t for t in LOOKUP_TYPES if t == "persona_id" or t in declared] + \
            [t for t in declared if t not in LOOKUP_TYPES]

    def lookup(self, id_type: str, value: str) -> str:
        """The current persona of an identifier (normalised and salted-hashed as the API does) or a persona id."""
        value = (value or "").strip()
        if not value:
            raise NotFoundError("type a phone number, e-mail, member id or persona id")
        index = self.identity()
        if id_type == "persona_id":
            found = index.resolve_persona(value)
        else:
            try:
                (digest,) = index.hash_values(id_type, [value])
            except UnknownIdentifierType as exc:
                raise NotFoundError(str(exc)) from None
            if digest is None:
                raise NotFoundError(f"{value!r} is not a valid {id_type}")
            (found,) = index.lookup(id_type, [digest])
        if found is None:
            raise NotFoundError(f"no customer with {id_type} {value!r}")
        return found

    def engine(self):
        """The online engine `/v1/profile` answers from (same tags, same scores); None with a reason when the
        online store or the registry is not there. It looks for a new champion or snapshot at most every
        `serving.reload_seconds`, as the service's own loop does (a look asks the registry once per model tag),
        not on every page."""
        with self._lock:
            if self._engine is None and self._engine_error is None:
                try:
                    from serving.online import OnlineEngine

                    self._engine = OnlineEngine(self.ws)
                    self._refreshed = self._clock()
                except Exception as exc:  # an empty online store, no models yet: the other sections still show
                    self._engine_error = f"{type(exc).__name__}: {exc}"
            engine = self._engine
            due = engine is not None and self._clock() - self._refreshed >= engine.cfg.serving.reload_seconds
            if due:
                self._refreshed = self._clock()
        if due:
            engine.refresh()
        return engine

    def profile(self, persona_id: str) -> dict:
        from serving.online import Customer

        out: dict = {"persona_id": persona_id, "profile": None, "explanations": None, "problem": None}
        engine = self.engine()
        if engine is None:
            out["problem"] = f"online profile unavailable: {self._engine_error}"
        else:
            try:
                (found,) = engine.profiles([Customer(persona_id=persona_id)])
                out["profile"] = found
                if found is not None:
                    (out["explanations"],) = engine.explain([persona_id])
            except Exception as exc:
                out["problem"] = f"online profile unavailable: {type(exc).__name__}: {exc}"
        out["identifiers"], out["lineage"] = self.graph(persona_id)
        out["audit"] = self.audit(persona_id)
        out["timeline"] = self.timeline(persona_id)
        return out

    def graph(self, persona_id: str) -> tuple[list[dict], list[dict]]:
        """The identifiers merged into the persona (masked) and which source records gave its attributes."""
        run = self._run()
        ids = self._cached("identity_map", str(run), lambda: _Sorted(
            run / "identity_map.parquet", ["id_type", "value", "value_hash", "persona_id", "status", "reachable"]))
        lineage = self._cached("lineage", str(run), lambda: _Sorted(run / "lineage.parquet"))
        rows = ids.rows(persona_id)
        identifiers = [{"type": r.id_type, "value": _mask(r.id_type, r.value), "hash": str(r.value_hash)[:12],
                        "status": r.status, "reachable": bool(r.reachable) if pd.notna(r.reachable) else None}
                       for r in rows.itertuples()]  # one persona's few identifiers
        lin = lineage.rows(persona_id)
        sources = [{k: (str(v) if v is not None else None) for k, v in r.items() if k != "persona_id"}
                   for r in lin.to_dict("records")]
        return identifiers, sources

    def audit(self, persona_id: str) -> list[dict]:
        """Merges, splits and unlinks that touched the persona, across runs (audit_log.parquet)."""
        path = self._run() / "audit_log.parquet"
        if not path.exists():
            return []
        cols = [c for c in ("persona_id", "other_persona_id") if c in pq.read_schema(path).names]
        con = duckdb.connect()
        try:
            frame = con.execute(f"SELECT * FROM read_parquet(?) WHERE {' OR '.join(f'{c} = ?' for c in cols)} "
                                "ORDER BY \"at\"", [str(path), *[persona_id] * len(cols)]).df()
        finally:
            con.close()
        return [{k: (None if v is None or v != v else str(v)) for k, v in r.items()} for r in frame.to_dict("records")]

    def timeline(self, persona_id: str) -> list[dict]:
        """The customer's latest purchases and events, newest first."""
        run = self._run()
        parts = []
        con = duckdb.connect()
        try:
            for kind, shown in TIMELINE_TEXT.items():
                path = run / f"{kind}.parquet"
                if not path.exists():
                    continue
                cols = set(pq.read_schema(path).names)
                text = " || ' ' || ".join(f'coalesce("{c}"::VARCHAR, \'\')' for c in shown if c in cols) or "''"
                extra = ", status" if "status" in cols else ", NULL AS status"
                parts.append(con.execute(
                    f"SELECT ts, '{kind}' AS kind, source, {text} AS what{extra} FROM read_parquet(?) "
                    f"WHERE persona_id = ? ORDER BY ts DESC LIMIT {TIMELINE_ROWS}", [str(path), persona_id]).df())
        finally:
            con.close()
        if not parts:
            return []
        frame = pd.concat(parts, ignore_index=True).sort_values("ts", ascending=False).head(TIMELINE_ROWS)
        return [{"ts": str(r.ts)[:19], "kind": r.kind, "source": r.source, "what": r.what.strip(),
                 "status": r.status if isinstance(r.status, str) else None} for r in frame.itertuples()]

    # --- catalog --------------------------------------------------------------------------------------------------
    def catalog(self) -> dict:
        listing = self._cached("catalog", self._snapshot_stamp(), lambda: catalog.listing(self.ws))
        tree: dict[str, dict] = {}
        for t in listing["tags"]:
            node = tree.setdefault(t["category"], {"category": t["category"], "zh": t.get("category_zh"), "tags": []})
            node["tags"].append(t)
        return {**listing, "tree": list(tree.values())}

    def tag(self, tag_id: str) -> dict:
        try:
            shown = catalog.show(self.ws, tag_id)
        except KeyError as exc:
            raise NotFoundError(exc.args[0]) from None
        shown["coverage_history"] = [
            {"date": d, "coverage": history.read_meta(self.ws, d).get("coverage", {}).get(tag_id)}
            for d in history.list_dates(self.ws)]
        return shown

    # --- segments -------------------------------------------------------------------------------------------------
    def audience(self) -> Audience:
        from rules.catalog import rule_paths

        stamp = (self._snapshot_stamp(), _rules_stamp(rule_paths(self.ws, self.ws.config())))
        return self._cached("audience", stamp, lambda: Audience.open(
            self.ws, load_segments(rule_paths(self.ws, self.ws.config()))))

    def count(self, expression: str) -> dict:
        return count(self.audience(), expression)

    def segment_profile(self, expression: str) -> dict:
        return profile(self.audience(), expression)

    def overlap(self, names: list[str]) -> dict:
        return overlap(self.audience(), names)

    def segments(self) -> list[dict]:
        aud = self.audience()
        return [{"id": s, "name": d.name.model_dump(), "when": d.when, "union": d.union,
                 "intersection": d.intersection, "difference": d.difference, "source": d.source}
                for s, d in aud.segments.items()]

    def save_segment(self, segment_id: str, when: str, *, zh: str = "", en: str = "") -> dict:
        """Add (or replace) a segment in the workspace's `rules/console_segments.yaml`, after checking that it parses,
        names only known tags, features and segments, and does not take the id of a segment declared elsewhere."""
        import yaml

        from rules.segments import SegmentDef

        aud = self.audience()
        target = self.ws.root / (self.ws.config().tags.paths or ["rules"])[0] / CONSOLE_SEGMENTS
        try:
            seg = SegmentDef(id=segment_id, name={"zh": zh, "en": en}, when=when)
        except ValueError as exc:
            raise SegmentError(f"segment {segment_id!r}: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}")
        other = aud.segments.get(segment_id)
        if other is not None and not other.source.startswith(str(target)):
            raise SegmentError(f"segment {segment_id!r} is already defined at {other.source}: choose another id")
        counted = count(aud, when)  # refuses unknown names and what does not parse, with the reason
        current = yaml.safe_load(target.read_text(encoding="utf-8")) if target.exists() else None
        items = [s for s in (current or {}).get("segments", []) if s.get("id") != segment_id]
        items.append({"id": seg.id, "name": {"zh": zh, "en": en}, "when": when})
        text = ("# Segments saved from `persona console` (edit freely; the console rewrites this file on save)\n"
                + yaml.safe_dump({"segments": items}, allow_unicode=True, sort_keys=False))
        from persona.workspace import write_text_atomic

        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, text)
        return {"id": segment_id, "path": str(target), "count": counted["count"]}

    def export_csv(self, expression: str) -> tuple[str, bytes]:
        """The members' export (segment export: ids and hashed identifiers), as CSV bytes and a file name."""
        import tempfile

        from rules.segments import export

        from rules.segments import hashed_identifiers

        aud = self.audience()
        run = self._run()
        ids = self._cached("hashed_identifiers", str(run), lambda: hashed_identifiers(self.ws))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "segment.csv"
            export(aud, expression, out, identifiers=ids)
            data = out.read_bytes()
        name = expression if expression in aud.segments else "segment"
        return f"{name}-{aud.date}.csv", data

    # --- campaigns ------------------------------------------------------------------------------------------------
    def campaigns(self) -> list[dict]:
        return campaigns.list_campaigns(self.ws)

    def campaign(self, name: str) -> dict:
        """The campaign's report, computed once per (integration run, campaign record)."""
        try:
            record = campaigns.folder(self.ws, name) / campaigns.DEFINITION
            stamp = (str(self._run()), record.stat().st_mtime_ns if record.exists() else None)
            return self._cached(f"campaign:{name}", stamp, lambda: campaigns.report(self.ws, name))
        except campaigns.CampaignError as exc:
            raise NotFoundError(str(exc)) from None

    def _warm_explain(self) -> None:
        """The first explanation reads the reference values: done once here rather than on a first profile."""
        engine = self.engine()
        index = self.identity()
        if engine is not None and len(index.personas_known):
            engine.explain([str(index.personas_known[0])])

    # --- warm-up --------------------------------------------------------------------------------------------------
    def warm(self) -> dict:
        """Load what the first page of each kind would otherwise wait for (the online engine, the identity index
        and graph, the catalog, the audience, the registry); returns seconds per part. Failures are left for the
        page that needs the part to report."""
        took = {}
        for name, fn in (("engine", self.engine), ("identity", self.identity), ("catalog", self.catalog),
                         ("audience", self.audience), ("models", self.models), ("freshness", self._freshness),
                         ("graph", lambda: self.graph("")), ("explain", self._warm_explain),
                         ("segment profile", lambda: self.audience().numeric() and self.audience().tag_codes()),
                         ("campaigns", lambda: [self.campaign(c["name"]) for c in self.campaigns()])):
            t0 = time.perf_counter()
            try:
                fn()
            except Exception:  # noqa: BLE001 - reported by the page that needs it
                pass
            took[name] = round(time.perf_counter() - t0, 3)
        return took


def _total(seconds: object) -> float | None:
    """A stage's seconds as its report gives them: a number, or per phase with a "total"."""
    if isinstance(seconds, Mapping):
        seconds = seconds.get("total")
    return round(float(seconds), 1) if isinstance(seconds, (int, float)) else None


def display(value: object) -> str:
    """A tag or score value as the pages print it: "-" for none, a tick or a cross for yes / no, numbers rounded
    for reading (two decimals from 100 up, four significant digits below), lists joined by ", "."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "✓" if value else "✗"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return f"{v:,.2f}" if abs(v) >= 100 else f"{v:.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(display(v) for v in value)
    return str(value)


def _quality_line(m: Mapping) -> str:
    """"auc 0.781 (champion v3) vs rfm_churn 0.702: beats the baselines, grade good"."""
    q = m.get("quality")
    if not q or q.get("value") is None:
        return "no champion or challenger yet"
    base = (f" vs {q['baseline']} {q['baseline_value']:.3f}" if q.get("baseline_value") is not None else "")
    verdict = "beats the baselines" if q.get("beats_baselines") else "does not beat every baseline"
    return (f"{m.get('metric')} {q['value']:.3f} ({q.get('alias')} v{q.get('version')}){base}: {verdict}"
            + (f", grade {q['grade']}" if q.get("grade") else ""))


def _rules_stamp(paths: list[Path]) -> tuple:
    """Modification times of the rule files: a segment saved from the console (or edited by hand) is seen at once."""
    files = []
    for p in paths:
        files += sorted(p.rglob("*.y*ml")) if p.is_dir() else [p]
    return tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())


@functools.lru_cache(maxsize=1)
def plotly_js() -> Path:
    """plotly.min.js as the installed plotly package carries it (served by the console: no CDN)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def jsonable(value: object) -> object:
    """Numpy and pandas scalars, NaN and timestamps as JSON takes them (for the pages' chart data)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if value != value else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (pd.Timestamp, pa.Scalar)):
        return str(value)
    return value
