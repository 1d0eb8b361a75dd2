"""A session's DB pair is used as itself, never through a link the agent plants in its writable folder (the name of
a sibling session's file, or a host file's): not on the pump's path between two wakes, where no claim looks, nor for
a file SQLite would make. Also pins what `sessiondb._open` relies on in the SQLite it runs on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from nats.aio.client import Client

from clawden import sessiondb, unixsock
from clawden.bus import events as ev
from clawden.bus.streams import ensure_streams
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.runner.containers import Docker
from services.runner.service import Runner
from services.runner.sessions import SessionIndex, SessionInfo, prepare_folder, ring

MINE = SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen"))
SIBLING = SessionInfo("s-2", "main", ev.Route(channel="local", chat_id="office"))
ROUTING = sessiondb.Routing("", "")


def session(sessions: Path, info: SessionInfo) -> Path:
    folder = sessions / info.agent_group / info.id
    prepare_folder(folder, None)
    return folder


@pytest.fixture
async def runner(nc: Client, tmp_path: Path) -> AsyncIterator[Runner]:
    js = nc.jetstream()
    await ensure_streams(js)
    index = await SessionIndex.start(tmp_path / "data" / "runner.db")
    for info in (MINE, SIBLING):
        await index.run(index.put, info)
    ctx = types.SimpleNamespace(config=Config(home=str(tmp_path)), js=js, nc=nc)
    yield Runner(cast(ServiceContext, ctx), cast(Docker, None), index)
    await index.stop()


async def published(runner: Runner) -> int:
    return (await runner.ctx.js.stream_info("CLAWDEN_OUTBOUND")).state.messages


async def test_a_link_to_a_siblings_outbound_db_publishes_none_of_its_replies(runner: Runner) -> None:
    mine, sibling = session(runner.cfg.sessions_dir, MINE), session(runner.cfg.sessions_dir, SIBLING)
    sessiondb.write_outbound(mine, id="r-1", kind="chat", content={"text": "hello kitchen"}, routing=ROUTING)
    await runner._pump_once(MINE.id)
    assert await published(runner) == 1  # the session's own reply goes out

    sessiondb.write_outbound(sibling, id="r-9", kind="chat", content={"text": "the office's secret"}, routing=ROUTING)
    (mine / sessiondb.OUTBOUND).unlink()  # between two wakes, inside the container: ln -s ../s-2/outbound.db
    (mine / sessiondb.OUTBOUND).symlink_to(Path("..") / SIBLING.id / sessiondb.OUTBOUND)

    with pytest.raises(sessiondb.LinkedFile):
        await runner._pump_once(MINE.id)
    assert await published(runner) == 1, "nothing of the sibling's went out in this chat"


def test_a_link_to_a_siblings_inbound_db_moves_none_of_its_cursor(tmp_path: Path) -> None:
    mine, sibling = session(tmp_path, MINE), session(tmp_path, SIBLING)
    sessiondb.write_outbound(sibling, id="r-9", kind="chat", content={"text": "unpublished"}, routing=ROUTING)
    (mine / sessiondb.INBOUND).unlink()
    (mine / sessiondb.INBOUND).symlink_to(Path("..") / SIBLING.id / sessiondb.INBOUND)

    with pytest.raises(sessiondb.LinkedFile):
        sessiondb.mark_published(mine, 99)
    with pytest.raises(sessiondb.LinkedFile):
        sessiondb.read_new_outbound(mine)
    assert [r.id for r in sessiondb.read_new_outbound(sibling)] == ["r-9"], "the sibling's row is still to publish"


def test_no_file_is_made_where_a_dangling_link_points(tmp_path: Path) -> None:
    folder = tmp_path / "sessions" / "main" / "s-1"
    folder.mkdir(parents=True)
    (folder / sessiondb.INBOUND).symlink_to(tmp_path / "etc-nologin")

    with pytest.raises(sessiondb.LinkedFile):
        sessiondb.record_delivery(folder, 3, platform_message_id="p-3")  # a receipt, before any wake
    assert not (tmp_path / "etc-nologin").exists()


def test_sqlite_never_writes_a_journal_through_a_link(tmp_path: Path) -> None:
    """What `sessiondb._open` relies on: SQLite opens the files it names with O_NOFOLLOW (so, a link swapped in
    after it resolved the DB's name, or after `sessiondb` looked, fails the open); the journal, whose name it never
    resolves, shows it. Asked of SQLite itself: `sessiondb` refuses such a journal before SQLite opens anything."""
    folder = session(tmp_path, MINE)
    (tmp_path / "bashrc").write_text("export PATH=/usr/bin\n")
    (folder / f"{sessiondb.OUTBOUND}-journal").symlink_to(tmp_path / "bashrc")

    sqlite = contextlib.closing(sqlite3.connect(folder / sessiondb.OUTBOUND, isolation_level=None))
    with sqlite as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO session_state VALUES ('k', 'v', 0)")
    with pytest.raises(sessiondb.LinkedFile):
        sessiondb.set_state(folder, "k", "v")
    assert (tmp_path / "bashrc").read_text() == "export PATH=/usr/bin\n"


@pytest.fixture
def fifos() -> Iterator[list[Path]]:
    """The FIFOs a test makes. Each gets a writer for an instant afterwards, so that an open left waiting on one (as
    before the runner refused them) returns, and its thread ends with the test."""
    made: list[Path] = []
    yield made
    for fifo in made:
        with contextlib.suppress(OSError):  # ENXIO: nobody waits on it
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize(
    "name",
    [
        sessiondb.OUTBOUND,
        sessiondb.INBOUND,
        f"{sessiondb.OUTBOUND}-journal",  # SQLite opens a journal it finds to see whether it is hot
        f"{sessiondb.INBOUND}-journal",
    ],
)
async def test_a_fifo_in_a_session_dbs_place_is_refused_without_waiting_for_a_writer(
    runner: Runner, fifos: list[Path], name: str
) -> None:
    mine = session(runner.cfg.sessions_dir, MINE)
    sessiondb.write_outbound(mine, id="r-1", kind="chat", content={"text": "hello kitchen"}, routing=ROUTING)
    (mine / name).unlink(missing_ok=True)  # between two wakes, inside the container: mkfifo outbound.db
    os.mkfifo(mine / name)
    fifos.append(mine / name)

    with pytest.raises(sqlite3.DatabaseError, match="no regular file"):  # not TimeoutError: no thread left waiting
        await asyncio.wait_for(runner._pump_once(MINE.id), 5)
    assert await published(runner) == 0


def test_the_agents_bell_rings_no_host_socket_a_link_there_names(tmp_path: Path) -> None:
    folder = session(tmp_path / "sessions", MINE)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as host:  # a datagram socket of the host's, say /dev/log
        host.bind(str(tmp_path / "log.sock"))
        host.setblocking(False)
        (folder / sessiondb.AGENT_BELL).symlink_to(tmp_path / "log.sock")  # inside the container: ln -s /dev/log ...

        ring(folder)

        with pytest.raises(BlockingIOError):
            host.recv(1)  # nothing came
    (folder / sessiondb.AGENT_BELL).unlink()
    with unixsock.bind(folder / sessiondb.AGENT_BELL, socket.SOCK_DGRAM) as bell:  # the agent's own bell still rings
        ring(folder)
        assert bell.recv(1) == b""
