"""A runner on "host B" reaches the vault over TLS (issue 25 item 4), as far as one machine can play it: runner b
has a home of its own and connects as `runner-b`; its containers reach the vault's TCP listener (TLS forced on
127.0.0.1 with `[vault] tcp_tls = true`, as it is by default off loopback) through a socket a test forwarder
pipes to it, so the container keeps `--network none` and the relay in the real image speaks TLS to the listener
(`tls+unix:...#127.0.0.1`). The container gets the model key injected by the vault; a forged token sent from
inside it, past its relay, is refused."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from clawden import config, natsauth, natsserver, setup
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.cli.main import main as cli_main
from services.runner.containers import LABEL_INSTALL
from tests.cluster.test_runners import SecondRunner, wake_on_b
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.vault.test_container_tcp import Forwarder

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process, pytest.mark.timeout(400)]

# From inside the agent's container, past its relay: TLS to the forwarded listener with the agent's own tokens.
FORGED = r"""
import base64, json, socket, ssl, sys
context = ssl.create_default_context(cafile="/run/clawden/trust/clawden-ca.pem")
out = []
for token in sys.argv[1:]:
    raw = socket.socket(socket.AF_UNIX)
    raw.connect("/run/clawden/gateway/vault.sock")
    s = context.wrap_socket(raw, server_hostname="127.0.0.1")
    auth = base64.b64encode(f"x:{token}".encode()).decode()
    head = f"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    s.sendall(head.encode())
    out.append(s.recv(65536).decode("latin-1").split("\r\n")[0])
    s.close()
print(json.dumps(out))
"""


@pytest.fixture
def remote(
    tmp_path: Path, docker_client: docker.DockerClient, agent_image: str
) -> Iterator[tuple[Stack, SecondRunner]]:
    home = tmp_path / "host-a"
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", "b"]) == 0
    port = natsserver.free_port()
    with tempfile.TemporaryDirectory(prefix="clawden-rv-", dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o755)
        forwarder = Forwarder(folder / "vault.sock", port)
        forwarder.start()
        try:
            stack = start_stack(home, runner='id = "a"', vault=f'tcp_listen = "127.0.0.1:{port}"\ntcp_tls = true')
            try:
                seed = natsauth.seed_path(config.load(home), "runner-b")
                tcp = f'vault_transport = "tcp"\nvault_tcp_host = "unix:{forwarder.path}"'
                second = SecondRunner(tmp_path / "host-b", stack.nats_url, seed, runner=tcp)
                try:
                    yield stack, second
                finally:
                    second.close()
            finally:
                stack.stop()
        finally:
            forwarder.stop()


def containers_of(install_id: str) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    try:
        return list(client.containers.list(filters={"label": f"{LABEL_INSTALL}={install_id}"}))
    finally:
        client.close()


async def test_a_container_on_host_b_gets_the_key_over_tls_and_a_forged_token_from_it_is_refused(
    remote: tuple[Stack, SecondRunner],
) -> None:
    stack, second = remote
    nc = await stack.connect()
    try:
        # What the router records when it places a session on runner b: the vault then lets b register its token.
        placed = ev.SessionPlaced(session_id="sess-on-b", agent_group="main", runner="b", epoch=1, at=time.time())
        await publish(nc.jetstream(), subjects.placement("sess-on-b"), placed, msg_id="sess-on-b:placed:1")
        async with Terminal(stack, "chat-b") as term:
            await wake_on_b(nc, "sess-on-b", "chat-b")
            reply = await term.reply(timeout=180)
    finally:
        await nc.close()
    assert reply.session_id == "sess-on-b"

    [box] = containers_of(second.install_id)
    env = dict(e.split("=", 1) for e in box.attrs["Config"]["Env"])
    assert env["CLAWDEN_GATEWAY_SOCKET"] == "tls+unix:/run/clawden/gateway/vault.sock#127.0.0.1"
    assert box.attrs["HostConfig"]["NetworkMode"] == "none"
    calls = stack.fake.messages_requests()
    assert calls and {r.headers.get("x-api-key") for r in calls} == {stack.key}  # injected by the vault
    assert stack.key not in json.dumps(box.attrs)
    vault_log = (stack.home / "logs" / "vault.log").read_text()
    assert "(proxy tokens; TLS for 127.0.0.1)" in vault_log
    assert "container token for main/sess-on-b registered" in vault_log

    result = box.exec_run(["python", "-c", FORGED, "clt_forged", "clp_guessed"], user="1000")
    assert result.exit_code == 0, result.output.decode()
    statuses = json.loads(result.output.decode().strip().splitlines()[-1])
    assert [s.split(" ")[:2] for s in statuses] == [["HTTP/1.1", "407"]] * 2
