"""`clawden pair`: a code handed out while the channel's bridge is down would wait for nobody, and says so."""

from __future__ import annotations

import subprocess
import sys

from clawden.cli.commands.router import degraded_warning
from tests.ops.conftest import Core


def test_a_code_for_a_channel_whose_bridge_is_down_comes_with_a_warning(core: Core) -> None:
    """The bridge has a token (so `pair` takes the channel) but does not run: `clawden status` shows it DOWN."""
    out = subprocess.run(
        [sys.executable, "-m", "clawden", "pair", "telegram"],
        env=core.env() | {"CLAWDEN_TELEGRAM_TOKEN": "123456:not-a-real-token"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Pairing code for telegram: "), out.stdout
    assert out.stderr.startswith(
        "warning: the telegram bridge is not running (`clawden status` shows it DOWN): nobody there reads the code"
        " until it runs; "
    ), out.stderr


def test_a_code_for_a_degraded_bridge_says_what_holds_it_back() -> None:
    """A bridge that runs but cannot work answers its ping with its trouble (`Pong.trouble`): the code would be
    read only once that is mended, so `pair` says it with the bridge's own words."""
    trouble = "Telegram refused the bot token (401 Unauthorized); put the token @BotFather gave you in keys/telegram"

    said = degraded_warning("telegram", trouble)

    assert said == (
        f"the telegram bridge is degraded (`clawden status`): {trouble}. A message with the code is read only once"
        " that is mended, and pairs only if that is before the code expires"
    )
    assert degraded_warning("telegram", "") == ""  # an untroubled bridge: nothing to say
