#!/usr/bin/env python
"""Real-data benchmark: persona on the CDNOW sample, run as a user would, against BG/NBD, BG/NBD x Gamma-Gamma and
LightGBM on plain RFM fitted here on the same customers and the same cutoff.

    make bench-setup                                          # the `bench` dependency group (lifetimes' data file)
    .venv/bin/python bench/real_data.py                       # development: cutoff 1997-04-30, H = 60 days
    .venv/bin/python bench/real_data.py --cutoff 1997-03-31 --horizon 90
    .venv/bin/python bench/real_data.py --final               # the judged configuration (issue 11): see below

Data: `datasets/CDNOW_sample.txt` inside the installed `lifetimes` distribution (2,357 real customers of a music
retailer; whitespace separated: original customer id, sample id, date YYYYMMDD, CDs, dollars; CRLF line ends). The
file is located through the distribution's file list; lifetimes itself is never imported.

Cutoff discipline: data after 1997-06-30 is how the project is judged and must not be read during development.
Rows are filtered by date while the file is parsed, before anything else sees them: a run reads rows dated up to
cutoff + H (the end of its truth window) and nothing later, and any `--cutoff/--horizon` whose truth window ends
after 1997-06-30 is refused. Only `--final` (cutoff 1997-06-30, truth 1997-07-01 .. 1997-09-28) reads further.

Per run:
  1. history = rows dated <= cutoff, written to `raw/transactions.csv` of a fresh workspace (customer_id, date,
     quantity, amount); truth = rows in (cutoff, cutoff + H];
  2. persona through its CLI, as a user would: `persona init --transactions`, the two horizons
     (labels.churn_horizon_days, labels.value_horizon_days = H) set in persona.yaml and nothing else, then
     `integrate`, `features`, `train --promote`, `rescore`. A failing step is recorded (exit code, message, wall and
     CPU seconds, third-party warnings on stderr) instead of stopping the benchmark; `rescore` is still tried after
     a failed `train`, since champions promoted before the failure are served. The tag snapshot's churn_risk and
     high_value are mapped back to CDNOW ids through integrated/current/identity_map.parquet;
  3. baselines fitted here, on rows <= cutoff only:
     - BG/NBD (training/btyd.py BetaGeoModel, penalizer 0, the published model): churn score P(no purchase in H);
     - BG/NBD x Gamma-Gamma (GammaGammaModel on repeat buyers, `expected_value`): expected spend in the next H days;
     - LightGBM on plain RFM: recency, frequency, monetary, T computed at cutoff - H, labels from (cutoff - H,
       cutoff], fixed parameters (no tuning), then scored on the same four columns computed at cutoff;
  4. every model is judged on the same customers (everyone with a purchase <= cutoff that persona scored; all of them
     when persona produced no scores): churn AUC (label: no purchase in the truth window), Brier score of the churn
     probability, Spearman of predicted value vs next-H spend, top-decile share (share of all next-H spend bought by
     the 10% ranked highest by predicted value; ties at the boundary count pro rata, the expectation under random
     tie-breaking). An oracle row (ranking by the truth itself) bounds the top-decile share.

Conventions (the bench's, applied to every baseline alike): a purchase is a transaction row (a $0 row counts as a
purchase day); purchases on one day are one purchase of their summed amount; frequency = purchase days after the
first; recency (BG/NBD t_x) = last - first purchase day; T = observation end - first purchase day, in days;
Gamma-Gamma's monetary = mean spend of the repeat purchase days with spend > 0 (a repeat buyer whose repeat days
are all $0 gets the population mean spend).

Prints the table with the machine's load (the run shares 2 cores with other jobs); writes bench/out/real_data.json.
Keeps the workspace (path printed) when a persona step failed or with --keep; removes it otherwise.
`--set SECTION.KEY=VALUE` (development only, refused with --final) adds a persona.yaml setting beyond the horizons, to
see past a step that fails with the defaults; the output names every such setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel, expected_value  # noqa: E402

OUT = ROOT / "bench" / "out" / "real_data.json"
PERSONA = ROOT / ".venv" / "bin" / "persona"
DATA_FILE = "datasets/CDNOW_sample.txt"
DEV_LAST_DAY = pd.Timestamp("1997-06-30")  # the last day development may read (issue 11)
DEV_CUTOFF, DEV_HORIZON = pd.Timestamp("1997-04-30"), 60  # truth 1997-05-01 .. 1997-06-29
FINAL_CUTOFF, FINAL_HORIZON = pd.Timestamp("1997-06-30"), 90  # the judged configuration: run only with --final
STEP_TIMEOUT_S = 3600
# Fixed a priori (not tuned): small trees for ~2k customers and four columns; deterministic on any thread count.
LGBM_PARAMS = {"n_estimators": 200, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 20,
               "subsample": 1.0, "colsample_bytree": 1.0, "reg_lambda": 1.0, "random_state": 0,
               "deterministic": True, "force_row_wise": True, "n_jobs": 1, "verbose": -1}
RFM_COLUMNS = ["recency", "frequency", "monetary", "T"]
_WARNING = re.compile(r"\b([A-Z][A-Za-z]*Warning)\b")


# ------------------------------------------------------------------------------------------------------- the data
def locate_cdnow() -> Path:
    """Path of CDNOW_sample.txt inside the installed lifetimes distribution (found without importing lifetimes)."""
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("lifetimes is not installed: run `make bench-setup` (the `bench` dependency group)") from None
    hits = [f for f in dist.files or [] if f.as_posix().endswith(DATA_FILE)]
    if not hits:
        raise SystemExit(f"lifetimes {dist.version} has no {DATA_FILE} in its file list")
    path = Path(dist.locate_file(hits[0]))
    if not path.is_file():
        raise SystemExit(f"{path}: listed by lifetimes {dist.version} but missing")
    return path


def read_cdnow(path: Path, *, last_day: pd.Timestamp) -> pd.DataFrame:
    """Rows dated <= last_day: customer (original CDNOW id), date, quantity, amount.

    The date filter is the first thing applied to the parsed text; nothing later is kept or converted."""
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=["customer", "sample_id", "date", "quantity", "amount"],
                      dtype=str)
    if raw.empty or raw["date"].isna().any() or not raw["date"].str.fullmatch(r"\d{8}").all():
        raise SystemExit(f"{path}: expected 5 whitespace-separated columns with dates as YYYYMMDD in the third")
    keep = raw["date"].to_numpy(dtype=str) <= last_day.strftime("%Y%m%d")  # YYYYMMDD compares as text
    rows = raw.loc[keep].reset_index(drop=True)
    del raw
    out = pd.DataFrame({
        "customer": pd.to_numeric(rows["customer"], errors="raise").astype(np.int64),
        "date": pd.to_datetime(rows["date"], format="%Y%m%d"),
        "quantity": pd.to_numeric(rows["quantity"], errors="raise").astype(np.int64),
        "amount": pd.to_numeric(rows["amount"], errors="raise").astype(np.float64),
    })
    if (out["date"] > last_day).any():  # cannot happen; the cutoff rule is worth the check
        raise AssertionError("a row after the last allowed day was kept")
    return out


def windows(cutoff: pd.Timestamp, horizon: int, *, final: bool) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first, last) day of the truth window (cutoff, cutoff + H]; refuses to reach past 1997-06-30 unless final."""
    if horizon < 7:
        raise SystemExit(f"--horizon {horizon}: persona's labels need at least 7 days")
    first, last = cutoff + pd.Timedelta(days=1), cutoff + pd.Timedelta(days=horizon)
    if last > DEV_LAST_DAY and not final:
        raise SystemExit(f"--cutoff {cutoff.date()} --horizon {horizon}: the truth window ends {last.date()}, after "
                         f"{DEV_LAST_DAY.date()}; data after that day is reserved for the judged run (--final)")
    return first, last


