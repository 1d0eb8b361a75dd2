"""A running bridge takes a new keys/<name> by itself: the Telegram bridge process against the fake Bot API, alone
and under `clawden up`'s supervisor, after the owner replaced a token Telegram stopped honouring."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clawden import natsserver, setup
from clawden.runtime import EX_RESTART
from clawden.supervisor import Child, Supervisor
from tests.channels.harness import BridgeProcess, Bus, until
from tests.channels.test_telegram_bridge import trouble_of
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.telegram import FakeTelegram

NEW_TOKEN = "7012345678:AANewTokenAfterResetToken-0123456789"  # BotFather's Reset Token: same bot, new token


def write_key(path: Path, token: str) -> None:
    """As an owner does it, `echo <token> > keys/telegram`: truncated, then written, in place."""
    path.write_text(token + "\n")
    path.chmod(0o600)


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, fake: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(tmp_path / "home", nats_server.url, fake)
    yield b
    b.close()
    output = b.output()
    assert fake.token not in output and NEW_TOKEN not in output, "a bot token reached the log"


async def test_a_revoked_token_replaced_in_keys_restarts_the_bridge_with_it_and_the_waiting_answer_goes_out_once(
    fake: FakeTelegram, nats_server: NatsServer, bus: Bus, bridge: BridgeProcess
) -> None:
    env = bridge.env()
    del env["CLAWDEN_TELEGRAM_TOKEN"]  # the token is in keys/telegram, as `clawden init` leaves it
    key = bridge.home / "keys" / "telegram"
    write_key(key, fake.token)
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    bridge.start(env=env)

    fake.token = NEW_TOKEN  # the owner reset the token in @BotFather: the old one is refused from now on
    trouble = await eventually(lambda: trouble_of(nats_server.url), 20, bridge.output)
    assert trouble.startswith("Telegram refuses the bot token since"), trouble
    assert trouble.endswith("the bridge notices the new file and restarts with it"), trouble
    await bus.send(chat["id"], "hello Ada", id="a1")
    await until(lambda: "outbound a1 failed (Unauthorized)" in bridge.output(), 20, bridge.output)

    write_key(key, NEW_TOKEN)
    assert bridge.proc is not None and bridge.proc.wait(30) == EX_RESTART
    assert "keys/telegram changed; restarting to use it" in bridge.output()

    bridge.mark()
    bridge.start(env=env)  # what systemd, launchd or `clawden up` does with that exit
    assert await trouble_of(nats_server.url) == ""
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and fake.texts(chat) == ["hello Ada"]  # handed back at the stop, sent once after


async def test_a_bad_or_half_written_key_is_said_once_and_the_bridge_keeps_running(
    fake: FakeTelegram, bridge: BridgeProcess
) -> None:
    env = bridge.env()
    del env["CLAWDEN_TELEGRAM_TOKEN"]
    key = bridge.home / "keys" / "telegram"
    write_key(key, fake.token)
    bridge.start(env=env)

    key.write_text("")  # truncated, the new token not written yet
    said = "keys/telegram is not taken: it is empty; the bridge goes on with the credential it has"
    await until(lambda: said in bridge.output(), 15, bridge.output)
    key.chmod(0o644)
    await until(lambda: "keys/telegram is not taken: it is readable by other users" in bridge.output(), 15)
    key.unlink()
    await until(lambda: "keys/telegram is not taken: it is gone" in bridge.output(), 15)
    write_key(key, fake.token)  # the same token back: nothing to restart for
    key.write_text("")
    await until(lambda: bridge.output().count(said) == 2, 15, bridge.output)
    assert bridge.proc is not None and bridge.proc.poll() is None
    assert "restarting" not in bridge.output()


@pytest.fixture
def up(tmp_path: Path, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> Iterator[Up]:
    """`clawden up`'s supervisor of the Telegram bridge (and the scheduler, which makes the streams a bridge may not
    make itself), its token in keys/telegram; started by the test, which writes the key first."""
    monkeypatch.setenv("CLAWDEN_TELEGRAM_API_URL", fake.url)
    monkeypatch.setenv("CLAWDEN_TELEGRAM_POLL_TIMEOUT", "2")
    monkeypatch.delenv("CLAWDEN_TELEGRAM_TOKEN", raising=False)
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    cfg = setup.init(tmp_path)
    running = Up(Supervisor(cfg, ("scheduler", "channel@telegram"), out=io.StringIO()), cfg.keys_dir / "telegram")
    yield running
    running.sup.stop()


@dataclass
class Up:
    sup: Supervisor
    key: Path

    @property
    def bridge(self) -> Child:
        return self.sup.children[1]

    def said(self) -> str:
        assert isinstance(self.sup.out, io.StringIO)
        return self.sup.out.getvalue()

    def until(self, text: str, after: str = "", timeout: float = 60) -> None:
        """Polls the supervisor as `clawden up` does until its console says `text` (after `after`)."""
        deadline = time.monotonic() + timeout
        while text not in (self.said().split(after, 1)[-1] if after else self.said()):
            assert time.monotonic() < deadline, self.said()
            self.sup.poll()
            time.sleep(0.05)


@pytest.mark.nats
def test_up_starts_a_bridge_that_restarted_for_a_new_key_again_at_once(fake: FakeTelegram, up: Up) -> None:
    write_key(up.key, fake.token)
    up.sup.start_nats()
    up.until("channel@telegram ready")

    fake.token = NEW_TOKEN
    write_key(up.key, NEW_TOKEN)
    up.until("channel@telegram restarting: keys/telegram changed")
    assert up.bridge.proc is None and up.bridge.next_start <= time.monotonic() and up.bridge.restarts == 0
    up.until("channel@telegram ready", after="restarting: keys/telegram changed")
    assert "exited with" not in up.said(), up.said()


@pytest.mark.nats
def test_up_starts_a_bridge_whose_token_was_refused_at_its_start_again_once_keys_holds_a_new_one(
    fake: FakeTelegram, up: Up
) -> None:
    """A token Telegram refuses at the bridge's start stops it for good (EX_CONFIG: restarting would only repeat
    that). The owner mends keys/telegram: `clawden up` starts the bridge again with it, no restart of `up` asked."""
    write_key(up.key, "7012345678:AATypoInThePastedToken-0123456789")
    up.sup.start_nats()
    up.until("channel@telegram cannot run as configured")
    up.until("not restarting it until keys/telegram holds a new credential")
    assert up.bridge.proc is None and up.bridge.next_start == float("inf")

    write_key(up.key, "")  # half written: not a credential, so not tried
    up.sup.poll()
    assert up.bridge.proc is None and "starting it again" not in up.said()

    write_key(up.key, fake.token)
    up.until("channel@telegram: keys/telegram changed; starting it again")
    up.until("channel@telegram ready", after="starting it again")
    assert up.bridge.failed == ""
