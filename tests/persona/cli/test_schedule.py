"""`persona schedule`: jobs run at their cron times on a fake clock, every run is logged as a JSON line, a failure
does not stop the loop, missed slots are skipped, bad cron expressions and a second scheduler are refused."""

import datetime as dt
import json

import pytest
import yaml

from persona.workspace import Workspace
from persona.cli.schedule import Job, ScheduleError, jobs_for, run_loop, trigger

UTC = dt.timezone.utc
CONFIG = {
    "version": 1,
    "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                        "identifiers": {"member_id": "member_id"}}},
    "identity": {"identifiers": {"member_id": {"account": True}}},
}


class FakeTime:
    """A clock that only moves when the loop sleeps (by `fraction` of what it asks) or a job takes time."""

    def __init__(self, start: dt.datetime, fraction: float = 1.0) -> None:
        self.now = start
        self.fraction = fraction
        self.sleeps: list[float] = []

    def clock(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds * self.fraction if seconds > 2 else seconds)

    def advance(self, **kw) -> None:
        self.now += dt.timedelta(**kw)


def _workspace(root, **schedule_cfg) -> Workspace:
    data = {**CONFIG, "schedule": schedule_cfg} if schedule_cfg else CONFIG
    (root / "persona.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return Workspace.open(root)


def _log(ws: Workspace) -> list[dict]:
    return [json.loads(line) for line in (ws.root / "logs" / "schedule.jsonl").read_text().splitlines()]


def test_the_rescore_job_runs_at_the_cron_times_and_each_run_is_logged(tmp_path, monkeypatch):
    ws = _workspace(tmp_path, cron="0 */6 * * *")
    calls = []
    monkeypatch.setattr("serving.batch.rescore", lambda w: calls.append(w) or {"date": "2025-10-01", "personas": 3})
    jobs = jobs_for(ws)
    assert [j.name for j in jobs] == ["rescore"]  # no retrain_cron: no retrain job

    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 30, tzinfo=UTC))
    done = run_loop(ws, jobs, clock=fake.clock, sleep=fake.sleep, max_runs=3)

    assert calls == [ws, ws, ws]
    assert [e["scheduled"][:19] for e in done] == ["2025-10-01T06:00:00", "2025-10-01T12:00:00", "2025-10-01T18:00:00"]
    assert [e["started"] for e in done] == [e["scheduled"] for e in done]
    assert fake.sleeps[0] == pytest.approx(5.5 * 3600)
    logged = _log(ws)
    assert [(e["job"], e["ok"], e["result"]["personas"]) for e in logged] == [("rescore", True, 3)] * 3
    assert all({"scheduled", "started", "seconds"} <= set(e) for e in logged)


def test_an_early_wake_up_sleeps_again_rather_than_running_early(tmp_path):
    ws = _workspace(tmp_path)
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC), fraction=0.5)
    ran_at = []
    job = Job("rescore", trigger("0 2 * * *", "UTC", "schedule.cron"), lambda: ran_at.append(fake.now) or {})
    run_loop(ws, [job], clock=fake.clock, sleep=fake.sleep, max_runs=1)
    assert len(fake.sleeps) > 1
    assert ran_at == [dt.datetime(2025, 10, 1, 2, 0, tzinfo=UTC)]


def test_the_cron_is_read_in_the_schedule_time_zone(tmp_path, monkeypatch):
    ws = _workspace(tmp_path, cron="0 2 * * *", timezone="Asia/Shanghai")
    monkeypatch.setattr("serving.batch.rescore", lambda w: {})
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC))
    done = run_loop(ws, jobs_for(ws), clock=fake.clock, sleep=fake.sleep, max_runs=1)
    assert fake.now == dt.datetime(2025, 10, 1, 18, 0, tzinfo=UTC)  # 02:00 in Shanghai
    assert done[0]["scheduled"].startswith("2025-10-02T02:00:00+08:00")


def test_a_failing_run_is_logged_and_the_loop_goes_on(tmp_path):
    ws = _workspace(tmp_path)
    outcomes = iter([RuntimeError("feature snapshot missing"), {"personas": 5}])

    def run():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC))
    job = Job("rescore", trigger("0 2 * * *", "UTC", "schedule.cron"), run)
    seen = []
    done = run_loop(ws, [job], clock=fake.clock, sleep=fake.sleep, max_runs=2, log=seen.append)
    assert [e["ok"] for e in done] == [False, True] and seen == done
    first, second = _log(ws)
    assert first["error"] == "RuntimeError: feature snapshot missing" and "Traceback" in first["trace"]
    assert "result" not in first
    assert second["result"] == {"personas": 5} and second["scheduled"].startswith("2025-10-02T02:00")


