"""The web service's NATS identity: the `web` channel like a bridge, the control verbs its pages use, the
status survey, its own audit events; nothing else (no other channel, no stream management, no vault gateway)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import natsauth, natsserver, setup
from clawden.bus.ctl import router as router_ctl
from tests.eventually import eventually


def test_the_web_identity_may_do_only_what_its_pages_need(tmp_path: Path) -> None:
    cfg = config_mod.Config(home=str(tmp_path))
    grant = natsauth.grants(cfg, ())["web"]
    allowed = natsauth.permissions("web", grant)["publish"]["allow"]
    assert "clawden.inbound.web" in allowed and "clawden.receipt.web" in allowed
    assert "clawden.ctl.approvals.decide" in allowed and "clawden.ctl.web.login" not in allowed
    assert not grant.manages_streams
    assert not [s for s in allowed if s.startswith("clawden.inbound.") and s != "clawden.inbound.web"]
    assert not [s for s in allowed if s.startswith(("clawden.wake", "clawden.approval.", "clawden.outbound"))]
    assert "clawden.ctl.vault.secrets-add" in allowed and "clawden.ctl.router.standing" in allowed
    assert "clawden.ctl.router.roles" not in allowed  # grants and revokes are made there
    # the pages manage secrets; they never reach a gateway or a container's proxy token
    assert not {"clawden.ctl.vault.gateway", "clawden.ctl.vault.proxy-token", "clawden.ctl.vault.model-key"} & set(
        allowed
    )
    assert "clawden.event.web.>" in allowed and "clawden.event.vault.>" not in allowed
    assert {c.durable for c in grant.consumes} == {f"channel-web-{lane}" for lane in range(8)}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[config_mod.Config]:
    """A nats-server that knows every identity's key and permissions, as `clawden init` writes them."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, port=natsserver.free_port()))
    natsauth.write_server_config(cfg, ())
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    yield cfg
    proc.terminate()
    proc.wait(10)


@pytest.mark.nats
async def test_the_server_refuses_the_web_identity_the_roles_subject_and_answers_it_on_standing(
    secured: config_mod.Config,
) -> None:
    """A web service taken over cannot grant itself a role: the server drops its request on `roles` (where grants
    are made) before the router sees it, and lets through only the read-only `standing`."""
    reached: list[str] = []
    errors: list[str] = []

    async def answer(msg: Msg) -> None:
        reached.append(msg.subject)
        await msg.respond(b"{}")

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    router = await natsauth.connect_as(secured, "router")
    web = await natsauth.connect_as(secured, "web", error_cb=on_error)
    try:
        for verb in (router_ctl.ROLES_GRANT, router_ctl.STANDING):
            await router.subscribe(verb.subject, cb=answer)
        await router.flush()
        assert (await web.request(router_ctl.STANDING.subject, b"{}", timeout=5)).data == b"{}"
        grant = msgspec.json.encode(router_ctl.RoleGrant(user_id="web:mallory", role="owner"))
        with pytest.raises(TimeoutError):  # dropped by the server: nobody ever answers
            await web.request(router_ctl.ROLES_GRANT.subject, grant, timeout=1)
        await eventually(lambda: any("permissions violation for publish" in e for e in errors), message=lambda: errors)
    finally:
        await web.close()
        await router.close()
    assert [e for e in errors if "permissions violation" in e] == [
        e for e in errors if f'"{router_ctl.ROLES_GRANT.subject}"' in e
    ], errors
    assert reached == [router_ctl.STANDING.subject]
