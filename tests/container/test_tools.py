"""The agent's tools against a real session folder, without Claude Code: what they write when called side by side,
and when a turn runs again after its container died."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from clawden import sessiondb
from tests.eventually import eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.tools import Tools, TurnState

ROUTING = sessiondb.Routing("telegram", "chat-42")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    sessiondb.ensure_inbound(tmp_path)
    sessiondb.ensure_outbound(tmp_path)
    sessiondb.set_routing(tmp_path, ROUTING)
    return tmp_path


def answering(folder: Path, reply_to: int) -> TurnState:
    state = TurnState(folder, ring_host=lambda: None)
    state.begin(reply_to=reply_to)
    return state


async def test_messages_sent_side_by_side_by_parallel_subagents_all_reach_the_chat(folder: Path) -> None:
    tools = Tools(answering(folder, 2))

    said = await asyncio.gather(*(tools.send_message({"text": f"part {n}"}) for n in range(4)))

    assert len(set(said)) == 4, said
    assert sorted(m.content["text"] for m in sessiondb.read_new_outbound(folder)) == [f"part {n}" for n in range(4)]


async def test_a_task_operation_run_again_waits_for_the_answer_to_the_first_request(folder: Path) -> None:
    ask = {"prompt": "water the plants", "schedule": "0 8 * * *"}
    first = asyncio.create_task(Tools(answering(folder, 2)).schedule_task(ask))
    (row,) = await eventually(lambda: sessiondb.read_new_outbound(folder))
    first.cancel()  # the container died while the tool waited for the scheduler
    with contextlib.suppress(asyncio.CancelledError):
        await first

    rerun = asyncio.create_task(Tools(answering(folder, 2)).schedule_task(ask))
    await eventually(lambda: sessiondb.get_state(folder, sessiondb.CURRENT_TOOL_KEY))  # it waits for an answer
    sessiondb.respond(folder, row.content["request_id"], {"result": f"create of task {row.content['task_id']} queued"})

    async with asyncio.timeout(5):  # well before the tool gives up on the scheduler (15 s)
        assert await rerun == f"create of task {row.content['task_id']} queued"
    assert len(sessiondb.read_new_outbound(folder)) == 1  # one request, so one task
