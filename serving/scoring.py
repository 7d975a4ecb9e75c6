"""One scoring core for online and batch: features in, model scores and tags out.

`model_outputs` and `Scorer.rule_tags` are the only places a model or a rule is applied to a customer. The batch job
(`serving.batch`) calls them on chunks of the offline snapshot at the scoring date; the online engine
(`serving.online`) serves what the batch wrote and calls them again only for what changed since (`Scorer.plan`: the
models and rules that read real-time features a new event moved, or a model promoted since), or for everything
(`Scorer.score_columns`) on a persona the batch did not score. Model tags come from the MLflow registry alias
`champion`; rule tags from the YAML tag set; population statistics the rules need (quantile edges, RFM averages)
from the last batch run, so that a customer scored online gets exactly what the batch would give them on the same
features.
"""

from __future__ import annotations

import collections

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from feature_repo import definitions as defs
from features import model_tags
from training import tracking

SCORED_AT = "scored_at"  # column of the online tags view: when the batch run that computed the row started
PACKED = "packed_values"  # column of the online tags view: the row's outputs and tags as one JSON array (`pack`)
SCORE_CHUNK = 200_000  # rows per model call in batch: bounds the float32 feature matrix (~125 MB at 156 columns)


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, unwrapped from its pyfunc so it is called without per-call schema checks."""

    tag: str
    version: str
    model: object  # training.models.TagModel

    @property
    def outputs(self) -> list[str]:
        return list(self.model.estimators)

    @property
    def features(self) -> list[str]:
        return list(self.model.features)


@dataclass(frozen=True)
class ModelSet:
    """The champion of every model tag that has one."""

    models: dict[str, LoadedModel] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        return {t: m.version for t, m in self.models.items()}

    def outputs(self) -> list[str]:
        return list(self._outputs)

    @functools.cached_property
    def _outputs(self) -> tuple[str, ...]:
        return tuple(o for m in self.models.values() for o in m.outputs)

    def features(self) -> list[str]:
        return self._plan[0]

    def positions(self) -> dict[str, np.ndarray]:
        """Per model tag, the positions of its features in `features()`."""
        return self._plan[1]

    @functools.cached_property
    def _plan(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """The union of the models' features, and per model the positions of its features in that union."""
        names = sorted({f for m in self.models.values() for f in m.features})
        at = {f: i for i, f in enumerate(names)}
        return names, {t: np.array([at[f] for f in m.features], dtype=np.intp) for t, m in self.models.items()}


class ChampionLoader:
    """Loads the `champion` version of each model tag; a version already loaded is reused, not read again.

    The cache holds the versions of the last `load` only (the champions in use): a version no longer champion is
    dropped when the next one is loaded, so a long-running service holds one model per tag, not every version ever
    promoted. A scorer built on an older load keeps its own references until its last request ends.
    """

    def __init__(self, client: MlflowClient, tags: Sequence[str] | None = None) -> None:
        self.client = client
        self.tags = tuple(tags) if tags is not None else tuple(model_tags.names())
        self._cache: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def champion_versions(self) -> dict[str, str]:
        found = {}
        for tag in self.tags:
            version = tracking.alias_version(self.client, tracking.model_name(tag), tracking.CHAMPION)
            if version is not None:
                found[tag] = version
        return found

    def load(self, versions: Mapping[str, str] | None = None) -> ModelSet:
        """The given versions (default: the current champions) as a ModelSet."""
        versions = self.champion_versions() if versions is None else versions
        models = {}
        with self._lock:
            for tag, version in versions.items():
                key = (tag, str(version))
                if key not in self._cache:
                    uri = f"models:/{tracking.model_name(tag)}/{version}"
                    self._cache[key] = LoadedModel(tag, str(version), mlflow.pyfunc.load_model(uri).unwrap_python_model())
                models[tag] = self._cache[key]
            self._cache = {(t, m.version): m for t, m in models.items()}
        return ModelSet(models)

    def cached(self) -> list[tuple[str, str]]:
        """(tag, version) of the models held now."""
        with self._lock:
            return sorted(self._cache)


def model_outputs(columns: Mapping[str, np.ndarray], n: int, models: ModelSet) -> dict[str, np.ndarray]:
    """Every output of every model (churn_risk, high_value, interest_<category>) for `n` rows given by column.

    The features of all models are gathered into one float32 matrix, once; each model predicts from its columns
    of it (`TagModel.predict_matrix`, the path its held-out evaluation took). A feature `columns` lacks is unknown
    (NaN) for every row, as LightGBM treats a missing value.
    """
    if not models.models:
        return {}
    x = feature_matrix(columns, n, models)
    positions = models.positions()
    out: dict[str, np.ndarray] = {}
    for tag, m in models.models.items():
        for name, score in m.model.predict_matrix(x[:, positions[tag]]).items():
            out[name] = np.asarray(score, dtype=np.float64)
    return out


