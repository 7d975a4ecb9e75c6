"""Per-customer explanations of a model tag's scores: for each output, each row's top factors (a column of the
model's matrix, its value, its signed contribution).

How a contribution is measured depends on the estimator serving the output:
- LightGBM (alone, inside `Calibrated`, or an older wrapper): the booster's own contributions (`pred_contrib`,
  TreeSHAP) on the matrix `TagModel.full_matrix` builds, i.e. the features then the BG/NBD and Pareto/NBD columns,
  named as `TagModel.columns` names them. They add up, with `base` (the booster's expected value), to the raw score:
  `"scale": "log-odds"` for a classifier, `"log"` for Tweedie spend. For a calibrated classifier that is the score
  before the calibration map; the map is increasing, so it keeps which way each factor pushes.
- Any other family (the BTYD formulas, `Linear`, `BtydCovariates`): occlusion, which needs nothing of a model but its
  scores. A feature's contribution is the score at the row minus the score with that feature set to a reference
  value (the caller's, e.g. the population's median), the BG/NBD columns computed again from the changed inputs;
  `base` is the score with every feature at its reference, `"scale": "score"` (the output's own units). Unlike tree
  contributions they need not add up to score - base when features interact.
- A `Blend`: each member as above on what the blend reads of it, weighted by the blend's coefficient for it, so in
  the blend's margin (`"log-odds"`, or `"log"` spend). Approximate: a LightGBM member's contributions are taken
  before its calibration map (and in log rather than log1p spend), which the weighting treats as the identity.

The purchase history (the BG/NBD inputs: frequency, recency, age) is occluded as one factor, `HISTORY`, whose value
is the list of the three (see `_players` for why).

Everything is vectorised over rows: one `pred_contrib` call per booster, and for occlusion one scoring call per
feature an estimator reads (every feature, for a family that does not say: `reads`), on the rows whose value differs
from the reference. Scores are batch-invariant (see `training.candidates._margin`), so a row's contributions do not
depend on the rows explained with it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from training.candidates import BTYD_INPUTS, Blend, Calibrated, Lgbm
from training.models import CalibratedClassifier, TagModel, ValueRegressor, matrix

DEFAULT_FACTORS = 5  # factors per output shown by default (the API, the batch column)
MAX_FACTORS = 20  # what a caller may ask for at most: beyond that a "top factors" list stops being read
_LOG_OBJECTIVES = ("tweedie", "poisson", "gamma")  # LightGBM objectives whose raw score is a log
_FEW_ROWS = 1024  # fewer rows than this: LightGBM's contributions on one thread (see `contributions`)
_STACK_ROWS = 65_536  # occluded rows scored per call (x ~165 float32 columns: ~43 MB)
_TEXT = np.dtypes.StringDType()  # numpy's variable-length strings, which its string functions work on
HISTORY = "+".join(BTYD_INPUTS)  # the factor of the purchase history, which occlusion sets as one (see `_players`)


@dataclass(frozen=True)
class Contributions:
    """Every column's contribution to one output, for every row (`n` rows x the `names` columns)."""

    names: list[str]  # TagModel.columns, then HISTORY when the purchase history was occluded as one
    values: np.ndarray  # (n, m) float32: the matrix the estimators read (NaN under HISTORY)
    contributions: np.ndarray  # (n, m) float64
    base: np.ndarray  # (n,) float64: the expected value (LightGBM), the score at the reference (occlusion)
    scale: str  # "log-odds", "log" or "score"
    method: str  # "lightgbm", "occlusion" or "blend"
    history: np.ndarray | None = None  # (n, 3) the BTYD inputs, HISTORY's value, when `names` holds it


