"""The promotion gate: whether this run's challenger of a model tag becomes its `champion`.

A challenger becomes `champion` (`gate`, applied by `promote_challenger`) only if
1. every output beats every one of its baselines on the held-out metric (the table `train` returns). A multi-output
   tag (interest) needs *all* its outputs to pass: each `interest_<category>` is served and used by rules on its own,
   so a category that ranks worse than the RFM heuristic would be a regression for that tag however the others do;
   the reason names the failing outputs so a weak category can be fixed or dropped upstream;
2. when a champion exists, the challenger beats it, scored on the same held-out rows (mean metric over the outputs
   both have), by at least `training.promotion_margin`, and (with `training.promotion_bootstrap`) the 2.5th
   percentile of a paired bootstrap of that difference (same resampled rows for both models) is above 0.
The verdict and its reason are logged on the challenger's run (see `tracking.record_gate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from features.model_tags import ModelTag
from persona.config import PersonaConfig
from training import tracking
from training.metrics import paired_bootstrap, rank_metric

BOOTSTRAP_RESAMPLES = 200  # paired bootstrap of the gate: enough for a 2.5th percentile, seconds at 300k rows
NO_SKILL = {"auc": 0.5, "spearman": 0.0}  # what an undefined (NaN) baseline metric is worth: it cannot rank


@dataclass
class TagResult:
    """One output of a trained tag on the held-out rows: a row of the table `train` returns, and what the gate
    reads (details["y"], details["score"]: the labels and the challenger's scores, in the held-out rows' order)."""

    tag: str
    metric: str
    value: float
    baselines: dict[str, float]
    version: str | None = None
    grade: str = ""
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GateInput:
    """One output of a challenger on the held-out rows."""

    output: str
    value: float  # the challenger's held-out metric, as in the table
    baselines: dict[str, float]  # each baseline's held-out metric, as in the table
    y: np.ndarray
    challenger: np.ndarray  # the challenger's scores on the held-out rows
    champion: np.ndarray | None = None  # the champion's scores on the same rows; None: it has no such output


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    failed: str | None  # baseline | margin | bootstrap | champion (could not score) | None
    challenger: float  # mean metric over outputs: the table's, or on the outputs shared with the champion
    champion: float | None = None
    margin: float | None = None  # challenger - champion on the same rows
    required_margin: float | None = None
    bootstrap_lower: float | None = None  # 2.5th percentile of the paired bootstrap of that difference

    def as_dict(self) -> dict:
        out = {"promoted": self.promoted, "gate": "promoted" if self.promoted else "refused", "reason": self.reason,
               "failed": self.failed, "challenger": self.challenger}
        for key in ("champion", "margin", "required_margin", "bootstrap_lower"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def beats(metric: str, value: float, baseline: float) -> bool:
    """Whether a held-out metric beats a baseline's: strictly higher; an undefined baseline has no skill, an
    undefined value beats nothing."""
    return bool(value > (baseline if np.isfinite(baseline) else NO_SKILL[metric]))


def _baseline_failures(metric: str, outputs: list[GateInput]) -> list[str]:
    failures = []
    for o in outputs:
        for name, base in o.baselines.items():
            if not beats(metric, o.value, base):
                failures.append(f"{o.output} {metric.upper() if metric == 'auc' else metric} {o.value:.4f} "
                                f"<= {name} {base:.4f}")
    return failures


def gate(metric: str, outputs: list[GateInput], *, champion: str | None, margin: float, bootstrap: bool,
         seed: int, resamples: int = BOOTSTRAP_RESAMPLES, champion_error: str | None = None) -> Verdict:
    """The promotion verdict for a challenger, from its held-out scores (pure: no MLflow, no I/O).

    Checks in order, the first failure deciding: every output beats every baseline; the champion could score the
    rows (champion_error says why not); the mean metric over the outputs both models have beats the champion's by
    at least `margin`; with `bootstrap`, the paired bootstrap's 2.5th percentile of that difference is above 0.
    champion: the champion's version, or None when there is none (then GateInput.champion is ignored). A champion
    with none of the challenger's outputs cannot be compared: the baselines decide.
    """
    label = metric.upper() if metric == "auc" else metric
    table = float(np.mean([o.value for o in outputs]))
    failures = _baseline_failures(metric, outputs)
    if failures:
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        return Verdict(False, f"loses to a baseline on the held-out period ({len(failures)} of "
                              f"{sum(len(o.baselines) for o in outputs)} comparisons): "
                              + "; ".join(failures[:5]) + more, "baseline", table)
    weakest = min(((o.value - b, o.output, k) for o in outputs for k, b in o.baselines.items()
                   if np.isfinite(b)), default=None)
    beaten = "beats every baseline" + (f" (closest: {weakest[1]} over {weakest[2]} by {weakest[0]:+.4f})"
                                       if weakest else "")
    if champion is None:
        return Verdict(True, f"no champion yet; {beaten}", None, table)
    if champion_error is not None:
        return Verdict(False, f"champion v{champion} cannot score the held-out data: {champion_error}", "champion",
                       table)
    shared = [o for o in outputs if o.champion is not None]
    if not shared:
        return Verdict(True, f"champion v{champion} has none of these outputs; {beaten}", None, table)
    new = float(np.mean([rank_metric(metric, o.y, o.challenger)[0] for o in shared]))
    old = float(np.mean([rank_metric(metric, o.y, o.champion)[0] for o in shared]))
    diff = new - old
    lower = None
    if bootstrap:
        diffs = paired_bootstrap(metric, [(o.y, o.challenger, o.champion) for o in shared], resamples=resamples,
                                 seed=seed)
        lower = float(np.percentile(diffs, 2.5)) if len(diffs) else float("nan")
    rows = len(shared[0].y)
    outputs_note = "" if len(shared) == 1 else f" (mean over {len(shared)} outputs)"
    if len(shared) < len(outputs):
        outputs_note += f" ({len(outputs) - len(shared)} output(s) the champion lacks: baselines only)"
    numbers = f"{label} {new:.4f} vs {old:.4f}{outputs_note} on the same {rows:,} held-out rows"
    boot = "" if lower is None else f"; paired bootstrap 95% lower bound {lower:+.4f} ({resamples} resamples)"
    common = dict(challenger=new, champion=old, margin=diff, required_margin=margin, bootstrap_lower=lower)
    if not diff >= margin:
        return Verdict(False, f"does not beat champion v{champion} by the promotion margin: {numbers} "
                              f"({diff:+.4f} < {margin:.4f}){boot}", "margin", **common)
    if lower is not None and not lower > 0:
        return Verdict(False, f"does not beat champion v{champion} reliably: {numbers} ({diff:+.4f} >= "
                              f"{margin:.4f}) but the paired bootstrap 95% lower bound of the difference is "
                              f"{lower:+.4f} (<= 0; {resamples} resamples)", "bootstrap", **common)
    return Verdict(True, f"beats champion v{champion}: {numbers} ({diff:+.4f} >= {margin:.4f}){boot}; {beaten}",
                   None, **common)


def promote_challenger(client: MlflowClient, tag: ModelTag, results: list[TagResult], held_out: pd.DataFrame,
                       cfg: PersonaConfig) -> dict:
    """Gate the challenger `results` were logged as, record the verdict on its run, move `champion` if it passes.

    tag: the registry entry (its name and metric). held_out: the rows (keys and features) the results' scores are
    for, in the same order; the champion is scored on them. Returns the verdict (`promoted`, `gate`, `reason`, the
    figures compared).
    """
    name = tracking.model_name(tag.name)
    challenger = results[0].version
    champion = tracking.alias_version(client, name, tracking.CHAMPION)
    if champion is not None and champion == challenger:
        return {"promoted": False, "gate": None, "reason": "challenger is already champion", "failed": None,
                "challenger": float(np.mean([r.value for r in results])), "challenger_version": challenger,
                "champion_version": champion}
    champion_scores: dict[str, np.ndarray] = {}
    champion_error = None
    if champion is not None:
        try:
            loaded = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}").unwrap_python_model()
            # the champion as it was evaluated (before its refit on windows that may overlap these held-out rows)
            judged = getattr(loaded, "evaluation", None) or loaded
            predictions = judged.predict(None, held_out)
            champion_scores = {c: predictions[c].to_numpy(dtype=np.float64) for c in predictions.columns}
        except Exception as exc:  # a champion that cannot score today's features cannot be compared
            champion_error = f"{type(exc).__name__}: {exc}"
    outputs = [GateInput(r.tag, r.value, r.baselines, np.asarray(r.details["y"]),
                         np.asarray(r.details["score"], dtype=np.float64), champion_scores.get(r.tag))
               for r in results]
    verdict = gate(tag.metric, outputs, champion=champion, margin=cfg.training.promotion_margin,
                   bootstrap=cfg.training.promotion_bootstrap, seed=cfg.training.seed, champion_error=champion_error)
    tracking.record_gate(client, name, challenger, promoted=verdict.promoted, reason=verdict.reason, metrics={
        "gate_margin": verdict.margin, "gate_bootstrap_lower": verdict.bootstrap_lower,
        "gate_challenger": verdict.challenger, "gate_champion": verdict.champion})
    if verdict.promoted:
        client.set_registered_model_alias(name, tracking.CHAMPION, challenger)
    return {**verdict.as_dict(), "challenger_version": challenger, "champion_version": champion}
