"""What the runner does with an agent's row addressed to another agent group (services/runner/outbound.py): a
text goes out on the agent channel for the router; anything else is refused, a question answered at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from services.runner.outbound import Publish, Refused, Respond, translate
from services.runner.sessions import SessionInfo, prepare_folder

WRITER = ev.Route(channel="agent", chat_id="writer")
INFO = SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen"))
ALLOWED = {("agent", "writer"): WRITER}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    prepare_folder(tmp_path / "s-1", None)
    (tmp_path / "s-1" / "outbox" / "b").mkdir(parents=True)
    (tmp_path / "s-1" / "outbox" / "b" / "notes.txt").write_text("secret plans")
    return tmp_path / "s-1"


def to_writer(folder: Path, kind: str, content: dict[str, Any]) -> sessiondb.OutboundMessage:
    sessiondb.write_outbound(
        folder, id=f"r-{kind}", kind=kind, content=content, routing=sessiondb.Routing("agent", "writer")
    )
    return sessiondb.read_new_outbound(folder)[-1]


def test_a_text_to_an_agent_destination_goes_to_the_router_on_the_agent_channel(folder: Path) -> None:
    [action] = translate(INFO, folder, to_writer(folder, "chat", {"text": "A title?"}), ALLOWED)
    assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundMessage)
    assert action.subject == subjects.outbound("agent", "writer")
    # The id names the sending row: a republish after a restart is the same send (the router relays it once).
    assert (action.msg_id, action.event.id) == ("s-1:r-chat", "s-1:r-chat")
    assert (action.event.route, action.event.agent_group, action.event.session_id) == (WRITER, "main", "s-1")


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("file", {"box": "b", "files": ["notes.txt"], "text": "here"}),
        ("card", {"title": "Approve?", "buttons": [{"id": "approve", "label": "Approve"}]}),
        ("edit", {"target_seq": 1, "text": "changed"}),
        ("reaction", {"target_seq": 1, "emoji": "+1"}),
    ],
)
def test_anything_but_text_to_another_agent_is_refused(folder: Path, kind: str, content: dict[str, Any]) -> None:
    with pytest.raises(Refused, match=f"another agent group takes text messages only .*not a {kind}"):
        translate(INFO, folder, to_writer(folder, kind, content), ALLOWED)


def test_a_question_to_another_agent_is_answered_at_once_with_why(folder: Path) -> None:
    content = {"request_id": "q-1", "question": "Approve?", "options": ["Yes", "No"], "timeout": 60}
    [action] = translate(INFO, folder, to_writer(folder, "question", content), ALLOWED)
    assert isinstance(action, Respond) and action.request_id == "q-1"
    assert "text messages only" in action.content["error"]


def test_an_agent_group_that_is_no_destination_is_unreachable(folder: Path) -> None:
    with pytest.raises(Refused, match="may not reach"):
        translate(INFO, folder, to_writer(folder, "chat", {"text": "hi"}), {})
