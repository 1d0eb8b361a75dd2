"""A held request whose wait ends without a decision is withdrawn, so its card never says "Approved" with nobody
waiting: `clawden run vault` and `clawden run approvals` on a real NATS, the owner's terminal showing the cards and
pressing their buttons (the router's part, who may approve, answered by the test)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import agentcontainer, control, setup
from clawden import config as config_mod
from clawden.bus import ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import vault as vault_ctl
from services.vault import approvals as vault_approvals
from services.vault.approvals import BusApprover
from services.vault.catalog import Catalog, Rule
from services.vault.gateway import Gateway
from services.vault.service import StoredAsks
from services.vault.store import Store as VaultStore
from tests.approvals.test_service import OWNER, Alone, Router, alone  # noqa: F401 (a fixture)
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS, make_tls
from tests.vault.sites import FakeUpstream, load_relay
from tests.vault.test_service import GITHUB, Vault, agent_client, short_home, spawn_vault  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(90)
relay = load_relay()


@pytest.fixture
def approval_timeout() -> float:
    return 60.0


async def answering(v: Vault) -> None:
    """Until the vault answers on the bus (started, or started again)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await v.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="main"))
            return
        except control.ControlError:
            assert v.proc.poll() is None and time.monotonic() < deadline, v.logs()
            await asyncio.sleep(0.2)


@pytest.fixture
async def vault(nats_server: NatsServer, short_home: Any, approval_timeout: float) -> AsyncIterator[Vault]:  # noqa: F811
    """The vault with a rule that asks before paying, on the bus the approvals service reads."""
    tls = make_tls(["api.example.test"], str(short_home))
    site = await FakeUpstream().start(tls.server_context)
    home = short_home / "home"
    cfg = setup.init(home)
    cfg.path("config.toml").write_text(f"""\
install_id = "vw"
[nats]
url = "{nats_server.url}"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"api.example.test" = "{site.address}"}}
approval_timeout = {approval_timeout}
""")
    v = Vault(
        home,
        config_mod.load(home),
        spawn_vault(vault_env(home), short_home / "vault.log"),
        short_home / "vault.log",
        site,
    )
    try:
        await answering(v)
        await v.ask(
            vault_ctl.SECRETS_ADD,
            vault_ctl.AddSecret(
                name="bank", type="generic", value=GITHUB, host="api.example.test", header="Authorization"
            ),
        )
        await v.ask(
            vault_ctl.RULES_ADD,
            vault_ctl.AddRule(
                name="ask-pay", action="manual_approval", host="api.example.test", path="/pay/*", method="POST"
            ),
        )
        yield v
    finally:
        if v.proc.poll() is None:
            v.proc.send_signal(signal.SIGCONT)  # a test may leave it stopped
            v.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(v.proc.wait, 20)
        await site.close()


def vault_env(home: Any) -> dict[str, str]:
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    return env


@pytest.fixture
async def asking(alone: Alone, vault: Vault) -> AsyncIterator[Alone]:  # noqa: F811
    """The approvals service, told by the router (the test) that the owner approves for group main."""
    await Router(alone.nc).come()
    yield alone


async def held(side: Alone, vault: Vault, path: str) -> tuple[asyncio.Task[httpx.Response], ev.OutboundMessage]:
    """An agent's POST to `path`, held by the rule, and the card the owner sees for it."""
    client, relay = await agent_client(vault)
    client.timeout = httpx.Timeout(60)

    async def call() -> httpx.Response:
        try:
            async with client:
                return await client.post(f"https://api.example.test{path}", content=b'{"amount": 12}')
        finally:
            relay.close()

    task = asyncio.create_task(call())
    card: ev.OutboundMessage = await side.owner.first(ev.OutboundMessage, text=path)
    assert not task.done()
    return task, card


async def final_edit(side: Alone, card: ev.OutboundMessage) -> ev.OutboundEdit:
    edit: ev.OutboundEdit = await side.owner.first(
        ev.OutboundEdit, timeout=30, target_message_id=side.owner.ids[card.id]
    )
    return edit


async def a_late_press_settles_nothing(side: Alone, card: ev.OutboundMessage) -> None:
    await side.forward(side.owner.action(card, "approve"))
    reply = await side.owner.first(ev.OutboundMessage, text="already settled")
    assert "withdrawn" in reply.text and "nothing was let through" in reply.text, reply.text
    edits = [e.text for e in side.owner.seen if isinstance(e, ev.OutboundEdit)]
    assert not any("Approved" in text for text in edits), edits


async def test_an_agent_that_hangs_up_withdraws_its_card(asking: Alone, vault: Vault) -> None:
    call, card = await held(asking, vault, "/pay/hangup")
    call.cancel()  # the agent gives up: its connection closes while a human is asked
    await asyncio.gather(call, return_exceptions=True)

    edit = await final_edit(asking, card)
    assert (
        "Withdrawn: the agent hung up while it waited" in edit.text
        and edit.card is not None
        and edit.card.buttons == ()
    ), edit.text
    await a_late_press_settles_nothing(asking, card)
    assert not any(r.target == b"/pay/hangup" for r in vault.site.received)


