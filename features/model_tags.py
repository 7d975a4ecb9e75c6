"""The model tags: one entry per tag, read by the feature store, training, scoring and the catalog.

An entry says everything that differs between model tags: what the tag predicts (its label function, over which
horizon), how it is judged (kind and metric), what it reads (the feature groups of its FeatureService) and what it
must beat (the heuristic baselines) or may be served as (the buy-till-you-die families that suit it). Whatever is
the same for every tag (the learned candidates, selection, the promotion gate, logging) is written once in
training/ and loops over this registry. So adding a model tag is one `ModelTag` below plus its label function in
features/labels.py; nothing else names a tag.

Implementations are named, not imported: this floor sits below training, which resolves the names
(`training.models.HEURISTICS`, `training.candidates.PROCESS_FAMILIES`) and refuses one it does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from feature_repo import definitions as defs
from features import labels as lab
from persona.config import PersonaConfig

# The keys of every label row and feature row (a customer at a snapshot date): the Feast entity's join key and the
# snapshots' event timestamp, as feature_repo/definitions.py names them. Written once here; the feature build and
# training import it.
KEYS = (defs.JOIN_KEY, defs.TIMESTAMP)
# What each kind is judged by on the held-out period: ranking metrics (see training/metrics.py), as the promotion gate
# compares them; a probability tag is also calibrated, a value tag is not.
METRICS = {"probability": "auc", "value": "spearman"}

# (con, source, *, dates, horizon_days) -> persona_id, event_timestamp and the label column(s): one row per customer
# scored at a date, looking only at [date, date + horizon) (features/labels.py).
LabelFunction = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class ModelTag:
    """One model tag: what it predicts, how it is judged, what it reads and what it must beat."""

    name: str
    kind: str  # probability | value
    metric: str  # auc (probability) | spearman (value)
    # The label window: a key of persona.yaml's `labels:` (e.g. "churn_horizon_days"), or a fixed number of days.
    horizon: str | int
    labels: LabelFunction
    groups: tuple[str, ...]  # the feature groups its FeatureService `<name>_v1` reads (feature_repo/definitions.py)
    # Heuristic baselines, reported name -> implementation (training.models.HEURISTICS): every served model must beat
    # each on the held-out metric (the promotion gate).
    baselines: Mapping[str, str] = field(default_factory=dict)
    # Buy-till-you-die candidate families that suit this tag, reported name -> implementation
    # (training.candidates.PROCESS_FAMILIES), besides the learned candidates every tag has. In this order they join
    # the candidates (and a blend's members).
    process: Mapping[str, str] = field(default_factory=dict)
    # False: the label function's `label` column is the one output, named like the tag. True: every label column c
    # is an output `<name>_<c>` (interest_<category>), served and gated on its own.
    per_column: bool = False
    # Why a per-column tag can have no label column at all (the data lacks what its columns come from): the reason
    # its training is skipped with.
    no_outputs: str = "its label function gave no label column"

    def __post_init__(self) -> None:
        if self.kind not in METRICS:
            raise ValueError(f"model tag {self.name!r}: kind {self.kind!r} is not one of {sorted(METRICS)}")
        if self.metric != METRICS[self.kind]:
            raise ValueError(f"model tag {self.name!r}: a {self.kind} tag is judged by {METRICS[self.kind]}, "
                             f"not {self.metric!r}")
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"model tag {self.name!r}: a name is a lowercase identifier (it names columns, "
                             "the FeatureService and the registered model)")
        if not self.groups:
            raise ValueError(f"model tag {self.name!r}: no feature group to read")
        # A misspelt group would otherwise drop out of the FeatureService unnoticed, and the model train without it.
        unknown = [g for g in self.groups if g not in defs.GROUPS]
        if unknown:
            raise ValueError(f"model tag {self.name!r}: unknown feature group(s) {unknown}; the groups are "
                             f"{', '.join(defs.GROUPS)} (feature_repo/definitions.py GROUPS)")

    @property
    def service(self) -> str:
        """Its FeatureService, as feature_repo/definitions.feature_service names it."""
        return f"{self.name}_v1"

    @property
    def horizon_key(self) -> str:
        """Where its horizon is set, for messages that tell a user what to change."""
        return f"labels.{self.horizon}" if isinstance(self.horizon, str) else f"the {self.name} entry of {__name__}"

    def horizon_days(self, cfg: PersonaConfig) -> int:
        if isinstance(self.horizon, int):
            return self.horizon
        if not hasattr(cfg.labels, self.horizon):
            raise ValueError(f"model tag {self.name!r}: persona.yaml has no labels.{self.horizon}")
        return int(getattr(cfg.labels, self.horizon))

    def label_frame(self, con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                    horizon_days: int) -> tuple[pd.DataFrame, dict[str, str]]:
        """The labels at `dates` and the outputs they train: {output: its label column}. A per-column tag's label
        columns are renamed `label_<c>`, so that no label can take the name of a key or a feature."""
        frame = self.labels(con, source, dates=dates, horizon_days=horizon_days)
        if not self.per_column:
            if "label" not in frame.columns:
                raise ValueError(f"model tag {self.name!r}: its label function returned no `label` column "
                                 f"(columns {list(frame.columns)})")
            return frame, {self.name: "label"}
        columns = [c for c in frame.columns if c not in KEYS]
        frame = frame.rename(columns={c: f"label_{c}" for c in columns})
        return frame, {f"{self.name}_{c}": f"label_{c}" for c in columns}

    def key(self, output: str) -> str | None:
        """What an output of a per-column tag is about (interest_<category>: the category); None for the others."""
        return output.removeprefix(f"{self.name}_") if self.per_column else None


MODEL_TAGS: tuple[ModelTag, ...] = (
    ModelTag("churn_risk", "probability", "auc", "churn_horizon_days", lab.churn_labels,
             ("attributes", "transactions", "engagement", "realtime"),
             baselines={"rfm_heuristic": "rfm_churn"},
             process={"bg_nbd": "btyd_churn", "bg_nbd_covariates": "btyd_covariates"}),
    ModelTag("high_value", "value", "spearman", "value_horizon_days", lab.value_labels,
             ("attributes", "transactions", "engagement"),
             baselines={"rfm_heuristic": "rfm_value"},
             process={"bg_nbd_gamma_gamma": "btyd_value"}),
    ModelTag("interest", "probability", "auc", "interest_horizon_days", lab.customer_interest_labels,
             ("attributes", "transactions", "engagement", "affinity", "realtime"),
             baselines={"rfm_heuristic": "rfm_interest"},
             process={"bg_nbd": "btyd_interest"},
             per_column=True,
             no_outputs="the transactions have no category (map a `category` field in the source's `fields:` to "
                        "train product-interest tags)"),
)


def registry() -> tuple[ModelTag, ...]:
    """Every model tag, read when called (a test may extend MODEL_TAGS); names are unique."""
    seen = [t.name for t in MODEL_TAGS]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ValueError(f"model tags named twice: {twice}")
    return tuple(MODEL_TAGS)


def names() -> tuple[str, ...]:
    return tuple(t.name for t in registry())


def get(name: str) -> ModelTag:
    for t in registry():
        if t.name == name:
            return t
    raise KeyError(f"no model tag {name!r} (known: {', '.join(names())})")


def feature_services() -> dict[str, tuple[str, ...]]:
    """Model tag -> the feature groups of its FeatureService: what the feature store registers."""
    return {t.name: tuple(t.groups) for t in registry()}
