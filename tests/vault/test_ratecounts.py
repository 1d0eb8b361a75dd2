"""Rate-limit counts are written behind to vault.db: what was flushed outlives the process, even a kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from services.vault.policy import RateKey
from services.vault.ratecounts import MAX_KEYS, RateCounts
from services.vault.store import MIGRATIONS, Store

NOW = 1_000_000.0  # 40 s into its minute, 13.8 h into its day
DAY = RateKey("daily", "main", int(NOW // 86400), 86400)
MINUTE = RateKey("burst", "main", int(NOW // 60), 60)
OTHER = RateKey("daily", "work", int(NOW // 86400), 86400)

CHILD = textwrap.dedent(f"""
    import asyncio, os, signal, sys
    from pathlib import Path
    from services.vault.policy import RateKey
    from services.vault.ratecounts import RateCounts
    from services.vault.store import Store

    day, other = RateKey(*{tuple(DAY)!r}), RateKey(*{tuple(OTHER)!r})

    async def main() -> None:
        store = await Store.start(Path(sys.argv[1]))
        rates = RateCounts(lambda counts, now: store.run(store.save_rate_counts, counts, now), clock=lambda: {NOW!r})
        for key in (day, day, day, other):
            rates.charge([key], {NOW!r})
        await rates.flush()
        rates.charge([day], {NOW!r})
        rates.charge([day], {NOW!r})
        print(rates.pending, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def test_what_was_flushed_survives_a_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "1"  # the two later charges of one key: the only counts at risk
    store = Store.open(db)
    rates = RateCounts()
    rates.load(store.rate_counts(NOW))
    assert rates.counts == {DAY: 3, OTHER: 1}
    store.close()


def test_windows_that_ended_are_pruned_and_never_loaded(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "vault.db")
    store.save_rate_counts([(DAY, 2), (MINUTE, 5)], NOW)
    assert dict(store.rate_counts(NOW + 19)) == {DAY: 2, MINUTE: 5}
    assert dict(store.rate_counts(NOW + 20)) == {DAY: 2}  # the minute ended at NOW + 20, and its row with it
    store.save_rate_counts([(OTHER, 1)], DAY.ends)
    assert store.rate_counts(NOW) == []
    store.close()
    rows = sqlite3.connect(tmp_path / "vault.db").execute("SELECT count(*) FROM rate_counts").fetchone()
    assert rows == (0,)


def test_a_stored_count_is_never_lowered_by_a_late_write(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "vault.db")
    store.save_rate_counts([(DAY, 5)], NOW)
    store.save_rate_counts([(DAY, 3)], NOW)  # an older snapshot landing after a newer one
    assert store.rate_counts(NOW) == [(DAY, 5)]
    store.save_rate_counts([(DAY, 6)], NOW)
    assert store.rate_counts(NOW) == [(DAY, 6)]
    store.close()


async def test_a_failed_write_is_kept_for_the_next_flush() -> None:
    saved: list[list[tuple[RateKey, int]]] = []
    failures = [OSError("disk I/O error")]

    async def save(counts: list[tuple[RateKey, int]], now: float) -> None:
        if failures:
            raise failures.pop()
        saved.append(counts)

    rates = RateCounts(save)
    rates.charge([DAY, OTHER], NOW)
    await rates.flush()
    assert saved == [] and rates.pending == 2 and rates.stats["failures"] == 1
    rates.charge([DAY], NOW)
    await rates.flush()
    assert sorted(saved[0]) == sorted([(DAY, 2), (OTHER, 1)]) and rates.pending == 0
    await rates.flush()
    assert len(saved) == 1  # nothing changed, nothing written


async def test_run_flushes_each_interval_and_once_more_when_stopping() -> None:
    saved: list[list[tuple[RateKey, int]]] = []
    wrote = asyncio.Event()

    async def save(counts: list[tuple[RateKey, int]], now: float) -> None:
        saved.append(counts)
        wrote.set()

    rates = RateCounts(save, flush_interval=0.05)
    stopping = asyncio.Event()
    task = asyncio.create_task(rates.run(stopping))
    rates.charge([DAY], NOW)
    await asyncio.wait_for(wrote.wait(), 5)
    assert saved == [[(DAY, 1)]]
    rates.charge([DAY], NOW)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert saved[-1] == [(DAY, 2)] and rates.pending == 0


async def ignore(counts: list[tuple[RateKey, int]], now: float) -> None:
    """A saver that is never reached: nothing here flushes."""


def test_memory_drops_windows_that_ended_once_keys_pile_up() -> None:
    rates = RateCounts(ignore)
    rates.charge([RateKey(f"r{i}", "main", int(NOW // 60) - 1, 60) for i in range(MAX_KEYS)], NOW)
    assert len(rates.counts) == MAX_KEYS
    rates.charge([DAY], NOW)
    assert rates.counts == {DAY: 1} and rates.pending == 1


def test_a_vault_db_from_before_the_counts_gains_their_table(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    old = sqlite3.connect(path, isolation_level=None)  # as the vault numbered its migrations then
    old.executescript(f"BEGIN; {MIGRATIONS[0][1]}; PRAGMA user_version=1; COMMIT;")
    old.execute("INSERT INTO groups (agent_group, egress) VALUES ('main', 'allowlist')")
    old.close()
    store = Store.open(path)
    assert store.egress_modes() == {"main": "allowlist"}
    store.save_rate_counts([(DAY, 1)], NOW)
    assert store.rate_counts(NOW) == [(DAY, 1)]
    store.close()
    named = sqlite3.connect(path).execute("SELECT name FROM migrations ORDER BY name").fetchall()
    assert named == [(name,) for name, _ in MIGRATIONS]


def test_a_vault_db_from_before_named_migrations_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(f"BEGIN; {MIGRATIONS[0][1]}; {MIGRATIONS[1][1]}; PRAGMA user_version=2; COMMIT;")
    old.execute("INSERT INTO groups (agent_group, egress) VALUES ('main', 'open')")
    old.execute("INSERT INTO rate_counts VALUES ('daily', 'main', 86400, ?, 7)", (DAY.window,))
    old.close()
    store = Store.open(path)
    assert store.egress_modes() == {"main": "open"} and store.rate_counts(NOW) == [(DAY, 7)]
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600
