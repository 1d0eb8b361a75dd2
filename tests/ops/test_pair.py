"""`clawden pair`: a code handed out while the channel's bridge is down would wait for nobody, and says so."""

from __future__ import annotations

import subprocess
import sys

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