async def test_a_vault_restarted_while_a_request_waited_withdraws_it_at_start(asking: Alone, vault: Vault) -> None:
    call, card = await held(asking, vault, "/pay/restart")
    vault.proc.send_signal(signal.SIGKILL)  # its waiters go with its memory; nothing is said on the way out
    await asyncio.to_thread(vault.proc.wait, 20)
    await asyncio.gather(call, return_exceptions=True)
    assert "Withdrawn" not in str(asking.owner.seen)

    vault.proc = spawn_vault(vault.env(), vault.log)
    await answering(vault)
    edit = await final_edit(asking, card)
    assert "Withdrawn: the vault restarted while it waited" in edit.text, edit.text
    await a_late_press_settles_nothing(asking, card)
    assert not any(r.target == b"/pay/restart" for r in vault.site.received)


async def test_a_press_while_the_vault_is_down_is_shown_as_not_let_through_once_it_withdraws_at_start(
    asking: Alone, vault: Vault
) -> None:
    """The owner approves while the vault is down: the approvals service applies it, but nobody is there to let the
    request through. At its start the vault withdraws the ask; the card keeps who approved and says so."""
    call, card = await held(asking, vault, "/pay/down")
    vault.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(vault.proc.wait, 20)
    await asyncio.gather(call, return_exceptions=True)
    await asking.forward(asking.owner.action(card, "approve"))
    edit = await final_edit(asking, card)
    assert f"Approved by {OWNER}" in edit.text, edit.text

    vault.proc = spawn_vault(vault.env(), vault.log)
    await answering(vault)
    amended: ev.OutboundEdit = await asking.owner.first(
        ev.OutboundEdit, timeout=30, target_message_id=asking.owner.ids[card.id], text="nothing was let through"
    )
    assert f"Approved by {OWNER}" in amended.text and "the vault restarted while it waited" in amended.text, amended
    assert not any(r.target == b"/pay/down" for r in vault.site.received)


@pytest.mark.parametrize("approval_timeout", [4.0])
async def test_an_ask_the_vault_stops_waiting_on_is_withdrawn_and_the_agent_told_it_timed_out(
    asking: Alone, vault: Vault
) -> None:
    call, card = await held(asking, vault, "/pay/late")
    answer = await call  # nobody presses
    assert answer.status_code == 403 and "timed out" in answer.json()["message"], answer.text

    edit = await final_edit(asking, card)
    assert "Withdrawn: nobody answered before the vault stopped waiting" in edit.text, edit.text
    await a_late_press_settles_nothing(asking, card)
    assert not any(r.target == b"/pay/late" for r in vault.site.received)


@pytest.mark.parametrize("approval_timeout", [4.0])
async def test_a_press_applied_as_the_vault_stops_waiting_lets_the_request_through(asking: Alone, vault: Vault) -> None:
    """The owner approves in the last moment: the approvals service applies it, but the vault hears it only after
    its own wait ended (it is stopped meanwhile, SIGSTOP). Its withdrawal then changes nothing, and the decision
    that went out, approved, is the agent's answer, as the card says."""
    asked_at: list[float] = []
    asked_id: list[str] = []

    async def on_request(msg: Msg) -> None:
        if isinstance(request := ev.decode(msg.data), ev.ApprovalRequest):
            asked_at.append(time.time())
            asked_id.append(request.id)

    await asking.nc.subscribe(subjects.APPROVAL_REQUEST, cb=on_request)
    call, card = await held(asking, vault, "/pay/last-moment")
    vault.proc.send_signal(signal.SIGSTOP)
    await asking.forward(asking.owner.action(card, "approve"))
    edit = await final_edit(asking, card)
    assert f"Approved by {OWNER}" in edit.text, edit.text

    def the_vaults_wait_is_over() -> bool:  # approval_timeout from its ask, which came before the request
        return time.time() > asked_at[0] + 4.0 + 0.5

    await eventually(the_vaults_wait_is_over, 30)
    vault.proc.send_signal(signal.SIGCONT)  # its timer and the decision arrive together

    answer = await call
    assert answer.status_code == 200, answer.text
    assert any(r.target == b"/pay/last-moment" for r in vault.site.received)
    if f"approval {asked_id[0]} withdrawn:" in vault.logs():  # its timer came first: the withdrawal was a last call
        counts = await eventually(lambda: counted(asking, "withdraw_ignored"), 30)
        assert "withdrawn_after" not in counts, counts  # the card is not told that nothing was let through
    edits = [e.text for e in asking.owner.seen if isinstance(e, ev.OutboundEdit)]
    assert not any("Withdrawn" in text or "nothing was let through" in text for text in edits), edits