def test_slots_missed_by_a_long_run_are_skipped_not_replayed(tmp_path):
    ws = _workspace(tmp_path)
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 30, tzinfo=UTC))
    durations = iter([13, 0, 0])

    def run():
        fake.advance(hours=next(durations))  # the first run takes 13 h: the 12:00 and 18:00 slots pass
        return {}

    job = Job("rescore", trigger("0 */6 * * *", "UTC", "schedule.cron"), run)
    done = run_loop(ws, [job], clock=fake.clock, sleep=fake.sleep, max_runs=3)
    assert [e["scheduled"][:16] for e in done] == ["2025-10-01T06:00", "2025-10-02T00:00", "2025-10-02T06:00"]


def test_two_jobs_run_in_time_order(tmp_path):
    ws = _workspace(tmp_path)
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC))
    jobs = [Job("rescore", trigger("0 2 * * *", "UTC", "schedule.cron"), lambda: {}),
            Job("retrain", trigger("0 1 * * 0", "UTC", "schedule.retrain_cron"), lambda: {})]  # Sundays
    done = run_loop(ws, jobs, clock=fake.clock, sleep=fake.sleep, max_runs=6)
    assert [(e["job"], e["scheduled"][:10]) for e in done] == [
        ("rescore", "2025-10-01"), ("rescore", "2025-10-02"), ("rescore", "2025-10-03"), ("rescore", "2025-10-04"),
        ("retrain", "2025-10-05"), ("rescore", "2025-10-05")]


@pytest.mark.parametrize("weekday,expected", [
    ("0", ["2025-10-05"]), ("7", ["2025-10-05"]), ("1-5", ["2025-10-02", "2025-10-03", "2025-10-06", "2025-10-07",
                                                          "2025-10-08"]),
    ("0,6", ["2025-10-04", "2025-10-05"]), ("*/3", ["2025-10-04", "2025-10-05", "2025-10-08"]),
    ("sat,sun", ["2025-10-04", "2025-10-05"])])
def test_weekdays_count_from_sunday_as_in_crontab(weekday, expected):
    # Wednesday 2025-10-01 .. Wednesday 2025-10-08.
    cron = trigger(f"0 1 * * {weekday}", "UTC", "schedule.cron")
    fired, at = [], dt.datetime(2025, 10, 1, 2, tzinfo=UTC)
    while (at := cron.get_next_fire_time(None, at + dt.timedelta(seconds=1))) < dt.datetime(2025, 10, 9, tzinfo=UTC):
        fired.append(at.date().isoformat())
    assert fired == expected


def test_retrain_cron_adds_a_retrain_job(tmp_path):
    ws = _workspace(tmp_path, retrain_cron="0 3 * * 0")
    assert [j.name for j in jobs_for(ws)] == ["rescore", "retrain"]
    assert [j.name for j in jobs_for(ws, retrain=False)] == ["rescore"]


@pytest.mark.parametrize("setting,expected", [({"cron": "every night"}, "schedule.cron"),
                                              ({"cron": "0 25 * * *"}, "schedule.cron"),
                                              ({"cron": "0 2 * * 8"}, "schedule.cron"),
                                              ({"retrain_cron": "0 2 * *"}, "schedule.retrain_cron")])
def test_a_bad_cron_expression_names_the_setting(tmp_path, setting, expected):
    ws = _workspace(tmp_path, **setting)
    with pytest.raises(ScheduleError, match=rf"persona.yaml {expected}: .*is not a cron expression.*'0 2 \* \* \*'"):
        jobs_for(ws)


def test_a_second_scheduler_on_the_same_workspace_is_refused(tmp_path):
    ws = _workspace(tmp_path)
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC))
    refused = []

    def run():
        # While this loop runs its job, it holds the workspace's lock.
        other = Job("rescore", trigger("0 3 * * *", "UTC", "schedule.cron"), lambda: {})
        with pytest.raises(RuntimeError, match=r"\.schedule\.lock: another `persona schedule`"):
            run_loop(ws, [other], clock=fake.clock, sleep=fake.sleep, max_runs=1)
        refused.append(True)
        return {}

    job = Job("rescore", trigger("0 2 * * *", "UTC", "schedule.cron"), run)
    done = run_loop(ws, [job], clock=fake.clock, sleep=fake.sleep, max_runs=1)
    assert refused == [True] and done[0]["ok"]
    # Released when the loop ends: a later scheduler runs.
    assert run_loop(ws, [job], clock=fake.clock, sleep=fake.sleep, max_runs=1)[0]["ok"]


def test_the_cli_reports_a_bad_cron_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from persona.cli import app

    _workspace(tmp_path, cron="61 * * * *")
    result = CliRunner().invoke(app, ["schedule", "-w", str(tmp_path), "--runs", "1"])
    assert result.exit_code == 2, result.output
    assert "schedule.cron" in result.output


def test_the_lock_file_lives_in_the_workspace(tmp_path):
    ws = _workspace(tmp_path)
    fake = FakeTime(dt.datetime(2025, 10, 1, 0, 0, tzinfo=UTC))
    run_loop(ws, [Job("rescore", trigger("0 2 * * *", "UTC", "schedule.cron"), lambda: {})],
             clock=fake.clock, sleep=fake.sleep, max_runs=1)
    assert (ws.root / ".schedule.lock").exists()
