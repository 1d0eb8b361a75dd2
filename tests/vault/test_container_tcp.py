"""From inside a real agent container with `vault_transport = "tcp"` (Docker Desktop's mode, forced on Linux).

A container here has --network none, so no TCP route reaches the host. The runner's `vault_tcp_host =
"unix:/path"` mounts a host socket instead, and a small forwarder (below, test-only) pipes each connection
to the vault's TCP listener on 127.0.0.1. What would run on Docker Desktop runs here as it is: the runner's
token and its registration, the relay's token file, its non-dumpable process and its head rewrite, and the
vault's TCP listener with its token check. Only the relay's dial differs (a Unix socket, not
host.docker.internal).

The socket mode's hostile-agent container tests run again here, with this module's `stack`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import control, natsauth, natsserver
from clawden.bus.ctl import vault as vault_ctl
from services.runner.vaultroute import new_token
from tests.e2e.harness import Stack
from tests.eventually import eventually_sync
from tests.vault.test_container_egress import (  # noqa: F401  # collected here again, with the tcp stack
    container,
    greeted_stack,
    test_a_secret_in_the_path_reaches_the_site_and_never_comes_back,
    test_an_approval_gated_request_waits_then_passes_fails_or_expires,
    test_claude_code_keeps_its_default_https_endpoint_and_the_gateway_injects_the_key,
    test_no_spelling_of_a_blocked_path_or_method_gets_past_the_gateway,
    test_rules_hold_from_inside_the_container,
    test_there_is_no_way_out_but_the_groups_own_socket,
    vault,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

OTHERS_SECRET = "ghp_granted-to-the-other-group-only-0123"


class Forwarder:
    """Test-only: each connection to a Unix socket piped to 127.0.0.1:port (the vault's TCP listener)."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> None:
        self.server = await asyncio.start_unix_server(self._pipe, str(self.path))
        self.path.chmod(0o666)  # the container's user connects

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return
        self.writers.add(up_writer)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        writer.close()
        up_writer.close()

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            if self.server is not None:
                await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    port = natsserver.free_port()
    with tempfile.TemporaryDirectory(prefix="clawden-fwd-", dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o755)
        # Named as the group's socket is, so the socket mode's tests read the mount the same way.
        forwarder = Forwarder(folder / "gateway.sock", port)
        forwarder.start()
        try:
            with greeted_stack(
                tmp_path_factory.mktemp("home"),
                runner=f'vault_transport = "tcp"\nvault_tcp_host = "unix:{forwarder.path}"',
                vault=f'approval_timeout = 4\ntcp_listen = "127.0.0.1:{port}"',
            ) as s:
                yield s
        finally:
            forwarder.stop()


def as_the_runner(stack: Stack, request: vault_ctl.ContainerToken) -> vault_ctl.TcpGateway:
    """Register a token as the install's own runner does: its identity, at its own subject."""
    cfg = config_mod.load(stack.home)

    async def ask() -> vault_ctl.TcpGateway:
        nc = await natsauth.connect_as(cfg, natsauth.RUNNER)
        try:
            at = vault_ctl.container_token_at(cfg.runner.id)
            return await control.ask_on(nc, vault_ctl.CONTAINER_TOKEN, request, subject=at, timeout=10)
        finally:
            await nc.close()

    return asyncio.run(ask())


def run_as_agent(stack: Stack, script: str, *args: str) -> Any:
    result = container(stack).exec_run(["python", "-c", script, *args], user="1000")
    assert result.exit_code == 0, result.output.decode()
    return json.loads(result.output.decode().strip().splitlines()[-1])


def test_the_container_reaches_the_vault_over_tcp_with_a_token_file_it_no_longer_has(stack: Stack) -> None:
    box = container(stack)
    env = dict(e.split("=", 1) for e in box.attrs["Config"]["Env"])
    mounts = {m["Destination"]: m for m in box.attrs["Mounts"]}
    assert env["CLAWDEN_GATEWAY_SOCKET"] == "tcp+unix:/run/clawden/gateway/gateway.sock"
    assert box.attrs["HostConfig"]["NetworkMode"] == "none"
    assert mounts["/run/clawden/relay"]["RW"] is True
    assert list(Path(mounts["/run/clawden/relay"]["Source"]).iterdir()) == []  # taken and deleted
    group = box.labels["dev.clawden.agent-group"]
    assert not (stack.home / "run" / "gateway" / group).exists()  # its group was never given a socket
    assert "containers reach the vault by tcp" in (stack.home / "logs" / "runner.log").read_text()


FIND_TOKEN = r"""
import json, os, re, sys
pattern = re.compile(rb"clt_[A-Za-z0-9_-]{20,}")
found, denied, runner = [], [], []
def look(path, data):
    if pattern.search(data):
        found.append(path)
for pid in [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]:
    try:
        if open(f"/proc/{pid}/cmdline", "rb").read() == b"python\0-m\0clawden_agent\0":
            runner.append(pid)  # the agent runner, whose relay holds the token
    except OSError:
        pass
    for name in ("environ", "cmdline", "mem"):
        path = f"/proc/{pid}/{name}"
        try:
            if name == "mem":  # what the agent could read of another process's memory
                with open(f"/proc/{pid}/maps") as maps:
                    regions = [l.split()[0].split("-") for l in maps if " rw" in l or " r-" in l]
                with open(path, "rb") as mem:
                    for start, end in regions:
                        try:
                            mem.seek(int(start, 16))
                            look(path, mem.read(min(int(end, 16) - int(start, 16), 64 << 20)))
                        except (OSError, ValueError, OverflowError):
                            pass
            else:
                with open(path, "rb") as f:
                    look(path, f.read())
        except OSError:
            denied.append(path)
for root in ("/run", "/workspace", "/home", "/tmp", "/etc", "/app"):
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                with open(p, "rb") as f:
                    look(p, f.read(1 << 20))
            except OSError:
                pass
env = [k for k, v in os.environ.items() if "clt_" in v]
print(json.dumps({"found": found, "denied": denied, "runner": runner, "env": env}))
"""


def test_the_agent_finds_the_token_nowhere(stack: Stack) -> None:
    # The probe finds a token where one is readable (a planted one), so its silence below means something.
    container(stack).exec_run(["sh", "-c", "echo clt_planted-by-the-test-0123456789abc > /tmp/planted"], user="1000")
    seen = run_as_agent(stack, FIND_TOKEN)
    container(stack).exec_run(["rm", "-f", "/tmp/planted"], user="1000")
    assert seen["found"] == ["/tmp/planted"] and seen["env"] == []
    # The agent runner (the relay's process) is non-dumpable: its environ and memory are closed to the agent.
    [runner] = seen["runner"]
    assert {f"/proc/{runner}/mem", f"/proc/{runner}/environ"} <= set(seen["denied"])


THROUGH_RELAY = """
import json, sys, urllib.request, urllib.error
token = sys.argv[1]
# The agent puts another group's token into its proxy URL; the relay shows its own container's instead.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": f"http://x:{token}@127.0.0.1:3128"}))
try:
    with opener.open("https://api.anthropic.com/others/x", timeout=30) as r:
        out = [r.status, r.read().decode()]
except urllib.error.HTTPError as e:
    out = [e.code, e.read().decode()]
print(json.dumps(out))
"""

DIRECT = r"""
import json, socket, sys, base64
# Past the relay, straight to the mounted socket that leads to the listener, with the agent's own tokens.
out = []
for token in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/clawden/gateway/gateway.sock")
    auth = base64.b64encode(f"x:{token}".encode()).decode()
    head = f"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    s.sendall(head.encode())
    out.append(s.recv(65536).decode("latin-1").split("\r\n")[0])
    s.close()
print(json.dumps(out))
"""


def test_another_groups_token_in_the_agents_hands_does_not_make_it_that_group(stack: Stack) -> None:
    group = container(stack).labels["dev.clawden.agent-group"]
    vault(
        stack,
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="e2e-others",
            type="generic",
            value=OTHERS_SECRET,
            host="api.anthropic.com",
            path="/others/*",
            header="x-others-key",
            agents=["other"],
            force=True,  # a generic secret on the model API's host: only this test's fake has one
        ),
    )
    others, others_hash = new_token()  # as a runner registers it for a container of "other"
    request = vault_ctl.ContainerToken(agent_group="other", session_id="o1", sha256=others_hash)
    as_the_runner(stack, request)
    seen = len(stack.fake.requests)
    try:
        status, body = run_as_agent(stack, THROUGH_RELAY, others)
        replaced, _ = new_token()  # a token that was never (or is no longer) registered
        direct = run_as_agent(stack, DIRECT, replaced, "clt_forged")
    finally:
        vault(stack, vault_ctl.SECRETS_REMOVE, vault_ctl.Named(name="e2e-others"))

    [reached] = [r for r in stack.fake.requests[seen:] if r.path == "/others/x"]
    assert "x-others-key" not in {k.lower() for k in reached.headers}  # the other group's secret never went
    assert status == 404 and OTHERS_SECRET not in body  # the fake's answer to a path it does not have

    def audited() -> list[tuple[str, str]]:  # the audit trail reaches vault.db in batches
        records = vault(stack, vault_ctl.AUDIT, vault_ctl.AuditQuery(limit=50)).records
        return [(r.agent_group, r.injected) for r in records if r.path == "/others/x"]

    # Its own group's (the model key, on that host), never the other group's secret.
    [(who, injected)] = eventually_sync(audited, timeout=10)
    assert who == group and "e2e-others" not in injected
    assert len(direct) == 2 and all(line.startswith("HTTP/1.1 407") for line in direct), direct