# ------------------------------------------------------------------------------------------------ RFM and truth
def daily(tx: pd.DataFrame) -> pd.DataFrame:
    """One purchase per customer and day: the day's summed amount."""
    return tx.groupby(["customer", "date"], as_index=False, sort=True)["amount"].sum()


def rfm_at(days: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Per customer with a purchase day <= end: frequency (repeat days), recency (last - first, days), T (end - first),
    monetary (mean spend per purchase day), gg_monetary (mean spend of repeat days with spend > 0; 0 if none),
    recency_since (end - last: days since the last purchase)."""
    d = days[days["date"] <= end]
    first = d.groupby("customer")["date"].transform("min")
    repeat = d["date"] > first
    g = d.groupby("customer")
    out = pd.DataFrame({"first": g["date"].min(), "last": g["date"].max(), "days": g.size(),
                        "spend": g["amount"].sum()})
    paid = d[repeat & (d["amount"] > 0)].groupby("customer")["amount"]
    out["gg_monetary"] = paid.mean().reindex(out.index).fillna(0.0)
    out["frequency"] = (out["days"] - 1).astype(np.float64)
    out["recency"] = (out["last"] - out["first"]).dt.days.astype(np.float64)
    out["T"] = (end - out["first"]).dt.days.astype(np.float64)
    out["recency_since"] = (end - out["last"]).dt.days.astype(np.float64)
    out["monetary"] = out["spend"] / out["days"]
    return out


def window_truth(tx: pd.DataFrame, customers: pd.Index, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """churned (no purchase in [first, last]) and spend there, for `customers`."""
    w = tx[(tx["date"] >= first) & (tx["date"] <= last)].groupby("customer")["amount"].agg(["size", "sum"])
    w = w.reindex(customers).fillna(0.0)
    return pd.DataFrame({"churned": (w["size"] == 0).astype(np.int64), "spend": w["sum"].astype(np.float64)},
                        index=customers)


# ------------------------------------------------------------------------------------------------------ baselines
def btyd_baselines(rfm: pd.DataFrame, horizon: int) -> tuple[dict[str, pd.Series], dict]:
    """BG/NBD churn probability and BG/NBD x Gamma-Gamma expected spend; a fit that fails is reported, not raised."""
    x, tx, T = (rfm[c].to_numpy() for c in ("frequency", "recency", "T"))
    scores, info = {}, {}
    bg = None
    for penalizer in (0.0, 0.001):  # the published model first; a tiny penalty only if it does not converge
        try:
            bg = BetaGeoModel(penalizer=penalizer).fit(x, tx, T)
            info["bg_nbd"] = {"penalizer": penalizer, "params": bg.params_}
            break
        except ConvergenceError as exc:
            info.setdefault("bg_nbd_failures", []).append(f"penalizer {penalizer}: {exc}")
    if bg is None:
        info["bg_nbd"] = {"error": "; ".join(info["bg_nbd_failures"])}
        return scores, info
    scores["bg_nbd"] = pd.Series(bg.probability_no_purchase(horizon, x, tx, T), index=rfm.index)
    m = rfm["gg_monetary"].to_numpy()
    fit_on = (x > 0) & (m > 0)
    try:
        gg = GammaGammaModel(penalizer=0.0).fit(x[fit_on], m[fit_on])
        x_gg = np.where(m > 0, x, 0.0)  # repeat days all $0: the population mean spend
        value = expected_value(bg, gg, horizon, x, tx, T, m) if (x_gg == x).all() else \
            bg.expected_purchases(horizon, x, tx, T) * gg.expected_average_value(x_gg, m)
        scores["bg_nbd_gamma_gamma"] = pd.Series(value, index=rfm.index)
        info["gamma_gamma"] = {"params": gg.params_, "repeat_buyers": int(fit_on.sum()),
                               "repeat_buyers_all_zero_spend": int(((x > 0) & (m == 0)).sum())}
    except (ConvergenceError, ValueError) as exc:
        info["gamma_gamma"] = {"error": str(exc)}
    return scores, info


def lgbm_rfm(days: pd.DataFrame, cutoff: pd.Timestamp, horizon: int) -> tuple[dict[str, pd.Series], dict]:
    """LightGBM on plain RFM: fitted on features at cutoff - H, labels from (cutoff - H, cutoff]; scored at cutoff."""
    import lightgbm as lgb

    ref = cutoff - pd.Timedelta(days=horizon)
    train = rfm_at(days, ref)
    labels = window_truth(days, train.index, ref + pd.Timedelta(days=1), cutoff)
    x_train = _rfm_matrix(train)
    now = rfm_at(days, cutoff)
    x_now = _rfm_matrix(now)
    clf = lgb.LGBMClassifier(objective="binary", **LGBM_PARAMS).fit(x_train, labels["churned"].to_numpy())
    reg = lgb.LGBMRegressor(objective="regression", **LGBM_PARAMS).fit(x_train, labels["spend"].to_numpy())
    scores = {"lgbm_rfm": pd.Series(clf.predict_proba(x_now)[:, 1], index=now.index),
              "lgbm_rfm_value": pd.Series(reg.predict(x_now), index=now.index)}
    info = {"fitted_at": str(ref.date()),
            "label_window": [str((ref + pd.Timedelta(days=1)).date()), str(cutoff.date())],
            "train_customers": len(train), "train_churn_rate": round(float(labels["churned"].mean()), 4),
            "params": LGBM_PARAMS}
    return scores, info


def _rfm_matrix(rfm: pd.DataFrame) -> pd.DataFrame:
    """The four plain RFM columns: days since the last purchase, repeat days, mean spend per day, age in days."""
    return pd.DataFrame({"recency": rfm["recency_since"], "frequency": rfm["frequency"],
                         "monetary": rfm["monetary"], "T": rfm["T"]}, index=rfm.index)[RFM_COLUMNS]


# -------------------------------------------------------------------------------------------------------- metrics
def top_decile_share(predicted: np.ndarray, spend: np.ndarray) -> float:
    """Share of total spend bought by the top 10% ranked by `predicted`; the tie group at the boundary counts pro
    rata (the expected share under random tie-breaking), so a model cannot gain or lose by tie order."""
    total = spend.sum()
    n = predicted.size
    k = max(1, int(round(0.1 * n)))
    if total <= 0 or n == 0:
        return float("nan")
    threshold = np.sort(predicted)[::-1][k - 1]
    above = predicted > threshold
    tie = predicted == threshold
    need = k - int(above.sum())
    return float((spend[above].sum() + spend[tie].sum() * need / tie.sum()) / total)


def churn_metrics(churned: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {"churn_auc": float(roc_auc_score(churned, p)), "brier": float(np.mean((p - churned) ** 2)),
            "churn_distinct_scores": int(np.unique(p).size)}


def value_metrics(spend: np.ndarray, v: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    return {"value_spearman": float(spearmanr(v, spend).statistic), "top_decile_share": top_decile_share(v, spend),
            "value_distinct_scores": int(np.unique(v).size)}


# --------------------------------------------------------------------------------------------- persona, as a user
def run_step(name: str, args: list[str], log: list[dict]) -> dict | None:
    """Run one `persona` command; record exit code, message, wall/CPU seconds and warnings; parsed --json or None."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(PERSONA), *args], capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                              cwd=ROOT)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out, err = (s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (exc.stdout, exc.stderr))
        rc, err = -1, err + f"\ntimed out after {STEP_TIMEOUT_S} s"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    entry = {"step": name, "command": "persona " + " ".join(args), "rc": rc,
             "seconds": round(time.perf_counter() - t0, 1),
             "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
             "warnings": sorted(set(_WARNING.findall(err)))}
    parsed = None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if lines and lines[-1].lstrip().startswith("{"):  # --json prints one line, also before a non-zero exit
        try:
            parsed = json.loads(lines[-1])
        except json.JSONDecodeError:
            parsed = None
        entry["report"] = parsed
    if rc != 0:
        entry["error"] = _message(err, out, parsed)
        entry["stderr_tail"] = err.splitlines()[-25:]
    log.append(entry)
    return (parsed if parsed is not None else {}) if rc == 0 else None


def _message(err: str, out: str, report: dict | None) -> str:
    """The CLI's `error: ...` paragraph; else what a --json report says was skipped (`persona train` exits 2 when it
    trained nothing); else the last line of a traceback (exception type and message)."""
    lines = err.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            para = [line]
            for nxt in lines[i + 1:]:
                if not nxt.strip():
                    break
                para.append(nxt.strip())
            return " ".join(para)
    if report and report.get("skipped"):
        return "trained nothing: " + "; ".join(report["skipped"].values())
    tail = [ln for ln in lines if ln.strip()] or [ln for ln in out.splitlines() if ln.strip()]
    return tail[-1].strip() if tail else "(no output)"


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`--set a.b=VALUE` pairs as {"a.b": parsed YAML value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key.strip()):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. training.min_history_days=60")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_persona(ws: Path, history: pd.DataFrame, horizon: int,
                overrides: dict[str, object]) -> tuple[pd.DataFrame | None, dict]:
    """init -> horizons -> integrate -> features -> train --promote -> rescore; the tag snapshot by CDNOW id."""
    log: list[dict] = []
    info: dict = {"workspace": str(ws), "steps": log, "overrides": overrides}
    raw = ws / "raw"
    raw.mkdir(parents=True)
    src = raw / "transactions.csv"
    pd.DataFrame({"customer_id": history["customer"].astype(str).str.zfill(5),
                  "date": history["date"].dt.strftime("%Y-%m-%d"), "quantity": history["quantity"],
                  "amount": history["amount"]}).to_csv(src, index=False, float_format="%.2f")
    w = ["-w", str(ws)]
    run_step("init", ["init", *w, "--transactions", str(src), "--customer-id", "customer_id", "--timestamp", "date",
                      "--timestamp-format", "date", "--amount", "amount", "--quantity", "quantity"], log)
    if log[-1]["rc"] != 0:
        return None, info
    cfg_path = ws / "persona.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg.setdefault("labels", {}).update({"churn_horizon_days": horizon, "value_horizon_days": horizon})
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")

    for step in ("integrate", "features"):
        if run_step(step, [step, *w, "--json"], log) is None:
            return None, info
    run_step("train", ["train", *w, "--promote", "--json"], log)
    # a failed train may still have promoted champions before it failed: rescore serves them, and that is measured
    report = run_step("rescore", ["rescore", *w, "--json"], log)
    if not report:
        return None, info
    info["rescore"] = {k: report.get(k) for k in ("date", "models", "unavailable")}
    part = Path(report["snapshot"]) / "part-0.parquet"
    tags = pd.read_parquet(part)
    idmap = pd.read_parquet(ws / "integrated" / "current" / "identity_map.parquet",
                            columns=["id_type", "value", "persona_id"])
    idmap = idmap[idmap["id_type"] == "customer_id"]
    ids = pd.DataFrame({"customer": pd.to_numeric(idmap["value"], errors="raise").astype(np.int64).to_numpy(),
                        "persona_id": idmap["persona_id"].astype(str).to_numpy()})
    keep = [c for c in ("churn_risk", "high_value") if c in tags.columns]
    info["snapshot_columns"] = keep
    scored = ids.merge(tags[["persona_id", *keep]].astype({"persona_id": str}), on="persona_id", how="inner")
    info["customers_per_persona_max"] = int(scored.groupby("persona_id").size().max()) if len(scored) else 0
    return scored.set_index("customer")[keep], info


