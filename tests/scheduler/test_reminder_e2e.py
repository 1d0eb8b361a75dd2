"""End to end: asked in chat for a reminder in 3 seconds, the agent schedules it with its tool, and the
reminder arrives in the same chat; a task whose pre-check script finds nothing never reaches the model
(whole system under `clawden up`, real containers, fake model)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from clawden import sessiondb
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"))
    yield s
    s.stop()


async def test_remind_me_in_3_seconds_arrives_in_the_same_chat(stack: Stack) -> None:
    async with Terminal(stack, "reminders") as term:
        # A warm container first: a cold start slower than 3 s would make the reminder due before the
        # agent even schedules it (it then fires at once, into the turn that is scheduling it).
        stack.fake.script(ToolCall("send_message", {"text": "hello"}), Text("greeted"))
        await stack.wait_until_idle((await term.ask("hello", timeout=90)).session_id)
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        when = due.isoformat()  # what a model writes for "in 3 seconds": an ISO time
        stack.fake.script(
            ToolCall("schedule_task", {"prompt": "Remind the user to stretch.", "schedule": when}),
            ToolCall("send_message", {"text": "OK, I'll remind you in 3 seconds."}),
            Text("scheduled"),
            # The task's turn: the agent sees the prompt as a task and writes to the chat.
            ToolCall("send_message", {"text": "⏰ Time to stretch!"}),
            Text("reminded"),
        )
        ack = await term.ask("remind me in 3 seconds to stretch", timeout=90)
        assert ack.text == "OK, I'll remind you in 3 seconds."
        reminder = await term.reply(timeout=60)
        assert reminder.text == "⏰ Time to stretch!"
        assert reminder.route == ack.route and reminder.session_id == ack.session_id
        assert due.timestamp() <= time.time() < due.timestamp() + 30  # at its time, not at once
        # The agent saw it as a task, not as something the user said.
        seen = [str(r.body.get("messages", [])) for r in stack.fake.messages_requests(with_tools=True)]
        assert any("<task" in m and "Remind the user to stretch." in m.split("<task", 1)[1] for m in seen)


NEWS_CHECK = """f=news.txt
[ -s "$f" ] || { echo '{"wakeAgent": false}'; exit 0; }
d=$(cat "$f"); rm "$f"
echo "{\\"wakeAgent\\": true, \\"data\\": \\"$d\\"}\""""


async def test_a_task_wakes_the_model_only_when_its_pre_check_finds_news(stack: Stack) -> None:
    async with Terminal(stack, "news") as term:
        stack.fake.script(
            ToolCall(
                "schedule_task", {"prompt": "Tell the user the news.", "schedule": "every 2s", "script": NEWS_CHECK}
            ),
            ToolCall("send_message", {"text": "I'll tell you when there is news."}),
            Text("scheduled"),
        )
        ack = await term.ask("tell me when there is news", timeout=90)
        assert ack.text == "I'll tell you when there is news."
        await stack.wait_until_idle(ack.session_id)
        asked = len(stack.fake.messages_requests())
        folder = stack.home / "sessions" / "main" / ack.session_id
        before = set(sessiondb.inbound_status(folder))

        def settled_runs() -> bool:  # three runs came in, and the agent is done with each
            runs = set(sessiondb.inbound_status(folder)) - before
            return len(runs) >= 3 and not runs & {m.seq for m in sessiondb.unfinished(folder)}

        await eventually(settled_runs, timeout=30)
        assert len(stack.fake.messages_requests()) == asked  # each settled by its check, without the model

        stack.fake.script(ToolCall("send_message", {"text": "📰 The parcel has arrived."}), Text("told"))
        (stack.home / "groups" / "main" / "news.txt").write_text("parcel arrived")
        news = await term.reply(timeout=30)
        assert news.text == "📰 The parcel has arrived." and news.session_id == ack.session_id
        seen = [str(r.body.get("messages", [])) for r in stack.fake.messages_requests(with_tools=True)]
        assert any("Tell the user the news.\\n<script-output>parcel arrived</script-output></task>" in m for m in seen)