@dataclass(frozen=True)
class Factors:
    """The top factors of one output per row: `columns[i]` are row i's columns by decreasing |contribution| (a zero
    contribution is no factor and is left out of `records`)."""

    names: list[str]
    columns: np.ndarray  # (n, k) positions in `names`
    values: np.ndarray  # (n, k) float32
    contributions: np.ndarray  # (n, k) float64
    base: np.ndarray  # (n,)
    scale: str
    method: str
    history: np.ndarray | None = None  # (n, 3), as in Contributions

    def records(self) -> list[dict]:
        """Per row {scale, method, base, factors: [{feature, value, contribution}]}: plain JSON values (a missing
        value is None; HISTORY's value is the list of its three), numbers to float32 precision (seven digits: a
        reason, not a checksum)."""
        names = np.asarray(self.names, dtype=object)[self.columns]
        values, contributions, base = (_plain(a) for a in (self.values, self.contributions, self.base))
        history = _plain(self.history).tolist() if self.history is not None else itertools.repeat(None)
        keep = (self.contributions != 0) & np.isfinite(self.contributions)
        # Assembling the JSON objects is the one loop over rows: the numbers are all computed by then.
        out = []
        for b, row_names, row_values, row_contribs, row_keep, h in zip(
                base.tolist(), names.tolist(), values.tolist(), contributions.tolist(), keep.tolist(), history):
            factors = [{"feature": f, "value": h if f == HISTORY else v, "contribution": c}
                       for f, v, c, k in zip(row_names, row_values, row_contribs, row_keep) if k]
            out.append({"scale": self.scale, "method": self.method, "base": b, "factors": factors})
        return out

    def json(self) -> list[str]:
        """`records` as one compact JSON string per row (the batch snapshot's `<output>_reasons` column), put
        together with numpy's string functions column by column: the batch writes one per persona and output, and
        a dict and a `json.dumps` per row cost more than computing the factors did."""
        n, k = self.columns.shape
        names = np.array([json.dumps(name, ensure_ascii=False) for name in self.names], dtype=_TEXT)[self.columns]
        values = _numbers(self.values)
        if self.history is not None and HISTORY in self.names:
            h = _numbers(self.history)
            grouped = "[" + h[:, 0] + "," + h[:, 1] + "," + h[:, 2] + "]"
            values = np.where(self.columns == self.names.index(HISTORY), grouped[:, None], values)
        cells = '{"feature":' + names + ',"value":' + values + ',"contribution":' + _numbers(self.contributions) + "}"
        keep = (self.contributions != 0) & np.isfinite(self.contributions)
        factors = np.full(n, "", dtype=_TEXT)
        for j in range(k):  # over the k slots (a handful), each step over every row
            factors = np.where(keep[:, j], factors + np.where(factors == "", "", ",") + cells[:, j], factors)
        head = f'{{"scale":{json.dumps(self.scale)},"method":{json.dumps(self.method)},"base":'
        return (head + _numbers(self.base) + ',"factors":[' + factors + "]}").tolist()


def _numbers(a: np.ndarray) -> np.ndarray:
    """JSON numbers as text, at float32's shortest decimal (what `_plain` reads back), null where not finite."""
    a = np.asarray(a)
    out = a.astype(np.float32).astype(_TEXT)
    out[~np.isfinite(a)] = "null"
    return out


def _plain(a: np.ndarray) -> np.ndarray:
    """An object array of floats at float32's shortest decimal (0.3, not 0.30000001192092896), None where not finite."""
    a = np.asarray(a)
    out = a.astype(np.float32).astype(str).astype(np.float64).astype(object)
    out[~np.isfinite(a)] = None
    return out


# --- how each estimator is explained ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Term:
    """One additive part of an output's explanation: a booster's contributions, or the occlusion of a score."""

    weight: float
    booster: lgb.Booster | None = None
    score: Callable[[np.ndarray], np.ndarray] | None = None  # full matrix -> (n,) scores, for occlusion
    reads: frozenset[int] | None = None  # the columns `score` reads, when its family says (None: any)


def _lightgbm(est) -> tuple[lgb.Booster, str] | None:
    """(booster, scale of its raw score) of the LightGBM inside `est`; None for another family."""
    inner = est.model if isinstance(est, Calibrated) else est
    if isinstance(inner, Lgbm):
        model = inner.model
    elif isinstance(est, (CalibratedClassifier, ValueRegressor)):
        model = est.model
    else:
        return None
    objective = str(getattr(model, "objective_", "") or model.booster_.params.get("objective", ""))
    if objective.startswith(("binary", "cross_entropy")):
        scale = "log-odds"
    elif objective.startswith(_LOG_OBJECTIVES):
        scale = "log"
    else:
        scale = "score"
    return model.booster_, scale


def _plan(model: TagModel, est) -> tuple[list[_Term], float, str, str]:
    """(terms, constant added to base, scale, method) of one output's estimator."""
    trees = _lightgbm(est)
    if trees is not None:
        return [_Term(1.0, booster=trees[0])], 0.0, trees[1], "lightgbm"
    if isinstance(est, Blend):
        coef = np.ravel(est.model.coef_).astype(np.float64)
        terms = []
        for w, member in zip(coef.tolist(), est.members.values()):
            member_trees = _lightgbm(member)
            if member_trees is not None:
                terms.append(_Term(w, booster=member_trees[0]))
            else:
                terms.append(_Term(w, score=lambda x, m=member: est.member_input(m, x),
                                   reads=getattr(member, "reads", None)))
        scale = "log-odds" if est.kind == "probability" else "log"
        return terms, float(np.ravel(est.model.intercept_)[0]), scale, "blend"
    return ([_Term(1.0, score=lambda x: model.score_output(est, x), reads=getattr(est, "reads", None))], 0.0, "score",
            "occlusion")


