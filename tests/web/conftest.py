"""A real Chromium (Debian's, driven by Playwright) that can reach nothing but loopback, one per test session;
and a whole Clawden with the web service on a loopback port, for the browser tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clawden import natsserver
from tests.e2e.harness import Stack, start_stack

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
        pytest.fail(f"{why} (under CI a browser test fails rather than skips; bin/setup installs it)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        found = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=LOOPBACK_ONLY,
            proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1,localhost"},
        )
        yield found
        found.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page for one test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    """`clawden up` with the web service on a free loopback port (real agent containers, the fake model)."""
    port = natsserver.free_port()
    # The harness writes [vault] last: a [web] table after it is a section of its own.
    s = start_stack(tmp_path_factory.mktemp("home"), vault=f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    yield s
    s.stop()


def web_url(stack: Stack) -> str:
    text = (stack.home / "config.toml").read_text()
    listen = text.split("[web]", 1)[1].split('listen = "', 1)[1].split('"', 1)[0]
    return f"http://{listen}"


def run(work: Any) -> Any:
    """An awaitable run to its end on a loop of its own thread: Playwright's sync API holds this thread's."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()
