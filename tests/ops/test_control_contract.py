"""The control contract against running services: each serves exactly the verbs `clawden.bus.ctl` declares for
it, and every error comes back in one shape (a 400 saying what and where, nobody to answer, a service down)."""

from __future__ import annotations

import pytest
from nats.errors import NoRespondersError

from clawden import control
from clawden.bus import ctl, subjects
from clawden.cli.status import gather
from clawden.owner import connect_cli
from tests.ops.conftest import CORE, Core


async def test_each_service_serves_exactly_the_verbs_declared_for_it(core: Core) -> None:
    report = await gather(core.cfg)
    for identity in CORE:
        declared = ctl.served_by(identity)
        pong = await control.ask(core.cfg, ctl.common.PING.at(identity), ctl.Nothing())
        assert pong.verbs == sorted(v.key for v in declared), identity
        [service] = [s for s in report["services"] if s["name"] == identity]
        # the shared subject, and each op's own
        endpoints = {v.name for v in declared} | {f"{v.name}-{v.own_op}" for v in declared if v.own_op}
        if identity == "vault":  # and each runner's own subject for its tokens (`container_token_at`)
            endpoints.add("container-token-by-runner")
        assert {e["name"] for e in service["endpoints"]} == endpoints, identity


async def test_a_typed_request_gets_a_typed_reply(core: Core) -> None:
    groups = await control.ask(core.cfg, ctl.router.GROUPS_LIST, ctl.router.ListAll())
    assert "main" in [g.name for g in groups]
    main = await control.ask(core.cfg, ctl.router.GROUPS_GET, ctl.router.GroupGet(name="main"))
    assert main.name == "main" and isinstance(main.container, ctl.router.ContainerSettings)
    with pytest.raises(control.Refused, match="no agent group named 'nope'") as refused:
        await control.ask(core.cfg, ctl.router.GROUPS_GET, ctl.router.GroupGet(name="nope"))
    assert refused.value.code == "400"


@pytest.mark.parametrize(
    ("service", "verb", "body", "said"),
    [
        ("approvals", "list", b'{"limit": "ten"}', "bad request: Expected `int`, got `str` - at `$.limit`"),
        ("router", "groups", b'{"op": "explode"}', "bad request: Invalid value 'explode' - at `$.op`"),
        (
            "vault",
            "rules-add",
            b'{"name": "r", "action": "block"}',
            "bad request: Object missing required field `host`",
        ),
        ("scheduler", "get", b"{not json", "bad request: not JSON"),
    ],
)
async def test_a_bad_request_is_a_400_saying_what_and_where(
    core: Core, service: str, verb: str, body: bytes, said: str
) -> None:
    nc = await connect_cli(core.cfg, 5)
    try:
        reply = await nc.request(subjects.ctl(service, verb), body, timeout=5)
    finally:
        await nc.close()
    headers = reply.headers or {}
    assert (headers.get("Nats-Service-Error-Code"), headers.get("Nats-Service-Error", "")[: len(said)]) == (
        "400",
        said,
    )


async def test_an_unknown_verb_has_nobody_to_answer(core: Core) -> None:
    nc = await connect_cli(core.cfg, 5)
    try:
        with pytest.raises(NoRespondersError):
            await nc.request(subjects.ctl("router", "no-such-verb"), b"{}", timeout=5)
    finally:
        await nc.close()
    undeclared = ctl.Verb("router", "no-such-verb", ctl.Nothing, ctl.Nothing)
    with pytest.raises(control.NoAnswer, match="the router service did not answer"):
        await control.ask(core.cfg, undeclared, ctl.Nothing(), timeout=1)


async def test_a_service_that_is_down_did_not_answer(core: Core) -> None:
    # The runner is the one service this install does not run (it needs Docker).
    with pytest.raises(control.NoAnswer, match="the runner service did not answer"):
        await control.ask(core.cfg, ctl.runner.CONTAINERS, ctl.Nothing(), timeout=1)
