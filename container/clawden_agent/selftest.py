"""At container start: does this container trust the vault gateway's CA? Fail loudly if not.

Two checks through the relay, against a host the gateway answers itself (never forwarded):
Python's default TLS context (SSL_CERT_FILE), and the Claude Code CLI with the very environment
it runs under (NODE_EXTRA_CA_CERTS and its own certificate-store rules), playing one model turn.
The Claude Code check costs about half a second of CPU, so a pass is remembered in the group's
cache folder (`CLAWDEN_CACHE_DIR`, shared by the group's sessions) for the same CA, CLI and trust
variables; the Python check runs every time.

Stdlib only: it runs inside the agent image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("clawden_agent.selftest")

SELFTEST_HOST = "selftest.clawden.invalid"
SELFTEST_TEXT = "clawden-selftest-ok"
TRUST_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "CLAUDE_CODE_CERT_STORE",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "NODE_OPTIONS",
)
PYTHON_TIMEOUT = 15.0
CLAUDE_TIMEOUT = 60.0
CACHE_FILE = "selftest.json"


class SelfTestFailed(RuntimeError):
    """The container does not trust the gateway: every HTTPS call of the agent would fail."""


def python_check(relay_port: int, timeout: float = PYTHON_TIMEOUT) -> dict[str, object]:
    """GET https://selftest.clawden.invalid/ through the relay with Python's default trust."""
    context = ssl.create_default_context()  # reads SSL_CERT_FILE, as every Python client here does
    conn = http.client.HTTPSConnection("127.0.0.1", relay_port, context=context, timeout=timeout)
    conn.set_tunnel(SELFTEST_HOST, 443)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    except ssl.SSLCertVerificationError as exc:
        raise SelfTestFailed(
            f"Python does not trust the vault gateway's certificate ({exc.verify_message}); "
            f"SSL_CERT_FILE={os.environ.get('SSL_CERT_FILE', '(unset)')}. The runner must mount the CA "
            "bundle and set the trust variables."
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise SelfTestFailed(
            f"cannot reach the vault gateway through the relay on port {relay_port}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        conn.close()
    if response.status != 200:
        raise SelfTestFailed(f"the gateway's self-test host answered {response.status}: {body[:200]!r}")
    answer: dict[str, object] = json.loads(body)
    return answer


def claude_binary(env: Mapping[str, str]) -> str | None:
    found = shutil.which("claude", path=env.get("PATH"))
    if found:
        return found
    with contextlib.suppress(ImportError, StopIteration, TypeError):
        import importlib.util

        spec = importlib.util.find_spec("claude_agent_sdk")
        if spec is not None and spec.submodule_search_locations:
            bundled = Path(next(iter(spec.submodule_search_locations))) / "_bundled" / "claude"
            if bundled.is_file():
                return str(bundled)
    return None


def claude_check(claude: str, env: Mapping[str, str], timeout: float = CLAUDE_TIMEOUT) -> None:
    """One `claude -p` turn against the self-test host, with Claude Code's own environment."""
    run_env = dict(env, ANTHROPIC_BASE_URL=f"https://{SELFTEST_HOST}")
    run_env.setdefault("ANTHROPIC_API_KEY", "clawden-managed")
    command = [
        claude,
        "-p",
        "--bare",
        "--no-session-persistence",
        "--tools",
        "",
        "--max-turns",
        "1",
        "--model",
        "claude-sonnet-4-5",
        "clawden self-test",
    ]
    try:
        done = subprocess.run(
            command,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=run_env.get("HOME") or "/tmp",
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SelfTestFailed(f"Claude Code's self-test turn did not finish in {timeout:.0f} s") from exc
    if SELFTEST_TEXT not in done.stdout:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise SelfTestFailed(
            "Claude Code cannot reach the model through the vault gateway, most likely because it does not "
            f"trust the gateway's CA (NODE_EXTRA_CA_CERTS={env.get('NODE_EXTRA_CA_CERTS', '(unset)')}): "
            f"exit {done.returncode}: {tail[:500]}"
        )


def trust_fingerprint(env: Mapping[str, str], claude: str) -> str:
    """What the Claude Code check depends on: the CA files' bytes, the CLI binary, the variables."""
    digest = hashlib.sha256()
    for name in TRUST_VARIABLES:
        value = env.get(name, "")
        digest.update(f"{name}={value}\n".encode())
        if value and Path(value).is_file():
            digest.update(Path(value).read_bytes())
    stat = Path(claude).stat()
    digest.update(f"{Path(claude).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _remembered(cache: Path, fingerprint: str) -> bool:
    try:
        return bool(json.loads(cache.read_text()).get("claude_code") == fingerprint)
    except (OSError, ValueError, AttributeError):
        return False


def _remember(cache: Path, fingerprint: str) -> None:
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"claude_code": fingerprint, "at": time.time()}))


def run_checks(env: Mapping[str, str], relay_port: int) -> str:
    """Both checks, blocking; returns a one-line summary or raises SelfTestFailed."""
    started = time.perf_counter()
    answer = python_check(relay_port)
    python_ms = (time.perf_counter() - started) * 1000
    summary = f"python ok in {python_ms:.0f} ms (agent group {answer.get('agent_group')})"
    claude = claude_binary(env)
    if claude is None:
        raise SelfTestFailed("the Claude Code CLI is not in this image")
    fingerprint = trust_fingerprint(env, claude)
    cache = Path(env.get("CLAWDEN_CACHE_DIR") or Path(env.get("HOME") or "/tmp") / ".cache" / "clawden") / CACHE_FILE
    if _remembered(cache, fingerprint):
        return summary + "; claude code passed before with this CA and CLI"
    started = time.perf_counter()
    claude_check(claude, env)
    _remember(cache, fingerprint)
    return summary + f"; claude code ok in {(time.perf_counter() - started) * 1000:.0f} ms"


async def verify(env: Mapping[str, str], relay_port: int) -> None:
    """Run the checks when the gateway intercepts HTTPS here (the runner mounted its CA)."""
    if not env.get("CLAWDEN_CA_FILE") or env.get("CLAWDEN_SELFTEST", "1") == "0":
        return
    try:
        summary = await asyncio.to_thread(run_checks, env, relay_port)
    except SelfTestFailed as exc:
        log.critical("CA TRUST SELF-TEST FAILED: %s", exc)
        raise
    log.info("CA trust self-test: %s", summary)
