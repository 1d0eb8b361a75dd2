"""The web service in a real browser (Debian's Chromium, loopback only): sign in with a one-time link, chat with
the agent (a real container, the fake model) with the reply streamed in, press a card's button, decide a held
approval from the approvals page; and a cross-site POST refused."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import web as web_ctl
from clawden.cli import doctor
from clawden.natsserver import free_port
from tests.e2e.harness import Stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.web.conftest import web_url

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process, pytest.mark.asyncio(loop_scope="session")]
ANSWER = 120_000  # ms: a first message starts a container


async def login_link(stack: Stack, user: str = "web:owner") -> str:
    cfg = config_mod.load(stack.home)
    return (await control.ask(cfg, web_ctl.LOGIN, web_ctl.LoginRequest(user=user), timeout=60)).url


async def sign_in(page: Any, stack: Stack) -> None:
    await page.goto(await login_link(stack))
    await page.click("#sign-in")
    await page.wait_for_url(re.compile(r".*/chats$"))


async def wire(stack: Stack, name: str) -> str:
    cfg = config_mod.load(stack.home)
    chat_id = uuid.uuid4().hex[:12]
    create = router_ctl.ChatCreate(channel="web", chat_id=chat_id, name=name, policy="public")
    await control.ask(cfg, router_ctl.CHATS_CREATE, create)
    wiring = router_ctl.WiringCreate(channel="web", chat_id=chat_id, agent_group="main")
    await control.ask(cfg, router_ctl.WIRINGS_CREATE, wiring)
    return chat_id


async def test_a_one_time_link_signs_in_once_and_is_refused_the_second_time(web_stack: Stack, page: Any) -> None:
    link = await login_link(web_stack)
    await page.goto(link)
    await page.click("#sign-in")
    await page.wait_for_url(re.compile(r".*/chats$"))
    assert await page.get_by_role("button", name=re.compile("Sign out web:owner")).is_visible()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "clawden_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    other = await page.context.browser.new_context()
    try:
        again = await other.new_page()
        response = await again.goto(link)
        assert response is not None and response.status == 410
        assert "already used" in (await again.text_content("main") or "")
        assert not any(c["name"] == "clawden_session" for c in await other.cookies())
    finally:
        await other.close()


async def test_a_chat_streams_the_agents_reply_and_a_card_is_pressed_from_the_page(web_stack: Stack, page: Any) -> None:
    chat_id = await wire(web_stack, "kitchen")
    await sign_in(page, web_stack)
    await page.click("text=kitchen")
    await page.wait_for_selector("body[data-stream=open]")
    await page.fill("#text", "what is for dinner?")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("li.msg.in >> text=what is for dinner?")
    await page.wait_for_selector("li.msg.out >> text=/echo: .*what is for dinner/", timeout=ANSWER)
    web_stack.fake.script(
        ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 90}),
        Text("ok"),
    )
    await page.fill("#text", "ask me something")
    await page.click("#say button[type=submit]")
    await page.click("li.msg.out button.press >> text=Coffee", timeout=ANSWER)

    def chose() -> bool:
        return any("The user chose: Coffee" in str(r.body) for r in web_stack.fake.messages_requests(with_tools=True))

    await eventually(chose, 60, "the press never reached the agent")
    assert await page.locator(f"#log[data-chat='{chat_id}'] li.msg.in").count() == 2


async def test_a_held_approval_is_approved_from_the_approvals_page_as_the_signed_in_user(
    web_stack: Stack, page: Any
) -> None:
    rid = f"web{uuid.uuid4().hex[:8]}"
    nc = await web_stack.connect("test-approval")
    try:
        sub = await nc.subscribe(subjects.approval_decision(rid))
        request = ev.ApprovalRequest(
            id=rid,
            kind="credential",
            requester="vault",
            agent_group="main",
            card=ev.Card(
                title="POST api.example.org/v1/charge",
                body="the agent wants to spend money",
                buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny")),
            ),
            expires_at=time.time() + 600,
        )
        await publish(nc.jetstream(), subjects.APPROVAL_REQUEST, request, msg_id=f"approval:{rid}")
        await sign_in(page, web_stack)

        async def listed() -> bool:  # the request reaches the approvals service, then the page
            await page.goto(web_url(web_stack) + "/approvals")
            return bool(await page.locator(f"#a-{rid}").count())

        await eventually(listed, 60, f"{rid} never showed on the approvals page")
        await page.locator(f"#a-{rid}").get_by_role("button", name="Approve").click()
        await page.wait_for_selector(f"text={rid} is approved by web:owner")
        decision = msgspec.json.decode((await sub.next_msg(timeout=60)).data, type=ev.ApprovalDecision)
        assert decision.decision == "approved" and decision.decided_by == "web:owner"
        assert not await page.locator(f"#a-{rid}").count()  # no longer pending
    finally:
        await nc.close()


async def test_a_cross_site_post_or_one_without_the_csrf_token_is_refused(web_stack: Stack, page: Any) -> None:
    await sign_in(page, web_stack)
    base = web_url(web_stack)
    cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "clawden_session")
    async with httpx.AsyncClient(base_url=base, cookies={"clawden_session": cookie}) as client:
        chats = await client.get("/chats")
        assert chats.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', chats.text)
        assert csrf is not None
        form = {"name": "evil", "group": "main"}
        cross = await client.post(
            "/chats", data={**form, "csrf": csrf.group(1)}, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403 and "did not come from Clawden" in cross.text
        tokenless = await client.post("/chats", data=form, headers={"origin": base})
        assert tokenless.status_code == 403 and "stale" in tokenless.text
        made = await client.post("/chats", data={**form, "csrf": csrf.group(1)}, headers={"origin": base})
        assert made.status_code == 303  # the same request from our own page goes through


async def test_doctor_finds_the_web_app_on_loopback_and_says_when_nothing_answers(web_stack: Stack) -> None:
    cfg = config_mod.load(web_stack.home)
    up = await doctor.check_web(doctor.Probe(cfg, {}))
    assert up.status == "ok" and web_url(web_stack) in up.detail
    gone = msgspec.structs.replace(cfg, web=msgspec.structs.replace(cfg.web, listen=f"127.0.0.1:{free_port()}"))
    down = await doctor.check_web(doctor.Probe(gone, {}))
    assert down.status == "FAIL" and "did not answer" in down.detail and "clawden up" in down.fix
    plain = msgspec.structs.replace(cfg, web=msgspec.structs.replace(cfg.web, public_url=web_url(web_stack)))
    insecure = await doctor.check_web(doctor.Probe(plain, {}))
    assert insecure.status == "WARN" and "not Secure" in insecure.detail
