"""The console's Models page, read from MLflow: per model tag its held-out quality against the baselines, the data
behind its charts (ROC, lift and gains, calibration), feature importance and the champion / challenger history, as
plain dicts and lists (JSON-able: no NaN, times as ISO strings).

A registered version's run is finished when it is registered: its parameters, metrics and artifacts never change.
So what a page reads of a version (its run, `lineage.json`, `curves/<output>.json`, the figures) is read once per
process and kept, keyed by (model, the registered model's creation time, version), which stays true even if the
registry is wiped and version numbers start again. Only what moves is read on every call: the aliases (one query for
the list, two for a tag's page: its registered model and its versions) and the gate's verdict on a challenger that
has none yet (the gate records it just after training logs the version). So a page costs a few milliseconds
whatever the workspace's size.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException

from features import model_tags
from features.model_tags import ModelTag
from persona.workspace import Workspace
from training import tracking
from training.gate import beats
from training.metrics import grade as grade_of
from training.report import CURVES_DIR

LINEAGE = "lineage.json"
FIGURE_SUFFIX = ".png"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # MLflow's run ids: checked before one goes into a search filter
RUN_BATCH = 100  # runs read per query when a history is first shown
# `<output>.` prefixes a metric when a tag has several outputs (training/report.py)
BASELINE_KEY = re.compile(r"^(?:(?P<output>[^.]+)\.)?baseline_(?P<name>.+)_(?P<metric>"
                          + "|".join(sorted(set(model_tags.METRICS.values()))) + ")$")


class UnknownModel(KeyError):
    """A model tag or version the registry does not have; the message (`str`, and `args[0]`) names what exists."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class _Run:
    """What a page reads of one registered version's run."""

    version: str
    run_id: str | None
    created: int  # the version's registration time, ms since the epoch
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass
class _Artifacts:
    """A version's logged files the page reads: the outputs in the order trained, the charts' data, the figures."""

    outputs: list[str]
    served: dict[str, str]  # output -> the learner it serves
    curves: dict[str, dict]
    figures: list[str]


def _num(value: object) -> float | None:
    """A metric as JSON can hold it: None for a missing or non-finite value."""
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _aliases(rm: RegisteredModel | None) -> dict[str, list[str]]:
    """version -> its aliases, sorted."""
    out: dict[str, list[str]] = {}
    for alias, version in ((rm.aliases or {}) if rm is not None else {}).items():
        out.setdefault(str(version), []).append(alias)
    return {k: sorted(v) for k, v in out.items()}


def _alias(rm: RegisteredModel | None, alias: str) -> str | None:
    version = (rm.aliases or {}).get(alias) if rm is not None else None
    return None if version is None else str(version)


def baselines(metrics: dict[str, float]) -> dict[str | None, dict[str, float | None]]:
    """The logged baselines of a run: {output (None: the tag's only output): {baseline: held-out metric}}."""
    out: dict[str | None, dict[str, float | None]] = {}
    for key in sorted(metrics):
        m = BASELINE_KEY.match(key)
        if m:
            out.setdefault(m["output"], {})[m["name"]] = _num(metrics[key])
    return out


def _best(values: dict[str, float | None]) -> tuple[str, float] | None:
    finite = [(v, k) for k, v in values.items() if v is not None]
    return None if not finite else (max(finite)[1], max(finite)[0])