# -------------------------------------------------------------------------------------------------------- the run
def evaluate(truth: pd.DataFrame, churn: dict[str, pd.Series], value: dict[str, pd.Series]) -> dict[str, dict]:
    """Per model, on truth's customers (all scored by every model present): the four figures."""
    rows: dict[str, dict] = {}
    y, spend = truth["churned"].to_numpy(), truth["spend"].to_numpy()
    for name, s in churn.items():
        rows.setdefault(name, {}).update(churn_metrics(y, s.reindex(truth.index).to_numpy(dtype=np.float64)))
    for name, s in value.items():
        rows.setdefault(name, {}).update(value_metrics(spend, s.reindex(truth.index).to_numpy(dtype=np.float64)))
    rows["oracle (truth)"] = {"top_decile_share": top_decile_share(spend, spend)}
    return rows


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    return {"cores": os.cpu_count(), "cpu": cpu or platform.processor(), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""), "load_avg_start": os.getloadavg()}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def print_table(rows: dict[str, dict]) -> None:
    print(f"{'model':<34}{'churn AUC':>10}{'Brier':>8}{'value Spearman':>16}{'top-decile share':>18}")
    for name, r in rows.items():
        print(f"{name:<34}{_fmt(r.get('churn_auc'), '.4f'):>10}{_fmt(r.get('brier'), '.4f'):>8}"
              f"{_fmt(r.get('value_spearman'), '.4f'):>16}{_fmt(r.get('top_decile_share'), '.4f'):>18}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cutoff", help=f"last day of history (default {DEV_CUTOFF.date()})")
    ap.add_argument("--horizon", type=int, help=f"truth window and persona's horizons in days (default {DEV_HORIZON})")
    ap.add_argument("--final", action="store_true",
                    help=f"the judged configuration: cutoff {FINAL_CUTOFF.date()}, H {FINAL_HORIZON} (reads data "
                         f"after {DEV_LAST_DAY.date()}: not for development)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="development only: one more persona.yaml setting (dotted key, YAML value), e.g. "
                         "training.min_history_days=60; printed with the results; refused with --final")
    ap.add_argument("--keep", action="store_true", help="keep the workspace even when every persona step passed")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out",
                    help="where the fresh workspace folder is created")
    args = ap.parse_args()
    if args.final and (args.cutoff or args.horizon or args.overrides):
        raise SystemExit("--final runs the judged configuration as it is: no --cutoff, --horizon or --set with it")
    overrides = parse_overrides(args.overrides)
    cutoff = FINAL_CUTOFF if args.final else pd.Timestamp(args.cutoff or DEV_CUTOFF).normalize()
    horizon = FINAL_HORIZON if args.final else (args.horizon or DEV_HORIZON)
    first, last = windows(cutoff, horizon, final=args.final)  # refuses before any row is read
    if not PERSONA.exists():
        raise SystemExit(f"{PERSONA}: missing; run `make setup`")

    info = machine()
    t_start = time.perf_counter()
    tx = read_cdnow(locate_cdnow(), last_day=last)
    history = tx[tx["date"] <= cutoff].reset_index(drop=True)
    days = daily(history)
    rfm = rfm_at(days, cutoff)
    truth_all = window_truth(tx, rfm.index, first, last)
    print(f"CDNOW sample: {len(history):,} rows of {rfm.shape[0]:,} customers up to {cutoff.date()}; truth "
          f"{first.date()} .. {last.date()} ({horizon} days): {int((1 - truth_all['churned']).sum()):,} buyers, "
          f"${truth_all['spend'].sum():,.2f}" + ("  [FINAL: judged configuration]" if args.final else ""))

    churn, value, fits = {}, {}, {}
    s, fits["btyd"] = btyd_baselines(rfm, horizon)
    if "bg_nbd" in s:
        churn["BG/NBD"] = s["bg_nbd"]
    if "bg_nbd_gamma_gamma" in s:
        value["BG/NBD x Gamma-Gamma"] = s["bg_nbd_gamma_gamma"]
    s, fits["lgbm_rfm"] = lgbm_rfm(days, cutoff, horizon)
    churn["LightGBM on RFM"], value["LightGBM on RFM"] = s["lgbm_rfm"], s["lgbm_rfm_value"]

    args.workdir.mkdir(parents=True, exist_ok=True)
    ws = Path(tempfile.mkdtemp(prefix=f"real_data_{cutoff.date()}_H{horizon}_", dir=args.workdir))
    scored, persona = run_persona(ws, history, horizon, overrides)
    universe = truth_all.index
    if scored is not None and len(scored):
        persona["coverage"] = round(float(universe.isin(scored.index).mean()), 4)
        universe = universe[universe.isin(scored.index)]
        if "churn_risk" in scored:
            churn["persona churn_risk"] = scored["churn_risk"]
        if "high_value" in scored:
            value["persona high_value"] = scored["high_value"]
    truth = truth_all.loc[universe]
    rows = evaluate(truth, churn, value)
    info["load_avg_end"] = os.getloadavg()

    print(f"\n{len(truth):,} customers judged; churn rate {truth['churned'].mean():.3f}; "
          f"next-{horizon}-day spend ${truth['spend'].sum():,.2f}")
    print_table(rows)
    print()
    for step in persona["steps"]:
        status = "ok" if step["rc"] == 0 else f"FAILED (exit {step['rc']}): {step['error']}"
        warn = f"; warnings: {', '.join(step['warnings'])}" if step["warnings"] else ""
        print(f"persona {step['step']:<10} {step['seconds']:>6.1f} s (cpu {step['cpu_seconds']:.1f} s)  {status}{warn}")
        report = step.get("report") or {}
        for m in report.get("models", []) if step["step"] == "train" else []:
            promo = (report.get("promotions") or {}).get(m.get("tag"), {})
            over = f"; passed over within one standard error: {m['passed_over']}" if m.get("passed_over") else ""
            print(f"    held out by persona: {m.get('tag')} {m.get('learner')} {m.get('metric')} {m.get('value')} vs "
                  f"baselines {m.get('baselines')}{over}; beats all: {m.get('beats_baselines')}; "
                  f"promoted: {promo.get('promoted')}")
        if step["rc"] == 0:
            for why in (report.get("skipped") or {}).values():
                print(f"    not trained: {why}")
    if overrides:
        print("persona.yaml beyond the horizons (NOT the user's defaults): "
              + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    if "rescore" in persona:
        r = persona["rescore"]
        note = "" if r["date"] == str(first.date()) else f"  (expected {first.date()}: the day after the cutoff)"
        print(f"persona scored as of {r['date']}{note}; models {r['models']}; coverage {persona.get('coverage')}")
    load = info["load_avg_end"]
    print(f"machine: {info['cores']} cores, load average {info['load_avg_start'][0]:.2f} at start, "
          f"{load[0]:.2f} at end (1/5/15 min: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); "
          f"{time.perf_counter() - t_start:.0f} s in all; commit {info['commit']}")

    failed = any(step["rc"] != 0 for step in persona["steps"])
    if failed or args.keep:
        print(f"workspace kept: {ws}")
    else:
        shutil.rmtree(ws)
        persona["workspace"] = None
    result = {"configuration": {"cutoff": str(cutoff.date()), "horizon_days": horizon, "final": args.final,
                                "persona_overrides": overrides,
                                "truth_window": [str(first.date()), str(last.date())]},
              "data": {"rows_read": len(tx), "history_rows": len(history), "customers": int(rfm.shape[0]),
                       "judged_customers": len(truth), "churn_rate": float(truth["churned"].mean()),
                       "truth_spend": float(truth["spend"].sum())},
              "metrics": rows, "persona": persona, "baseline_fits": fits, "machine": info,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
