"""The in-container CA trust self-test, run on the host against a real gateway and the real Claude Code CLI."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from clawden.pki import CertificateAuthority
from tests.vault.conftest import RigFactory

pytestmark = pytest.mark.timeout(30)


def _load() -> ModuleType:
    path = Path(__file__).parents[2] / "container" / "clawden_agent" / "selftest.py"
    spec = importlib.util.spec_from_file_location("clawden_agent_selftest_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


selftest = _load()


def claude_env(tmp_path: Path, relay_port: int, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    relay = f"http://127.0.0.1:{relay_port}"
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HTTPS_PROXY": relay,
        "https_proxy": relay,
        "NO_PROXY": "127.0.0.1,localhost",
        "ANTHROPIC_API_KEY": "clawden-managed",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        **extra,
    }


async def test_python_trusts_the_gateway_only_with_its_ca(
    rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig() as r:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(r.gateway.ca.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        answer = await asyncio.to_thread(selftest.python_check, r.relay_port)
        assert answer["agent_group"] == "family"

        stranger = tmp_path / "other-ca.pem"
        stranger.write_bytes(CertificateAuthority.create("Some other CA").cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(stranger))
        with pytest.raises(selftest.SelfTestFailed, match="Python does not trust the vault gateway"):
            await asyncio.to_thread(selftest.python_check, r.relay_port)


@pytest.mark.process  # Claude Code
async def test_claude_code_passes_with_its_trust_settings_and_fails_loudly_without(
    rig: RigFactory, tmp_path: Path
) -> None:
    claude = selftest.claude_binary({"PATH": ""})
    assert claude is not None
    async with rig() as r:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(r.gateway.ca.cert_pem)
        trusted = claude_env(tmp_path, r.relay_port, NODE_EXTRA_CA_CERTS=str(ca_file))
        await asyncio.to_thread(selftest.claude_check, claude, trusted)
        with pytest.raises(selftest.SelfTestFailed, match="does not trust the gateway's CA"):
            await asyncio.to_thread(selftest.claude_check, claude, claude_env(tmp_path, r.relay_port))

    assert r.site.received == []  # the self-test host is answered by the gateway itself
    assert {a.decision for a in r.audit} <= {"selftest", "tls_failed"}


@pytest.mark.process  # Claude Code
async def test_a_pass_is_remembered_for_the_same_ca_and_cli(
    rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig() as r:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(r.gateway.ca.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        env = claude_env(
            tmp_path, r.relay_port, NODE_EXTRA_CA_CERTS=str(ca_file), CLAWDEN_CA_FILE=str(ca_file), PATH=""
        )
        first = await asyncio.to_thread(selftest.run_checks, env, r.relay_port)
        second = await asyncio.to_thread(selftest.run_checks, env, r.relay_port)
        ca_file.write_bytes(CertificateAuthority.create("A new CA").cert_pem)  # a new CA: check again
        with pytest.raises(selftest.SelfTestFailed):
            await asyncio.to_thread(selftest.run_checks, env, r.relay_port)

    assert "claude code ok" in first and "passed before" in second


async def test_without_a_mounted_ca_there_is_nothing_to_check() -> None:
    await selftest.verify({}, 1)  # returns at once; no relay needed
