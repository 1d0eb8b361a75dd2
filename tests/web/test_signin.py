"""Sign-in behind the reverse proxy the README sets up: the service sees every visitor come from loopback, so
its rate limit counts each against the address the proxy names, and a stranger's junk links leave the owner's
link working."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator

import httpx
import pytest

from clawden import config as config_mod
from clawden import control, natsserver
from clawden.bus.ctl import router as router_ctl
from tests.e2e.harness import Stack, start_stack
from tests.web.conftest import OWNER, login_link, web_url

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process, pytest.mark.asyncio(loop_scope="session")]
PUBLIC = "https://clawden.example.org"
BURST = 3
STRANGER, OWNERS = "203.0.113.9", "198.51.100.7"  # where the proxy says each visitor is


@pytest.fixture(scope="module")
def proxied_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    """`clawden up` with the web service on loopback behind a proxy at PUBLIC, with a small sign-in burst."""
    port = natsserver.free_port()
    web = f'\n[web]\nlisten = "127.0.0.1:{port}"\npublic_url = "{PUBLIC}"\nlogin_burst = {BURST}\n'
    s = start_stack(tmp_path_factory.mktemp("home"), vault=web)
    control.run(config_mod.load(s.home), router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=OWNER, role="owner"))
    yield s
    s.stop()


async def test_behind_the_proxy_a_stranger_spending_sign_in_attempts_leaves_the_owners_link_working(
    proxied_stack: Stack,
) -> None:
    link = urllib.parse.urlsplit(await login_link(proxied_stack))
    assert f"{link.scheme}://{link.netloc}" == PUBLIC
    async with httpx.AsyncClient(base_url=web_url(proxied_stack)) as proxy:  # what the proxy passes on

        async def guess(forwarded: str) -> int:
            junk = f"/login/{uuid.uuid4().hex}"
            return (await proxy.get(junk, headers={"x-forwarded-for": forwarded})).status_code

        assert [await guess(STRANGER) for _ in range(BURST + 1)] == [410] * BURST + [429]
        # What a visitor writes in the header itself comes before the hop the proxy adds: it changes nothing.
        assert await guess(f"{OWNERS}, {STRANGER}") == 429
        owner = await proxy.get(link.path, headers={"x-forwarded-for": OWNERS})
    assert owner.status_code == 200 and 'id="sign-in"' in owner.text
