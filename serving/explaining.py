"""Explanations of the champions' scores per customer: the top factors of every model output, by
`training.explain` on the feature matrix scoring reads (`scoring.feature_matrix`).

Three callers: the online engine (`/v1/profile` with `explain: true`), batch rescoring (`persona rescore --explain`:
one `<output>_reasons` column of JSON per output in the tag snapshot) and the console (`Explainer`).

Reference values (what occlusion sets a feature to; only champions other than LightGBM need them): the median of
each model feature over every persona of the feature snapshot the tag snapshot was scored from
(`reference_values`). One source for the three callers: batch takes the medians of the frame it scores; the online
engine and the console read the same snapshot date back (`References`: once per loaded tag snapshot, at its first
explanation, so a service that never explains never reads it). An explanation served online therefore equals the
batch's for a persona whose features did not move since.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo import definitions as defs
from features import offline
from persona.workspace import Workspace
from rules import history
from serving import scoring
from training import explain, tracking
from training.explain import DEFAULT_FACTORS, Factors

REASONS = "_reasons"  # suffix of an output's column of explanations in the tag snapshot
# Rows explained per call in batch: every output's contributions (rows x ~160 columns, float64) are held at once,
# ~26 MB an output at this size, against ~260 MB at scoring's 200,000-row chunks.
EXPLAIN_CHUNK = 20_000


def reasons_column(output: str) -> str:
    """The tag snapshot's column holding the explanations of model output `output` (`rescore --explain`)."""
    return f"{output}{REASONS}"


def needs_reference(models: scoring.ModelSet) -> bool:
    """Whether explaining some champion occludes features (a champion other than LightGBM, or a blend with one)."""
    return any(explain.needs_reference(m.model) for m in models.models.values())


def reference_values(columns: Mapping[str, object], names: Sequence[str]) -> dict[str, float]:
    """The median of each feature of `names` over the rows of `columns` (NaN: no row has a value)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing feature: its reference is missing too
        for name in names:
            values = columns[name] if name in columns else None
            values = np.asarray(values, dtype=np.float64) if values is not None else np.empty(0)
            out[name] = float(np.nanmedian(values)) if len(values) else float("nan")
    return out


def explain_columns(columns: Mapping[str, np.ndarray], n: int, models: scoring.ModelSet,
                    references: Mapping[str, float] | None, k: int = DEFAULT_FACTORS) -> dict[str, Factors]:
    """The top `k` factors of every output of `models` for `n` rows given by column (as `scoring.model_outputs`
    takes them); `references`: see the module (None when no champion needs them)."""
    x = scoring.feature_matrix(columns, n, models)
    positions = models.positions()
    out: dict[str, Factors] = {}
    for tag, m in models.models.items():
        out.update(explain.explain(m.model, x[:, positions[tag]], reference=references, k=k))
    return out


def reasons(columns: Mapping[str, np.ndarray], n: int, models: scoring.ModelSet,
            references: Mapping[str, float] | None, k: int = DEFAULT_FACTORS) -> dict[str, list[str]]:
    """`<output>_reasons` columns: per row a JSON string of the output's top factors (`Factors.json`)."""
    return {reasons_column(o): f.json() for o, f in explain_columns(columns, n, models, references, k).items()}


def per_row(factors: Mapping[str, Factors], n: int) -> list[dict[str, dict]]:
    """Explanations by row: {output: {scale, method, base, factors}} for each of `n` rows."""
    rows: list[dict[str, dict]] = [{} for _ in range(n)]
    for output, f in factors.items():
        for row, record in zip(rows, f.records()):
            row[output] = record
    return rows


class References:
    """The reference values of one tag snapshot's date, read once, at first use (see the module); None when no
    champion needs them."""

    def __init__(self, ws: Workspace, as_of: str | None, names: Sequence[str], needed: bool) -> None:
        self.ws, self.as_of, self.names, self.needed = ws, as_of, list(names), needed
        self._values: dict[str, float] | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[str, float] | None:
        """The medians; FileNotFoundError naming what is missing when the feature snapshot cannot be read."""
        if not self.needed:
            return None
        with self._lock:
            if self._values is None:
                if self.as_of is None:
                    raise FileNotFoundError("no tag snapshot says which feature snapshot it scored (run `persona "
                                            "rescore`)")
                frame = offline.offline_frame(self.ws, pd.Timestamp(self.as_of), columns=self.names)
                self._values = reference_values(frame, self.names)
            return self._values


# --- the console -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explainer:
    """Explanations of the scores in one tag snapshot, for the console: the model versions that scored it, on the
    features it was scored from, with their medians as references. Load once (`load`), then ask per persona."""

    models: scoring.ModelSet
    date: str  # the tag snapshot's date
    ids: pd.Index  # persona ids, in the rows of `matrix`
    matrix: np.ndarray  # float32, columns `models.features()`
    references: dict[str, float] | None

    @classmethod
    def load(cls, ws: Workspace, date: str | None = None) -> Explainer:
        """The tag snapshot of `date` (default: the latest), its model versions from the registry and its features."""
        meta = history.read_meta(ws, date)
        client = tracking.connect(ws, ws.config())
        models = scoring.ChampionLoader(client, list(meta["models"])).load(meta["models"])
        names = models.features()
        frame = offline.offline_frame(ws, pd.Timestamp(meta["as_of"]), columns=names)
        x = scoring.feature_matrix(frame, len(frame), models)
        refs = reference_values(frame, names) if needs_reference(models) else None
        return cls(models, meta["date"], pd.Index(frame[defs.JOIN_KEY].astype(str)), x, refs)

    def persona(self, persona_id: str, k: int = DEFAULT_FACTORS) -> dict[str, dict]:
        """{output: {scale, method, base, factors: [{feature, value, contribution}]}} of one persona; LookupError when
        the snapshot did not score it."""
        at = self.ids.get_indexer([persona_id])[0]
        if at < 0:
            raise LookupError(f"persona {persona_id!r} has no features in the snapshot scored on {self.date}")
        rows = scoring.MatrixColumns(self.matrix[at:at + 1], self.models.features())
        return per_row(explain_columns(rows, 1, self.models, self.references, k), 1)[0]

    def features(self, row: Mapping[str, float], k: int = DEFAULT_FACTORS) -> dict[str, dict]:
        """The same for a row of features given by name (a feature not given is missing)."""
        columns = {name: np.array([row[name]], dtype=np.float32) for name in self.models.features() if name in row}
        return per_row(explain_columns(columns, 1, self.models, self.references, k), 1)[0]


def explain_persona(ws: Workspace, persona_id: str, *, k: int = DEFAULT_FACTORS) -> dict[str, dict]:
    """Every champion output's top factors for one persona of the latest tag snapshot (`Explainer`, loaded for this
    one call: a console answering many should keep an `Explainer`)."""
    return Explainer.load(ws).persona(persona_id, k)
