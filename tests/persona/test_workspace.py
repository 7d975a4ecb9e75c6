"""The workspace: where the hashing salt comes from, and publishing a stage's outputs atomically."""

import os

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from persona import workspace
from persona.workspace import (KEEP_RUNS, SALT_VAR, SecretError, Workspace, clean_stage, publishing,
                               write_parquet_parts, write_text_atomic)


def run_id(i: int) -> str:
    return f"20260101T0000{i:02d}"


def publish(ws: Workspace, rid: str, text: str = "ok") -> None:
    with publishing(ws, "integrated", rid) as out:
        (out / "report.json").write_text(text)


def visible(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- salt ---------------------------------------------------------------------------------------------------
def test_salt_from_environment_wins_over_secrets_file(tmp_path, monkeypatch):
    (tmp_path / "secrets.env").write_text(f"# comment\n{SALT_VAR}=from-file\n")
    ws = Workspace.open(tmp_path)
    assert ws.salt() == "from-file"
    monkeypatch.setenv(SALT_VAR, "from-env")
    assert ws.salt() == "from-env"


@pytest.mark.parametrize("secrets", [None, "", f"{SALT_VAR}=\n", "OTHER=abc\n"])
def test_missing_salt_says_what_to_do(tmp_path, secrets):
    if secrets is not None:
        (tmp_path / "secrets.env").write_text(secrets)
    with pytest.raises(SecretError) as exc:
        Workspace.open(tmp_path).salt()
    message = str(exc.value)
    assert SALT_VAR in message and str(tmp_path / "secrets.env") in message and "persona init" in message


def test_ensure_secrets_writes_a_private_salt_once(tmp_path):
    ws = Workspace.open(tmp_path)
    file = ws.ensure_secrets()
    first = ws.salt()
    assert len(first) >= 16 and oct(file.stat().st_mode & 0o777) == "0o600"
    ws.ensure_secrets()
    assert ws.salt() == first  # never overwritten: hashes stay comparable across runs


# --- atomic writes and publishing ---------------------------------------------------------------------------
def test_write_text_atomic_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert visible(target.parent) == ["a.txt"]


def test_first_publish_makes_the_run_current(tmp_path):
    ws = Workspace.open(tmp_path)
    assert ws.current("integrated") is None
    with pytest.raises(FileNotFoundError, match="nothing published yet"):
        ws.require_current("integrated", "run persona integrate")
    publish(ws, run_id(1), "first")
    current = ws.current("integrated")
    assert current == ws.stage_dir("integrated") / "runs" / run_id(1)
    assert (current / "report.json").read_text() == "first"
    assert (ws.stage_dir("integrated") / "current").is_symlink()


def test_new_run_is_invisible_until_the_block_ends(tmp_path):
    ws = Workspace.open(tmp_path)
    publish(ws, run_id(1), "first")
    runs = ws.stage_dir("integrated") / "runs"
    with publishing(ws, "integrated", run_id(2)) as out:
        (out / "report.json").write_text("second")
        # Readers still see the previous run, and no new run folder is listed yet.
        assert (ws.current("integrated") / "report.json").read_text() == "first"
        assert [n for n in visible(runs) if not n.startswith(".")] == [run_id(1)]
    assert (ws.current("integrated") / "report.json").read_text() == "second"
    assert visible(runs) == [run_id(1), run_id(2)]
    assert visible(ws.stage_dir("integrated")) == ["current", "runs"]  # no stray temporary link


def test_failure_inside_the_block_keeps_previous_current_and_leaves_nothing(tmp_path):
    ws = Workspace.open(tmp_path)
    publish(ws, run_id(1), "first")
    runs = ws.stage_dir("integrated") / "runs"
    with pytest.raises(RuntimeError, match="boom"):
        with publishing(ws, "integrated", run_id(2)) as out:
            (out / "report.json").write_text("half")
            raise RuntimeError("boom")
    assert ws.current("integrated") == runs / run_id(1)
    assert (ws.current("integrated") / "report.json").read_text() == "first"
    assert visible(runs) == [run_id(1)]  # neither the run nor its .building folder
    assert visible(ws.stage_dir("integrated")) == ["current", "runs"]


def test_failure_on_the_very_first_run_publishes_nothing(tmp_path):
    ws = Workspace.open(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with publishing(ws, "integrated", run_id(1)):
            raise KeyboardInterrupt
    assert ws.current("integrated") is None
    assert visible(ws.stage_dir("integrated") / "runs") == []


def test_old_runs_are_pruned_to_keep_runs(tmp_path):
    ws = Workspace.open(tmp_path)
    for i in range(1, KEEP_RUNS + 3):
        publish(ws, run_id(i), str(i))
    runs = ws.stage_dir("integrated") / "runs"
    assert visible(runs) == [run_id(i) for i in range(3, KEEP_RUNS + 3)]
    assert ws.current("integrated") == runs / run_id(KEEP_RUNS + 2)


def test_pruning_never_removes_the_run_just_published(tmp_path):
    ws = Workspace.open(tmp_path)
    for i in range(10, 10 + KEEP_RUNS):
        publish(ws, run_id(i))
    publish(ws, run_id(1), "re-run with an older clock")
    current = ws.current("integrated")
    assert current is not None and current.name == run_id(1)
    assert (current / "report.json").read_text() == "re-run with an older clock"
    assert os.path.isdir(current)


# --- runs killed part-way ----------------------------------------------------------------------------------------
class Killed(BaseException):
    """A kill point reached: the process would die here, running no clean-up."""


def seq_id(seq: int, second: int) -> str:
    """An id as integrate makes them: a sequence number, then the clock."""
    return f"{seq:06d}-20260101T0000{second:02d}Z"


def killed_publish(ws: Workspace, rid: str, point: str, monkeypatch, text: str = "killed") -> None:
    def kill_point(name: str) -> None:
        if name == point:
            raise Killed(name)

    with monkeypatch.context() as mp:
        mp.setattr(workspace, "kill_point", kill_point)
        with pytest.raises(Killed):
            publish(ws, rid, text)


@pytest.mark.parametrize("point", ["building", "renamed", "linked"])
def test_a_run_killed_at_each_step_leaves_a_complete_current_and_the_next_run_cleans_up(tmp_path, monkeypatch,
                                                                                         point):
    ws = Workspace.open(tmp_path)
    top = ws.stage_dir("integrated")
    publish(ws, seq_id(1, 0), "first")
    killed_publish(ws, seq_id(2, 1), f"integrated.{point}", monkeypatch)
    current = ws.current("integrated")
    assert (current / "report.json").read_text() == ("killed" if point == "linked" else "first")
    leftover = {"building": f".{seq_id(2, 1)}.building", "renamed": seq_id(2, 1), "linked": None}[point]
    if leftover:
        assert leftover in visible(top / "runs")

    # The next run takes the number the killed one took, unless that one was linked (then it is the current run).
    seq = 3 if point == "linked" else 2
    publish(ws, seq_id(seq, 2), "next")
    assert (ws.current("integrated") / "report.json").read_text() == "next"
    runs = visible(top / "runs")
    assert not [n for n in runs if n.startswith(".")] and visible(top) == ["current", "runs"]
    assert len({n[:6] for n in runs}) == len(runs)  # no two runs share a number
    assert runs == ([seq_id(1, 0), seq_id(2, 1), seq_id(3, 2)] if point == "linked" else [seq_id(1, 0), seq_id(2, 2)])


def test_clean_stage_removes_leftovers_but_never_the_current_or_an_older_run(tmp_path):
    ws = Workspace.open(tmp_path)
    top = ws.stage_dir("integrated")
    for i in (1, 2):
        publish(ws, seq_id(i, i))
    (top / "runs" / f".{seq_id(3, 3)}.building").mkdir()
    (top / "runs" / seq_id(3, 4)).mkdir()  # renamed, never linked
    (top / "runs" / seq_id(4, 5)).mkdir()
    os.symlink("runs/" + seq_id(3, 4), top / ".current.deadbeef")
    assert sorted(clean_stage(ws, "integrated")) == [".current.deadbeef", f"runs/.{seq_id(3, 3)}.building",
                                                      f"runs/{seq_id(3, 4)}", f"runs/{seq_id(4, 5)}"]
    assert visible(top / "runs") == [seq_id(1, 1), seq_id(2, 2)] and ws.current("integrated").name == seq_id(2, 2)
    assert clean_stage(ws, "integrated") == []


def test_before_a_first_current_every_run_folder_is_unpublished(tmp_path, monkeypatch):
    ws = Workspace.open(tmp_path)
    killed_publish(ws, seq_id(1, 0), "integrated.renamed", monkeypatch)
    assert ws.current("integrated") is None
    publish(ws, seq_id(1, 1), "first")
    assert visible(ws.stage_dir("integrated") / "runs") == [seq_id(1, 1)]


def test_a_new_run_reusing_the_current_runs_number_is_refused(tmp_path):
    ws = Workspace.open(tmp_path)
    publish(ws, seq_id(1, 0), "first")
    with pytest.raises(ValueError, match="reuses the sequence number of the published run 000001-"):
        publish(ws, seq_id(1, 1), "second")
    assert (ws.current("integrated") / "report.json").read_text() == "first"
    assert visible(ws.stage_dir("integrated") / "runs") == [seq_id(1, 0)]


def test_settings_are_validated_once_per_content_and_an_edit_is_seen(tmp_path):
    from persona.config import ConfigError
    from tests.persona.test_config import VALID, write_config

    path = write_config(tmp_path, {**VALID, "serving": {"port": 3001}})
    ws = Workspace.open(tmp_path)
    first = ws.config()
    assert ws.config() is first and Workspace.open(tmp_path).config() is first  # parsed once, shared (frozen)
    write_config(tmp_path, {**VALID, "serving": {"port": 3002}})  # same size, new content
    assert ws.config().serving.port == 3002
    write_config(tmp_path, {**VALID, "serving": {"port": -1}})
    with pytest.raises(ConfigError, match="port"):
        ws.config()
    path.write_bytes(path.read_bytes() + b"\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ws.config()


# --- one file from parts ----------------------------------------------------------------------------------------
def _part(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_parts_make_one_file_in_order_with_the_schema_types_and_metadata(tmp_path):
    like = pd.DataFrame({"id": ["a"], "n": [1], "at": [pd.Timestamp("2026-01-01")]}).astype({"id": "string"})
    schema = pa.Table.from_pandas(like, preserve_index=False).schema
    at = pd.Timestamp("2026-03-04 05:06:07.000000008")
    parts = [_part(tmp_path / "1.parquet", id=["x", "y"], n=pa.array([1, 2], pa.int32()),
                   at=pa.array([at.value, None], pa.int64())),  # nanoseconds as longs, how Spark carries them
             _part(tmp_path / "2.parquet", n=[3], id=["z"]),  # columns in another order, one missing
             _part(tmp_path / "3.parquet", id=pa.array([], pa.string()), n=pa.array([], pa.int64()),
                   at=pa.array([], pa.null()))]
    assert write_parquet_parts(parts, tmp_path / "all.parquet", schema) == 3
    got = pd.read_parquet(tmp_path / "all.parquet")
    assert got["id"].tolist() == ["x", "y", "z"] and str(got["id"].dtype) == "string"
    assert got["n"].tolist() == [1, 2, 3] and str(got["n"].dtype) == "int64"
    assert got["at"].iloc[0] == at and got["at"].iloc[1:].isna().all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.parquet", "2.parquet", "3.parquet", "all.parquet"]


def test_a_column_all_null_in_a_part_takes_the_schema_type_whatever_its_own(tmp_path):
    schema = pa.schema([("born", pa.date32())])
    parts = [_part(tmp_path / "1.parquet", born=pa.array([None, None], pa.timestamp("ns"))),
             _part(tmp_path / "2.parquet", born=pa.array([None], pa.string()))]
    assert write_parquet_parts(parts, tmp_path / "all.parquet", schema) == 3
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.schema.field("born").type == pa.date32() and table["born"].null_count == 3


def test_parts_filtered_and_seen_and_no_part_gives_an_empty_file_with_the_schema(tmp_path):
    schema = pa.schema([("id", pa.string()), ("keep", pa.bool_())])
    part = _part(tmp_path / "1.parquet", id=["a", "b", "c"], keep=[True, None, True])
    seen = []
    rows = write_parquet_parts([part], tmp_path / "kept.parquet", schema,
                               keep=lambda t: t.filter(pc.is_valid(t["keep"])), visit=lambda t: seen.append(t.num_rows))
    assert rows == 2 == sum(seen) and pq.read_table(tmp_path / "kept.parquet")["id"].to_pylist() == ["a", "c"]
    assert write_parquet_parts([], tmp_path / "none.parquet", schema) == 0
    assert pq.read_schema(tmp_path / "none.parquet").names == ["id", "keep"]


def test_a_failed_write_from_parts_leaves_the_target_as_it_was_and_no_temporary(tmp_path):
    target = tmp_path / "all.parquet"
    pq.write_table(pa.table({"id": ["old"]}), target)
    good = _part(tmp_path / "1.parquet", id=["7"])  # written, then the next part fails
    bad = _part(tmp_path / "2.parquet", id=["not a number"])
    with pytest.raises(pa.ArrowInvalid):
        write_parquet_parts([good, bad], target, pa.schema([("id", pa.int64())]))
    assert pq.read_table(target)["id"].to_pylist() == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.parquet", "2.parquet", "all.parquet"]


def test_row_groups_are_of_the_size_asked_whatever_the_parts_sizes(tmp_path):
    parts = [_part(tmp_path / f"{i}.parquet", n=list(range(k))) for i, k in enumerate([3, 1, 2, 1])]
    assert write_parquet_parts(parts, tmp_path / "all.parquet", pa.schema([("n", pa.int64())]), row_group=2) == 7
    meta = pq.read_metadata(tmp_path / "all.parquet")
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [2, 2, 2, 1]
    assert pq.read_table(tmp_path / "all.parquet")["n"].to_pylist() == [0, 1, 2, 0, 0, 1, 0]