def needs_reference(model: TagModel) -> bool:
    """Whether explaining some output of `model` occludes features (and so needs reference values)."""
    return any(t.score is not None for est in model.estimators.values() for t in _plan(model, est)[0])


def contributions(model: TagModel, x: np.ndarray, *, reference: Mapping[str, float] | None = None,
                  outputs: Sequence[str] | None = None) -> dict[str, Contributions]:
    """Every column's contribution to each output (default: all) of `model` for the rows of `x`, a float32 matrix of
    `model.features` in order as `predict_matrix` takes (NaN = missing); see the module for the methods.

    `reference`: feature -> the value a feature is occluded with (NaN: missing); needed, for every feature, only
    when an output is served by another family than LightGBM (`needs_reference`)."""
    x = matrix(x)
    full = model.full_matrix(x)  # validates the shape
    n, m = full.shape
    wanted = list(model.estimators) if outputs is None else list(outputs)
    plans = {o: _plan(model, model.estimators[o]) for o in wanted}
    occluded = [t for terms, *_ in plans.values() for t in terms if t.score is not None]
    players = _players(model)
    done = _occlude(model, players, occluded, x, full, _reference(model, reference)) if occluded else []
    by_term = {id(t): d for t, d in zip(occluded, done)}
    grouped = occluded and any(len(p) > 1 for p in players)
    out = {}
    for name, (terms, constant, scale, method) in plans.items():
        names = list(model.columns)
        history = None
        if grouped and any(t.score is not None for t in terms):  # the purchase history occluded as one column
            names.append(HISTORY)
            history = full[:, [model.features.index(c) for c in BTYD_INPUTS]]
        total = np.zeros((n, len(names)))
        base = np.full(n, constant)
        for t in terms:
            if t.booster is not None:
                if t.booster.num_feature() != m:
                    raise ValueError(f"{model.tag}/{name}: LightGBM reads {t.booster.num_feature()} columns, the "
                                     f"model's matrix has {m} ({names[:3]}...)")
                # A few rows (a customer online) on one thread: waking OpenMP's workers costs more than the trees
                # (measured 8 ms against 0.1 ms a call on a busy 2-core machine); the numbers are the same either way.
                c = t.booster.predict(full, pred_contrib=True, **({"num_threads": 1} if n < _FEW_ROWS else {}))
                total[:, :m] += t.weight * c[:, :m]
                base += t.weight * c[:, m]
            else:
                c, at_reference = by_term[id(t)]
                place = [p[0] if len(p) == 1 else m for p in players]  # a player's column in `names`
                total[:, place] += t.weight * c
                base += t.weight * at_reference
        values = full if len(names) == m else np.column_stack([full, np.full(n, np.nan, dtype=np.float32)])
        out[name] = Contributions(names, values, total, base, scale, method, history)
    return out


def _players(model: TagModel) -> list[tuple[int, ...]]:
    """What occlusion sets to its reference at once: each feature, except the BG/NBD inputs (frequency, recency,
    age), which go together. Alone they would make impossible customers (a recency without any repeat purchase, a
    fraction of a purchase) that the BTYD formulas refuse, and these models read them only jointly anyway."""
    at = {f: j for j, f in enumerate(model.features)}
    group = tuple(at[c] for c in BTYD_INPUTS) if set(BTYD_INPUTS) <= set(at) else ()
    return [(j,) for j in range(len(model.features)) if j not in group] + ([group] if group else [])


def _reference(model: TagModel, reference: Mapping[str, float] | None) -> np.ndarray:
    """The reference row (float32, one value per feature); its purchase history made that of a possible customer:
    whole repeat purchases (a missing count as none, as the BTYD formulas read it), no recency without one, an age
    of at least the recency."""
    if reference is None:
        raise ValueError(f"{model.tag}: explaining {', '.join(_occluded_outputs(model))} (not LightGBM) needs "
                         "reference values of its features, e.g. their medians at the scoring date")
    missing = [f for f in model.features if f not in reference]
    if missing:
        raise ValueError(f"{model.tag}: no reference value for feature(s) {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}")
    row = np.array([reference[f] for f in model.features], dtype=np.float64)
    if set(BTYD_INPUTS) <= set(model.features):
        f, r, t = (model.features.index(c) for c in BTYD_INPUTS)
        row[f] = np.floor(np.nan_to_num(row[f], nan=0.0))
        row[r] = 0.0 if row[f] <= 0 else min(np.nan_to_num(row[r], nan=0.0), np.nan_to_num(row[t], nan=0.0))
        row[t] = max(np.nan_to_num(row[t], nan=0.0), row[r])
    return row.astype(np.float32)


