"""What an agent's outbound row becomes, on a real session folder: each kind decoded into its typed
row (clawden/sessionrows.py) once, and a row that is not what its kind says refused with where it is wrong."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from services.runner.outbound import Ask, ListTasks, Publish, Refused, Respond, copies_folder, translate
from services.runner.sessions import SessionInfo, prepare_folder
from services.web import files

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


def test_a_reply_names_the_platform_message_it_answers_and_the_agent_runners_own_words_keep_their_kind(
    folder: Path,
) -> None:
    """The agent marks each reply with the message it answers (its seq): the event carries that message's platform
    id, so `clawden chat --once` can tell its answer from an earlier one. The agent runner's word that a turn failed
    is Clawden's error, and that the model's API keeps failing a notice, as the host's own are."""
    asked = sessiondb.InboundMessage(
        id="m-1", kind="chat", content={"text": "hi", "platform_message_id": "p-42"}, routing=sessiondb.Routing("", "")
    )
    seq, _ = sessiondb.insert_inbound(folder, asked)
    routing = sessiondb.Routing("", "")
    sessiondb.write_outbound(
        folder, id="reply", kind="chat", content={"text": "hello"}, routing=routing, in_reply_to=seq
    )
    failed = {"text": "Sorry — the agent failed: boom", "says": "error"}
    sessiondb.write_outbound(folder, id="failed", kind="chat", content=failed, routing=routing, in_reply_to=seq)
    sessiondb.write_outbound(folder, id="unprompted", kind="chat", content={"text": "good morning"}, routing=routing)
    notice = {"text": "The model's API is not answering", "says": "notice"}
    sessiondb.write_outbound(folder, id="notice", kind="chat", content=notice, routing=routing)

    events = []
    for outbound in sessiondb.read_new_outbound(folder):
        [action] = translate(INFO, folder, outbound, {})
        assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundMessage)
        events.append((action.event.text, action.event.kind, action.event.answering))
    assert events == [
        ("hello", "reply", "p-42"),
        ("Sorry — the agent failed: boom", "error", "p-42"),
        ("good morning", "reply", ""),
        ("The model's API is not answering", "notice", ""),
    ]


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


def test_a_question_expires_when_the_agent_stops_waiting_not_a_timeout_after_the_runner_read_it(folder: Path) -> None:
    # The agent waits `timeout` from when it wrote the row; a runner that reads it late (restarted, or NATS away
    # meanwhile) must not offer the person a card the agent no longer waits on.
    content = {"request_id": "q-1", "question": "Tea?", "options": ["Yes", "No"], "timeout": 60}
    asked = row(folder, "question", content)
    late = dataclasses.replace(asked, created_at=time.time() - 45)
    [action] = translate(INFO, folder, late, {})
    assert isinstance(action, Ask) and action.request.expires_at == pytest.approx(late.created_at + 60, abs=0.01)
    # A time the agent wrote in the future buys it no longer card than asked.
    future = dataclasses.replace(asked, created_at=time.time() + 3600)
    [action] = translate(INFO, folder, future, {})
    assert isinstance(action, Ask) and action.request.expires_at <= time.time() + 60


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


# --- files: what goes out is the runner's own copy of a regular file that was in the outbox ------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    """A home's sessions folder with session s-1 of main, as the runner lays it out, and a keys folder beside it."""
    prepare_folder(tmp_path / "sessions" / "main" / "s-1", None)
    (tmp_path / "keys" / "nats").mkdir(parents=True)
    (tmp_path / "keys" / "nats" / "runner.nk").write_text("SUAseed")
    return tmp_path / "sessions"


def send_file(sessions: Path, box: str, name: str) -> list[Any]:
    folder = sessions / "main" / "s-1"
    content = {"box": box, "files": [name], "text": "here"}
    return translate(INFO, folder, row(folder, "file", content), {}, copies=copies_folder(sessions, INFO))


def test_an_outbox_the_agent_made_a_link_out_of_its_folder_sends_nothing(sessions: Path) -> None:
    folder = sessions / "main" / "s-1"
    shutil.rmtree(folder / "outbox")
    (folder / "outbox").symlink_to("../../../keys")  # inside the container: ln -s ../../../keys outbox

    with pytest.raises(Refused, match=r"nats/runner\.nk is not a file in the outbox"):
        send_file(sessions, "nats", "runner.nk")

    prepare_folder(folder, None)  # the next wake puts a real outbox back; the link's target is left alone
    assert (folder / "outbox").is_dir() and not (folder / "outbox").is_symlink()
    assert (sessions.parent / "keys" / "nats" / "runner.nk").read_text() == "SUAseed"


@pytest.mark.parametrize("link", ["box", "file"])
def test_a_box_or_file_that_is_a_link_out_of_the_outbox_sends_nothing(sessions: Path, link: str) -> None:
    box = sessions / "main" / "s-1" / "outbox" / "b"
    if link == "box":
        box.symlink_to(sessions.parent / "keys" / "nats")
    else:
        box.mkdir()
        (box / "runner.nk").symlink_to(sessions.parent / "keys" / "nats" / "runner.nk")

    with pytest.raises(Refused, match=r"b/runner\.nk"):
        send_file(sessions, "b", "runner.nk")


def test_a_file_swapped_for_a_link_after_it_was_taken_still_sends_what_was_taken(sessions: Path) -> None:
    box = sessions / "main" / "s-1" / "outbox" / "b"
    box.mkdir()
    (box / "notes.txt").write_text("the agent's notes")

    [action] = send_file(sessions, "b", "notes.txt")
    (box / "notes.txt").unlink()  # then, before the bridge reads it, a link in the file's place
    (box / "notes.txt").symlink_to(sessions.parent / "keys" / "nats" / "runner.nk")

    assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundMessage)
    [sent] = action.event.files
    assert Path(sent).read_text() == "the agent's notes"
    # The copy is the host's, outside every session folder, where the bridges (under the sessions folder) and the
    # web chat's downloads (a file in an outbox under it) take it.
    assert not Path(sent).is_relative_to(sessions / "main" / "s-1")
    assert Path(sent).resolve().is_relative_to(sessions.resolve())
    assert files.outbox_file(sessions, sent) == Path(sent).resolve()


def test_an_edit_names_the_delivered_message_and_the_outbound_event_it_went_out_as(folder: Path) -> None:
    sent = row(folder, "chat", {"text": "a long answer"})
    sessiondb.record_delivery(folder, sent.seq, platform_message_id="42:7")
    [action] = translate(INFO, folder, row(folder, "edit", {"target_seq": sent.seq, "text": "shorter"}), {})
    assert isinstance(action, Publish) and isinstance(action.event, ev.OutboundEdit)
    # Its parts are found by the event's id on any instance of the bridge (the shared sent-log).
    assert (action.event.target_message_id, action.event.target_outbound_id) == ("42:7", f"s-1:{sent.id}")