class ModelsData:
    """The Models pages' reader over one tracking store; caches what a registered version's run logged."""

    def __init__(self, client: MlflowClient, experiment: str | None = None) -> None:
        self.client = client
        self.experiment = experiment  # where training logs: its runs are read in batches
        self._lock = threading.Lock()
        self._runs: dict[tuple, _Run] = {}
        self._artifacts: dict[tuple, _Artifacts] = {}
        self._figures = tempfile.TemporaryDirectory(prefix="persona-console-figures-")

    @classmethod
    def open(cls, ws: Workspace) -> ModelsData:
        cfg = ws.config()
        return cls(tracking.connect(ws, cfg), cfg.tracking.experiment)

    # --- the registry: read on every call --------------------------------------------------------------------
    def _registered(self) -> dict[str, RegisteredModel]:
        return {rm.name: rm for rm in self.client.search_registered_models(f"name LIKE '{tracking.MODEL_PREFIX}%'")}

    def _registered_one(self, name: str) -> RegisteredModel | None:
        try:
            return self.client.get_registered_model(name)
        except MlflowException:  # never trained
            return None

    # --- a version's run: read once -------------------------------------------------------------------------
    def _run(self, rm: RegisteredModel, version: str, run_id: str | None = None, created: int | None = None) -> _Run:
        """A version's run, cached; re-read while it is the challenger and the gate has not judged it yet."""
        key = (rm.name, rm.creation_timestamp, version)
        with self._lock:
            hit = self._runs.get(key)
        if hit is not None and (tracking.GATE_TAG in hit.tags or _alias(rm, tracking.CHALLENGER) != version):
            return hit
        if hit is not None:
            run_id, created = hit.run_id, hit.created
        elif run_id is None:
            mv = self.client.get_model_version(rm.name, version)
            run_id, created = mv.run_id, mv.creation_timestamp
        return self._keep(key, version, run_id, created, self._get_run(run_id))

    def _keep(self, key: tuple, version: str, run_id: str | None, created: int | None, run: Run | None) -> _Run:
        data = run.data if run is not None else None
        record = _Run(version, run_id, int(created or 0), dict(data.params) if data else {},
                      dict(data.metrics) if data else {}, dict(data.tags) if data else {})
        if run is not None or not run_id:  # a run that could not be read is tried again next time
            with self._lock:
                self._runs[key] = record
        return record

    def _get_run(self, run_id: str | None) -> Run | None:
        if not run_id:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException:  # the run was deleted: the version still lists, without figures
            return None

    def _search_runs(self, run_ids: list[str]) -> dict[str, Run]:
        """The runs of the training experiment among `run_ids`, RUN_BATCH per query."""
        experiment = self.client.get_experiment_by_name(self.experiment) if self.experiment else None
        ids = [i for i in run_ids if RUN_ID.match(i)]
        found: dict[str, Run] = {}
        if experiment is None:
            return found
        for start in range(0, len(ids), RUN_BATCH):
            chunk = ", ".join(f"'{i}'" for i in ids[start:start + RUN_BATCH])
            for run in self.client.search_runs([experiment.experiment_id], f"attributes.run_id IN ({chunk})",
                                               max_results=RUN_BATCH):
                found[run.info.run_id] = run
        return found

    def _history(self, rm: RegisteredModel) -> list[_Run]:
        """Every registered version, newest first; runs not seen before are read in batches."""
        versions = self.client.search_model_versions(f"name = '{rm.name}'")
        with self._lock:
            missing = [mv for mv in versions if (rm.name, rm.creation_timestamp, str(mv.version)) not in self._runs]
        found = self._search_runs([mv.run_id for mv in missing if mv.run_id]) if missing else {}
        fresh = {}
        for mv in missing:
            key = (rm.name, rm.creation_timestamp, str(mv.version))
            run = found[mv.run_id] if mv.run_id in found else self._get_run(mv.run_id)  # another experiment's
            fresh[str(mv.version)] = self._keep(key, str(mv.version), mv.run_id, mv.creation_timestamp, run)
        runs = [fresh.get(str(mv.version)) or self._run(rm, str(mv.version), mv.run_id, mv.creation_timestamp)
                for mv in versions]
        return sorted(runs, key=lambda r: -int(r.version))

    def _files(self, rm: RegisteredModel, run: _Run, tag: ModelTag) -> _Artifacts:
        """lineage.json, curves/*.json and the figures' names of a version's run, read once."""
        key = (rm.name, rm.creation_timestamp, run.version)
        with self._lock:
            hit = self._artifacts.get(key)
        if hit is not None:
            return hit
        lineage, curves, figures, complete = {}, {}, [], True
        if run.run_id:
            try:
                root = self.client.list_artifacts(run.run_id)
                figures = sorted(a.path for a in root if not a.is_dir and a.path.endswith(FIGURE_SUFFIX))
                names = {a.path for a in root}
                with tempfile.TemporaryDirectory(prefix="persona-console-") as tmp:
                    if LINEAGE in names:
                        lineage = json.loads(Path(self.client.download_artifacts(run.run_id, LINEAGE, tmp))
                                             .read_text(encoding="utf-8"))
                    if CURVES_DIR in names:  # runs logged before the curves existed have only the figures
                        folder = Path(self.client.download_artifacts(run.run_id, CURVES_DIR, tmp))
                        curves = {p.stem: json.loads(p.read_text(encoding="utf-8"))
                                  for p in sorted(folder.glob("*.json"))}
            except (MlflowException, OSError, ValueError):  # artifacts unreadable: the metrics still show
                complete = False
        selection = lineage.get("selection") or {}
        outputs = list(selection) or sorted(curves) or [tag.name]
        record = _Artifacts(outputs, {o: str(s.get("served")) for o, s in selection.items() if isinstance(s, dict)},
                            curves, figures)
        if complete:  # else read again next time
            with self._lock:
                self._artifacts[key] = record
        return record

    # --- the pages ----------------------------------------------------------------------------------------------
    def pages(self) -> list[dict]:
        """One entry per model tag (the registry's order): its champion and challenger and the shown version's
        quality in one line. See `model_pages`."""
        registered = self._registered()
        out = []
        for tag in model_tags.registry():
            rm = registered.get(tracking.model_name(tag.name))
            champion, challenger = _alias(rm, tracking.CHAMPION), _alias(rm, tracking.CHALLENGER)
            shown = champion or challenger
            quality = None
            if rm is not None and shown is not None:
                quality = {"alias": tracking.CHAMPION if champion else tracking.CHALLENGER,
                           **_quality(tag, self._run(rm, shown))}
            out.append({"tag": tag.name, "kind": tag.kind, "metric": tag.metric, "model": tracking.model_name(tag.name),
                        "champion": champion, "challenger": challenger, "quality": quality})
        return out

    def detail(self, tag: str, version: str | None = None) -> dict:
        """One model tag's page: the shown version's held-out table, curves and importance per output, the figures,
        and the history. See `model_detail`."""
        entry = _tag(tag)
        name = tracking.model_name(entry.name)
        rm = self._registered_one(name)
        history = self._history(rm) if rm is not None else []
        champion, challenger = _alias(rm, tracking.CHAMPION), _alias(rm, tracking.CHALLENGER)
        by_version = {r.version: r for r in history}
        if version is not None and str(version) not in by_version:
            raise UnknownModel(f"{name} has no version {version!r} (versions: "
                               f"{', '.join(by_version) or 'none: train the tag first'})")
        shown = str(version) if version is not None else (
            champion or challenger or (history[0].version if history else None))
        base = {"tag": entry.name, "kind": entry.kind, "metric": entry.metric, "model": name, "champion": champion,
                "challenger": challenger, "version": shown}
        aliases = _aliases(rm)
        rows = [_history_row(r, aliases.get(r.version, [])) for r in history]
        if shown is None or rm is None:
            return {**base, "run_id": None, "created": None, "held_out": None, "quality": None, "outputs": [],
                    "figures": [], "history": rows}
        run = by_version[shown]
        files = self._files(rm, run, entry)
        return {**base, "run_id": run.run_id, "created": _iso(run.created), "held_out": run.params.get("test_date"),
                "quality": _quality(entry, run),
                "outputs": [_output(entry, run, files, o) for o in files.outputs],
                "figures": files.figures, "history": rows}

    def figure(self, run_id: str, name: str) -> Path | None:
        """A local copy of a figure logged on a persona model version's run (read once); None if there is none."""
        if not RUN_ID.match(run_id) or "/" in name or not name.endswith(FIGURE_SUFFIX):
            return None
        target = Path(self._figures.name) / run_id / name
        if target.is_file():
            return target
        try:  # only a registered persona model's runs are shown: any other run id is not this page's to serve
            versions = self.client.search_model_versions(f"run_id = '{run_id}'")
            if not any(mv.name.startswith(tracking.MODEL_PREFIX) for mv in versions):
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            path = Path(self.client.download_artifacts(run_id, name, str(target.parent)))
        except (MlflowException, OSError):
            return None
        return path if path.is_file() else None