def feature_matrix(columns: Mapping[str, np.ndarray], n: int, models: ModelSet) -> np.ndarray:
    """The float32 matrix of `models.features()` for `n` rows given by column (NaN where `columns` lacks one): what
    `model_outputs` scores and `serving.explaining` explains (model `tag` reads columns `models.positions()[tag]`)."""
    names = models._plan[0]
    if isinstance(columns, MatrixColumns):  # online: one gather from the matrix the store was read into
        return columns.take(names)
    x = np.empty((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values = columns[name] if name in columns else None
        x[:, j] = np.nan if values is None else _numbers(values)
    return x


class MatrixColumns(Mapping):
    """Columns of one (rows x names) matrix by name, as the online store read them: the rules look columns up by
    name, the models gather theirs with one fancy index (`take`) instead of one copy per column."""

    def __init__(self, matrix: np.ndarray, names: Sequence[str]) -> None:
        self.matrix = matrix
        self.index = {name: j for j, name in enumerate(names)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.matrix[:, self.index[name]]

    def __iter__(self):
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def take(self, names: Sequence[str]) -> np.ndarray:
        """Columns `names` as a C-ordered float32 matrix; a name not held is NaN."""
        at = np.array([self.index.get(name, -1) for name in names], dtype=np.intp)
        x = self.matrix.take(np.maximum(at, 0), axis=1).astype(np.float32)
        x[:, at < 0] = np.nan
        return x


def _numbers(values) -> np.ndarray:
    return values.to_numpy(dtype=np.float32, na_value=np.nan) if isinstance(values, pd.Series) else values


def rules_hash(tagset) -> str:
    """A short fingerprint of a tag set's definitions: every tag's whole spec as written (expressions, values,
    version...) and the input columns it resolved to. The batch records it with its snapshot, so that the service
    knows whether the tags it serves were computed by the rules it has loaded (an edited expression counts, whether
    or not its version was bumped)."""
    specs = sorted((t.id, t.spec.model_dump(mode="json"), list(t.columns)) for t in tagset.tags)
    return hashlib.sha256(json.dumps(specs, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Plan:
    """What to compute again for rows whose inputs changed since the batch scored them (see `Scorer.plan`).

    `models`: the models to run again; `tags`: the rule tags to evaluate again (dependency order); `tagset`: the
    scorer's tag set cut down to those tags and the tags they read (None: no rule to evaluate); `full`: everything
    (the same as `Scorer.score_columns`)."""

    models: ModelSet
    tags: tuple[str, ...]
    tagset: object | None
    full: bool = False

    @property
    def empty(self) -> bool:
        return not self.models.models and not self.tags

    def ids(self) -> list[str]:
        """The outputs and tag ids this plan computes."""
        return [*self.models.outputs(), *self.tags]


@dataclass(frozen=True)
class Scorer:
    """Models, rules and the population statistics of the last batch run: everything that scores a customer."""

    models: ModelSet
    tagset: object  # rules.TagSet
    stats: dict
    as_of: str | None = None  # the batch snapshot the statistics come from
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def score_columns(self, columns: Mapping[str, np.ndarray], n: int) -> dict[str, object]:
        """Model scores then rule tags for `n` rows of features given by column (numpy arrays by name).

        The rules see the features and the model scores; a tag whose id is a model output (none by default) is
        left to the model. Online scoring calls this on the rows it reads; the batch job calls `model_outputs` per
        chunk, then `rule_tags` on everyone once the rule statistics are fitted.
        """
        scores = model_outputs(columns, n, self.models)
        return {**scores, **self.rule_tags(columns, scores, n)}

    def rule_tags(self, columns: Mapping[str, object], scores: Mapping[str, np.ndarray], n: int) -> dict[str, object]:
        """The rule tags of `n` rows from their features and model scores (the batch job's rule step too)."""
        tags = self.tagset.evaluate_columns(collections.ChainMap(scores, columns), n, self.stats)
        return {k: v for k, v in tags.items() if k not in scores}

    # --- what depends on what -------------------------------------------------------------------------------------
    @functools.cached_property
    def _rules(self) -> list[tuple[str, frozenset[str], tuple[str, ...]]]:
        """(tag id, every input column it reads directly or through the tags it reads, the tags it reads) in
        dependency order, from the tag set's catalog."""
        return [(c["id"], frozenset(c["inputs"]), tuple(c["depends_on"])) for c in self.tagset.catalog()]

    def plan(self, changed: Iterable[str] = (), *, models: Iterable[str] = (), all_rules: bool = False) -> Plan:
        """What to compute again for rows whose input columns `changed` (features) since the batch, whose `models`
        (tags) the batch scored with another version, or (`all_rules`) whose rules changed since.

        A model runs again when it reads a changed feature or is named; a rule tag is evaluated again when any
        input it reads, directly or through the tags it reads, changed or is an output of a model run again. The
        plan is cached per argument set (a scorer sees a handful: no change, real-time features changed, ...).
        """
        key = (frozenset(changed), frozenset(models), all_rules)
        found = self._plans.get(key)
        if found is None:
            found = self._plans[key] = self._make_plan(*key)
        return found

    def full_plan(self) -> Plan:
        """Everything: every model and every rule tag (a row the batch did not score)."""
        return self.plan(self.models.features(), models=self.models.models, all_rules=True)

    def _make_plan(self, changed: frozenset[str], stale: frozenset[str], all_rules: bool) -> Plan:
        rerun = {t: m for t, m in self.models.models.items() if t in stale or not changed.isdisjoint(m.features)}
        moved = changed.union(o for m in rerun.values() for o in m.outputs)
        outputs = set(self.models.outputs())
        again = [tid for tid, inputs, _ in self._rules
                 if tid not in outputs and (all_rules or not moved.isdisjoint(inputs))]
        needed, stack = set(again), list(again)  # and every tag they read, evaluated on the way
        depends = {tid: refs for tid, _, refs in self._rules}
        while stack:
            for ref in depends.get(stack.pop(), ()):
                if ref not in needed:
                    needed.add(ref)
                    stack.append(ref)
        tagset = None
        if again:
            # the same tag definitions, fewer of them: each tag is computed by the same code from the same inputs
            tagset = self.tagset.subset(needed)
        full = len(rerun) == len(self.models.models) and len(again) == len(self._rules) - len(
            [tid for tid, _, _ in self._rules if tid in outputs])
        return Plan(ModelSet(rerun), tuple(again), tagset, full)

    def recompute(self, plan: Plan, columns: Mapping[str, np.ndarray], n: int,
                  scores: Mapping[str, np.ndarray]) -> dict[str, object]:
        """The outputs and tags `plan` names for `n` rows, from their features (`columns`) and, for the models not
        run again, the scores the batch gave them (`scores`, by output)."""
        if plan.full:
            return self.score_columns(columns, n)
        fresh = model_outputs(columns, n, plan.models)
        if plan.tagset is None:
            return fresh
        tags = plan.tagset.evaluate_columns(collections.ChainMap(fresh, scores, columns), n, self.stats)
        return {**fresh, **{t: tags[t] for t in plan.tags}}


# --- serving on precomputed tags ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """The batch run whose tags the online store holds, and how far what the engine loaded still matches it."""

    date: str | None  # the tag snapshot date (the rows' time in the tags view)
    scored_at: str | None  # the run's identity: `created` of the snapshot's metadata, carried by every pushed row
    stale_models: frozenset[str] = frozenset()  # model tags the batch scored with another version than the champion
    rules_changed: bool = False  # the loaded rules are not the batch's (another hash, or tags it did not compute)
    layout: tuple[str, ...] = ()  # the ids of a packed row's values, in order (`packed_layout`)

    @classmethod
    def of(cls, meta: Mapping, scorer: Scorer, catalog: Mapping[str, dict]) -> Batch:
        """The batch run of `meta` (its snapshot's metadata) against the scorer loaded."""
        layout = packed_layout(meta)
        held = set(layout)
        scored = {t: str(v) for t, v in (meta.get("models") or {}).items()}
        stale = {t for t, m in scorer.models.models.items()
                 if scored.get(t) != m.version or any(o not in held for o in m.outputs)}
        outputs = set(scorer.models.outputs())
        rules = meta.get("rules_hash") != rules_hash(scorer.tagset) or any(
            t not in held for t in catalog if t not in outputs)
        return cls(meta.get("date"), meta.get("created"), frozenset(stale), rules, layout)

    @functools.cached_property
    def stamp(self) -> int:
        """The snapshot date in microseconds since the epoch, as the online store dates the batch's rows."""
        return 0 if self.date is None else pd.Timestamp(self.date, tz="UTC").value // 1000


def packed_layout(meta: Mapping) -> tuple[str, ...]:
    """The ids whose values a packed row holds, in order: the model outputs then the tags of the batch run of
    `meta` (its snapshot's metadata records both)."""
    return tuple(dict.fromkeys([*meta.get("outputs", []), *(t["id"] for t in meta.get("tags", []))]))


def pack(columns: Mapping[str, object], layout: Sequence[str]) -> list[str]:
    """Each row's values of the columns `layout` names as one JSON array: what the online engine reads instead of
    one stored value per tag (one value to fetch and parse per persona, not fifty). Numbers and text as they are,
    flags as true / false, lists as arrays, missing as null: the JSON a profile answers with."""
    def plain_column(values) -> list:
        series = values if isinstance(values, pd.Series) else pd.Series(values)
        if series.dtype == object:  # a list tag: tuples (numpy arrays when read back from Parquet) or None
            return [list(v) if isinstance(v, (tuple, list, np.ndarray)) else None for v in series.tolist()]
        return series.astype(object).where(series.notna(), None).tolist()

    rows = zip(*(plain_column(columns[c]) for c in layout))
    return [json.dumps(row, separators=(",", ":"), default=_json_default) for row in rows]


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot pack a {type(v).__name__} as JSON")


def serve(scorer: Scorer, batch: Batch, catalog: Mapping[str, dict], views: Sequence[tuple[str, Sequence[str]]],
          rows, read_all: Callable[[list[int]], Mapping[str, np.ndarray]]) -> tuple[list, list]:
    """(values, computed) of the personas of one online read: per persona its outputs and tags (id -> plain value;
    None: the store holds nothing of it) and what computed them; see `serving.online` for the policy.

    `rows`: what `OnlineReader.fetch` read (the tags view's SCORED_AT and PACKED, the row time of every feature
    view); `views`: (view, its
    features) in the reader's order; `read_all(js)`: every feature of personas `js`, read only when some are to be
    computed again. Personas are grouped by what moved (one bit per feature view), each group scored in one call.
    """
    n = len(rows.found)
    held = rows.tag_stamps if rows.tags is not None else np.zeros(n, dtype=np.int64)
    run = rows.tags.get(SCORED_AT) if rows.tags is not None else None
    packed = rows.tags.get(PACKED) if rows.tags is not None else None
    usable = (held > 0) & np.array([r is not None and r == batch.scored_at and p is not None
                                    for r, p in zip(run or [None] * n, packed or [None] * n)], dtype=bool)
    code = np.zeros(n, dtype=np.int64)
    for k, (name, _) in enumerate(views):  # a view written since the batch: its row time is not the batch's
        stamp = rows.stamps[name]
        code |= ((stamp != 0) & (stamp != held)).astype(np.int64) << k
    code[~usable] = -1  # everything to compute
    code[~rows.found] = -2  # nothing to answer
    plans = {}
    for c in set(code.tolist()):
        if c == -1:
            plans[c] = scorer.full_plan()
        elif c >= 0:
            moved = [col for k, (_, cols) in enumerate(views) if c >> k & 1 for col in cols]
            plans[c] = scorer.plan(moved, models=batch.stale_models, all_rules=batch.rules_changed)
    values: list[dict | None] = [None] * n
    outputs = scorer.models._outputs
    for j in np.flatnonzero(usable & rows.found).tolist():
        values[j] = dict(zip(batch.layout, json.loads(packed[j])))
    todo = [j for j in range(n) if int(code[j]) in plans and not plans[int(code[j])].empty]
    if todo:
        feats = read_all(todo)
        at = {j: i for i, j in enumerate(todo)}
        for c, plan in plans.items():
            group = [j for j in todo if code[j] == c]
            if not group:
                continue
            matrix = feats.matrix[[at[j] for j in group]]
            if plan.full:  # not scored by the batch: a persona without a single feature value is unknown
                keep = ~np.isnan(matrix).all(axis=1)
                group, matrix = [j for j, k in zip(group, keep) if k], matrix[keep]
                if not group:
                    continue
            columns = MatrixColumns(matrix, list(feats.index))
            before = {o: np.array([_number(values[j], o) for j in group]) for o in outputs}
            out = scorer.recompute(plan, columns, len(group), before)
            names = list(out)
            for j, vals in zip(group, zip(*(_tolist(out[name]) for name in names))):
                values[j] = {**(values[j] or {}), **{name: plain(v) for name, v in zip(names, vals)}}
    since = batch.stamp
    realtime = rows.stamps.get(defs.REALTIME)
    computed: list[dict | None] = []
    for j in range(n):
        plan = plans.get(int(code[j]))
        rt = int(realtime[j]) if realtime is not None else 0
        computed.append(None if values[j] is None else {
            "batch": {"date": batch.date, "scored_at": batch.scored_at} if usable[j] else None,
            "realtime": pd.Timestamp(rt, unit="us", tz="UTC").isoformat() if rt > since else None,
            "recomputed": plan.ids() if plan is not None else []})
    return values, computed


def _number(values: Mapping | None, name: str) -> float:
    v = None if values is None else values.get(name)
    return np.nan if v is None else float(v)


def _tolist(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def plain(v):
    """A value fit for JSON: numpy scalars as Python ones, NaN / NA as None, tuples and arrays as lists."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return [plain(x) for x in v]
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v