class SlowToClose(StoredAsks):
    """The vault's record of open asks, whose closing commit (synced to disk) is held up until the test lets it go: a
    slow disk, or a machine too busy to run it."""

    def __init__(self, store: VaultStore) -> None:
        super().__init__(store)
        self.closing = asyncio.Event()
        self.may_close = asyncio.Event()

    async def closed(self, approval_id: str) -> None:
        self.closing.set()
        await self.may_close.wait()
        await super().closed(approval_id)


async def test_a_press_applied_as_the_final_word_lets_the_request_through_however_long_the_ask_takes_to_close(
    nc: Client, site: FakeUpstream, site_tls: FakeTLS, sock_dir: Path, tmp_path: Path
) -> None:
    """The vault's own wait ends and its last call goes out; the approvals service's final word is that the owner
    approved. The vault then closes the ask, and that takes longer than the wait, the final word and a second
    together (a slow disk, a starved machine). The approval still stands: the gateway waits for the approver's own
    answer, whose every step has its own bound, with no timer of its own that could turn it into a time-out."""
    js = nc.jetstream()
    await ensure_streams(js)
    said = await js.subscribe(subjects.APPROVAL_REQUEST)
    store = await VaultStore.start(tmp_path / "vault.db")
    asks = SlowToClose(store)
    rules = (Rule(name="ask-pay", action="manual_approval", host_pattern="api.example.test", path_pattern="/pay/*"),)
    gateway = Gateway(
        catalog=Catalog(rules=rules),
        extra_ca_file=site_tls.ca_file,
        host_map={"api.example.test": site.address},
        approver=BusApprover(nc, js, asks),
        approval_timeout=0.3,
    )
    socket = sock_dir / "main" / "gateway.sock"
    await gateway.listen("main", socket, agentcontainer.container_user()[1])
    relayed = await relay.serve_relay(str(socket))
    client = httpx.AsyncClient(
        proxy=f"http://127.0.0.1:{relayed.sockets[0].getsockname()[1]}",
        verify=ssl.create_default_context(cadata=gateway.ca.cert_pem.decode()),
        trust_env=False,
        timeout=60,
    )
    try:
        call = asyncio.create_task(client.post("https://api.example.test/pay/slow-close", content=b"{}"))
        request = ev.decode((await said.next_msg(timeout=10)).data)
        last_call = ev.decode((await said.next_msg(timeout=10)).data)
        assert isinstance(request, ev.ApprovalRequest)
        assert isinstance(last_call, ev.ApprovalWithdrawn) and last_call.last_call
        decision = ev.ApprovalDecision(id=request.id, decision="approved", decided_by=OWNER)
        await nc.publish(subjects.approval_decision(request.id), ev.encode(decision))  # the final word
        await asyncio.wait_for(asks.closing.wait(), 10)
        # The close ends past the ask's expiry + FINAL_WORD + 1 s (the request's own expiry is the ask's + FINAL_WORD).
        await eventually(lambda: time.time() > request.expires_at + 1.5, 30)
        asks.may_close.set()
        answer = await call

        assert answer.status_code == 200, answer.text
        assert [r.target for r in site.received] == [b"/pay/slow-close"]
        assert await store.run(store.open_asks) == []
        with pytest.raises(TimeoutError):  # the approval stands: no withdrawal for good follows the last call
            await said.next_msg(timeout=0.5)
    finally:
        asks.may_close.set()
        await client.aclose()
        relayed.close()
        await relayed.wait_closed()
        await gateway.close()
        await store.stop()


async def counted(side: Alone, what: str) -> dict[str, int] | None:
    counts = await side.stats()
    return counts if counts.get(what) else None


async def test_a_last_call_that_gets_no_word_is_followed_by_a_final_withdrawal(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vault's own wait ends: its withdrawal is a last call (a decision that reaches it within FINAL_WORD still
    counts). With no word in that time it let nothing through, and withdraws again for good, so a press applied late
    (the approvals service behind) amends its card instead of leaving "Approved" with nothing let through."""
    monkeypatch.setattr(vault_approvals, "FINAL_WORD", 0.2)
    js = nc.jetstream()
    await ensure_streams(js)
    said = await js.subscribe(subjects.APPROVAL_REQUEST)
    ask = vault_approvals.ApprovalAsk(
        id="late-1",
        agent_group="main",
        method="POST",
        host="api.example.test",
        path="/pay",
        rule="ask",
        preview="",
        expires_at=time.time() + 0.2,
    )
    assert await vault_approvals.BusApprover(nc, js).ask(ask) == "expired"
    events = [ev.decode((await said.next_msg(timeout=5)).data) for _ in range(3)]
    assert [type(e).__name__ for e in events] == ["ApprovalRequest", "ApprovalWithdrawn", "ApprovalWithdrawn"]
    assert [e.last_call for e in events[1:] if isinstance(e, ev.ApprovalWithdrawn)] == [True, False]
