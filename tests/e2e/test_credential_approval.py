"""The whole approval path: an agent's request held by the vault, a card in the owner's terminal,
the owner's click (or a stranger's), and the request released or failed with OneCLI's error shape."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import uuid
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import vault as vault_ctl
from tests.e2e.harness import Stack, Terminal

pytestmark = pytest.mark.docker
STACK_OPTIONS = {"vault": "approval_timeout = 60"}
OWNER = f"local:{getpass.getuser()}"  # the login that ran the router first owns the install

FETCH = """
import json, sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": "http://127.0.0.1:3128"}))
try:
    with opener.open(urllib.request.Request(sys.argv[1], method="POST", data=b"{}"), timeout=90) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def fetch_from_container(stack: Stack, url: str) -> tuple[int, str]:
    [box] = stack.containers()
    result = box.exec_run(["python", "-c", FETCH, url], user="1000")
    status, body = json.loads(result.output.decode().strip().splitlines()[-1])
    return int(status), str(body)


async def card_for(term: Terminal, timeout: float = 30) -> ev.OutboundMessage:
    deadline = time.monotonic() + timeout
    while True:
        reply = await term.reply(timeout=max(0.1, deadline - time.monotonic()))
        if reply.card is not None and reply.card.buttons:
            return reply


async def click(term: Terminal, card: ev.OutboundMessage, button: str, who: str) -> None:
    assert term.js is not None
    action = ev.InboundAction(
        route=card.route,
        action_id=uuid.uuid4().hex,
        sender=ev.Sender(id=who),
        card_id=card.id,
        button_id=button,
        message_id=f"term-{card.seq}",
        sent_at=time.time(),
    )
    await publish(term.js, subjects.inbound("local"), action, msg_id=action.key)


def button(card: ev.OutboundMessage, approve: bool) -> str:
    assert card.card is not None
    danger = [b for b in card.card.buttons if b.style == "danger" or "deny" in b.id.lower()]
    other = [b for b in card.card.buttons if b not in danger]
    return (other if approve else danger)[0].id


@pytest.fixture
async def owner(stack: Stack) -> Any:
    async with Terminal(stack, "terminal") as term:
        await stack.wait_until_idle((await term.ask("hello", timeout=90)).session_id)  # a container runs
        cfg = config_mod.load(stack.home)
        await control.ask(
            cfg,
            vault_ctl.RULES_ADD,
            vault_ctl.AddRule(
                name=f"ask-{uuid.uuid4().hex[:6]}", action="manual_approval", host="api.anthropic.com", path="/v1/pay/*"
            ),
        )
        yield term


async def test_the_owners_approval_releases_the_held_request(stack: Stack, owner: Terminal) -> None:
    call = asyncio.create_task(asyncio.to_thread(fetch_from_container, stack, "https://api.anthropic.com/v1/pay/a"))
    card = await card_for(owner)
    assert card.card is not None and "api.anthropic.com" in card.card.body and "/v1/pay/a" in card.card.body
    await asyncio.sleep(0.5)
    assert not call.done()  # held while the owner decides
    await click(owner, card, button(card, approve=True), OWNER)
    status, _ = await asyncio.wait_for(call, 60)
    assert status == 404  # it reached the fake site, which has no such path
    assert any(r.path == "/v1/pay/a" for r in stack.fake.requests)


async def test_a_denial_fails_the_request_with_onecli_s_error_and_a_stranger_changes_nothing(
    stack: Stack, owner: Terminal
) -> None:
    call = asyncio.create_task(asyncio.to_thread(fetch_from_container, stack, "https://api.anthropic.com/v1/pay/b"))
    card = await card_for(owner)
    await click(owner, card, button(card, approve=True), "local:stranger")
    refusal = await owner.reply(timeout=30)
    assert "Nothing was changed" in refusal.text
    assert not call.done()
    await click(owner, card, button(card, approve=False), OWNER)
    status, body = await asyncio.wait_for(call, 60)
    assert status == 403 and json.loads(body)["error"] == "manual_approval_denied"
    assert not any(r.path == "/v1/pay/b" for r in stack.fake.requests)
