"""keywatch: which changes of keys/<name> restart a running bridge, and which are waited out and said once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from clawden import keywatch, setup
from clawden.keywatch import KeyFile, Look, examine, judge
from services.channels.matrix import parse_credential
from services.channels.slack import parse_tokens

TOKEN = b"7012345678:AAFakeTokenForTestsOnly-abcdefghijklmn\n"
DIGEST = hashlib.sha256(TOKEN).hexdigest()


@pytest.mark.parametrize(
    ("data", "mode", "check", "problem"),
    [
        (None, 0, None, "it is gone"),
        (TOKEN, 0o100640, None, "it is readable by other users; run `chmod 600` on it"),
        (b" \n", 0o100600, None, "it is empty"),
        (b"\xff\xfe token", 0o100600, None, "it is not text (UTF-8)"),
        # Each bridge's own reading: Slack's needs both tokens, Matrix's the JSON the login writes.
        (b"xoxb-1-2-3\n", 0o100600, parse_tokens, "the Slack credential needs both the bot token (xoxb-…)"),
        (b'{"access_tok', 0o100600, parse_credential, "keys/matrix is not the JSON `clawden channels login matrix`"),
    ],
)
def test_a_file_the_bridge_would_refuse_at_its_start_is_not_taken(
    data: bytes | None, mode: int, check: keywatch.Check | None, problem: str
) -> None:
    look = examine(data, mode, check)
    assert look.digest == "" and look.problem.startswith(problem)
    assert judge(DIGEST, look) == "wait"


def test_a_credential_the_bridge_would_take_is_judged_by_its_bytes() -> None:
    assert examine(TOKEN, 0o100600) == Look(digest=DIGEST)
    assert judge(DIGEST, examine(TOKEN, 0o100600)) == "same"
    assert judge(DIGEST, examine(b"7012345678:AANewToken\n", 0o100600)) == "restart"
    assert judge(DIGEST, examine(TOKEN.strip(), 0o100600)) == "restart"  # other bytes; a restart costs little
    slack = b"xoxb-1-2-3 xapp-1-A-4\n"
    assert judge(DIGEST, examine(slack, 0o100600, parse_tokens)) == "restart"


def test_a_file_is_read_again_only_when_its_stat_changed(tmp_path: Path) -> None:
    path = tmp_path / "telegram"
    path.write_bytes(TOKEN)
    path.chmod(0o600)
    key = KeyFile(path, "keys/telegram", None)
    key.taken = (key.look() or Look()).digest
    assert key.taken == DIGEST and key.look() is None

    path.chmod(0o644)
    assert (look := key.look()) is not None and judge(key.taken, look) == "wait"
    path.chmod(0o600)
    assert (look := key.look()) is not None and judge(key.taken, look) == "same"  # the same bytes again
    path.unlink()
    assert key.look() == Look(problem="it is gone") and key.look() is None  # gone, and still gone
    path.write_bytes(b"7012345678:AANewToken\n")
    path.chmod(0o600)
    assert (look := key.look()) is not None and judge(key.taken, look) == "restart"


def test_nothing_is_watched_for_a_credential_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = setup.init(tmp_path)
    (cfg.keys_dir / "telegram").write_bytes(TOKEN)
    (cfg.keys_dir / "telegram").chmod(0o600)
    monkeypatch.setenv("CLAWDEN_TELEGRAM_TOKEN", TOKEN.decode().strip())
    assert KeyFile.of(cfg, "telegram") is None
    monkeypatch.delenv("CLAWDEN_TELEGRAM_TOKEN")
    key = KeyFile.of(cfg, "telegram")
    assert key is not None and key.path == cfg.keys_dir / "telegram" and key.taken == DIGEST


class Scripted(KeyFile):
    """The looks a file gave, one per poll; then it stays as it was."""

    def __init__(self, *looks: Look | None) -> None:
        super().__init__(Path("/nonexistent"), "keys/telegram", None)
        self.taken = DIGEST
        self.looks = list(looks)

    def look(self) -> Look | None:
        return self.looks.pop(0) if self.looks else None


class Context:
    """The part of ServiceContext the watcher uses."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.restarted: list[str] = []

    def restart(self, why: str) -> None:
        self.restarted.append(why)
        self.stopping.set()


async def test_a_half_written_file_is_said_once_and_the_finished_one_restarts_the_bridge(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(keywatch, "EVERY", 0.0)
    key = Scripted(
        Look(problem="it is empty"),  # truncated by `echo … >`, not written yet
        None,
        Look(problem="it is empty"),  # touched again, still empty: not said again
        Look(digest=DIGEST),  # the old token put back: nothing to do
        Look(problem="it is empty"),  # and emptied once more: said again, as it is news
        Look(digest="new"),
    )
    ctx = Context()
    caplog.set_level(logging.INFO, "clawden.channels")
    await asyncio.wait_for(keywatch.watch(key, ctx), 10)  # type: ignore[arg-type]

    assert ctx.restarted == ["keys/telegram changed"]
    assert [r.getMessage() for r in caplog.records] == [
        "keys/telegram is not taken: it is empty; the bridge goes on with the credential it has",
        "keys/telegram is not taken: it is empty; the bridge goes on with the credential it has",
        "keys/telegram changed; restarting to use it",
    ]


async def test_the_watcher_ends_with_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Context()
    watching = asyncio.create_task(keywatch.watch(Scripted(), ctx))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    ctx.stopping.set()
    await asyncio.wait_for(watching, 5)  # at once, not after its next look
    assert ctx.restarted == []
