"""`scheduler.db`: named migrations, idempotent operations, and runs that never overwrite a newer change."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawden import servicedb
from services.scheduler.catchup import Watch, plan
from services.scheduler.store import MAX_SCRIPT, MIGRATIONS, Change, NewTask, PastTime, Store, TaskError, migrate


def new(task_id: str = "t-000000000001", schedule: str = "every 10s") -> NewTask:
    return NewTask(
        id=task_id,
        agent_group="main",
        session_id="s-1",
        runner="local",
        channel="local",
        chat_id="kitchen",
        thread_id=None,
        prompt="tick",
        schedule=schedule,
        timezone="UTC",
        catch_up="once",
        created_by="agent:main",
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "scheduler.db")


def test_migrations_apply_once_by_name(tmp_path: Path) -> None:
    Store.open(tmp_path / "scheduler.db").close()
    store = Store.open(tmp_path / "scheduler.db")
    assert migrate(store.conn) == []
    assert [r[0] for r in store.conn.execute("SELECT name FROM migrations")] == ["0001_tasks", "0002_precheck_script"]


def test_a_database_from_before_scripts_keeps_its_tasks(tmp_path: Path) -> None:
    conn, _ = servicedb.open_db(tmp_path / "scheduler.db", MIGRATIONS[:1])
    conn.execute(
        "INSERT INTO tasks VALUES ('t-000000000001', 'main', 's-1', 'local', 'local', 'kitchen', NULL,"
        " 'tick', 'every 10s', 'UTC', 'once', 'active', 1000, 1010, NULL, 'cli', 1000, 1000)"
    )
    conn.close()
    task = Store.open(tmp_path / "scheduler.db").get("t-000000000001")
    assert task is not None and task.prompt == "tick" and task.script == ""


def test_a_pre_check_script_is_kept_changed_and_removed(store: Store) -> None:
    script = "test -s /workspace/agent/news && echo '{\"wakeAgent\": true}' || echo '{\"wakeAgent\": false}'"
    task = store.create(NewTask(**{**new().__dict__, "script": script}), 1_000)
    assert task.script == script and store.get(task.id) == task
    assert store.update(task, Change(prompt="tock"), 1_001).script == script, "left alone unless named"
    assert store.update(task, Change(script=""), 1_002).script == ""
    with pytest.raises(TaskError, match="longer than"):
        store.update(task, Change(script="x" * (MAX_SCRIPT + 1)), 1_003)


def test_a_replayed_create_changes_nothing(store: Store) -> None:
    first = store.create(new(), 1_000, "r1")
    assert store.create(new(), 5_000, "r1") == first
    assert first.next_run == 1_010 and store.op_seen("r1") == ("applied", "")


def test_a_bad_schedule_creates_nothing(store: Store) -> None:
    with pytest.raises(TaskError, match="cannot read"):
        store.create(new(schedule="whenever"), 1_000)
    assert store.tasks() == []


def test_a_run_planned_before_a_pause_does_not_undo_the_pause(store: Store) -> None:
    task = store.create(new(), 1_000)
    p = plan(task.parsed(), 1_010, Watch(1_000, 1_009, 1_010.1, 0), task.catch_up)
    store.set_status(task, "pause", 1_010.05)
    store.record_plan(task, p, 1_010.2)
    assert store.get(task.id).status == "paused"  # type: ignore[union-attr]


def test_a_one_shot_is_done_after_its_run(store: Store) -> None:
    task = store.create(new(schedule="in 5s"), 1_000)
    store.record_plan(task, plan(task.parsed(), 1_005, Watch(1_000, 1_004, 1_005.1, 0), "once"), 1_005.1)
    done = store.get(task.id)
    assert done is not None and (done.status, done.next_run, done.last_run) == ("done", None, 1_005)
    with pytest.raises(TaskError, match="is done"):
        store.set_status(done, "resume", 1_006)


def test_resuming_does_not_owe_the_runs_that_fell_in_the_pause(store: Store) -> None:
    task = store.create(new(), 1_000)
    paused = store.set_status(task, "pause", 1_001)
    resumed = store.set_status(paused, "resume", 1_095)
    assert resumed.status == "active" and resumed.next_run == 1_100


def test_an_interval_under_the_minimum_needs_a_pre_check_script(store: Store) -> None:
    with pytest.raises(TaskError, match="'every 1s' would wake the model every 1 s; the shortest interval is 1 min"):
        store.create(new(schedule="every 1s"), 1_000, min_interval=60)
    gated = store.create(
        NewTask(**{**new(schedule="every 1s").__dict__, "script": "echo '{}'"}), 1_000, min_interval=60
    )
    with pytest.raises(TaskError, match="unless a pre-check script decides"):
        store.update(gated, Change(script=""), 1_001, min_interval=60)
    assert store.get(gated.id) == gated and store.create(new("t-000000000002", "every 1m"), 1_000, min_interval=60)


def test_a_past_one_shot_is_refused_unless_allowed(store: Store) -> None:
    with pytest.raises(PastTime, match="'2020-01-01T08:00' is in the past"):
        store.create(new(schedule="2020-01-01T08:00"), 1_700_000_000, allow_past=False)
    assert store.tasks() == []
    late = store.create(new(schedule="2020-01-01T08:00"), 1_700_000_000, allow_past=True)
    assert late.next_run is not None and late.next_run < 1_700_000_000  # due: it runs at once
