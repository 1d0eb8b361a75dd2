"""`ctl.vault.model-check`: the real vault asks the fake api.anthropic.com over TLS (through its host map and
extra CA) for `GET /v1/models?limit=1` with each model secret injected as the gateway injects it, and says
accepted, rejected (with Anthropic's error, never the key), unreachable (where) or another status."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import msgspec
import pytest

from clawden import natsauth, natsserver, setup
from clawden.bus.ctl import vault as vault_ctl
from clawden.bus.ctl.vault import ModelCheck
from clawden.cli.status import gather
from services.vault.modelcheck import unreachable
from services.vault.upstream import UpstreamError
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import Error
from tests.vault.model_vault import API_KEY, model_vault

pytestmark = [pytest.mark.timeout(90), pytest.mark.nats, pytest.mark.process]

OAUTH_TOKEN = "sk-ant-oat01-model-check-subscription-token"


async def test_each_model_secret_is_tried_on_the_api_as_the_gateway_sends_it(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {API_KEY, OAUTH_TOKEN}
        await v.store(OAUTH_TOKEN, "subscription", agents=["family"])
        # Neither is the model API's: not tried there.
        await v.store("ghp_not-a-model-key-0123456789", "github", "generic", host="api.github.com", header="x-t")

        reply = await v.check()

    assert reply.host == "api.anthropic.com" and reply.mapped_to == v.address
    assert sorted(reply.checks, key=lambda c: c.name) == [
        ModelCheck(name="anthropic", outcome="accepted", status=200),
        ModelCheck(name="subscription", outcome="accepted", oauth=True, status=200),
    ]
    sent = sorted(v.asked_models(), key=lambda h: "x-api-key" in h)
    assert [h.get("authorization") for h in sent] == [f"Bearer {OAUTH_TOKEN}", None]
    assert "oauth-2025-04-20" in sent[0]["anthropic-beta"] and "x-api-key" not in sent[0]
    assert sent[1]["x-api-key"] == API_KEY and sent[1]["anthropic-version"] == "2023-06-01"
    assert {r.target for r in v.fake.requests} == {"/v1/models?limit=1"}


async def test_a_wrong_key_is_rejected_with_anthropics_error_and_the_key_is_said_nowhere(
    nats_server: NatsServer,
) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}

        reply = await v.check()

        assert reply.checks == [
            ModelCheck(
                name="anthropic",
                outcome="rejected",
                status=401,
                error_type="authentication_error",
                message="invalid x-api-key",
            )
        ]
        assert API_KEY.encode() not in msgspec.json.encode(reply)
        assert API_KEY not in v.log.read_text()


async def test_a_status_other_than_yes_or_no_is_said_as_it_came(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.models_error = Error(529, "Overloaded")

        reply = await v.check()

    assert reply.checks == [
        ModelCheck(name="anthropic", outcome="other", status=529, error_type="overloaded_error", message="Overloaded")
    ]


async def test_a_host_map_to_where_nothing_listens_is_unreachable_at_connect(nats_server: NatsServer) -> None:
    closed = f"127.0.0.1:{natsserver.free_port()}"
    async with model_vault(nats_server.url, map_to=closed) as v:
        reply = await v.check()

    assert reply.mapped_to == closed
    [check] = reply.checks
    assert (check.outcome, check.unreached, check.status) == ("unreachable", "connect", 0)
    assert "cannot reach api.anthropic.com (ConnectionRefusedError)" in check.message


async def test_a_certificate_the_vault_does_not_trust_is_unreachable_at_tls(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url, trusted=False) as v:
        reply = await v.check()

    [check] = reply.checks
    assert (check.outcome, check.unreached) == ("unreachable", "tls")
    assert "presented a certificate that does not verify" in check.message
    assert v.asked_models() == []  # nothing, the key least of all, went to a site it could not verify


def test_where_the_way_broke_is_told_from_the_upstreams_error() -> None:
    def raised(error: UpstreamError, cause: BaseException | None) -> UpstreamError:
        error.__cause__ = cause
        return error

    dns = raised(UpstreamError(502, "bad_gateway", "x does not resolve"), socket.gaierror(-2, "Name unknown"))
    private = UpstreamError(403, "private_address_blocked", "x resolves to a private address")
    refused = raised(UpstreamError(502, "bad_gateway", "cannot reach x"), ConnectionRefusedError(111, "Refused"))
    tls = raised(UpstreamError(502, "bad_gateway", "x broke the connection"), ssl.SSLError("bad record"))
    slow = UpstreamError(504, "gateway_timeout", "connecting to x timed out")

    assert unreachable(dns) == ("dns", "x does not resolve")
    assert unreachable(private)[0] == "private"
    assert unreachable(refused) == ("connect", "cannot reach x: Refused")
    assert unreachable(tls)[0] == "tls"
    assert unreachable(slow) == ("timeout", "connecting to x timed out")


async def test_clawden_status_never_tries_the_key(nats_server: NatsServer) -> None:
    """Only doctor asks: a status page refreshed every few seconds must not call Anthropic each time."""
    async with model_vault(nats_server.url) as v:
        await gather(v.cfg)

        assert v.asked_models() == []


async def test_only_the_owners_cli_may_ask_for_the_check(tmp_path: Path) -> None:
    """Each call sends the model key to Anthropic: no service's identity is granted it, the web's neither."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, port=natsserver.free_port()))
    natsauth.write_server_config(cfg, ("telegram",))
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    try:
        identities = [natsauth.CLI, *natsauth.grants(cfg, ("telegram",))]
        errors: dict[str, list[str]] = {ident: [] for ident in identities}
        for ident in identities:

            async def on_error(exc: Exception, said: list[str] = errors[ident]) -> None:
                said.append(str(exc).lower())

            nc = await natsauth.connect_as(cfg, ident, error_cb=on_error)
            await nc.publish(vault_ctl.MODEL_CHECK.subject, b"{}")
            if ident != natsauth.CLI:  # the server says each refusal asynchronously
                await eventually(errors[ident].copy, message=f"{ident} was not refused")
            await nc.flush()
            await nc.close()
    finally:
        proc.terminate()
        proc.wait(10)

    subject = f'permissions violation for publish to "{vault_ctl.MODEL_CHECK.subject}"'
    assert errors.pop(natsauth.CLI) == []
    assert {"web", "runner", "channel-telegram"} <= set(errors)
    assert all(subject in said[0] for said in errors.values()), errors
