"""The web service in a real browser (Debian's Chromium, loopback only): sign in with a one-time link, chat with
the agent (a real container, the fake model) with the reply streamed in, press a card's button, decide a held
approval from the approvals page; and a cross-site POST refused."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
import uuid
from pathlib import Path
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
from services.web import files
from tests.e2e.harness import Stack
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.web.a11y import SIZES, check_and_shoot, screens
from tests.web.conftest import sign_in as sign_in_as
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


async def test_a_line_sent_again_after_its_answer_was_lost_is_one_message(web_stack: Stack, page: Any) -> None:
    """The server stored the line, but the page never heard so (the connection dropped): sent again, it is the
    same message, not a second one the agent answers too."""
    chat_id = await wire(web_stack, "flaky")
    await sign_in(page, web_stack)
    await page.goto(f"{web_url(web_stack)}/chat/{chat_id}")
    await page.wait_for_selector("body[data-stream=open]")
    sent: list[str] = []

    async def lose_the_answer(route: Any) -> None:
        sent.append(route.request.post_data or "")
        await route.fetch()  # the server takes it...
        await route.abort("connectionreset")  # ...and its answer never reaches the page

    await page.route("**/send", lose_the_answer, times=1)
    line = f"feed the cat {uuid.uuid4().hex[:6]}"
    await page.fill("#text", line)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#error:not(:empty)")
    assert await page.input_value("#text") == line  # not cleared: the person sends it again
    async with page.expect_response("**/send") as answered:
        await page.keyboard.press("Enter")
    response = await answered.value
    assert response.ok

    async def cleared() -> bool:  # once the page has read the answer
        return bool(await page.input_value("#text") == "")

    await eventually(cleared, 10, "the line stayed in the box once it was sent")
    ids = [urllib.parse.parse_qs(body)["id"] for body in (*sent, response.request.post_data or "")]
    assert len(ids) == 2 and ids[0] == ids[1]  # under the id the bus keeps it by
    await page.wait_for_selector(f"li.msg.out >> text=/echo: .*{line}/", timeout=ANSWER)
    cfg = config_mod.load(web_stack.home)
    sessions = await control.ask(cfg, router_ctl.SESSIONS_LIST, router_ctl.GroupFilter(agent_group="main"))
    await web_stack.wait_until_idle(next(s for s in sessions if s.chat_id == chat_id).id)  # its turn is over
    await page.reload()
    await page.wait_for_selector("body[data-stream=open]")
    assert await page.locator("li.msg.in", has_text=line).count() == 1
    assert await page.locator("li.msg.out", has_text=line).count() == 1  # and the agent answered it once


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


def tool_results(stack: Stack) -> list[str]:
    """What each tool told the model, as the fake saw it in the requests that followed."""
    out = []
    for r in stack.fake.messages_requests(with_tools=True):
        for m in r.body.get("messages", []):
            for block in m.get("content", []) if isinstance(m.get("content"), list) else []:
                if block.get("type") == "tool_result":
                    content = block.get("content")
                    parts = content if isinstance(content, list) else [{"text": str(content)}]
                    out.append(" ".join(str(c.get("text", "")) for c in parts if isinstance(c, dict)))
    return out


async def test_a_file_uploaded_in_the_chat_reaches_the_agent_and_a_file_it_sends_is_downloaded(
    web_stack: Stack, page: Any, tmp_path: Path
) -> None:
    chat_id = await wire(web_stack, "files")
    await sign_in(page, web_stack)
    await page.goto(f"{web_url(web_stack)}/chat/{chat_id}")
    await page.wait_for_selector("body[data-stream=open]")
    words, more = f"oat milk {uuid.uuid4().hex}", f"rye bread {uuid.uuid4().hex}"
    note, second = tmp_path / "shopping list.txt", tmp_path / "bakery.txt"
    note.write_text(words + "\n")
    second.write_text(more + "\n")
    read = ToolCall("Bash", {"command": "cat /workspace/session/inbox/*/*.txt", "description": "read"})
    web_stack.fake.script(read, Text("read it"))
    await page.set_input_files("#file", [str(note), str(second)])  # two in one message, in the order chosen
    await page.fill("#text", "what is on my list?")
    await page.keyboard.press("Enter")
    sent = page.locator("li.msg.in", has_text="what is on my list?")
    await sent.locator("li.file").nth(1).wait_for(timeout=30_000)
    assert await sent.locator("li.file").all_text_contents() == ["shopping_list.txt", "bakery.txt"]  # our names
    await page.wait_for_selector("li.msg.out >> text=read it", timeout=ANSWER)
    assert any(words in r and more in r for r in tool_results(web_stack))  # the very bytes, in its inbox
    assert await page.input_value("#file") == "" and await page.input_value("#text") == ""

    write = ToolCall("Write", {"file_path": "/workspace/agent/report.txt", "content": "quarterly numbers\n"})
    web_stack.fake.script(write, ToolCall("send_file", {"path": "report.txt", "text": "here it is"}), Text("sent"))
    await page.fill("#text", "send me the report")
    await page.keyboard.press("Enter")
    link = page.locator("li.msg.out", has_text="here it is").locator("a.file")
    await link.wait_for(timeout=ANSWER)
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == "report.txt"
    assert await asyncio.to_thread(Path(await download.path()).read_text) == "quarterly numbers\n"
    href = await link.get_attribute("href")
    assert href is not None and "/workspace" not in href and "sessions" not in href  # by index, never a path

    base = web_url(web_stack)
    served = await page.request.get(base + href)
    assert served.headers["content-disposition"] == "attachment; filename=\"report.txt\"; filename*=UTF-8''report.txt"
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert (await page.request.get(base + href[:-1] + "1")).status == 404  # it sent one file
    mid = href.split("/")[-2]
    received = page.locator("li.msg.in", has_text="what is on my list?")
    mine = (await received.get_attribute("id") or "").removeprefix("m-")
    assert (await page.request.get(f"{base}/chat/{chat_id}/files/{mine}/0")).status == 404  # not the agent's
    assert (await page.request.get(f"{base}/chat/{chat_id}/files/{mid}/-1")).status == 404
    stranger = await page.context.browser.new_context()
    try:
        nobody = await stranger.new_page()
        await sign_in_as(nobody, web_stack, "web:nobody")  # signed in, with no role in main
        refused = await nobody.request.get(base + href)
        assert refused.status == 403 and b"quarterly" not in await refused.body()
        theirs = await nobody.locator("input[name=csrf]").first.get_attribute("value")  # a valid token of theirs
        sneaked = await nobody.request.post(
            f"{base}/chat/{chat_id}/upload?name=x.txt",
            data=b"hi",
            headers={"origin": base, "x-csrf-token": theirs or ""},
        )
        assert sneaked.status == 403 and "refused" in (await sneaked.json())["error"]
    finally:
        await stranger.close()
    await page.reload()  # the page as the server renders it shows the same files, linked the same way
    await page.wait_for_selector("body[data-stream=open]")
    assert await page.locator("li.msg.out a.file").get_attribute("href") == href
    assert await page.locator("li.msg.in li.file").all_text_contents() == ["shopping_list.txt", "bakery.txt"]
    await check_and_shoot(page, "chat-files", screens(tmp_path))  # axe, the keyboard, both sizes
    await page.set_viewport_size(SIZES["phone"])
    assert not await phone_misfits(page), await phone_misfits(page)


async def test_more_files_than_a_message_may_carry_are_refused_before_any_upload(
    web_stack: Stack, page: Any, tmp_path: Path
) -> None:
    chat_id = await wire(web_stack, "many-files")
    await sign_in(page, web_stack)
    await page.goto(f"{web_url(web_stack)}/chat/{chat_id}")
    await page.wait_for_selector("body[data-stream=open]")
    paths = []
    for i in range(11):
        (path := tmp_path / f"n{i}.txt").write_text(f"note {i}\n")
        paths.append(str(path))
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/upload" in r.url or "/send" in r.url else None)
    await page.set_input_files("#file", paths)
    await page.fill("#text", "eleven notes")
    await page.keyboard.press("Enter")

    await page.locator("#error", has_text="at most").wait_for(timeout=10_000)
    assert await page.locator("#error").text_content() == "a message may carry at most 10 files"
    assert uploads == [] and await page.locator("li.msg.in", has_text="eleven notes").count() == 0


PHONE_CONTROLS = ("#text", "#file", "#say button[type=submit]", "li.msg.out a.file", "li.msg.in li.file")


async def phone_misfits(page: Any) -> list[str]:
    """What does not fit a phone's width: the page scrolling sideways, a control cut off or under another."""
    width = SIZES["phone"]["width"]
    found = []
    if await page.evaluate("() => document.documentElement.scrollWidth") > width:
        found.append("the page is wider than the screen")
    boxes = {}
    for selector in PHONE_CONTROLS:
        box = await page.locator(selector).last.bounding_box()
        if box is None or box["x"] < 0 or box["x"] + box["width"] > width or box["width"] < 24:
            found.append(f"{selector} is not wholly on the screen: {box}")
        boxes[selector] = box
    form = [boxes[s] for s in PHONE_CONTROLS[:3] if boxes[s]]
    for i, a in enumerate(form):
        for b in form[i + 1 :]:
            apart = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
            if not apart and not (a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]):
                found.append(f"two of the chat's controls overlap: {a} {b}")
    return found


