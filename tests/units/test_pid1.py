"""The units for real: systemd as PID 1 in a container built from Debian packages, Clawden installed in it
with `clawden units install --system`, agent containers on the host's engine, the fake model, the fake
Telegram Bot API, the fake Slack and Discord, a real Synapse and a real Postfix + Dovecot on the host's loopback.

The repo, its venv and the interpreter are mounted read-only at their own paths, the home read-write at
its own path (the runner's agent containers mount it from the host), and the container shares the host's
network so that the vault and the bridge reach the fakes, and the host's `clawden chat` reaches NATS, all
on 127.0.0.1. Tests run in file order on one machine; the last one stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from clawden import config as config_mod
from clawden import control, natsserver
from clawden.bus.ctl import router as router_ctl
from clawden.cli import units
from clawden.vaultfiles import SOCKET_NAME
from tests.channels.email_harness import letter, mails, text_of, unique
from tests.channels.matrix_harness import Person
from tests.eventually import eventually
from tests.fakes.anthropic import FakeAnthropic, make_tls, start_in_thread
from tests.fakes.discord import BOT_ID, FakeDiscord
from tests.fakes.slack import BOT_USER, FakeSlack
from tests.fakes.telegram import FakeTelegram
from tests.fakes.whatsapp import APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN, FakeGraph, WebhookSender
from tests.servers.mail.fixture import MailServer
from tests.servers.synapse.fixture import Account, Synapse
from tests.units.machine import LABEL_INSTALL, Machine, booted

pytestmark = pytest.mark.docker

UNITS = [
    "clawden-nats.service",
    *(f"clawden-{s}.service" for s in units.SERVICES),
    units.channel_unit("telegram"),
    units.channel_unit("matrix"),
    units.channel_unit("email"),
    units.channel_unit("slack"),
    units.channel_unit("discord"),
]
ANSWER = 120.0


@dataclass
class Install:
    machine: Machine
    home: Path
    install_id: str
    fake: FakeAnthropic
    telegram: FakeTelegram
    synapse: Synapse
    bot: Account
    mail: MailServer
    mailbox: str
    slack: FakeSlack
    discord: FakeDiscord

    def env(self) -> dict[str, str]:
        return dict(os.environ, CLAWDEN_HOME=str(self.home))


def write_install(
    home: Path,
    fake: FakeAnthropic,
    telegram: FakeTelegram,
    synapse: Synapse,
    bot: Account,
    mail: MailServer,
    mailbox: str,
    slack: FakeSlack,
    discord: FakeDiscord,
) -> str:
    """What the owner sets up before `clawden init`: the config, the model key, the bots' credentials."""
    install_id = f"u{secrets.token_hex(4)}"
    (home / "keys").mkdir(parents=True, mode=0o700)
    tls = make_tls(["api.anthropic.com"], str(home))
    fake_address = fake.call(fake.listen_tls(tls.server_context))
    (home / "config.toml").write_text(f"""\
install_id = "{install_id}"
[nats]
port = {natsserver.free_port()}
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{"api.anthropic.com" = "{fake_address}"}}
[channels.telegram]
api_url = "{telegram.url}"
poll_timeout = 2
poll_grace = 2
[channels.matrix]
homeserver = "{synapse.url}"
sync_timeout = 2
[channels.email]
address = "{mailbox}"
imap_host = "{mail.host}"
imap_port = {mail.imaps_port}
smtp_port = {mail.smtp_port}
ca_file = "{home / "mail-ca.pem"}"
[channels.slack]
api_url = "{slack.url}"
[channels.discord]
api_url = "{discord.url}"
gateway_url = "{discord.gateway_url}"
""")
    (home / "mail-ca.pem").write_bytes(mail.ca_file.read_bytes())  # IMAPS and STARTTLS, verified
    matrix = json.dumps({"access_token": bot.token, "device_id": bot.device_id})
    for name, secret in (
        ("anthropic", f"sk-ant-api03-{secrets.token_urlsafe(24)}"),
        ("telegram", telegram.token),
        ("matrix", matrix),
        ("email", mail.password),
        ("slack", slack.token),
        ("discord", discord.token),
    ):
        (home / "keys" / name).write_text(secret + "\n")
        (home / "keys" / name).chmod(0o600)
    return install_id


