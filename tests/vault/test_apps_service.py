"""App connections end to end on the host: `clawden run vault` on a real NATS server, `clawden apps connect`
as the owner runs it (its loopback listener gets the provider's redirect), an agent's HTTPS through the
gateway's TCP listener, and the fake Google of tests/fakes/oauth.py. The tokens stay sealed in vault.db,
survive a restart, and never reach the agent or the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from clawden import config as config_mod
from clawden import control, natsserver, setup
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.vaultfiles import CA_CERT
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.anthropic import make_tls
from tests.fakes.oauth import HOSTS, FakeOAuth
from tests.vault.sites import FakeUpstream

pytestmark = [pytest.mark.timeout(120), pytest.mark.nats, pytest.mark.process]

CLIENT_ID, CLIENT_SECRET = "77-desktop.apps.googleusercontent.com", "GOCSPX-service-test-secret"
GMAIL = "https://gmail.googleapis.com/gmail/v1/users/me/messages"
PLACEHOLDER = {"authorization": "Bearer clawden-managed"}


@dataclass
class Host:
    home: Path
    cfg: config_mod.Config
    log: Path
    fake: FakeOAuth
    server: FakeUpstream
    ca_file: str
    proc: subprocess.Popen[bytes] | None = None
    seen: list[str] = field(default_factory=list)  # everything the agent side and the CLI printed

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home))
        env.pop("ANTHROPIC_API_KEY", None)
        return env

    async def start(self) -> None:
        self.proc = spawn_vault(self.env, self.log)

        async def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                await control.ask(self.cfg, vault_ctl.APPS_LIST, Nothing(), timeout=2)
            except control.ControlError:
                return False
            return True

        await eventually(answers, timeout=30, message=lambda: self.log.read_text())

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 20)

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "clawden", *args], env=self.env, capture_output=True, text=True
        )
        self.seen.append(done.stdout + done.stderr)
        return done

    async def agent(self) -> httpx.AsyncClient:
        proxy = await control.ask(self.cfg, vault_ctl.PROXY_TOKEN, vault_ctl.GroupRequest(agent_group="family"))
        trust = ssl.create_default_context(cafile=str(self.cfg.keys_dir / CA_CERT))

        async def record(response: httpx.Response) -> None:
            await response.aread()
            self.seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

        return httpx.AsyncClient(
            proxy=proxy.proxy_url, verify=trust, trust_env=False, timeout=10, event_hooks={"response": [record]}
        )

    async def consent(self, url: str, follow: bool = True) -> str:
        """The owner's browser: the provider's page (it consents at once), then the redirect to the CLI
        (unless the browser is on another machine, where it cannot load): the address it was sent to."""
        parts = urlsplit(url)
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca_file), trust_env=False) as web:
            page = await web.get(
                f"https://{self.server.address}{parts.path}?{parts.query}",
                headers={"host": parts.hostname or ""},
                extensions={"sni_hostname": parts.hostname},
            )
            assert page.status_code == 302, page.text
            if follow:
                back = await web.get(page.headers["location"])
                assert back.status_code == 200 and "close this tab" in back.text
        return str(page.headers["location"])

    def stored_bytes(self) -> str:
        folder = self.home / "data" / "vault"
        return "".join(p.read_bytes().decode("latin-1") for p in folder.glob("vault.db*"))


def spawn_vault(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "vault"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
def short_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="clawden-apps-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def host(nats_server: NatsServer, short_home: Path) -> AsyncIterator[Host]:
    tls = make_tls(HOSTS, str(short_home))
    fake = FakeOAuth()
    fake.client(CLIENT_ID, CLIENT_SECRET)
    server = await FakeUpstream(respond=fake.respond).start(tls.server_context)
    home = short_home / "home"
    setup.init(home)
    mapped = ", ".join(f'"{h}" = "{server.address}"' for h in HOSTS)
    (home / "config.toml").write_text(f"""\
