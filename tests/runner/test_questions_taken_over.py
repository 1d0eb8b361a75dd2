"""What a runner that adopts a moved session learns of the questions the old runner asked, on a real session
folder: the question rows with no response yet (`sessiondb.unanswered_questions`), and which of them are still
open cards, with the id and options the old runner recorded (`open_ask`, a table)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from services.runner.service import open_ask
from services.runner.sessions import SessionInfo, prepare_folder

ROUTE = ev.Route(channel="local", chat_id="kitchen")
INFO = SessionInfo("s-1", "main", ROUTE)
AGENTS = SessionInfo("s-1", "main", ev.Route(channel=ev.AGENT_CHANNEL, chat_id="helper"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    prepare_folder(tmp_path / "s-1", None)
    return tmp_path / "s-1"


ROUTING = sessiondb.Routing("", "")


def ask(folder: Path, rid: str, **content: Any) -> sessiondb.OutboundMessage:
    body = {"request_id": rid, "question": "Tea?", "options": ["Yes", "No"], "timeout": 60} | content
    sessiondb.write_outbound(folder, id=f"row-{rid}", kind="question", content=body, routing=ROUTING)
    return next(m for m in sessiondb.read_new_outbound(folder) if m.id == f"row-{rid}")


def test_only_the_questions_without_a_response_are_unanswered(folder: Path) -> None:
    ask(folder, "q-open")
    ask(folder, "q-answered")
    sessiondb.write_outbound(folder, id="chat", kind="chat", content={"text": "hi"}, routing=ROUTING)
    sessiondb.write_outbound(folder, id="task", kind="task", content={"request_id": "q-task"}, routing=ROUTING)
    sessiondb.respond(folder, "q-answered", {"answer": "Yes"})
    sessiondb.respond(folder, "q-task", {"result": "done"})
    sessiondb.mark_published(folder, sessiondb.outbound_max_seq(folder))  # published or not: both count

    assert [m.content["request_id"] for m in sessiondb.unanswered_questions(folder)] == ["q-open"]


def test_a_response_written_twice_is_one_row(folder: Path) -> None:
    ask(folder, "q-1")
    sessiondb.respond(folder, "q-1", {"answer": "Yes"})
    sessiondb.respond(folder, "q-1", {"answer": "No"})  # a decision applied again: the first answer stands

    assert sessiondb.response(folder, "q-1") == {"answer": "Yes"}
    assert len(sessiondb.inbound_status(folder)) == 1
    assert sessiondb.unanswered_questions(folder) == []


def test_a_folder_without_files_has_no_questions(tmp_path: Path) -> None:
    assert sessiondb.unanswered_questions(tmp_path) == []


@pytest.mark.parametrize(
    ("info", "content", "age", "expected"),
    [
        (INFO, {}, 0.0, ("q-1", ("Yes", "No"))),  # just asked
        (INFO, {}, 59.0, ("q-1", ("Yes", "No"))),  # within its timeout
        (INFO, {}, 60.0, None),  # its timeout has passed: the card expired
        (INFO, {"timeout": 3600}, 600.0, ("q-1", ("Yes", "No"))),  # the row's own timeout counts
        (INFO, {"options": ["x" * 80, "No"]}, 0.0, ("q-1", ("x" * 64, "No"))),  # the options as the card showed
        (INFO, {"to": "nowhere"}, 0.0, ("q-1", ("Yes", "No"))),  # unknown content keys are ignored
        (INFO, {"options": "Yes"}, 0.0, None),  # no question row: never published
        (INFO, {"request_id": "q 1"}, 0.0, None),  # an id no subject may carry: never published
        (AGENTS, {}, 0.0, None),  # another agent group's question is answered at once, never asked
    ],
)
def test_an_open_question_is_the_card_the_old_runner_recorded(
    folder: Path, info: SessionInfo, content: dict[str, Any], age: float, expected: tuple[str, tuple[str, ...]] | None
) -> None:
    row = ask(folder, "q-1", **content)
    found = open_ask(info, folder, row, {}, row.created_at + age)
    assert (None if found is None else (found.request.id, found.options)) == expected


def test_a_question_to_a_chat_the_session_may_not_reach_is_not_taken_over(folder: Path) -> None:
    body = {"request_id": "q-1", "question": "Tea?", "options": ["Yes"], "timeout": 60}
    sessiondb.write_outbound(
        folder, id="row", kind="question", content=body, routing=sessiondb.Routing("local", "elsewhere")
    )
    [row] = sessiondb.unanswered_questions(folder)
    assert open_ask(INFO, folder, row, {}, time.time()) is None
    elsewhere = ev.Route(channel="local", chat_id="elsewhere")
    found = open_ask(INFO, folder, row, {("local", "elsewhere"): elsewhere}, time.time())
    assert found is not None and found.request.route == elsewhere