@pytest.fixture(scope="module")
def install(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    agent_image: str,
    synapse: Synapse,
    mail_server: MailServer,
) -> Iterator[Install]:
    home = tmp_path_factory.mktemp("pid1") / "home"
    fake = start_in_thread()
    telegram = FakeTelegram().start_in_thread()
    slack = FakeSlack().start_in_thread()
    discord = FakeDiscord().start_in_thread()
    bot = synapse.register("Clawden", displayname="Clawden")
    mailbox = unique("assistant")
    install_id = write_install(home, fake, telegram, synapse, bot, mail_server, mailbox, slack, discord)
    try:
        with booted(
            docker_client,
            f"clawden-pid1-{install_id}",
            labels={LABEL_INSTALL: install_id},
            volumes={str(home): {"bind": str(home), "mode": "rw"}},
        ) as machine:
            machine.env = {"CLAWDEN_HOME": str(home)}
            python = sys.executable
            machine.sh(f"{python} -m clawden init </dev/null")
            print(machine.sh(f"{python} -m clawden units install --system"))
            machine.sh("systemctl start clawden.target")
            yield Install(machine, home, install_id, fake, telegram, synapse, bot, mail_server, mailbox, slack, discord)
    finally:
        for agent in docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={install_id}"}):
            agent.remove(force=True)
        telegram.stop_thread()
        slack.stop_thread()
        discord.stop_thread()
        fake.stop_thread()


def chat_once(install: Install, text: str) -> subprocess.CompletedProcess[str]:
    """The owner's terminal on the host, through the install's NATS (as its `cli` identity)."""
    return subprocess.run(
        [sys.executable, "-m", "clawden", "chat", "--once", text, "--timeout", str(ANSWER)],
        env=install.env(),
        capture_output=True,
        text=True,
        timeout=ANSWER + 30,
    )


async def wire_to_main(
    cfg: config_mod.Config, channel: str, chat_id: str, name: str = "", is_group: bool = False
) -> None:
    """A public chat, wired to agent group `main` (as `clawden wire` does)."""
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel=channel, chat_id=chat_id, name=name, is_group=is_group, policy="public"),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel=channel, chat_id=chat_id, agent_group="main")
    )


