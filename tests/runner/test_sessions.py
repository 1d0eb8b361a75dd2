"""The runner's session index: its own record of which chat each session answers, from many threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from clawden.bus import events as ev
from services.runner.sessions import SessionIndex, SessionInfo


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


def test_destinations_are_replaced_whole_while_other_threads_use_the_index(tmp_path: Path) -> None:
    """Each list is written in one transaction on the shared connection: a reader sees one whole list,
    never a mix or an empty gap, and writers in other threads neither fail nor join that transaction."""
    index = SessionIndex.open(tmp_path / "runner.db")
    whole = [{(r.channel, r.chat_id) for r in routes(5, tag)} for tag in ("a", "b")]
    index.set_destinations("s-1", routes(5, "a"))
    seen: list[set[tuple[str, str]]] = []
    errors: list[BaseException] = []

    def repeat(work: Callable[[int], object]) -> threading.Thread:
        def run() -> None:
            try:
                for i in range(300):
                    work(i)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
        return threading.Thread(target=run)

    threads = [
        repeat(lambda i: index.set_destinations("s-1", routes(5, "ab"[i % 2]))),
        repeat(lambda i: seen.append(set(index.destinations("s-1")))),
        repeat(lambda i: index.put(SessionInfo(f"s-{i}", "main", ev.Route(channel="local", chat_id=str(i))))),
        repeat(lambda i: index.put_question(f"q-{i}", "s-1", ("ok",))),
        repeat(lambda i: index.set_group_settings("main", ev.GroupSettings(pids=32 + i, changed_at=i))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) == 300 and all(s in whole for s in seen), [s for s in seen if s not in whole][:3]
    index.close()
    reopened = SessionIndex.open(tmp_path / "runner.db")
    assert len(reopened.all()) == 300 and reopened.take_question("q-299") == ("s-1", ("ok",))
    assert reopened.group_settings("main") == ev.GroupSettings(pids=331, changed_at=299)