def _tag(tag: str) -> ModelTag:
    try:
        return model_tags.get(tag)
    except KeyError:
        raise UnknownModel(f"no model tag {tag!r}; the model tags are {', '.join(model_tags.names())}") from None


def _quality(tag: ModelTag, run: _Run) -> dict:
    """A version's quality in one line: held-out metric (mean over outputs), best baseline, grade."""
    value = _num(run.metrics.get("test_metric"))
    per_output = baselines(run.metrics)
    best = [b for b in (_best(v) for v in per_output.values()) if b is not None]
    names = sorted({b[0] for b in best})
    base = float(np.mean([b[1] for b in best])) if best else None
    wins = all(_beats(tag.metric, _num(run.metrics.get(f"{'' if o is None else o + '.'}test_{tag.metric}")), b)
               for o, vals in per_output.items() for b in vals.values())
    return {"version": run.version, "value": value,
            "baseline": names[0] if len(names) == 1 else ("best per output" if names else None),
            "baseline_value": base, "beats_baselines": bool(per_output) and wins,
            "grade": run.tags.get("grade") or (grade_of(tag.metric, value) if value is not None else None)}


def _beats(metric: str, value: float | None, baseline: float | None) -> bool:
    """The gate's comparison (training/gate.py): strictly higher; a missing baseline has no skill."""
    return value is not None and beats(metric, value, np.nan if baseline is None else baseline)


