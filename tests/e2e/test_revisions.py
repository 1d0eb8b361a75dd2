"""People's edits and deletes with the whole system running (router, runner, a real agent container, the
fake model): a message edited before the agent reads it is answered once, as edited; one deleted before
it is read is never answered.

"Before the agent reads it" is exact, not timed: the runner has one container slot, held by a turn the
fake model does not answer, so the other chats' messages wait in their sessions' inbound.db, with their
edits and deletes, until the model is released."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.e2e.harness import Stack, Terminal, session_folder
from tests.eventually import eventually
from tests.fakes.anthropic import Hang

pytestmark = pytest.mark.docker

STACK_OPTIONS = {"runner": "max_containers = 1\nqueue_notice_after = 3600"}


async def rows_stored(stack: Stack, chat_id: str, count: int) -> Path:
    """The chat's session folder, once its inbound.db holds `count` rows."""

    def ready() -> Path | None:
        folder = session_folder(stack, chat_id)
        return folder if folder is not None and len(sessiondb.inbound_status(folder)) == count else None

    return await eventually(ready, timeout=60, message=f"the rows of {chat_id} never reached its session")


async def revise(term: Terminal, event: ev.InboundEdit | ev.InboundDelete) -> None:
    """What a bridge publishes for an edit or delete on its platform (the terminal channel has none of its own)."""
    assert term.js is not None
    await publish(term.js, subjects.inbound("local"), event, msg_id=event.key)


def said_to_the_model(stack: Stack) -> str:
    return " ".join(str(r.body) for r in stack.fake.messages_requests(with_tools=True))


def outbound_rows(folder: Path) -> int:
    with sqlite3.connect(folder / sessiondb.OUTBOUND) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages_out").fetchone()[0])


async def test_an_edit_and_a_delete_before_the_agent_reads_are_what_it_answers(stack: Stack) -> None:
    async with Terminal(stack, "busy") as busy, Terminal(stack, "typo") as typo, Terminal(stack, "oops") as oops:
        stack.fake.script(Hang())
        await busy.send("hold the only slot")
        await eventually(lambda: "hold the only slot" in said_to_the_model(stack), timeout=120)

        question = await typo.send("whats 2+")
        await revise(
            typo,
            ev.InboundEdit(
                route=question.route,
                message_id=question.message_id,
                edit_id="1",
                sender=question.sender,
                text="whats 2+2",
            ),
        )
        regret = await oops.send("ignore me")
        await revise(oops, ev.InboundDelete(route=regret.route, message_id=regret.message_id, sender=regret.sender))
        typo_folder = await rows_stored(stack, "typo", 2)
        oops_folder = await rows_stored(stack, "oops", 2)
        assert len(stack.containers()) == 1  # only the held chat's: nobody has read these yet

        stack.fake.release()
        assert "hold the only slot" in (await busy.reply(timeout=60)).text

        answer = await typo.reply(timeout=120)
        assert "whats 2+2" in answer.text and answer.session_id == typo_folder.name
        await stack.wait_until_idle(typo_folder.name)
        said = said_to_the_model(stack)
        assert "whats 2+2" in said and "whats 2+<" not in said  # the agent saw only the edited text

        # The deleted message's session is started in its turn, reads nothing, and settles both rows.
        await eventually(
            lambda: (oops_folder / sessiondb.OUTBOUND).exists() and not sessiondb.unfinished(oops_folder),
            timeout=120,
            message="the deleted message was never settled",
        )
        assert outbound_rows(oops_folder) == 0 and "ignore me" not in said_to_the_model(stack)
        assert not oops.unread
        assert not typo.unread  # answered once
