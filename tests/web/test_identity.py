"""The web service's NATS identity: the `web` channel like a bridge, the control verbs its pages use, the
status survey, its own audit events; nothing else (no other channel, no stream management, no vault gateway)."""

from __future__ import annotations

from pathlib import Path

from clawden import config as config_mod
from clawden import natsauth


def test_the_web_identity_may_do_only_what_its_pages_need(tmp_path: Path) -> None:
    cfg = config_mod.Config(home=str(tmp_path))
    grant = natsauth.grants(cfg, ())["web"]
    allowed = natsauth.permissions("web", grant)["publish"]["allow"]
    assert "clawden.inbound.web" in allowed and "clawden.receipt.web" in allowed
    assert "clawden.ctl.approvals.decide" in allowed and "clawden.ctl.web.login" not in allowed
    assert not grant.manages_streams
    assert not [s for s in allowed if s.startswith("clawden.inbound.") and s != "clawden.inbound.web"]
    assert not [s for s in allowed if s.startswith(("clawden.wake", "clawden.approval.", "clawden.outbound"))]
    assert "clawden.ctl.vault.secrets-add" in allowed and "clawden.ctl.router.roles" in allowed
    # the pages manage secrets; they never reach a gateway or a container's proxy token
    assert not {"clawden.ctl.vault.gateway", "clawden.ctl.vault.proxy-token", "clawden.ctl.vault.model-key"} & set(
        allowed
    )
    assert "clawden.event.web.>" in allowed and "clawden.event.vault.>" not in allowed
    assert {c.durable for c in grant.consumes} == {f"channel-web-{lane}" for lane in range(8)}
