"""A question an agent asked on a runner that is then lost is answered on the runner its session moved to (shared
storage): runner b publishes the card, b and its container go (the host is gone), the session moves to runner a
(an Adopt at epoch 2, as the router sends it), and the person's answer, given through the approvals service, reaches
the turn that a runs again. Once after the move, and once before it: a decision that a's durable took while the
question was b's (and dropped, not knowing it) is read back from the stream when a adopts the session. Real NATS,
Docker, Claude Code and runners; the fake model scripts the question."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from clawden import control, sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import approvals as approvals_api
from clawden.bus.streams import runner_decisions
from services.runner.containers import LABEL_INSTALL
from tests.cluster.runnerloss import TURN, Shared, move_to_a, send, shared, wake  # noqa: F401  (the fixture)
from tests.e2e.test_tools import tool_results
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]
ASK = ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 600})
ANSWER = "coffee it is"
CHOSEN = "The user chose: Coffee (answered by local:owner)"


class Questions:
    """Every question published on the bus (each publish, a duplicate JetStream drops by its id included)."""

    def __init__(self) -> None:
        self.asked: list[ev.ApprovalRequest] = []

    async def watch(self, nc: Client) -> None:
        async def on(msg: Msg) -> None:
            request = ev.decoder_for(ev.ApprovalRequest).decode(msg.data)
            if request.kind == "question":
                self.asked.append(request)

        await nc.subscribe(subjects.APPROVAL_REQUEST, cb=on)


@pytest.fixture
def questions() -> Iterator[Questions]:
    yield Questions()


def lose_b(pair: Shared) -> None:
    """Host b is gone: its runner and its agent container with it."""
    pair.kill_b()
    client = docker.from_env()
    try:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={pair.b.install_id}"}):
            c.remove(force=True)
    finally:
        client.close()


async def ask_on_b(pair: Shared, nc: Client, questions: Questions) -> ev.ApprovalRequest:
    """The agent asks on runner b; b publishes the card, and the approvals service puts it in the chat."""
    await questions.watch(nc)
    await pair.watch(nc)
    pair.stack.fake.script(ASK)
    await send(nc, "b", wake("ask me something", 1))
    asked = await eventually(lambda: questions.asked, TURN, lambda: pair.b.log.read_text()[-3000:])
    await eventually(lambda: cards(pair), TURN, lambda: pair.stack.output[-40:])
    # b has marked the question's row published too: a host lost before that mark publishes it again (the same
    # request id, which JetStream drops), and the tests count every publish
    await eventually(lambda: not sessiondb.read_new_outbound(pair.folder), TURN)
    return asked[0]


def cards(pair: Shared) -> list[ev.OutboundMessage]:
    return [e for e in pair.sent if isinstance(e, ev.OutboundMessage) and e.card is not None]


async def answer(nc: Client, asked: ev.ApprovalRequest) -> int:
    """The person answers "Coffee" at the machine (`clawden approvals answer`): the approvals service decides and
    publishes the decision. Its stream sequence, once it is on the stream."""
    decide = approvals_api.DecideRequest(id=asked.id, choice="2", by="local:owner")
    await control.ask_on(nc, approvals_api.DECIDE, decide, timeout=30)
    js, stream = nc.jetstream(), runner_decisions("a").stream

    async def stored() -> int | None:
        try:
            return (await js.get_last_msg(stream, subjects.approval_decision(asked.id))).seq
        except NotFoundError:  # not published yet (the service's outbox flushes it)
            return None

    return await eventually(stored, TURN)


async def rerun_answered(pair: Shared) -> None:
    """The turn run again on a took the answer and wrote what the script says, once, and the folder is at rest."""

    def said() -> list[ev.OutboundMessage]:
        return [e for e in pair.sent if isinstance(e, ev.OutboundMessage) and e.text == ANSWER]

    await eventually(said, TURN, lambda: pair.stack.output[-40:])
    await eventually(pair.settled, TURN)
    assert len(said()) == 1
    assert CHOSEN in tool_results(pair.stack)


async def test_a_question_asked_on_a_lost_runner_is_answered_on_the_runner_its_session_moved_to(
    shared: Shared,  # noqa: F811
    questions: Questions,
) -> None:
    nc = await shared.stack.connect()
    try:
        asked = await ask_on_b(shared, nc, questions)
        lose_b(shared)
        shared.stack.fake.script(ASK, ToolCall("send_message", {"text": ANSWER}), Text("done"))
        await move_to_a(nc)
        # a's container runs the turn again and asks again: the same request id, its row found, no second card
        await eventually(lambda: shared.stack.fake.pending_script < 3, TURN, lambda: shared.stack.output[-40:])
        await answer(nc, asked)

        await rerun_answered(shared)
        # one question, under one id (a publish of it again, a retry after a lost PubAck, is the same message,
        # which JetStream drops by its id), and one card in the chat
        assert {q.id for q in questions.asked} == {asked.id} and len(cards(shared)) == 1
    finally:
        await nc.close()


async def test_an_answer_given_before_the_move_reaches_the_runner_the_session_moved_to(
    shared: Shared,  # noqa: F811
    questions: Questions,
) -> None:
    nc = await shared.stack.connect()
    try:
        asked = await ask_on_b(shared, nc, questions)
        lose_b(shared)
        seq = await answer(nc, asked)  # while b is gone and before the move: the question is nobody's
        decisions = runner_decisions("a")

        async def a_took_it() -> bool:
            info = await nc.jetstream().consumer_info(decisions.stream, decisions.durable)
            return (info.ack_floor.stream_seq or 0) >= seq and not info.num_ack_pending

        await eventually(a_took_it, TURN)  # runner a had the decision, and dropped it: the id was not known there
        shared.stack.fake.script(ASK, ToolCall("send_message", {"text": ANSWER}), Text("done"))
        await move_to_a(nc)

        await rerun_answered(shared)
        # one question, under one id (a publish of it again, a retry after a lost PubAck, is the same message,
        # which JetStream drops by its id), and one card in the chat
        assert {q.id for q in questions.asked} == {asked.id} and len(cards(shared)) == 1
        log = (shared.stack.home / "logs" / "runner.log").read_text()
        assert f"question {asked.id}, asked on runner b, was answered before the move" in log
    finally:
        await nc.close()