install_id = "ap"
[nats]
url = "{nats_server.url}"
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{{mapped}}}
tcp_listen = "127.0.0.1:{natsserver.free_port()}"
""")
    h = Host(home, config_mod.load(home), short_home / "vault.log", fake, server, tls.ca_file)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()
        await server.close()


async def connect_google(host: Host) -> subprocess.CompletedProcess[bytes]:
    secret_file = host.home / "google-client-secret"
    secret_file.write_text(CLIENT_SECRET)
    # A vault on its own, with no router to say which agent groups there are: every group, named.
    args = [
        "apps",
        "connect",
        "google",
        "--client-id",
        CLIENT_ID,
        "--client-secret-file",
        str(secret_file),
        "--agent",
        "*",
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawden",
        *args,
        "--no-browser",
        env=host.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    intro = await proc.stdout.readline()
    url = (await proc.stdout.readline()).decode().strip()
    await host.consent(url)
    out, err = await proc.communicate()
    host.seen.append((intro + out + err).decode())
    assert proc.returncode == 0, err.decode()
    return subprocess.CompletedProcess(args, proc.returncode, intro + out, err)


async def test_connect_refresh_restart_and_disconnect_through_the_real_vault(host: Host) -> None:
    connected = await connect_google(host)
    assert b"google connected for every agent" in connected.stdout
    listed = await host.cli("apps", "list")
    assert "google" in listed.stdout and "*" in listed.stdout

    async with await host.agent() as agent:
        first = await agent.get(GMAIL, headers=PLACEHOLDER)
        host.fake.expire_access_tokens()
        refreshed = await agent.get(GMAIL, headers=PLACEHOLDER)
    assert first.status_code == refreshed.status_code == 200
    assert host.fake.grants == ["authorization_code", "refresh_token"]

    # Sealed in vault.db, so a restart keeps the connection and the refreshed access token.
    await host.stop()
    await host.start()
    async with await host.agent() as agent:
        after_restart = await agent.get(GMAIL, headers=PLACEHOLDER)
    assert after_restart.status_code == 200
    assert host.fake.grants == ["authorization_code", "refresh_token"]

    gone = await host.cli("apps", "disconnect", "google")
    assert gone.returncode == 0, gone.stderr
    assert "revoked at the provider" in gone.stdout
    assert host.fake.refresh_tokens == {}
    async with await host.agent() as agent:
        refused = await agent.get(GMAIL, headers=PLACEHOLDER)
    assert refused.status_code == 401 and refused.json()["error"] == "app_not_connected"
    assert "no apps connected" in (await host.cli("apps", "list")).stdout

    secrets = [*host.fake.issued, CLIENT_SECRET]
    assert len(host.fake.issued) == 3  # the refresh token and two access tokens
    stored = host.stored_bytes()
    assert [s for s in secrets if s in stored] == []
    assert [s for s in secrets for text in host.seen if s in text] == []


async def test_bad_connects_get_clear_errors_and_store_nothing(host: Host) -> None:
    unknown = await host.cli("apps", "disconnect", "google")
    assert unknown.returncode != 0 and "no 'google' connection" in unknown.stderr

    def begin(
        provider: str = "google", redirect_uri: str = "http://127.0.0.1:9/cb", client_secret: str = ""
    ) -> vault_ctl.AppBegin:
        return vault_ctl.AppBegin(
            provider=provider, client_id=CLIENT_ID, redirect_uri=redirect_uri, client_secret=client_secret
        )

    for request, message in [
        (begin(redirect_uri="https://evil.example/cb"), "redirect must be http://127.0.0.1"),
        (begin(provider="dropbox"), "no app 'dropbox'"),
        (
            vault_ctl.AppBegin(
                provider="google", client_id=CLIENT_ID, redirect_uri="http://127.0.0.1:9/cb", scopes=["a b"]
            ),
            "not an OAuth scope",
        ),
    ]:
        with pytest.raises(control.ControlError, match=message):
            await control.ask(host.cfg, vault_ctl.APPS_BEGIN, request)
    begun = await control.ask(host.cfg, vault_ctl.APPS_BEGIN, begin(client_secret=CLIENT_SECRET))
    with pytest.raises(control.ControlError, match=r"google refused the code \(invalid_grant"):
        await control.ask(host.cfg, vault_ctl.APPS_FINISH, vault_ctl.AppFinish(state=begun.state, code="made-up"))
    with pytest.raises(control.ControlError, match="no connect waits for that answer"):
        await control.ask(host.cfg, vault_ctl.APPS_FINISH, vault_ctl.AppFinish(state=begun.state, code="made-up"))
    assert (await control.ask(host.cfg, vault_ctl.APPS_LIST, Nothing())).apps == []


async def test_a_browser_on_another_machine_hands_the_answer_back_by_paste(host: Host) -> None:
    secret_file = host.home / "github-client-secret"
    secret_file.write_text(CLIENT_SECRET)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "clawden", "apps", "connect", "github", "--client-id", CLIENT_ID, "--agent", "*"],
        *["--client-secret-file", str(secret_file), "--no-browser", "--paste"],
        env=host.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    await proc.stdout.readline()
    url = (await proc.stdout.readline()).decode().strip()
    assert b"paste its address here" in await proc.stdout.readline()
    redirected = await host.consent(url, follow=False)
    proc.stdin.write(b"http://127.0.0.1:1/callback?code=forged&state=wrong\n")  # not ours: refused, still waiting
    await proc.stdin.drain()
    assert b"not the address" in await proc.stderr.readline()
    proc.stdin.write(redirected.encode() + b"\n")
    await proc.stdin.drain()
    out, err = await proc.communicate()
    host.seen.append((out + err).decode())
    assert proc.returncode == 0, err.decode()
    assert b"github connected for every agent" in out

    async with await host.agent() as agent:
        user = await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"})
    assert user.status_code == 200 and user.json()["login"] == "ada"
    assert [s for s in [*host.fake.issued, CLIENT_SECRET] for text in host.seen if s in text] == []


async def test_github_connects_by_device_code_with_no_browser_or_redirect(host: Host) -> None:
    host.fake.device_interval = 1  # GitHub asks for 5 s between polls; the fake for 1
    with pytest.raises(control.ControlError, match="google has no device-code flow"):
        await control.ask(
            host.cfg,
            vault_ctl.APPS_DEVICE_BEGIN,
            vault_ctl.AppDeviceBegin(provider="google", client_id=CLIENT_ID),
        )
    proc = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "clawden",
            "apps",
            "connect",
            "github",
            "--client-id",
            CLIENT_ID,
            "--device",
            "--agent",
            "*",
        ],
        env={**host.env, "CLAWDEN_APP_CLIENT_SECRET": CLIENT_SECRET},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    told = (await proc.stdout.readline()).decode()
    assert "https://github.com/login/device" in told
    user_code = told.split()[-1]
    await eventually(lambda: any(d.last_poll for d in host.fake.devices.values()))  # it waits, politely
    host.fake.approve_device(user_code)  # the owner types it at GitHub's page, on their phone
    out, err = await proc.communicate()
    host.seen.append((told.encode() + out + err).decode())
    assert proc.returncode == 0, err.decode()
    assert b"github connected for every agent" in out
    assert host.fake.grants == ["device_code"]

    async with await host.agent() as agent:
        user = await agent.get("https://api.github.com/user", headers={"user-agent": "agent/1"})
    assert user.status_code == 200 and user.json()["login"] == "ada"
    assert [s for s in [*host.fake.issued, CLIENT_SECRET] for text in host.seen if s in text] == []


async def test_an_app_connected_naming_no_agent_group_is_refused_while_the_groups_cannot_be_told(host: Host) -> None:
    """Least privilege (`clawden.grants`): a mailbox's tokens reach the groups named, never every group unasked; with
    no router to say which groups there are, the owner names them, and no consent page is opened."""
    done = await host.cli("apps", "connect", "google", "--client-id", CLIENT_ID, "--no-browser")
    assert done.returncode != 0 and not done.stdout
    assert "say which agent groups may use google" in done.stderr and "--agent '*'" in done.stderr
    assert "no apps connected" in (await host.cli("apps", "list")).stdout
