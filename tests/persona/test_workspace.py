"""The workspace: where the hashing salt comes from, and publishing a stage's outputs atomically."""

import os

import pytest

from persona.workspace import KEEP_RUNS, SALT_VAR, SecretError, Workspace, publishing, write_text_atomic


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
