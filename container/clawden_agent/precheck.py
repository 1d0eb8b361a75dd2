"""A scheduled task's pre-check script: bash, run in the agent's container before the model is woken, so
"only if there is news" costs no tokens when there is none.

The last line the script prints must be a JSON object: `{"wakeAgent": true, "data": ...}` runs the task
with `data` shown to the agent beside the prompt; `{"wakeAgent": false}` skips this run. Anything else
(no such line, a non-zero exit, a timeout) is an error: the run is skipped and the chat is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 30.0
PIPE_GRACE = 2.0  # seconds to read what is left in the pipes after the script's group was killed
MAX_OUTPUT = 1024 * 1024  # bytes of stdout read; a script printing more is cut off and fails
MAX_DATA = 16 * 1024  # characters of `data` shown to the agent
MAX_SCRIPT = 16 * 1024


@dataclass(frozen=True)
class Verdict:
    wake: bool
    data: str = ""
    error: str = ""


async def run(script: str, cwd: Path, env: Mapping[str, str], timeout: float = TIMEOUT) -> Verdict:
    """Run `script` with bash in `cwd` and read its verdict; never raises for the script's faults."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return Verdict(False, error=f"could not start bash: {exc}")
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.create_task(_tail(proc.stderr))
    try:
        async with asyncio.timeout(timeout):
            out = await _head(proc.stdout, MAX_OUTPUT + 1)
            if len(out) > MAX_OUTPUT:
                return Verdict(False, error=f"it printed more than {MAX_OUTPUT // 1024} KiB")
            code = await proc.wait()
            err = await errors
    except TimeoutError:
        return Verdict(False, error=f"it ran longer than {timeout:.0f} seconds")
    finally:
        _kill(proc)  # what it left running in its process group goes with it
        errors.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await errors
        await _reap(proc)
    if code != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no error output"]
        return Verdict(False, error=f"it exited with {code}: {last[0][:300]}")
    return verdict(out.decode("utf-8", "replace"))


def verdict(output: str) -> Verdict:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return Verdict(False, error='it printed nothing; its last line must be JSON like {"wakeAgent": true}')
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("wakeAgent"), bool):
        return Verdict(False, error=f'its last line is not JSON like {{"wakeAgent": true}}: {lines[-1][:200]}')
    data = answer.get("data")
    shown = "" if data is None else data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return Verdict(answer["wakeAgent"], data=shown[:MAX_DATA])


async def _head(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Up to the end of the stream, or `limit` bytes, whichever comes first."""
    out = b""
    while len(out) < limit and (chunk := await stream.read(limit - len(out))):
        out += chunk
    return out


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """All of it read (a full pipe would stall the script), the last `keep` bytes kept."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-keep:]
    return kept


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Read the rest of the pipes (asyncio sees the exit only then), but not forever: a process the
    script moved out of its group can hold them open after the group is killed."""
    try:
        async with asyncio.timeout(PIPE_GRACE):
            await proc.communicate()
    except TimeoutError:
        transport = getattr(proc, "_transport", None)  # asyncio offers no public way to drop the pipes
        if transport is not None:
            transport.close()


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
