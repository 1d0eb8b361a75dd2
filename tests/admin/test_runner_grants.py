"""The runner's NATS identity reaches the router's ops the agent CLI and create_agent ask, each at its own
subject, and nothing else of the router: never `groups delete`, `wirings update`, chats, users or roles, and
never the shared subject where every op of a resource is answered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import natsauth, natsserver, setup
from clawden.bus import ctl, subjects
from clawden.bus.ctl import router as router_ctl
from tests.eventually import eventually

ROUTER_VERBS = [v for v in ctl.VERBS if v.service == "router"]
# every op's own subject, and each shared one
ROUTER_SUBJECTS = sorted({v.subject for v in ROUTER_VERBS} | {subjects.ctl("router", v.name) for v in ROUTER_VERBS})
GRANTED = {v.subject for v in natsauth.RUNNER_CLI_VERBS if v.service == "router"}


def _ctl_allowed(cfg: config_mod.Config) -> set[str]:
    allowed = natsauth.permissions("runner", natsauth.grants(cfg, ())["runner"])["publish"]["allow"]
    return {s for s in allowed if s.startswith(f"{subjects.PREFIX}.ctl.")}


def test_the_runner_may_ask_exactly_the_ops_it_uses(tmp_path: Path) -> None:
    allowed = _ctl_allowed(config_mod.Config(home=str(tmp_path)))
    assert {s for s in allowed if s.startswith("clawden.ctl.router.")} == GRANTED
    assert router_ctl.GROUPS_CREATE.subject in allowed  # create_agent, once an admin approved
    for refused in (router_ctl.GROUPS_DELETE, router_ctl.WIRINGS_UPDATE, router_ctl.ROLES_GRANT, router_ctl.CHATS_MOVE):
        assert refused.subject not in allowed, refused.label
    assert "clawden.ctl.router.groups" not in allowed  # the shared subject answers every op
    assert not [s for s in allowed if s.endswith((".*", ".>"))]


@pytest.mark.parametrize(
    ("verb", "body", "refused"),
    [
        (router_ctl.GROUPS_LIST, router_ctl.GroupDelete(name="main"), True),
        (router_ctl.GROUPS_CREATE, router_ctl.GroupDelete(name="main"), True),
        (router_ctl.WIRINGS_CREATE, router_ctl.WiringDelete(channel="local", chat_id="c", agent_group="main"), True),
        (router_ctl.GROUPS_DELETE, router_ctl.GroupDelete(name="main"), False),
        (router_ctl.GROUPS_LIST, router_ctl.ListAll(), False),
    ],
)
def test_an_ops_own_subject_decodes_that_op_alone(
    verb: ctl.Verb[msgspec.Struct, object], body: msgspec.Struct, refused: bool
) -> None:
    """A grant of one op's subject could otherwise carry another op in its body."""
    contract = ctl.Subject("router", verb.name, verb.own_op)
    data = msgspec.json.encode(body)
    if refused:
        with pytest.raises(ctl.BadRequest):
            contract.decode(data)
    else:
        assert contract.decode(data)[0] == verb


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
async def test_the_server_lets_the_runner_reach_its_ops_and_refuses_it_every_other_router_subject(
    secured: config_mod.Config,
) -> None:
    reached: list[str] = []
    errors: list[str] = []

    async def answer(msg: Msg) -> None:
        reached.append(msg.subject)
        if msg.reply:
            await msg.respond(b"{}")

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    router = await natsauth.connect_as(secured, "router")
    runner = await natsauth.connect_as(secured, "runner", error_cb=on_error)
    try:
        await router.subscribe(f"{subjects.PREFIX}.ctl.router.>", cb=answer)
        await router.flush()
        refused = [s for s in ROUTER_SUBJECTS if s not in GRANTED]
        assert router_ctl.GROUPS_DELETE.subject in refused and "clawden.ctl.router.groups" in refused
        for subject in refused:
            await runner.publish(subject, b'{"op": "delete", "name": "main"}')
        for subject in sorted(GRANTED):  # asked after: each answer says the refused ones went nowhere
            assert (await runner.request(subject, b"{}", timeout=5)).data == b"{}"
        await eventually(
            lambda: all(any(f'"{s}"' in e for e in errors) for s in refused),
            message=lambda: [s for s in refused if not any(f'"{s}"' in e for e in errors)],
        )
    finally:
        await runner.close()
        await router.close()
    assert sorted(reached) == sorted(GRANTED)
