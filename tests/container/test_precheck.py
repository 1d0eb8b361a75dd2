"""The pre-check runner on its own: a script's verdict, and scripts that misbehave."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent import precheck


def test_a_script_whose_escaped_child_holds_its_output_open_still_ends_at_the_timeout(tmp_path: Path) -> None:
    script = "setsid sleep 20 & echo '{\"wakeAgent\": true}'"

    verdict = asyncio.run(asyncio.wait_for(precheck.run(script, tmp_path, dict(os.environ), timeout=1), 30))

    assert verdict == precheck.Verdict(False, error="it ran longer than 1 seconds")


def test_a_plain_yes_wakes_the_agent_with_its_data(tmp_path: Path) -> None:
    verdict = asyncio.run(precheck.run('echo \'{"wakeAgent": true, "data": {"n": 2}}\'', tmp_path, dict(os.environ)))

    assert verdict == precheck.Verdict(True, data='{"n": 2}')
