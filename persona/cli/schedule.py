"""`persona schedule`: batch rescoring (and optional retraining behind the promotion gate) on cron expressions.

A long-running loop for hosts without a scheduler of their own; crontab and Kubernetes CronJob users call
`persona rescore` / `persona train --promote` directly instead (the README shows both). Each run is logged as one
JSON line in `<ws>/logs/schedule.jsonl`; a failing run is logged and the loop goes on to the next fire time. An
exclusive lock on `<ws>/.schedule.lock` keeps two schedulers (or a scheduler and a slow previous run) from
rescoring the same workspace at once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger

from persona.workspace import Workspace

Clock = Callable[[], dt.datetime]


class ScheduleError(ValueError):
    """A cron expression that does not parse; names the setting."""


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _cron_weekdays(field: str) -> str:
    """A crontab weekday field (0 or 7 = Sunday) as day names, which APScheduler 3 reads as crontab does.

    APScheduler 3 numbers weekdays from Monday = 0, so '0 3 * * 0' would otherwise run on Mondays.
    """
    if not any(ch.isdigit() for ch in field):
        return field  # '*' or names (mon-fri): the same in both
    days: list[int] = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        lo, _, hi = base.partition("-")
        first, last = (0, 6) if base == "*" else (int(lo), int(hi) if hi else (7 if slash else int(lo)))
        if not 0 <= first <= last <= 7:
            raise ValueError(f"weekday {part!r} is outside 0-7")
        days += range(first, last + 1, int(step) if slash else 1)
    return ",".join(dict.fromkeys(_WEEKDAYS[d] for d in days))


def trigger(expression: str, timezone: str, setting: str) -> CronTrigger:
    try:
        fields = expression.split()
        if len(fields) == 5:
            expression = " ".join([*fields[:4], _cron_weekdays(fields[4])])
        return CronTrigger.from_crontab(expression, timezone=timezone)
    except ValueError as exc:
        raise ScheduleError(f"persona.yaml {setting}: {expression!r} is not a cron expression "
                            f"(five fields: minute hour day month weekday, e.g. '0 2 * * *'): {exc}") from None


@dataclass
class Job:
    name: str  # rescore | retrain
    trigger: CronTrigger
    run: Callable[[], dict]
    next_at: dt.datetime | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@contextmanager
def _exclusive(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{path}: another `persona schedule` (or a run it started) holds this workspace") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def jobs_for(ws: Workspace, *, retrain: bool | None = None) -> list[Job]:
    """The configured jobs: rescoring always, retraining (train with the gate, then rescore) when configured."""
    from serving.batch import rescore
    from training.train import train

    cfg = ws.config()
    sched = cfg.schedule
    jobs = [Job("rescore", trigger(sched.cron, sched.timezone, "schedule.cron"), lambda: rescore(ws))]
    if sched.retrain_cron and retrain is not False:
        def retrain_then_rescore() -> dict:
            trained = train(ws, promote=True)
            return {"train": {k: trained[k] for k in ("models", "skipped", "promotions", "seconds") if k in trained},
                    "rescore": rescore(ws)}
        jobs.append(Job("retrain", trigger(sched.retrain_cron, sched.timezone, "schedule.retrain_cron"),
                        retrain_then_rescore))
    return jobs


def run_loop(ws: Workspace, jobs: list[Job], *, clock: Clock = _now, sleep: Callable[[float], None] = time.sleep,
             max_runs: int | None = None, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Sleep until the next fire time, run the job(s) due, log, repeat (`max_runs` bounds it, for tests)."""
    log_path = ws.root / "logs" / "schedule.jsonl"
    done: list[dict] = []
    with _exclusive(ws.root / ".schedule.lock"):
        now = clock()
        for job in jobs:
            job.next_at = job.trigger.get_next_fire_time(None, now)
        while max_runs is None or len(done) < max_runs:
            job = min(jobs, key=lambda j: j.next_at)
            wait = (job.next_at - clock()).total_seconds()
            if wait > 0:
                sleep(wait)
                continue  # re-check the clock: a sleep can end early (signals) or late (suspend)
            started = clock()
            entry: dict = {"job": job.name, "scheduled": job.next_at.isoformat(), "started": started.isoformat()}
            t0 = time.perf_counter()
            try:
                entry["result"] = job.run()
                entry["ok"] = True
            except Exception as exc:  # a failed run is logged and the schedule goes on
                entry.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5))
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, default=str, ensure_ascii=False) + "\n")
            if log:
                log(entry)
            done.append(entry)
            # The next fire time after this one (not after now): a run longer than the interval skips the missed
            # slots rather than running back to back to catch up.
            job.next_at = job.trigger.get_next_fire_time(None, max(clock(), job.next_at + dt.timedelta(seconds=1)))
    return done