def _table(metric: str, model: str | None, value: float | None, logged: dict[str, float | None]) -> list[dict]:
    """The model's row, then each baseline's (best first); `winner` marks the model when it beats every baseline
    (as the gate requires), else the best baseline."""
    wins = all(_beats(metric, value, v) for v in logged.values()) and value is not None
    best = None if wins else _best(logged)
    order = sorted(logged, key=lambda k: (logged[k] is None, -(logged[k] or 0.0), k))
    return [{"name": model, "role": "model", "value": value, "beaten": False, "winner": wins},
            *({"name": k, "role": "baseline", "value": logged[k], "beaten": _beats(metric, value, logged[k]),
               "winner": best is not None and k == best[0]} for k in order)]


def _output(tag: ModelTag, run: _Run, files: _Artifacts, output: str) -> dict:
    """One output of the shown version: its held-out table, its other held-out metrics, curves and importance."""
    prefix = "" if len(files.outputs) == 1 else f"{output}."  # as training/report.py names the metrics
    value = _num(run.metrics.get(f"{prefix}test_{tag.metric}"))
    logged = baselines(run.metrics).get(output if prefix else None, {})
    served = files.served.get(output) or run.params.get("learner")
    metrics = {k.removeprefix(f"{prefix}test_"): _num(v) for k, v in sorted(run.metrics.items())
               if k.startswith(f"{prefix}test_") and (prefix or "." not in k) and k != "test_metric"}
    curves = files.curves.get(output)
    return {"output": output, "learner": served, "value": value, "table": _table(tag.metric, served, value, logged),
            "metrics": metrics, "curves": curves, "importance": curves.get("importance") if curves else None}


def _history_row(run: _Run, aliases: list[str]) -> dict:
    return {"version": run.version, "created": _iso(run.created), "run_id": run.run_id, "aliases": aliases,
            "gate": run.tags.get(tracking.GATE_TAG), "gate_reason": run.tags.get(tracking.GATE_REASON_TAG),
            "value": _num(run.metrics.get("test_metric")), "grade": run.tags.get("grade"),
            "held_out": run.params.get("test_date"), "learner": run.params.get("learner")}


# --- per workspace ------------------------------------------------------------------------------------------------
# The console calls these per request with its workspace: the reader (its MLflow client and what it has read) is
# made once per workspace and tracking store, so a page never reconnects nor reads a version's run twice.
_READERS: dict[tuple[str, str], ModelsData] = {}
_READERS_LOCK = threading.Lock()


def reader(ws: Workspace) -> ModelsData:
    """The workspace's reader, opened on first use (`tracking.connect`) and kept for the process."""
    key = (str(ws.root), tracking.tracking_uri(ws, ws.config()))
    with _READERS_LOCK:
        hit = _READERS.get(key)
    if hit is None:
        hit = ModelsData.open(ws)
        with _READERS_LOCK:
            hit = _READERS.setdefault(key, hit)
    return hit


def model_pages(ws: Workspace) -> list[dict]:
    """Every model tag, in the registry's order: {tag, kind, metric, model, champion, challenger, quality}.

    champion / challenger: version numbers (str) or None. quality (None when neither alias is set): the champion's
    (else the challenger's) {alias, version, value (held-out metric, mean over outputs), baseline (the best baseline's
    name, "best per output" when outputs differ), baseline_value (mean over outputs of each one's best),
    beats_baselines, grade}.
    """
    return reader(ws).pages()


def model_detail(ws: Workspace, tag: str, version: str | None = None) -> dict:
    """One model tag's page; the champion's version unless `version` is given (else the challenger, else the newest).

    {tag, kind, metric, model, champion, challenger, version, run_id, created, held_out, quality (as in
    `model_pages`), outputs, figures, history}. outputs: per output {output, learner, value, table (the model first,
    then each baseline: {name, role, value, beaten, winner}), metrics (every held-out metric), curves (the logged
    curves/<output>.json, None for runs logged before them: show `figures` instead), importance (top features
    [{feature, gain}], None without curves)}. figures: the PNG names on the run (`figure` serves them). history: every
    version, newest first: {version, created, run_id, aliases, gate, gate_reason, value, grade, held_out, learner}.
    Raises UnknownModel (a KeyError) for a tag or version that does not exist, naming those that do.
    """
    return reader(ws).detail(tag, version)


def figure(ws: Workspace, run_id: str, name: str) -> Path | None:
    """A local file of a figure (e.g. roc_calibration.png) logged on a persona model's run; None if there is none."""
    return reader(ws).figure(run_id, name)
