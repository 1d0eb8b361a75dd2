"""The in-container relay: TCP on loopback to the gateway's Unix socket, alone and chained to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from services.vault.gateway import Gateway
from tests.vault.test_gateway import PLACEHOLDER, REAL_KEY, FakeUpstream

pytestmark = pytest.mark.timeout(10)


def _load_relay() -> ModuleType:
    # The relay ships inside the agent image, not in the clawden package: load it from its file.
    path = Path(__file__).parents[2] / "container" / "clawden_agent" / "relay.py"
    spec = importlib.util.spec_from_file_location("clawden_agent_relay_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relay = _load_relay()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes, too short for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="clawden-relay-", dir="/tmp") as name:
        yield Path(name)


@contextlib.asynccontextmanager
async def running_relay(socket_path: Path) -> AsyncIterator[int]:
    server: asyncio.Server = await relay.serve_relay(str(socket_path))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def echo_socket(sock_dir: Path) -> AsyncIterator[Path]:
    """A Unix-socket echo server that answers until the client half-closes, then closes."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"<eof seen>")
        writer.close()
        await writer.wait_closed()

    path = sock_dir / "echo.sock"
    server = await asyncio.start_unix_server(echo, str(path))
    yield path
    server.close()
    await server.wait_closed()


async def test_relay_pipes_both_ways_and_passes_half_close(echo_socket: Path) -> None:
    async with running_relay(echo_socket) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"hello")
            first = await asyncio.wait_for(reader.readexactly(5), 2)
            writer.write(b"x" * 300_000)  # bigger than one read, so flow control is exercised
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 2)
        finally:
            writer.close()
            await writer.wait_closed()

    assert first == b"hello"
    assert rest == b"x" * 300_000 + b"<eof seen>"


async def test_missing_socket_closes_the_connection_and_says_why(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = sock_dir / "not-mounted.sock"
    async with running_relay(missing) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            answer = await asyncio.wait_for(reader.read(), 2)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    assert answer == b""
    assert str(missing) in capsys.readouterr().err


async def test_agent_request_reaches_the_model_with_the_real_key(sock_dir: Path) -> None:
    upstream = await FakeUpstream().start()
    gateway = Gateway(upstream.url, REAL_KEY)
    socket_path = sock_dir / "family" / "gateway.sock"
    await gateway.listen("family", socket_path)
    try:
        async with running_relay(socket_path) as port:
            # As the agent sees it: ANTHROPIC_BASE_URL for the API, HTTP_PROXY for everything else.
            base_url = f"http://127.0.0.1:{port}"
            headers = {"x-api-key": PLACEHOLDER}
            async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=5) as api:
                direct = await api.post("/v1/messages", headers=headers, content=b'{"n":1}')
            async with httpx.AsyncClient(proxy=base_url, trust_env=False, timeout=5) as proxied:
                via_proxy = await proxied.post(f"{upstream.url}/v1/messages", headers=headers, content=b"{}")
    finally:
        await gateway.close()
        await upstream.close()

    assert (direct.status_code, via_proxy.status_code) == (200, 200)
    assert [r.target for r in upstream.received] == [b"/v1/messages", b"/v1/messages"]
    assert all(r.header(b"x-api-key") == REAL_KEY.encode() for r in upstream.received)
