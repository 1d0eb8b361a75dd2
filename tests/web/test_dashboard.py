"""The dashboard in a real browser (Debian's Chromium, loopback only) over a whole Clawden with real agent
containers and the fake model: a secret added whose value never comes back to the browser, a task paused, a
held vault request from the agent's container approved from the approvals page, an admin of one agent group
refused another's pages and POSTs; then every page checked by axe-core and the keyboard, and photographed."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import scheduler as scheduler_ctl
from clawden.bus.ctl import vault as vault_ctl
from clawden.chat import inbound_event
from services.router import weblink
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import FETCH
from tests.eventually import eventually
from tests.web.a11y import check_and_shoot, screens
from tests.web.conftest import OWNER, login_link, sign_in, web_url

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process, pytest.mark.asyncio(loop_scope="session")]
ANSWER = 120_000  # ms: a first message starts a container
ADMIN = "web:alice"  # an admin of `main` only
OTHER = "other"  # an agent group alice does not administer
GARDEN = "garden"  # a group whose settings, grants and rules the tests change (main runs the conversation)
SESSION: dict[str, router_ctl.Session] = {}  # the one conversation the tests share (a running container)


def cfg_of(stack: Stack) -> config_mod.Config:
    return config_mod.load(stack.home)


async def conversation(stack: Stack, page: Any) -> router_ctl.Session:
    """A web chat with `main`, spoken to once from the page, so its container runs; made once per module."""
    if "main" in SESSION:
        return SESSION["main"]
    cfg = cfg_of(stack)
    chat_id = uuid.uuid4().hex[:12]
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="web", chat_id=chat_id, name="desk", policy="public"),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="web", chat_id=chat_id, agent_group="main")
    )
    await page.goto(f"{web_url(stack)}/chat/{chat_id}")
    await page.wait_for_selector("body[data-stream=open]")
    await page.fill("#text", "good morning")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("li.msg.out >> text=/echo: .*good morning/", timeout=ANSWER)
    sessions = await control.ask(cfg, router_ctl.SESSIONS_LIST, router_ctl.GroupFilter(agent_group="main"))
    SESSION["main"] = next(s for s in sessions if s.chat_id == chat_id)
    await stack.wait_until_idle(SESSION["main"].id)
    return SESSION["main"]


@pytest_asyncio.fixture(loop_scope="session")
async def audited(web_stack: Stack) -> AsyncIterator[list[ev.AuditEvent]]:
    """Every change the web service announces (`clawden.event.web.*`), as they come."""
    nc = await web_stack.connect("test-web-audit")
    seen: list[ev.AuditEvent] = []

    async def keep(msg: Any) -> None:
        seen.append(msgspec.json.decode(msg.data, type=ev.AuditEvent))

    await nc.subscribe("clawden.event.web.>", cb=keep)
    await nc.flush()
    yield seen
    await nc.close()


async def test_a_secret_added_from_the_vault_page_is_stored_and_its_value_never_reaches_the_browser(
    web_stack: Stack, page: Any, audited: list[ev.AuditEvent]
) -> None:
    value = f"sk-web-{uuid.uuid4().hex}"
    name = f"github-{uuid.uuid4().hex[:6]}"
    bodies: list[bytes] = []

    async def capture(response: Any) -> None:
        head = json.dumps(await response.all_headers()).encode()
        try:
            bodies.append(head + await response.body())
        except Exception:  # a redirect has no body to read
            bodies.append(head)

    page.context.on("response", capture)
    await sign_in(page, web_stack)
    await page.goto(web_url(web_stack) + "/vault")
    await page.fill("#secret-name", name)
    await page.select_option("#secret-type", "generic")
    await page.fill("#secret-value", value)
    await page.fill("#secret-host", "api.github.com")
    await page.fill("#secret-header", "Authorization")
    await page.fill("#secret-format", "Bearer {value}")
    await page.check("#add-secret input[name=agents][value=main]")
    await page.click("#add-secret button[type=submit]")
    await page.wait_for_selector(f"p[role=status] >> text=stored secret {name}")
    assert await page.locator(f"#s-{name}").is_visible()
    # Stored as asked, where the CLI would see it (never its value: the vault does not say it).
    listed = (await control.ask(cfg_of(web_stack), vault_ctl.SECRETS_LIST, Nothing())).secrets
    stored = next(s for s in listed if s.name == name)
    assert (stored.host_pattern, stored.header_name, stored.grants) == ("api.github.com", "Authorization", ["main"])
    # The same name again: the vault's own refusal, word for word as `clawden secrets add` prints it.
    again = vault_ctl.AddSecret(
        name=name, type="generic", value="x", host="api.github.com", header="A", agents=["main"]
    )
    with pytest.raises(control.ControlError) as refused:
        await control.ask(cfg_of(web_stack), vault_ctl.SECRETS_ADD, again)
    await page.fill("#secret-name", name)
    await page.fill("#secret-value", value)
    await page.fill("#secret-host", "api.github.com")
    await page.fill("#secret-header", "A")
    await page.check("#add-secret input[name=agents][value=main]")
    await page.click("#add-secret button[type=submit]")
    alert = page.locator("p[role=alert].error")
    await alert.wait_for()
    assert await alert.text_content() == str(refused.value)
    await page.goto(web_url(web_stack) + "/vault/audit?since=3600")
    await eventually(lambda: any(a.kind == "secret_added" for a in audited), 30, "no audit event for the secret")
    event = next(a for a in audited if a.kind == "secret_added")
    assert event.fields == {"user": OWNER, "secret": name} and value not in event.summary
    assert len(bodies) >= 8 and not [b for b in bodies if value.encode() in b]


async def test_a_secret_with_no_group_ticked_is_refused_while_there_are_several_groups(
    web_stack: Stack, page: Any
) -> None:
    """Least privilege (`clawden.grants`): a token reaches the groups the owner ticked, never every group unasked."""
    await a_group(web_stack, GARDEN)
    name = f"mail-{uuid.uuid4().hex[:6]}"
    await sign_in(page, web_stack)
    await page.goto(web_url(web_stack) + "/vault")
    await page.fill("#secret-name", name)
    await page.select_option("#secret-type", "generic")
    await page.fill("#secret-value", "v")
    await page.fill("#secret-host", "mail.example")
    await page.fill("#secret-header", "Authorization")
    await page.click("#add-secret button[type=submit]")
    alert = page.locator("p[role=alert].error")
    await alert.wait_for()
    said = await alert.text_content() or ""
    assert said.startswith("tick the agent groups that may use it") and GARDEN in said and "main" in said
    listed = (await control.ask(cfg_of(web_stack), vault_ctl.SECRETS_LIST, Nothing())).secrets
    assert name not in [s.name for s in listed]


async def test_a_task_is_paused_from_the_tasks_page_and_its_runs_are_shown(
    web_stack: Stack, page: Any, audited: list[ev.AuditEvent]
) -> None:
    await sign_in(page, web_stack)
    session = await conversation(web_stack, page)
    add = scheduler_ctl.AddRequest(
        agent_group="main",
        session_id=session.id,
        runner=session.runner,
        route=ev.Route(channel=session.channel, chat_id=session.chat_id),
        prompt="water the plants",
        schedule="0 8 * * 1",
    )
    task = await control.ask(cfg_of(web_stack), scheduler_ctl.ADD, add)
    await page.goto(web_url(web_stack) + "/tasks")
    row = page.locator(f"#t-{task.id}")
    assert await row.locator("td.status").text_content() == "active"
    await row.get_by_role("button", name=f"Pause {task.id}").click()
    await page.wait_for_selector(f"p[role=status] >> text=task {task.id} is paused")
    assert await page.locator(f"#t-{task.id} td.status").text_content() == "paused"
    assert (
        await control.ask(cfg_of(web_stack), scheduler_ctl.GET, scheduler_ctl.TaskRef(task_id=task.id))
    ).status == "paused"
    await page.get_by_role("link", name=task.id).click()
    await page.wait_for_selector("h2 >> text=Runs")
    assert await page.get_by_role("button", name=f"Resume {task.id}").is_visible()
    await eventually(lambda: any(a.kind == "task_pause" for a in audited), 30, "no audit event for the pause")
    assert next(a for a in audited if a.kind == "task_pause").fields["user"] == OWNER


def fetch_from_container(stack: Stack, url: str) -> tuple[int, str]:
    box = stack.containers()[0]  # every container here is `main`'s
    result = box.exec_run(["python", "-c", FETCH, url], user="1000")
    status, body = json.loads(result.output.decode().strip().splitlines()[-1])
    return int(status), str(body)


async def test_a_held_request_from_the_agents_container_goes_through_once_approved_on_the_approvals_page(
    web_stack: Stack, page: Any
) -> None:
    await sign_in(page, web_stack)
    await conversation(web_stack, page)
    rule = vault_ctl.AddRule(
        name=f"ask-{uuid.uuid4().hex[:6]}", action="manual_approval", host="api.anthropic.com", path="/v1/pay/*"
    )
    await control.ask(cfg_of(web_stack), vault_ctl.RULES_ADD, rule)
    call = asyncio.create_task(
        asyncio.to_thread(fetch_from_container, web_stack, "https://api.anthropic.com/v1/pay/web")
    )

    async def listed() -> bool:  # the vault holds it and asks; the approvals service lists it
        await page.goto(web_url(web_stack) + "/approvals")
        return bool(await page.locator("li.approval", has_text="/v1/pay/web").count())

    await eventually(listed, 60, "the held request never showed on the approvals page")
    assert not call.done()  # held while nobody has decided
    item = page.locator("li.approval", has_text="/v1/pay/web")
    await item.get_by_role("button", name=re.compile("Approve|Allow", re.I)).first.click()
    await page.wait_for_selector(f"text=/is approved by {OWNER}/")
    status, _ = await asyncio.wait_for(call, 60)
    assert status == 404  # it reached the fake site, which has no such path
    assert any(r.path == "/v1/pay/web" for r in web_stack.fake.requests)


async def hold_approval(stack: Stack, group: str) -> str:
    """A pending approval of `group`, once the approvals service lists it."""
    rid = f"web{uuid.uuid4().hex[:8]}"
    nc = await stack.connect("test-hold")
    try:
        request = ev.ApprovalRequest(
            id=rid,
            kind="credential",
            requester="vault",
            agent_group=group,
            card=ev.Card(
                title="POST api.example.org/v1/charge",
                body="spend money",
                buttons=(ev.Button(id="approve", label="Approve"),),
            ),
            expires_at=time.time() + 600,
        )
        await publish(nc.jetstream(), subjects.APPROVAL_REQUEST, request, msg_id=f"approval:{rid}")
    finally:
        await nc.close()
    cfg = cfg_of(stack)

    async def listed() -> bool:
        rows = await control.ask(cfg, approvals_ctl.LIST, approvals_ctl.ListRequest(status="pending"))
        return any(r.id == rid for r in rows)

    await eventually(listed, 60, f"{rid} never reached the approvals service")
    return rid


async def test_an_admin_of_one_group_neither_sees_nor_changes_another(web_stack: Stack, page: Any) -> None:
    cfg = cfg_of(web_stack)
    groups = {g.name for g in await control.ask(cfg, router_ctl.GROUPS_LIST, router_ctl.ListAll())}
    if OTHER not in groups:
        await control.ask(cfg, router_ctl.GROUPS_CREATE, router_ctl.GroupCreate(name=OTHER))
    await control.ask(
        cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=ADMIN, role="admin", agent_group="main")
    )
    held = await hold_approval(web_stack, OTHER)  # a request of the other group, waiting for a decision
    await sign_in(page, web_stack, ADMIN)
    base = web_url(web_stack)
    await page.goto(base + "/approvals")
    assert not await page.locator(f"#a-{held}").count()
    await page.goto(base + "/agents")
    assert await page.get_by_role("link", name="main").is_visible()
    assert not await page.get_by_role("link", name=OTHER).count()
    for path in (f"/agents/{OTHER}", "/status", "/logs"):
        response = await page.goto(base + path)
        assert response is not None and response.status == 403, path
        assert "refused" in (await page.text_content("main") or "")
    cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "clawden_session")
    async with httpx.AsyncClient(
        base_url=base, cookies={"clawden_session": cookie}, headers={"origin": base}
    ) as client:
        own = await client.get("/agents/main")
        assert own.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', own.text)
        assert csrf is not None
        posts = {
            f"/agents/{OTHER}/members": {"user": "telegram:999"},
            f"/agents/{OTHER}/settings": {"model": "stolen"},
            f"/vault/egress/{OTHER}": {"mode": "open"},
            f"/approvals/{held}": {"choice": "approve"},
            "/vault/rules": {"name": "sneaky", "action": "allow", "host": "*", "agent": OTHER},
            "/vault/secrets": {
                "name": "sneaky",
                "type": "generic",
                "value": "v",
                "host": "x",
                "header": "A",
                "agents": OTHER,
            },
            "/chats": {"name": "sneaky", "group": OTHER},
        }
        for path, form in posts.items():
            refused = await client.post(path, data={**form, "csrf": csrf.group(1)})
            assert refused.status_code == 403 and "refused" in refused.text, (path, refused.status_code)
        mine = await client.post("/agents/main/members", data={"user": "telegram:42", "csrf": csrf.group(1)})
        assert mine.status_code == 303  # the same form for the group alice administers goes through
    shown = await control.ask(cfg, approvals_ctl.SHOW, approvals_ctl.ShowRequest(id=held))
    assert shown.status == "pending"
    members = await control.ask(cfg, router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group=OTHER))
    assert not members
    detail = await control.ask(cfg, router_ctl.GROUPS_GET, router_ctl.GroupGet(name=OTHER))
    assert detail.model != "stolen"
    rules = (await control.ask(cfg, vault_ctl.RULES_LIST, Nothing())).rules
    assert not [r for r in rules if r.name == "sneaky"]
    assert "telegram:42" in [
        m.user_id for m in await control.ask(cfg, router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group="main"))
    ]
    await page.goto(base + "/agents/main")  # and from the page, by the button
    await page.get_by_role("button", name="Remove telegram:42").click()
    await page.wait_for_selector("p[role=status] >> text=telegram:42 is no member of main")
    left = await control.ask(cfg, router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group="main"))
    assert "telegram:42" not in [m.user_id for m in left]
    stranger = await page.context.browser.new_context()  # signed in, with no role at all
    try:
        nobody = await stranger.new_page()
        await sign_in(nobody, web_stack, "web:nobody")
        for path in ("/vault", "/agents", "/tasks", "/approvals"):
            response = await nobody.goto(base + path)
            assert response is not None and response.status == 403, path
        assert "web:nobody is neither an owner nor an admin" in (await nobody.text_content("main") or "")
    finally:
        await stranger.close()


async def test_an_admin_of_one_group_replaces_only_a_secret_wholly_theirs_and_learns_nothing_of_anothers(
    web_stack: Stack, page: Any
) -> None:
    """Replacing a secret destroys what it was, for every group granted it: it takes the rights removing it does."""
    cfg = cfg_of(web_stack)
    await a_group(web_stack, OTHER)
    await control.ask(
        cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=ADMIN, role="admin", agent_group="main")
    )
    theirs, mine, nowhere = (f"{what}-{uuid.uuid4().hex[:6]}" for what in ("theirs", "mine", "nowhere"))
    for name, group in ((theirs, OTHER), (mine, "main")):
        stored = vault_ctl.AddSecret(
            name=name, type="generic", value="v", host=f"{name}.example", header="A", agents=[group]
        )
        await control.ask(cfg, vault_ctl.SECRETS_ADD, stored)

    async def listed() -> dict[str, vault_ctl.SecretInfo]:
        return {s.name: s for s in (await control.ask(cfg, vault_ctl.SECRETS_LIST, Nothing())).secrets}

    before = await listed()
    await sign_in(page, web_stack, ADMIN)
    base = web_url(web_stack)
    cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == "clawden_session")
    async with httpx.AsyncClient(
        base_url=base, cookies={"clawden_session": cookie}, headers={"origin": base}
    ) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', (await client.get("/vault")).text)
        assert csrf is not None

        async def replace(name: str, kind: str = "generic") -> httpx.Response:
            form = {"name": name, "type": kind, "value": "junk", "host": "junk.example", "header": "A"}
            return await client.post("/vault/secrets", data={**form, "replace": "1", "csrf": csrf.group(1)})

        everyones = await replace("anthropic", "anthropic")  # the install's model key, granted to every group
        assert everyones.status_code == 403 and "refused: secret anthropic is for *" in everyones.text
        hidden, unknown = await replace(theirs), await replace(nowhere)
        own = await replace(mine)
    # A secret of another group is answered as one that does not exist, word for word as a remove is.
    assert [r.headers["location"] for r in (hidden, unknown)] == [
        f"/vault?error=no+secret+named+{theirs}",
        f"/vault?error=no+secret+named+{nowhere}",
    ]
    assert own.status_code == 303 and f"note=replaced+secret+{mine}" in own.headers["location"]
    after = await listed()
    assert after["anthropic"] == before["anthropic"] and after["anthropic"].grants == ["*"]
    assert after[theirs] == before[theirs] and nowhere not in after
    assert (after[mine].host_pattern, after[mine].grants) == ("junk.example", ["main"])


async def test_web_from_a_direct_chat_gives_its_owner_a_link_that_signs_in_once_and_never_in_a_group(
    web_stack: Stack, page: Any
) -> None:
    owner = f"local:{getpass.getuser()}"  # who ran the router first owns the install
    async with Terminal(web_stack, "web-dm") as dm:
        reply = await dm.ask("/web", timeout=60)
    found = re.search(r"http://\S+/login/\S+", reply.text)
    assert found is not None and owner in reply.text, reply.text
    await page.goto(found.group(0))
    async with page.expect_navigation(url=re.compile(r".*/chats$")):
        await page.click("#sign-in")
    assert await page.get_by_role("button", name=f"Sign out {owner}").is_visible()
    response = await page.goto(web_url(web_stack) + "/agents")
    assert response is not None and response.status == 200  # the owner's whole dashboard
    again = await page.context.browser.new_page()
    try:
        assert (await again.goto(found.group(0))).status == 410  # the link worked once
    finally:
        await again.close()
    async with Terminal(web_stack, "web-room") as room:
        asked = msgspec.structs.replace(inbound_event("web-room", getpass.getuser(), "/web"), is_group=True)
        assert room.js is not None
        await publish(room.js, subjects.inbound("local"), asked, msg_id=asked.key)
        refused = await room.reply(timeout=60)
    assert refused.text == weblink.IN_GROUP and "/login/" not in refused.text


async def a_group(stack: Stack, name: str) -> None:
    cfg = cfg_of(stack)
    if name not in {g.name for g in await control.ask(cfg, router_ctl.GROUPS_LIST, router_ctl.ListAll())}:
        await control.ask(cfg, router_ctl.GROUPS_CREATE, router_ctl.GroupCreate(name=name))


async def test_a_groups_settings_are_changed_from_the_agents_page_and_a_bad_value_gets_the_clis_message(
    web_stack: Stack, page: Any, audited: list[ev.AuditEvent]
) -> None:
    await a_group(web_stack, GARDEN)
    await sign_in(page, web_stack)
    await page.goto(web_url(web_stack) + "/agents")
    await page.get_by_role("link", name=GARDEN).click()
    await page.wait_for_selector(f"h1 >> text=Agent group {GARDEN}")
    await page.fill("#assistant_name", "Sage")
    await page.fill("#memory", "512m")
    await page.fill("#cpus", "1.5")
    await page.fill("#idle_timeout", "600")
    await page.click("#settings button[type=submit]")
    await page.wait_for_selector(f"p[role=status] >> text=saved the settings of {GARDEN}")
    detail = await control.ask(cfg_of(web_stack), router_ctl.GROUPS_GET, router_ctl.GroupGet(name=GARDEN))
    assert (detail.assistant_name, detail.container.memory, detail.container.cpus) == ("Sage", "512m", 1.5)
    assert detail.container.idle_timeout == 600
    assert await page.input_value("#cpus") == "1.5"  # the page shows what is stored
    # Too little memory: the router's refusal, word for word as `clawden groups update --memory 32m` prints it.
    bad = router_ctl.GroupUpdate(
        name=GARDEN,
        assistant_name="Sage",
        model=detail.model,
        container=router_ctl.ContainerSettings(memory="32m", cpus=1.5, idle_timeout=600),
    )
    with pytest.raises(control.ControlError) as refused:
        await control.ask(cfg_of(web_stack), router_ctl.GROUPS_UPDATE, bad)
    await page.fill("#memory", "32m")
    await page.click("#settings button[type=submit]")
    alert = page.locator("p[role=alert].error")
    await alert.wait_for()
    assert await alert.text_content() == str(refused.value)
    kept = await control.ask(cfg_of(web_stack), router_ctl.GROUPS_GET, router_ctl.GroupGet(name=GARDEN))
    assert kept.container.memory == "512m"  # nothing changed
    # A CPU count out of range: the router judges it, so the words are the CLI's (not a check of the web's own).
    with pytest.raises(control.ControlError) as negative:
        await control.ask(
            cfg_of(web_stack),
            router_ctl.GROUPS_UPDATE,
            msgspec.structs.replace(
                bad, container=router_ctl.ContainerSettings(memory="512m", cpus=-1, idle_timeout=600)
            ),
        )
    await page.fill("#memory", "512m")
    await page.fill("#cpus", "-1")
    await page.click("#settings button[type=submit]")
    await page.wait_for_selector(f"p[role=alert].error >> text={negative.value}")
    assert (
        await control.ask(cfg_of(web_stack), router_ctl.GROUPS_GET, router_ctl.GroupGet(name=GARDEN))
    ).container.cpus == 1.5
    await page.fill("#cpus", "many")
    await page.click("#settings button[type=submit]")
    await page.wait_for_selector("p[role=alert].error >> text=cpus: 'many' is not a number")
    await eventually(lambda: any(a.kind == "group_updated" for a in audited), 30, "no audit event for the settings")
    assert next(a for a in audited if a.kind == "group_updated").fields == {"user": OWNER, "agent_group": GARDEN}


async def test_a_paused_task_is_resumed_and_then_cancelled_from_the_tasks_page(
    web_stack: Stack, page: Any, audited: list[ev.AuditEvent]
) -> None:
    await sign_in(page, web_stack)
    session = await conversation(web_stack, page)
    cfg = cfg_of(web_stack)
    add = scheduler_ctl.AddRequest(
        agent_group="main",
        session_id=session.id,
        runner=session.runner,
        route=ev.Route(channel=session.channel, chat_id=session.chat_id),
        prompt="take the bins out",
        schedule="0 7 * * 2",
    )
    task = await control.ask(cfg, scheduler_ctl.ADD, add)
    await control.ask(cfg, scheduler_ctl.PAUSE, scheduler_ctl.TaskRef(task_id=task.id))
    await page.goto(web_url(web_stack) + "/tasks")
    row = page.locator(f"#t-{task.id}")
    assert await row.locator("td.status").text_content() == "paused"
    await row.get_by_role("button", name=f"Resume {task.id}").click()
    await page.wait_for_selector(f"p[role=status] >> text=task {task.id} is active")
    assert await row.locator("td.status").text_content() == "active"
    resumed = await control.ask(cfg, scheduler_ctl.GET, scheduler_ctl.TaskRef(task_id=task.id))
    assert resumed.status == "active" and resumed.next_run_local
    await row.get_by_role("button", name=f"Cancel {task.id}").click()
    await page.wait_for_selector(f"p[role=status] >> text=task {task.id} is cancelled")
    gone = await control.ask(cfg, scheduler_ctl.GET, scheduler_ctl.TaskRef(task_id=task.id))
    assert gone.status == "cancelled"
    assert not await page.get_by_role("button", name=re.compile(f"(Pause|Resume|Cancel) {task.id}")).count()
    # A cancelled task cannot be resumed: the scheduler's refusal is shown, and nothing changes.
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    response = await page.request.post(
        f"{web_url(web_stack)}/tasks/{task.id}/resume",
        form={"csrf": csrf or ""},
        headers={"origin": web_url(web_stack)},
    )
    assert response.ok and "error=" in response.url
    assert (await control.ask(cfg, scheduler_ctl.GET, scheduler_ctl.TaskRef(task_id=task.id))).status == "cancelled"

    def audited_both() -> bool:
        kinds = {a.kind for a in audited if a.fields.get("task_id") == task.id}
        return {"task_resume", "task_cancel"} <= kinds

    await eventually(audited_both, 30, "no audit events for the resume and the cancel")


async def test_a_secret_is_granted_revoked_and_removed_a_rule_added_and_removed_and_egress_set_on_the_vault_page(
    web_stack: Stack, page: Any, audited: list[ev.AuditEvent]
) -> None:
    await a_group(web_stack, GARDEN)
    cfg = cfg_of(web_stack)
    name, rule = f"plants-{uuid.uuid4().hex[:6]}", f"no-ads-{uuid.uuid4().hex[:6]}"
    secret = vault_ctl.AddSecret(
        name=name,
        type="generic",
        value="v-" + uuid.uuid4().hex,
        host="api.plants.example",
        header="X-Key",
        agents=["main"],
    )
    await control.ask(cfg, vault_ctl.SECRETS_ADD, secret)

    async def grants() -> list[str]:
        listed = (await control.ask(cfg, vault_ctl.SECRETS_LIST, Nothing())).secrets
        return next((s.grants for s in listed if s.name == name), ["(gone)"])

    await sign_in(page, web_stack)
    await page.goto(web_url(web_stack) + "/vault")
    await page.select_option("#grant-name", name)
    await page.select_option("#grant-agent", GARDEN)
    await page.click("#grant button[type=submit]")
    await page.wait_for_selector(f"p[role=status] >> text={name} is granted to: {GARDEN}, main")
    assert sorted(await grants()) == [GARDEN, "main"]
    await page.select_option("#grant-name", name)
    await page.select_option("#grant-agent", "main")
    await page.check("#grant-revoke")
    await page.click("#grant button[type=submit]")
    await page.wait_for_selector(f"p[role=status] >> text={name} is granted to: {GARDEN}")
    assert await grants() == [GARDEN]
    await page.get_by_role("button", name=f"Remove {name}").click()
    await page.wait_for_selector(f"p[role=status] >> text=removed {name}")
    assert await grants() == ["(gone)"] and not await page.locator(f"#s-{name}").count()

    await page.fill("#rule-name", rule)
    await page.select_option("#rule-action", "block")
    await page.fill("#rule-host", "ads.example")
    await page.fill("#rule-method", "POST")
    await page.select_option("#rule-agent", GARDEN)
    await page.click("#add-rule button[type=submit]")
    await page.wait_for_selector(f"p[role=status] >> text=added rule {rule}: block ads.example* for {GARDEN}")
    rules = {r.name: r for r in (await control.ask(cfg, vault_ctl.RULES_LIST, Nothing())).rules}
    assert (rules[rule].action, rules[rule].method, rules[rule].agent_group) == ("block", "POST", GARDEN)
    await page.get_by_role("button", name=f"Remove {rule}").click()
    await page.wait_for_selector(f"p[role=status] >> text=removed rule {rule}")
    assert rule not in {r.name for r in (await control.ask(cfg, vault_ctl.RULES_LIST, Nothing())).rules}

    await page.select_option(f"#egress-{GARDEN}", "allowlist")
    await page.get_by_role("button", name=f"Set egress of {GARDEN}").click()
    await page.wait_for_selector(f"p[role=status] >> text={GARDEN}: egress allowlist")
    mode = await control.ask(cfg, vault_ctl.EGRESS, vault_ctl.EgressRequest(agent_group=GARDEN))
    assert mode.egress == "allowlist" and await page.input_value(f"#egress-{GARDEN}") == "allowlist"

    def audited_all() -> bool:
        kinds = {a.kind for a in audited if name in a.summary or rule in a.summary or GARDEN in a.summary}
        return {"secret_granted", "secret_removed", "rule_added", "rule_removed", "egress_set"} <= kinds

    await eventually(audited_all, 30, "the vault page's changes were not all audited")


async def test_the_live_log_tail_shows_a_line_as_the_service_writes_it(web_stack: Stack, page: Any) -> None:
    await sign_in(page, web_stack)
    await page.goto(web_url(web_stack) + "/logs")
    await page.get_by_role("link", name="web", exact=True).click()
    await page.wait_for_selector("body[data-stream=open]")
    await page.wait_for_selector("#tail:not(:empty)")
    someone = f"web:tail{uuid.uuid4().hex[:8]}"
    assert someone not in (await page.text_content("#tail") or "")
    await login_link(web_stack, someone)  # the web service logs each link it makes, and whom for
    await page.wait_for_selector(f"#tail >> text=/a sign-in link was made for {someone}/", timeout=30_000)


async def test_every_page_passes_axe_and_the_keyboard_and_is_photographed(
    web_stack: Stack, page: Any, tmp_path: Path
) -> None:
    into = screens(tmp_path)
    await page.goto(await login_link(web_stack))
    await check_and_shoot(page, "sign-in", into)
    async with page.expect_navigation(url=re.compile(r".*/chats$")):
        await page.click("#sign-in")
    session = await conversation(web_stack, page)
    tasks = await control.ask(cfg_of(web_stack), scheduler_ctl.TASKS, scheduler_ctl.ListRequest())
    base = web_url(web_stack)
    pages = {
        "chats": "/chats",
        "chat": f"/chat/{session.chat_id}",
        "status": "/status",
        "approvals": "/approvals",
        "vault": "/vault",
        "vault-audit": "/vault/audit",
        "agents": "/agents",
        "agent-group": "/agents/main",
        "tasks": "/tasks",
        "logs": "/logs",
        "log": "/logs/router",
    }
    if tasks:
        pages["task"] = f"/tasks/{tasks[0].id}"
    for name, path in pages.items():
        response = await page.goto(base + path, wait_until="domcontentloaded")
        assert response is not None and response.status == 200, (name, response and response.status)
        if name == "log":
            await page.wait_for_selector("#tail:not(:empty)")  # a string to evaluate would break the page's CSP
        if name == "status":
            await page.click("#live")  # paused, so it does not reload while it is checked
        await check_and_shoot(page, name, into)
    assert len(list(into.glob("*.png"))) >= 2 * (len(pages) + 1)
