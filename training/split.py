"""Which labelled rows train, validate and test a model tag, and how many of them are read.

Time-based protocol, per tag with horizon H, over the feature snapshot dates:
- test: the latest date whose label window [date, date + H) is fully observed;
- validation (early stopping, calibration): the latest date whose window ends by the test date;
- training: the `training.cutoffs` dates before it, also with windows ending by the test date.
So nothing the model is trained or tuned on overlaps the held-out period, and no feature sees past its date.
A log too short for that (a few months) holds out the held-out date's customers instead (`plan_split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import labels as lab
from persona.config import PersonaConfig
from persona.errors import InsufficientDataError

MAX_TRAIN_ROWS = 200_000  # label rows over all training dates; beyond it, a seeded sample (see sample_labels)
MAX_EVAL_ROWS = 300_000  # label rows of the validation date and of the held-out date, each
FOLDS = 5  # customer split: customers fall in 5 groups; each is held out once (cross-fitting), the next validates


class EligibilityError(InsufficientDataError):
    """A tag cannot be trained; the message says exactly what is missing."""


@dataclass
class Split:
    train: list[pd.Timestamp]
    val: pd.Timestamp
    test: pd.Timestamp
    # False: a time split (every window ends by the held-out date). True: the data is too short for that, so the
    # held-out date's customers are set apart instead (see plan_split).
    customers: bool = False


def plan_split(dates: list[pd.Timestamp], *, data_end: pd.Timestamp, horizon_days: int, cutoffs: int,
               tag: str, mode: str = "auto", horizon_key: str = "labels.*_horizon_days") -> Split:
    """Choose train / validation / test snapshot dates for a horizon (see the module docstring).

    Time split (mode "time", and "auto" when the data allows it): the held-out date is the latest with a fully
    observed label window; validation and training dates have windows that end by it, so nothing learnt overlaps
    the held-out period. A log of a few months cannot hold that (a 90-day horizon needs two windows before a third:
    270 days after the first snapshot). Then (mode "auto" or "customers") the held-out date keeps its place but
    its customers are split into FOLDS groups (by a hash of persona_id, the same every run): each group in turn is
    scored there by models trained on the other customers at the earlier labelled dates (windows may overlap the
    held-out period, but never for the same customers), so every customer is scored once, out of fold.
    """
    h = pd.Timedelta(days=horizon_days)
    labelled = lab.labelled_dates(dates, data_end=data_end, horizon_days=horizon_days)
    first = dates[0] if dates else None
    if not labelled:
        room = (data_end - first).days if first is not None else 0
        raise EligibilityError(
            f"{tag}: no snapshot date has a fully observed {horizon_days}-day label window: the data ends "
            f"{data_end.date()} and the first snapshot is "
            f"{first.date() if first is not None else 'missing'}; a horizon of at most {max(room - 1, 0)} days "
            f"fits ({horizon_key}), or start snapshots earlier with a lower training.min_history_days")
    test = labelled[-1]
    before = [d for d in labelled if d + h <= test]
    if mode != "customers" and len(before) >= 2:
        return Split(train=before[:-1][-cutoffs:], val=before[-1], test=test)
    earlier = [d for d in labelled if d < test]
    if mode == "time" or not earlier:
        span = (data_end - first).days if first is not None else 0
        need = "two training dates whose windows end before" if mode == "time" else "one labelled date before"
        raise EligibilityError(
            f"{tag}: too little history: a {horizon_days}-day horizon needs {need} the held-out date "
            f"{test.date()}, found {len(before) if mode == 'time' else 0} (snapshots cover {span} days from "
            f"{first.date() if first is not None else '-'}; need about "
            f"{(2 * horizon_days + 60) if mode == 'time' else horizon_days + 30} days: a shorter horizon "
            f"({horizon_key}), a lower training.min_history_days or training.cutoff_every_days"
            + (", or training.split: auto" if mode == "time" else "") + ")")
    return Split(train=earlier[-cutoffs:], val=earlier[-1], test=test, customers=True)


def customer_fold(persona_id: pd.Series) -> np.ndarray:
    """0-99 per persona, from a fixed hash of its id: the same customer lands in the same fold every run."""
    return (pd.util.hash_pandas_object(persona_id.astype(str), index=False).to_numpy() % 100).astype(np.int64)


def period_masks(frame: pd.DataFrame, split: Split, fold: int = 0) -> dict[str, np.ndarray]:
    """Which rows of a (persona_id, event_timestamp, ...) frame train, validate and test under `split`.

    Customer split: customers fall in FOLDS groups (by `customer_fold`); in fold k, group k is held out at the
    held-out date, group k+1 validates and the others train, so across the folds every
    customer is scored once by models that never saw them; group k+1 validates at the training dates."""
    when = pd.to_datetime(frame["event_timestamp"], utc=True)
    as_utc = lambda ds: pd.to_datetime(pd.Series(ds), utc=True)  # noqa: E731
    train, val, test = when.isin(as_utc(split.train)).to_numpy(), (when == as_utc([split.val])[0]).to_numpy(), \
        (when == as_utc([split.test])[0]).to_numpy()
    if not split.customers:
        return {"train": train, "val": val, "test": test}
    group = customer_fold(frame["persona_id"]) % FOLDS
    held, validating = group == fold % FOLDS, group == (fold + 1) % FOLDS
    # validation: the validating group at every training date (one date of a fifth of a small shop's customers is
    # too few labels to stop early and calibrate on)
    return {"train": train & ~held & ~validating, "val": train & validating, "test": test & held}


def check_counts(tag: str, y: np.ndarray, period: str, date: str, cfg: PersonaConfig) -> None:
    """Refuse a probability output with too few positives or negatives in a period to fit or judge it on."""
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos < cfg.training.min_positives or neg < cfg.training.min_negatives:
        raise EligibilityError(
            f"{tag}: not eligible: {pos} positives and {neg} negatives in the {period} ({date}); needs at least "
            f"{cfg.training.min_positives} positives and {cfg.training.min_negatives} negatives "
            "(training.min_positives / min_negatives)")


def sample_labels(labels: pd.DataFrame, split: Split, seed: int) -> pd.DataFrame:
    """A seeded sample of the label rows, taken *before* the point-in-time join so that memory and time stay
    bounded by the sample (at 1M customers the full join of every date is tens of GB): at most MAX_TRAIN_ROWS
    over the training rows and MAX_EVAL_ROWS on each of the validation and held-out rows (time split), or at most
    MAX_EVAL_ROWS on each date up to the held-out one (customer split: the folds rotate over all of them)."""
    when = pd.to_datetime(labels["event_timestamp"], utc=True)
    if split.customers:
        parts = [part.sample(MAX_EVAL_ROWS, random_state=seed) if len(part) > MAX_EVAL_ROWS else part
                 for _, part in labels[when.le(pd.Timestamp(split.test)).to_numpy()].groupby(when, sort=True)]
        return pd.concat(parts, ignore_index=True) if parts else labels.iloc[:0]
    masks = period_masks(labels, split)
    parts = []
    for name, cap in (("train", MAX_TRAIN_ROWS), ("val", MAX_EVAL_ROWS), ("test", MAX_EVAL_ROWS)):
        part = labels[masks[name]]
        parts.append(part.sample(cap, random_state=seed) if len(part) > cap else part)
    return pd.concat(parts, ignore_index=True)


def refit_rows(data: pd.DataFrame, split: Split, seed: int) -> pd.DataFrame:
    """The labelled rows a refit learns from: all of them up to MAX_TRAIN_ROWS (the evaluation's train, validation
    and held-out rows are up to 800k, four times what the candidates were fitted on); beyond, the held-out date's
    rows (the newest behaviour) fill up to half, and a seeded sample of the earlier dates the rest."""
    if len(data) <= MAX_TRAIN_ROWS:
        return data.reset_index(drop=True)
    newest = (pd.to_datetime(data["event_timestamp"], utc=True) == pd.Timestamp(split.test)).to_numpy()
    recent, earlier = data[newest], data[~newest]
    recent = recent.sample(min(len(recent), MAX_TRAIN_ROWS // 2), random_state=seed)
    earlier = earlier.sample(min(len(earlier), MAX_TRAIN_ROWS - len(recent)), random_state=seed)
    return pd.concat([earlier, recent], ignore_index=True)
