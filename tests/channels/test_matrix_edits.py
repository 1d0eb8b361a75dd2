"""People's edits (`m.replace`) and redactions on Matrix reach the bus as edits and deletes of the message
they were (real NATS, the bridge process, a real Synapse)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import pytest

from clawden.bus import events as ev
from services.channels.matrix import Me, RoomView, inbound_delete, inbound_edit
from tests.channels.matrix_harness import MatrixBridgeProcess, MatrixBus, Person
from tests.channels.test_matrix_bridge import ada, bot, bridge, bus, direct_room, router_admits  # noqa: F401
from tests.eventually import eventually
from tests.servers.synapse.fixture import Account


async def redact(person: Person, room: str, event_id: str) -> None:
    """PUT /rooms/{room}/redact/{event}/{txn} (Matrix spec, client-server API, "Redactions")."""
    path = f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(event_id)}/{secrets.token_hex(8)}"
    (await person.http.put(path, json={"reason": "typo"})).raise_for_status()


def replacement(original: str, text: str) -> dict[str, Any]:
    """An edit as clients send it (Matrix spec, "Event replacements"): a fallback body, new content, the relation."""
    return {
        "msgtype": "m.text",
        "body": f"* {text}",
        "m.new_content": {"msgtype": "m.text", "body": text},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    }


async def test_an_edit_and_a_redaction_become_events_naming_the_message(
    ada: Person,  # noqa: F811
    bot: Account,  # noqa: F811
    bus: MatrixBus,  # noqa: F811
    bridge: MatrixBridgeProcess,  # noqa: F811
) -> None:
    room = await direct_room(ada, bot)
    first = await ada.say(room, "whats 2+")
    second = await ada.say(room, "ignore me")
    edit_id = await ada.send(room, replacement(first, "whats 2+2"))
    await redact(ada, room, second)

    async def all_in() -> list[Any] | None:
        found = await bus.inbound()
        return found if any(isinstance(e, ev.InboundDelete) for e in found) else None

    found = await eventually(all_in, 30, "the redaction never reached the bus")

    assert [e.message_id for e in found if isinstance(e, ev.InboundMessage)] == [first, second]  # the edit is none
    [edit] = [e for e in found if isinstance(e, ev.InboundEdit)]
    [delete] = [e for e in found if isinstance(e, ev.InboundDelete)]
    sender = ev.Sender(id=f"matrix:{ada.user_id}", name=ada.user_id)
    assert (edit.message_id, edit.edit_id, edit.text, edit.sender) == (first, edit_id, "whats 2+2", sender)
    assert (delete.message_id, delete.sender, delete.route.chat_id) == (second, sender, room)


ROOM = RoomView("!r:hs", "", 2, False)
ME = Me("@clawden:hs", "DEV", "Clawden")
EDIT = {"type": "m.room.message", "event_id": "$e", "sender": "@ada:hs", "origin_server_ts": 5000}


@pytest.mark.parametrize(
    ("content", "text"),
    [
        pytest.param(replacement("$o", "new"), "new", id="an edit: the new content, not the fallback"),
        pytest.param({"msgtype": "m.text", "body": "plain"}, None, id="no relation"),
        pytest.param({**replacement("$o", "new"), "m.new_content": "x"}, None, id="no new content"),
        pytest.param(
            {**replacement("$o", "new"), "m.new_content": {"msgtype": "m.notice", "body": "n"}}, None, id="a notice"
        ),
        pytest.param("not an object", None, id="content not an object"),
    ],
)
def test_only_a_replacement_with_new_content_is_an_edit(content: Any, text: str | None) -> None:
    found = inbound_edit(dict(EDIT, content=content), ROOM, ME, set())

    assert (found.text if found else None) == text
    if found is not None:
        assert (found.message_id, found.edit_id, found.edited_at) == ("$o", "$e", 5.0)


def test_a_redaction_names_its_event_in_the_content_or_at_the_top_level() -> None:
    base = {"type": "m.room.redaction", "event_id": "$r", "sender": "@mod:hs", "origin_server_ts": 1000}

    v11 = inbound_delete(dict(base, content={"redacts": "$o"}), ROOM)
    older = inbound_delete(dict(base, content={}, redacts="$o"), ROOM)

    assert v11 is not None and older is not None and v11 == older
    assert v11.sender is not None and v11.sender.id == "matrix:@mod:hs"
    assert inbound_delete(dict(base, content={}), ROOM) is None
