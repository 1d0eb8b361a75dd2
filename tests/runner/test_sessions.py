"""The runner's session index: its own record of which chat each session answers, used by many tasks."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from clawden import sessiondb, unixsock
from clawden.bus import events as ev
from services.runner.sessions import SessionIndex, SessionInfo, UnsafeSessionFolder, claim_folder, listen_bell


def routes(n: int, tag: str) -> list[ev.Route]:
    return [ev.Route(channel="telegram", chat_id=f"{tag}-{i}") for i in range(n)]


def test_it_survives_a_reopen(tmp_path: Path) -> None:
    index = SessionIndex.open(tmp_path / "runner.db")
    index.put(SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen")))
    index.set_destinations("s-1", routes(2, "a"))
    assert index.take_question("q-1") is None
    index.put_question("q-1", "s-1", ("Yes", "No"))
    index.close()

    again = SessionIndex.open(tmp_path / "runner.db")
    assert again.get("s-1") == SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen"))
    assert set(again.destinations("s-1")) == {("telegram", "a-0"), ("telegram", "a-1")}
    assert again.take_question("q-1") == ("s-1", ("Yes", "No"))
    assert again.take_question("q-1") is None, "a question is answered once"


def test_a_decided_write_stays_until_done_so_a_restarted_runner_does_it_again(tmp_path: Path) -> None:
    """An admin's decision is kept with the agent's `clawden` write: it no longer counts as waiting, a second
    decision finds nothing, the same one redelivered finds it still, and a reopened index (a runner that died
    mid-build) lists it to do again, until it is done."""
    index = SessionIndex.open(tmp_path / "runner.db")
    index.put_cli_write("w-1", "s-1", ["groups", "packages", "add", "main", "--apt", "jq"])
    index.put_cli_write("w-2", "s-1", ["wire", "add", "local", "room", "main"])
    approved = ev.ApprovalDecision(id="w-1", decision="approved", decided_by="local:ada", decided_at=5.0)
    assert index.cli_writes_waiting("s-1") == 2

    assert index.decide_cli_write(approved) == ("s-1", ["groups", "packages", "add", "main", "--apt", "jq"])
    assert index.cli_writes_waiting("s-1") == 1
    assert index.decide_cli_write(ev.ApprovalDecision(id="w-1", decision="denied", decided_by="local:bo")) is None
    assert index.decide_cli_write(approved) is not None, "the same decision again (a redelivery) is done again"
    assert index.decide_cli_write(ev.ApprovalDecision(id="w-9", decision="approved")) is None
    index.close()

    again = SessionIndex.open(tmp_path / "runner.db")
    assert again.decided_cli_writes() == [(approved, "s-1", ["groups", "packages", "add", "main", "--apt", "jq"])]
    again.done_cli_write("w-1")
    assert again.decided_cli_writes() == [] and again.cli_writes_waiting("s-1") == 1


async def test_destinations_are_replaced_whole_while_other_tasks_use_the_index(tmp_path: Path) -> None:
    """Each list is written in one transaction on the index's own thread: a reader sees one whole list,
    never a mix or an empty gap, and the writers around it neither fail nor join that transaction."""
    index = await SessionIndex.start(tmp_path / "runner.db")
    whole = [{(r.channel, r.chat_id) for r in routes(5, tag)} for tag in ("a", "b")]
    await index.run(index.set_destinations, "s-1", routes(5, "a"))
    seen: list[set[tuple[str, str]]] = []

    async def read() -> None:
        seen.append(set(await index.run(index.destinations, "s-1")))

    steps = [
        step
        for i in range(300)
        for step in (
            index.run(index.set_destinations, "s-1", routes(5, "ab"[i % 2])),
            read(),
            index.run(index.put, SessionInfo(f"s-{i}", "main", ev.Route(channel="local", chat_id=str(i)))),
            index.run(index.put_question, f"q-{i}", "s-1", ("ok",)),
            index.run(index.set_group_settings, "main", ev.GroupSettings(pids=32 + i, changed_at=i)),
        )
    ]
    results = await asyncio.gather(*steps, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert len(seen) == 300 and all(s in whole for s in seen), [s for s in seen if s not in whole][:3]
    await index.stop()
    reopened = SessionIndex.open(tmp_path / "runner.db")
    assert len(reopened.all()) == 300 and reopened.take_question("q-299") == ("s-1", ("ok",))
    assert reopened.group_settings("main") == ev.GroupSettings(pids=331, changed_at=299)


async def test_the_host_bell_takes_back_its_place_from_a_folder_the_agent_put_there(tmp_path: Path) -> None:
    """The session folder is the agent's to write: a folder named like the bell must not stop the runner
    from listening (it would fail every adoption after a restart), and a link there is never followed."""
    (tmp_path / sessiondb.HOST_BELL / "inner").mkdir(parents=True)
    (tmp_path / sessiondb.HOST_BELL / "inner" / "file").write_text("x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    rang = asyncio.Event()
    transport = await listen_bell(tmp_path, rang.set, None)
    try:
        assert stat.S_ISSOCK((tmp_path / sessiondb.HOST_BELL).lstat().st_mode)
        assert unixsock.ring(tmp_path / sessiondb.HOST_BELL)
        await rang.wait()
    finally:
        transport.close()
    (tmp_path / sessiondb.HOST_BELL).unlink()
    (tmp_path / sessiondb.HOST_BELL).symlink_to(outside)  # a link to a folder: replaced, its target untouched
    transport = await listen_bell(tmp_path, rang.set, None)
    transport.close()
    assert (outside / "keep").read_text() == "kept"


def test_the_epoch_a_session_is_held_at_survives_a_reopen_and_only_ever_rises(tmp_path: Path) -> None:
    index = SessionIndex.open(tmp_path / "runner.db")
    index.put(SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen")))
    assert index.epoch("s-1") == 0  # none known: a session from before placement epochs
    index.set_epoch("s-1", 3)
    index.set_epoch("s-1", 2)  # a late claim of an older placement changes nothing
    index.put(SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="pantry")))  # a route change keeps it
    index.close()

    again = SessionIndex.open(tmp_path / "runner.db")
    assert again.epoch("s-1") == 3 and again.epoch("s-2") == 0


def test_a_claim_never_follows_a_link_the_agent_planted_in_place_of_the_hosts_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-session"
    elsewhere.mkdir()
    sessiondb.ensure_inbound(elsewhere)
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / sessiondb.INBOUND).symlink_to(elsewhere / sessiondb.INBOUND)
    with pytest.raises(UnsafeSessionFolder):
        claim_folder(folder, 1, "a")
    assert sessiondb.fence(elsewhere) is None  # the other folder was not fenced through the link


def test_a_claim_makes_a_new_sessions_folder_and_fences_it(tmp_path: Path) -> None:
    folder = tmp_path / "sessions" / "main" / "s-1"
    try:
        assert claim_folder(folder, 1, "a") == sessiondb.Fence(1, "a")
        assert claim_folder(folder, 2, "b") == sessiondb.Fence(2, "b")  # moved to b
        with pytest.raises(sessiondb.Fenced, match="moved to runner b at epoch 2"):
            claim_folder(folder, 1, "a")
    finally:
        sessiondb.write_as(None)  # claim holds the folder in this process