def _occluded_outputs(model: TagModel) -> list[str]:
    return [o for o, est in model.estimators.items() if any(t.score is not None for t in _plan(model, est)[0])]


def _occlude(model: TagModel, players: list[tuple[int, ...]], terms: list[_Term], x: np.ndarray, full: np.ndarray,
             ref: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Per term: ((n, players) its score at the row minus its score with the player's features at `ref`, its score
    with every feature at `ref`).

    Each player's occluded rows (only those it changes) are built once; the rows of several players are stacked and
    each term scores the stack in one call, up to `_STACK_ROWS` rows: for one customer online that is one call per
    term instead of one per feature. A term scores only the players whose columns it reads (a column it does not
    read changes nothing: 0)."""
    at_x = [np.asarray(t.score(full), dtype=np.float64) for t in terms]
    at_ref_full = model.full_matrix(ref[None, :])
    at_ref = [float(np.asarray(t.score(at_ref_full), dtype=np.float64)[0]) for t in terms]
    out = [np.zeros((len(x), len(players))) for _ in terms]
    derived = {model.features.index(c) for c in model.derived_from}
    appended = set(range(len(model.features), full.shape[1]))  # the BG/NBD and Pareto/NBD columns
    pending: list[tuple[int, np.ndarray, np.ndarray, list[int]]] = []  # (player, rows, occluded rows, readers)

    def score_pending() -> None:
        stack = np.concatenate([o for _, _, o, _ in pending]) if len(pending) > 1 else pending[0][2]
        for i, term in enumerate(terms):
            mine = [p for p in pending if i in p[3]]
            if not mine:
                continue
            rows_of = stack if len(mine) == len(pending) else np.concatenate([p[2] for p in mine])
            scores = np.asarray(term.score(rows_of), dtype=np.float64)
            at = 0
            for k, rows, _, _ in mine:
                out[i][rows, k] = at_x[i][rows] - scores[at:at + len(rows)]
                at += len(rows)
        pending.clear()

    stacked = 0
    for k, cols in enumerate(players):  # over the features (tens), each step vectorised over the rows
        moves = set(cols) | (appended if derived.intersection(cols) else set())
        readers = [i for i, t in enumerate(terms) if t.reads is None or not moves.isdisjoint(t.reads)]
        if not readers:
            continue
        cols_ = list(cols)
        now, r = x[:, cols_], ref[cols_]
        same = (now == r) | (np.isnan(now) & np.isnan(r))
        rows = np.flatnonzero(~same.all(axis=1))  # a row already at the reference: 0
        if not len(rows):
            continue
        if derived.intersection(cols):  # the BG/NBD and Pareto/NBD columns move with it: build them again
            occluded = x[rows]
            occluded[:, cols_] = r
            occluded = model.full_matrix(occluded)
        else:
            occluded = full[rows]
            occluded[:, cols_] = r
        pending.append((k, rows, occluded, readers))
        stacked += len(rows)
        if stacked >= _STACK_ROWS:
            score_pending()
            stacked = 0
    if pending:
        score_pending()
    return list(zip(out, at_ref))


def top(c: Contributions, k: int = DEFAULT_FACTORS) -> Factors:
    """Each row's `k` columns of largest |contribution|, in that order (equal ones: the earlier column first)."""
    n, m = c.contributions.shape
    k = max(0, min(int(k), m))
    size = np.abs(np.nan_to_num(c.contributions, nan=0.0))
    if k < m:
        part = np.argpartition(-size, k - 1, axis=1)[:, :k] if k else np.empty((n, 0), dtype=np.intp)
    else:
        part = np.broadcast_to(np.arange(m), (n, m))
    chosen = np.take_along_axis(size, part, axis=1)
    order = np.lexsort((part, -chosen), axis=-1)
    columns = np.take_along_axis(part, order, axis=1)
    return Factors(c.names, columns, np.take_along_axis(c.values, columns, axis=1),
                   np.take_along_axis(c.contributions, columns, axis=1), c.base, c.scale, c.method, c.history)


def explain(model: TagModel, x: np.ndarray, *, reference: Mapping[str, float] | None = None,
            k: int = DEFAULT_FACTORS, outputs: Sequence[str] | None = None) -> dict[str, Factors]:
    """The top `k` factors of each output of `model` for the rows of `x` (see `contributions`)."""
    return {name: top(c, k) for name, c in contributions(model, x, reference=reference, outputs=outputs).items()}
