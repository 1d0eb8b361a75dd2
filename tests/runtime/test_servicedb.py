"""The kernel's store base: a started store runs every step on its own aiosqlite connection's thread,
in order, with the event loop free meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from clawden import servicedb


class Notes(servicedb.Store):
    migrations = [("0001_notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")]

    def __init__(self, conn: sqlite3.Connection, prefix: str = "") -> None:
        super().__init__(conn)
        self.prefix = prefix
        self.built_on = threading.current_thread()

    def add(self, text: str) -> threading.Thread:
        with self._tx() as db:
            db.execute("INSERT INTO notes (text) VALUES (?)", (self.prefix + text,))
        return threading.current_thread()

    def add_then_fail(self, text: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO notes (text) VALUES (?)", (text,))
            raise ValueError("no")

    def texts(self) -> list[str]:
        return [row["text"] for row in self.conn.execute("SELECT text FROM notes ORDER BY id")]


async def test_a_started_store_is_built_and_runs_every_step_on_one_thread_of_its_own(tmp_path: Path) -> None:
    store = await Notes.start(tmp_path / "notes.db", "n:")
    try:
        threads = await asyncio.gather(*(store.run(store.add, str(i)) for i in range(20)))
        assert {t.ident for t in threads} == {store.built_on.ident}
        assert store.built_on is not threading.current_thread()
        # Queued in this order, run in this order: none overtook another.
        assert await store.run(store.texts) == [f"n:{i}" for i in range(20)]
    finally:
        await store.stop()
    store.built_on.join(timeout=10)
    assert not store.built_on.is_alive()


async def test_the_loop_keeps_running_while_a_step_runs(tmp_path: Path) -> None:
    store = await Notes.start(tmp_path / "notes.db")
    loop = asyncio.get_running_loop()
    started, go = asyncio.Event(), threading.Event()

    def slow_step() -> bool:
        loop.call_soon_threadsafe(started.set)
        return go.wait(timeout=10)  # only the loop can set it: a blocked loop would make this False

    try:
        step = asyncio.create_task(store.run(slow_step))
        await asyncio.wait_for(started.wait(), 10)
        go.set()
        assert await step is True
    finally:
        await store.stop()


async def test_a_failing_step_raises_to_its_caller_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = await Notes.start(tmp_path / "notes.db")
    try:
        with pytest.raises(ValueError, match="no"):
            await store.run(store.add_then_fail, "lost")
        await store.run(store.add, "kept")
        assert await store.run(store.texts) == ["kept"]
    finally:
        await store.stop()


async def test_a_started_store_migrates_its_file_once(tmp_path: Path) -> None:
    first = await Notes.start(tmp_path / "notes.db")
    await first.run(first.add, "one")
    await first.stop()
    again = await Notes.start(tmp_path / "notes.db")
    try:
        assert await again.run(again.texts) == ["one"]
        applied = await again.run(lambda: again.conn.execute("SELECT name FROM migrations").fetchall())
        assert [row["name"] for row in applied] == ["0001_notes"]
    finally:
        await again.stop()


async def test_a_store_whose_building_fails_closes_its_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with pytest.raises(TypeError):
        await Notes.start(tmp_path / "notes.db", "a", "too many")
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)
        assert not thread.is_alive(), thread


async def test_a_store_opened_without_a_thread_says_so(tmp_path: Path) -> None:
    store = Notes.open(tmp_path / "notes.db")
    try:
        with pytest.raises(RuntimeError, match="opened, not started"):
            await store.run(store.texts)
    finally:
        store.close()


async def test_a_stopped_store_takes_no_more_steps(tmp_path: Path) -> None:
    store = await Notes.start(tmp_path / "notes.db")
    await store.stop()
    with pytest.raises(ValueError, match="closed"):
        await store.run(store.texts)
