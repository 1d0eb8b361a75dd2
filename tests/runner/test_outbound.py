"""What an agent's outbound row becomes, on a real session folder: each kind decoded into its typed
row (clawden/sessionrows.py) once, and a row that is not what its kind says refused with where it is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from services.runner.outbound import Ask, ListTasks, Publish, Refused, Respond, translate
from services.runner.sessions import SessionInfo, prepare_folder

ROUTE = ev.Route(channel="local", chat_id="kitchen")
INFO = SessionInfo("s-1", "main", ROUTE)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    prepare_folder(tmp_path / "s-1", None)
    return tmp_path / "s-1"


def row(folder: Path, kind: str, content: dict[str, Any]) -> sessiondb.OutboundMessage:
    sessiondb.write_outbound(
        folder, id=f"r-{kind}-{len(content)}", kind=kind, content=content, routing=sessiondb.Routing("", "")
    )
    return sessiondb.read_new_outbound(folder)[-1]


def test_a_chat_row_is_a_message_to_the_sessions_own_chat(folder: Path) -> None:
    [action] = translate(INFO, folder, row(folder, "chat", {"text": "hello"}), {})
    assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundMessage)
    assert (action.event.text, action.event.route) == ("hello", ROUTE)
    assert action.subject == subjects.outbound("local", "kitchen")


def test_a_card_row_keeps_its_buttons_in_order(folder: Path) -> None:
    content = {"title": "Lunch?", "body": "Pick one", "buttons": [{"id": "1", "label": "Soup"}, {"label": "Salad"}]}
    [action] = translate(INFO, folder, row(folder, "card", content), {})
    assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundMessage)
    assert action.event.card == ev.Card(
        title="Lunch?", body="Pick one", buttons=(ev.Button(id="1", label="Soup"), ev.Button(id="2", label="Salad"))
    )


def test_a_question_row_asks_the_approvals_service_with_its_options(folder: Path) -> None:
    content = {"request_id": "q-1", "question": "Tea?", "options": ["Yes", "No"], "timeout": 60}
    [action] = translate(INFO, folder, row(folder, "question", content), {})
    assert isinstance(action, Ask) and action.options == ("Yes", "No")
    assert action.request.kind == "question" and action.request.card.body == "Tea?"


def test_a_task_row_goes_to_the_scheduler_and_the_agent_hears_so(folder: Path) -> None:
    content = {
        "request_id": "r-1",
        "op": "create",
        "task_id": "t-1",
        "prompt": "water the plants",
        "schedule": "0 8 * * *",
        "timezone": "",
        "script": "",
    }
    publish, respond = translate(INFO, folder, row(folder, "task", content), {}, runner_id="local")
    assert isinstance(publish, Publish) and isinstance(publish.event, ev.TaskOp)
    assert (publish.event.op, publish.event.task_id, publish.event.timezone, publish.event.script) == (
        "create",
        "t-1",
        None,
        "",
    )
    assert isinstance(respond, Respond) and respond.request_id == "r-1"
    [listing] = translate(INFO, folder, row(folder, "task", {"request_id": "r-2", "op": "list"}), {})
    assert isinstance(listing, ListTasks)


@pytest.mark.parametrize(
    ("kind", "content", "why"),
    [
        ("chat", {"text": ""}, "empty message"),
        ("chat", {"text": 42}, r"no chat row: Expected `str`, got `int` - at `\$.text`"),
        ("edit", {"target_seq": "three", "text": "x"}, r"at `\$.target_seq`"),
        ("edit", {"target_seq": 3, "text": "x"}, "#3 has no platform message id"),
        ("file", {"box": "..", "files": ["a.txt"]}, "unsafe file path"),
        ("file", {"box": "b", "files": []}, "without files"),
        ("task", {"request_id": "r", "op": "drop"}, "unknown task operation 'drop'"),
    ],
)
def test_a_row_that_is_not_what_its_kind_says_is_refused_saying_why(
    folder: Path, kind: str, content: dict[str, Any], why: str
) -> None:
    with pytest.raises(Refused, match=why):
        translate(INFO, folder, row(folder, kind, content), {})
