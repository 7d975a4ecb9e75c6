"""One scoring function for online and batch: features in, model scores and tags out.

`Scorer.score` is the only place a model or a rule is applied to a customer. The batch job (`serving.batch`) calls
it on chunks of the offline snapshot at the scoring date; the service (`serving.service`) calls it on the rows it
reads from the online store. Model tags come from the MLflow registry alias `champion`; rule tags from the YAML
tag set; population statistics the rules need (quantile edges, RFM averages) from the last batch run, so that a
customer scored online gets exactly what the batch would give them on the same features.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from training import tracking

MODEL_TAGS = ("churn_risk", "high_value", "interest")
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
        return [o for m in self.models.values() for o in m.outputs]

    def features(self) -> list[str]:
        return self._plan[0]

    @functools.cached_property
    def _plan(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """The union of the models' features, and per model the positions of its features in that union."""
        names = sorted({f for m in self.models.values() for f in m.features})
        at = {f: i for i, f in enumerate(names)}
        return names, {t: np.array([at[f] for f in m.features], dtype=np.intp) for t, m in self.models.items()}


class ChampionLoader:
    """Loads the `champion` version of each model tag; a version already loaded is reused, not read again."""

    def __init__(self, client: MlflowClient, tags: Sequence[str] = MODEL_TAGS) -> None:
        self.client = client
        self.tags = tuple(tags)
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
        return ModelSet(models)


def model_outputs(columns: Mapping[str, np.ndarray], n: int, models: ModelSet) -> dict[str, np.ndarray]:
    """Every output of every model (churn_risk, high_value, interest_<category>) for `n` rows given by column.

    The features of all models are gathered into one float32 matrix, once; each model predicts from its columns
    of it (`TagModel.predict_matrix`, the path its held-out evaluation took). A feature `columns` lacks is unknown
    (NaN) for every row, as LightGBM treats a missing value.
    """
    names, positions = models._plan
    if not models.models:
        return {}
    if isinstance(columns, MatrixColumns):  # online: one gather from the matrix the store was read into
        x = columns.take(names)
    else:
        x = np.empty((n, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            values = columns[name] if name in columns else None
            x[:, j] = np.nan if values is None else _numbers(values)
    out: dict[str, np.ndarray] = {}
    for tag, m in models.models.items():
        for name, score in m.model.predict_matrix(x[:, positions[tag]]).items():
            out[name] = np.asarray(score, dtype=np.float64)
    return out


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


@dataclass(frozen=True)
class Scorer:
    """Models, rules and the population statistics of the last batch run: everything that scores a customer."""

    models: ModelSet
    tagset: object  # rules.TagSet
    stats: dict
    as_of: str | None = None  # the batch snapshot the statistics come from

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
