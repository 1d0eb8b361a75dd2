"""The browser variant (issue 23, item 5) with the whole system running: `clawden groups browser enable main`
builds main's image with Debian's Chromium and Playwright (the per-group image mechanism, no network in the
build), and the agent's Bash runs `clawden-browse` in its container (--network none, read-only root, no
capability), which loads a page served on loopback through the vault (the page's host in the vault's host
map, over TLS from the vault's test CA, which Chromium trusts through its NSS database): the page's text
reaches the model and the vault's audit log shows the request. One browser image build per session: the tag
is content-hashed, so a second run finds it built."""

from __future__ import annotations

import asyncio
import http.server
import json
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from clawden import config as config_mod
from clawden import natsserver
from clawden.dockercli import image_labels
from clawden.packagespec import BROWSE_HELPER, BROWSER, Packages, dockerfile, has_browser
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.e2e.test_tools import tool_results
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall

PAGE_HOST = "pages.fake.test"
WORDS = f"the browser read this {secrets.token_hex(6)}"


@pytest.mark.parametrize(
    ("packages", "browser"),
    [
        (BROWSER, True),
        (BROWSER.plus(Packages(apt=("jq",))), True),
        (Packages(apt=("chromium",)), False),  # no Playwright: no helper
        (Packages(pip=("playwright",)), False),
        (BROWSER.minus(Packages(apt=("libnss3-tools",))), False),  # no certutil, so no trust for the vault CA
        (Packages(), False),
    ],
)
def test_the_helper_is_in_an_image_with_the_whole_browser_only(packages: Packages, browser: bool) -> None:
    assert has_browser(packages) is browser
    assert (f"COPY browse.py {BROWSE_HELPER}" in dockerfile(packages)) is browser


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = f"<html><head><title>Fake page</title></head><body><p>{WORDS}</p></body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture(scope="module")
def page_port() -> int:
    return natsserver.free_port()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str, page_port: int
) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"), hosts={PAGE_HOST: f"127.0.0.1:{page_port}"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def site(stack: Stack, page_port: int) -> Iterator[http.server.ThreadingHTTPServer]:
    """https://pages.fake.test/, as the vault's host map reaches it (a certificate from the vault's test CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(stack.home / "run" / "fake-site.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), Page)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="fake-page", daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def clawden(stack: Stack, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=stack.env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def browser_image(stack: Stack) -> str:
    """main's image with the browser: built once (a heavy build, ~500 MB of Debian packages)."""
    out = clawden(stack, "groups", "browser", "enable", "main", timeout=1800)
    tag = out.split(" runs ")[1].split(",")[0]
    assert tag.startswith("clawden-agent:main-"), out
    return tag


@pytest.mark.docker
def test_enable_builds_the_groups_image_with_the_browser_and_lists_it(stack: Stack, browser_image: str) -> None:
    labels = image_labels(browser_image)
    assert labels is not None and labels["dev.clawden.group"] == "main"
    packages = json.loads(labels["dev.clawden.packages"])
    assert packages == {"apt": sorted(BROWSER.apt), "npm": [], "pip": ["playwright"]}
    listed = clawden(stack, "groups", "packages", "list", "main")
    assert browser_image in listed and "chromium" in listed and "playwright" in listed
    again = clawden(stack, "groups", "browser", "enable", "main")  # unchanged: nothing to build
    assert f"runs {browser_image}," in again


@pytest.mark.docker
async def test_the_agent_browses_a_loopback_page_through_the_vault_and_it_is_audited(
    stack: Stack, browser_image: str, site: http.server.ThreadingHTTPServer
) -> None:
    command = f"{BROWSE_HELPER} https://{PAGE_HOST}/hello?from=agent"
    stack.fake.script(ToolCall("Bash", {"command": command, "description": "read the page"}), Text("read it"))
    async with Terminal(stack, "browsing") as term:
        reply = await term.ask("what does the page say?", timeout=300)
        await stack.wait_until_idle(reply.session_id, timeout=120)
        [box] = [c for c in stack.containers() if c.labels.get("dev.clawden.session") == reply.session_id]

    [result] = [r for r in tool_results(stack) if "the browser read this" in r or PAGE_HOST in r]
    assert "status: 200" in result and "title: Fake page" in result and WORDS in result, result
    # The page first; Chromium asks for /favicon.ico after it.
    assert site.paths[0] == "/hello?from=agent"  # type: ignore[attr-defined]
    # The container is as every agent's: no network, read-only root, no capability, on main's browser image.
    host = box.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd") and box.attrs["Config"]["Image"] == browser_image

    async def audited() -> list[tuple[str, str, int, str]]:
        audit = json.loads(await asyncio.to_thread(clawden, stack, "audit", "--json", "--agent", "main"))
        seen = [
            (str(r["method"]), str(r["path"]).split("?")[0], int(r["status"]), str(r["decision"]))
            for r in audit
            if r["host"] == PAGE_HOST
        ]
        return seen if ("GET", "/hello", 200, "allowed") in seen else []

    await eventually(audited, timeout=30)  # the vault writes its audit in batches


@pytest.mark.docker
def test_disable_goes_back_to_the_runners_image(stack: Stack, browser_image: str) -> None:
    out = clawden(stack, "groups", "browser", "disable", "main")
    runner_image = config_mod.load(stack.home).runner.image
    assert f"runs {runner_image} (nothing), with no browser" in out, out
