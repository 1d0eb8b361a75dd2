"""A service process loads what it uses: nats-py would load aiohttp (10 MB, for WebSocket transport
Clawden never speaks) in every process once a bridge's dependency installs it."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
assert "aiohttp" not in sys.modules, "aiohttp loaded by " + {module!r}
import nats.aio.transport
assert nats.aio.transport.aiohttp is None
import aiohttp  # still there for a bridge that wants it
print("ok")
"""


@pytest.mark.parametrize("module", ["services.router.service", "services.runner.service", "clawden.cli"])
def test_nats_is_loaded_without_aiohttp_which_stays_importable(module: str) -> None:
    pytest.importorskip("aiohttp")
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module)], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr
