"""A real Chromium (Debian's, driven by Playwright) that can reach nothing but loopback, one per test session;
and a whole Clawden with the web service on a loopback port, for the browser tests."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from clawden import config as config_mod
from clawden import control, natsserver
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import web as web_ctl
from tests.e2e.harness import Stack, start_stack

OWNER = "web:owner"  # the browser tests' owner (granted by web_stack, as `clawden roles grant` would)

CHROMIUM = "/usr/bin/chromium"
# local-servers.md §3: without these Chromium still calls Google (time, updates, accounts) despite
# --disable-background-networking; with them strace saw TCP to 127.0.0.1 only.
LOOPBACK_ONLY = [
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (under CI a browser test fails rather than skips; bin/setup --tests installs it)")
    pytest.skip(why)


# The browser lives on the session's event loop (Playwright's async API): its sync API would hold this thread's
# loop "running" for the rest of the session, and every later test's asyncio.run() would fail.
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:  # Debian's, not a downloaded one
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as p:
        found = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=LOOPBACK_ONLY,
            proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1,localhost"},
        )
        yield found
        await found.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser context (no cookies) and page for one test."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    """`clawden up` with the web service on a free loopback port (real agent containers, the fake model)."""
    port = natsserver.free_port()
    # The harness writes [vault] last: a [web] table after it is a section of its own.
    # Every test signs in from 127.0.0.1: a burst that a module's sign-ins fit in (the limit itself: test_auth).
    web = f'\n[web]\nlisten = "127.0.0.1:{port}"\nlogin_burst = 100\n'
    s = start_stack(tmp_path_factory.mktemp("home"), vault=web)
    cfg = config_mod.load(s.home)
    control.run(cfg, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=OWNER, role="owner"))
    yield s
    s.stop()


def web_url(stack: Stack) -> str:
    text = (stack.home / "config.toml").read_text()
    listen = text.split("[web]", 1)[1].split('listen = "', 1)[1].split('"', 1)[0]
    return f"http://{listen}"


async def login_link(stack: Stack, user: str = OWNER) -> str:
    cfg = config_mod.load(stack.home)
    return (await control.ask(cfg, web_ctl.LOGIN, web_ctl.LoginRequest(user=user), timeout=60)).url


async def sign_in(page: Any, stack: Stack, user: str = OWNER) -> None:
    await page.goto(await login_link(stack, user))
    async with page.expect_navigation(url=re.compile(r".*/chats$")):
        await page.click("#sign-in")