def telegram_chat(install: Install, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A private chat with the bot, wired to agent group `main` (as `clawden wire` does)."""
    person = install.telegram.user(name)
    chat = install.telegram.private_chat(person)
    asyncio.run(wire_to_main(config_mod.load(install.home), "telegram", str(chat["id"]), name=name))
    return person, chat


def telegram_answers(install: Install, chat: dict[str, Any], count: int) -> list[str]:
    install.machine.wait(
        lambda: len(install.telegram.texts(chat)) >= count, ANSWER, f"telegram answers: {install.telegram.texts(chat)}"
    )
    return install.telegram.texts(chat)


def test_every_unit_of_the_target_is_active(install: Install) -> None:
    m = install.machine
    assert {u: m.state(u) for u in [units.TARGET, *UNITS]} == dict.fromkeys([units.TARGET, *UNITS], "active")
    # Each runs as its unit says: notify, watchdog on, its own NATS identity as a credential.
    show = m.sh("systemctl show -p Type -p WatchdogUSec clawden-router")
    assert "Type=notify" in show and "WatchdogUSec=30s" in show
    assert m.sh("ls /run/credentials/clawden-router.service").split() == ["nats.nk"]


def test_a_terminal_chat_and_a_telegram_chat_are_answered(install: Install) -> None:
    out = chat_once(install, "hello from the terminal")
    assert out.returncode == 0, out.stderr + install.machine.journal()
    assert out.stdout.startswith("main> echo: ") and "hello from the terminal" in out.stdout
    # The root vault gave the main group's gateway socket to the image's user alone (its unit keeps CAP_CHOWN).
    sock = config_mod.load(install.home).gateway_dir / "main" / SOCKET_NAME
    assert install.machine.sh(f"stat -c '%a %u' {sock}").strip() == "600 1000"
    assert "open to every local user" not in install.machine.sh("journalctl --no-pager -u clawden-vault")
    ada, chat = telegram_chat(install, "Ada")
    install.telegram.send(chat, ada, "hello from telegram")
    [answer] = telegram_answers(install, chat, 1)
    assert "hello from telegram" in answer


def test_a_matrix_room_is_answered(install: Install) -> None:
    async def converse() -> str:
        ada = Person(install.synapse, install.synapse.register("Ada"))
        try:
            room = await ada.create_room(invite=[install.bot.user_id], direct=True)

            async def joined() -> bool:  # the bridge joins on the invite
                return await ada.membership(room, install.bot.user_id) == "join"

            await eventually(joined, 30, "the bridge never joined on the invite")
            cfg = config_mod.load(install.home)
            await wire_to_main(cfg, "matrix", room, name="Ada")
            await ada.say(room, "hello from matrix")
            [answer] = await eventually(
                lambda: ada.messages_from(room, install.bot.user_id),
                ANSWER,
                lambda: f"no answer in the room:\n{install.machine.journal()}",
            )
            return str(answer["content"]["body"])
        finally:
            await ada.close()

    answer = asyncio.run(converse())
    assert answer.startswith("echo: ") and "hello from matrix" in answer, install.machine.journal()


def test_a_slack_dm_and_a_mention_in_a_channel_are_answered(install: Install) -> None:
    slack = install.slack
    ada = slack.user("ada")
    dm, general = slack.dm(ada), slack.channel("general", ada)
    cfg = config_mod.load(install.home)

    async def wire() -> None:
        for chat, group in ((dm, False), (general, True)):
            await wire_to_main(cfg, "slack", chat, name=chat, is_group=group)

    asyncio.run(wire())
    slack.say(dm, ada, "hello from a slack dm")
    slack.say(general, ada, f"<@{BOT_USER}> hello from a slack channel")
    install.machine.wait(lambda: bool(slack.texts(dm)) and bool(slack.texts(general)), ANSWER, "no slack answers")
    assert "hello from a slack dm" in slack.texts(dm)[0], install.machine.journal()
    assert "hello from a slack channel" in slack.texts(general)[0]


def test_a_discord_dm_and_a_mention_in_a_channel_are_answered(install: Install) -> None:
    discord = install.discord
    ada = discord.user("ada")
    dm, general = discord.dm(ada), discord.channel("general")
    cfg = config_mod.load(install.home)

    async def wire() -> None:
        for chat, group in ((dm, False), (general, True)):
            await wire_to_main(cfg, "discord", chat, name=chat, is_group=group)

    asyncio.run(wire())
    discord.say(dm, ada, "hello from a discord dm")
    discord.say(general, ada, f"<@{BOT_ID}> hello from a discord channel")
    install.machine.wait(lambda: bool(discord.texts(dm)) and bool(discord.texts(general)), ANSWER, "no discord answers")
    assert "hello from a discord dm" in discord.texts(dm)[0], install.machine.journal()
    assert "hello from a discord channel" in discord.texts(general)[0]


def test_an_email_is_answered_in_its_thread(install: Install) -> None:
    ada = unique("ada")

    async def converse() -> list[EmailMessage]:
        cfg = config_mod.load(install.home)
        await wire_to_main(cfg, "email", "*")
        install.mail.send(letter(ada, install.mailbox, "hello from email", subject="Hi"))
        return await mails(install.mail, ada, 1, ANSWER, context=install.machine.journal)

    [answer] = asyncio.run(converse())
    assert answer["Subject"] == "Re: Hi" and "hello from email" in text_of(answer), install.machine.journal()


def test_a_whatsapp_message_comes_in_through_the_webhook_front_door_unit(install: Install) -> None:
    """Configured afterwards, as an owner adds WhatsApp to a running install: `units install` again enables
    clawden-webhooks.service and the bridge's instance, each under its own identity, and Meta's signed
    delivery to the door is answered through the Graph API."""
    m, home = install.machine, install.home
    door = natsserver.free_port()
    graph = FakeGraph(WebhookSender(f"http://127.0.0.1:{door}/hooks/whatsapp")).start_in_thread()
    try:
        with (home / "config.toml").open("a") as f:
            f.write(
                f'[webhooks]\nlisten = "127.0.0.1:{door}"\n[channels.whatsapp]\n'
                f'graph_url = "{graph.url}/v21.0"\nphone_number_id = "{PHONE_NUMBER_ID}"\n'
            )
        for name, secret in (
            ("whatsapp", graph.token),
            ("whatsapp.app_secret", APP_SECRET),
            ("whatsapp.verify_token", VERIFY_TOKEN),
        ):
            (home / "keys" / name).write_text(secret + "\n")
            (home / "keys" / name).chmod(0o600)
        m.sh(f"{sys.executable} -m clawden units install --system")
        m.systemctl("start clawden.target")
        m.wait(
            lambda: (
                m.state("clawden-webhooks.service") == "active" and m.state(units.channel_unit("whatsapp")) == "active"
            ),
            ANSWER,
            "the WhatsApp units never came up",
        )
        ada = "447700900301"

        async def converse() -> int:
            cfg = config_mod.load(home)
            await wire_to_main(cfg, "whatsapp", ada, name="Ada")
            return (await graph.user_writes(ada, "hello from whatsapp"))[1]  # the door is READY: it listens

        assert asyncio.run(converse()) == 200
        m.wait(lambda: bool(graph.to(ada)), ANSWER, "no WhatsApp answer")
        assert "hello from whatsapp" in graph.to(ada)[0].text
        assert "clawden-webhooks" in m.sh("journalctl --no-pager -o cat -t clawden-webhooks -n 20")
    finally:
        graph.stop_thread()


def test_the_web_unit_signs_in_with_a_one_time_link_from_its_own_database(install: Install) -> None:
    """Configured afterwards: `units install` again enables clawden-web.service under its own identity; in its
    sandbox it keeps web.db in the home (the link `clawden web login` asks it for), serves the link's page
    with its protective headers, and logs with its service field."""
    m, home = install.machine, install.home
    port = natsserver.free_port()
    with (home / "config.toml").open("a") as f:
        f.write(f'[web]\nlisten = "127.0.0.1:{port}"\n')
    m.sh(f"{sys.executable} -m clawden units install --system")
    m.systemctl("start clawden.target")
    m.wait(lambda: m.state("clawden-web.service") == "active", ANSWER, "the web unit never came up")
    link = m.sh(f"{sys.executable} -m clawden web login --user web:owner").split()[-1]
    assert link.startswith(f"http://127.0.0.1:{port}/login/"), link
    page = httpx.get(link, timeout=30)
    assert page.status_code == 200 and 'name="csrf"' in page.text, page.text[:500]
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"http://127.0.0.1:{port}/login/not-a-link", timeout=30).status_code == 410
    records = [json.loads(line) for line in m.sh("journalctl -o json --no-pager -u clawden-web.service").splitlines()]
    assert any(r.get("CLAWDEN_SERVICE") == "web" for r in records), m.sh("journalctl --no-pager -u clawden-web")


def test_restarting_a_bridge_restarts_only_it_while_the_terminal_keeps_talking(install: Install) -> None:
    m, bridge = install.machine, units.channel_unit("telegram")
    before = {u: m.main_pid(u) for u in UNITS}
    answered: list[subprocess.CompletedProcess[str]] = []
    talker = threading.Thread(target=lambda: answered.append(chat_once(install, "still there?")))
    talker.start()
    m.sh(f"systemctl restart {bridge}")
    talker.join(ANSWER + 60)
    after = {u: m.main_pid(u) for u in UNITS}
    assert after[bridge] != before[bridge]
    assert {u: p for u, p in after.items() if u != bridge} == {u: p for u, p in before.items() if u != bridge}
    [out] = answered
    assert out.returncode == 0 and "still there?" in out.stdout, out.stderr
    # The restarted bridge answers again.
    bea, chat = telegram_chat(install, "Bea")
    install.telegram.send(chat, bea, "and after the restart?")
    assert "and after the restart?" in telegram_answers(install, chat, 1)[-1]


def test_the_journal_carries_each_service_and_session_as_fields(install: Install) -> None:
    m = install.machine
    records = [json.loads(line) for line in m.sh("journalctl -o json --no-pager -u 'clawden*'").splitlines()]
    ours = [r for r in records if str(r.get("SYSLOG_IDENTIFIER", "")).startswith("clawden-")]
    assert {r["SYSLOG_IDENTIFIER"] for r in ours} >= {f"clawden-{s}" for s in units.SERVICES}
    by_service = {r.get("CLAWDEN_SERVICE") for r in ours if r.get("_SYSTEMD_UNIT") == "clawden-router.service"}
    assert "router" in by_service, sorted(map(str, by_service))
    sessions = {r["CLAWDEN_SESSION"] for r in ours if r.get("CLAWDEN_SESSION")}
    assert sessions, "no record names a session after the chats"
    session = sorted(sessions)[0]
    filtered = m.sh(f"journalctl -o json --no-pager CLAWDEN_SESSION={session}").splitlines()
    assert filtered and all(json.loads(line)["CLAWDEN_SESSION"] == session for line in filtered)


def test_a_service_killed_with_sigkill_is_restarted_by_systemd(install: Install) -> None:
    m, unit = install.machine, "clawden-scheduler.service"
    killed = m.main_pid(unit)
    m.sh(f"systemctl kill -s KILL {unit}")
    m.wait(lambda: m.state(unit) == "active" and m.main_pid(unit) not in (0, killed), 30, f"{unit} not restarted")
    assert int(m.sh(f"systemctl show -p NRestarts --value {unit}")) >= 1


def test_a_wedged_service_is_restarted_by_the_watchdog_while_the_others_keep_pinging(install: Install) -> None:
    m, unit = install.machine, "clawden-approvals.service"
    wedged = m.main_pid(unit)
    m.sh(f"systemctl kill -s STOP {unit}")  # its event loop stops, and with it the WATCHDOG=1 pings
    m.wait(lambda: m.state(unit) == "active" and m.main_pid(unit) not in (0, wedged), 90, f"{unit} not restarted")
    assert "Watchdog timeout" in m.sh(f"journalctl --no-pager -u {unit}")
    # Everyone else has been up for longer than WatchdogSec by now, on their pings alone.
    steady = ["clawden-nats.service", "clawden-router.service", "clawden-runner.service", "clawden-vault.service"]
    assert {u: m.sh(f"systemctl show -p NRestarts --value {u}").strip() for u in steady} == dict.fromkeys(steady, "0")


def test_stopping_the_target_stops_every_unit_cleanly_and_nats_last(install: Install) -> None:
    m = install.machine
    m.sh("systemctl stop clawden.target")  # returns once the target is down; its units follow
    m.wait(lambda: all(m.state(u) == "inactive" for u in UNITS), 60, "units still running")
    results = {u: m.sh(f"systemctl show -p Result --value {u}").strip() for u in UNITS}
    assert results == dict.fromkeys(UNITS, "success")  # SIGTERM drained, exit 0: not a failure

    def stopped_at(unit: str) -> int:
        return int(m.sh(f"systemctl show -p InactiveEnterTimestampMonotonic --value {unit}"))

    assert stopped_at("clawden-nats.service") >= max(stopped_at(u) for u in UNITS[1:])