async def test_an_upload_of_a_kind_not_taken_too_large_or_forged_is_refused_with_a_reason(
    web_stack: Stack, page: Any
) -> None:
    chat_id = await wire(web_stack, "refusals")
    await sign_in(page, web_stack)
    await page.goto(f"{web_url(web_stack)}/chat/{chat_id}")
    await page.wait_for_selector("body[data-stream=open]")
    page_html = {"name": "page.html", "mimeType": "text/html", "buffer": b"<script>alert(1)</script>"}
    await page.set_input_files("#file", page_html)
    await page.click("#say button[type=submit]")
    alert = page.locator("#error")
    await page.wait_for_selector("#error:not(:empty)")
    assert "the web chat takes only" in (await alert.text_content() or "")
    fake_png = {"name": "cat.png", "mimeType": "image/png", "buffer": b"<svg onload=alert(1)>"}
    await page.set_input_files("#file", fake_png)
    await page.click("#say button[type=submit]")
    await page.wait_for_selector("#error >> text=/is not a image\\/png file/")
    assert not await page.locator("li.msg").count()  # nothing was sent

    base = web_url(web_stack)
    cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "clawden_session")
    csrf = await page.get_attribute("#log", "data-csrf")
    assert csrf is not None
    upload = f"/chat/{chat_id}/upload?name=big.txt"
    async with httpx.AsyncClient(base_url=base, cookies={"clawden_session": cookie}) as client:
        ours = {"origin": base, "x-csrf-token": csrf}
        big = await client.post(upload, content=b"a" * (files.MAX_UPLOAD + 1), headers=ours)
        assert big.status_code == 413 and "at most 10 MB" in big.json()["error"]
        cross = await client.post(upload, content=b"hi", headers={**ours, "origin": "https://evil.example"})
        assert cross.status_code == 403
        tokenless = await client.post(upload, content=b"hi", headers={"origin": base})
        assert tokenless.status_code == 403
        fine = await client.post(upload, content=b"hi", headers=ours)
        assert fine.status_code == 200 and fine.json()["name"] == "big.txt"
        others = await client.post(
            f"/chat/{chat_id}/send", data={"id": "x1", "text": "", "files": "f" * 32, "csrf": csrf}, headers=ours
        )
        assert others.status_code == 400 and "no upload" in others.json()["error"]
    kept = list((web_stack.home / "data" / "channels" / "web" / "files").glob("*/*"))
    assert [p.name for p in kept].count("big.txt") == 1 and not [p for p in kept if p.suffix in (".html", ".png")]
