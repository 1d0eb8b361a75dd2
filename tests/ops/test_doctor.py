"""`clawden doctor`: every check against the real thing — the Docker engine, a running Clawden, the
agent image, the fake Telegram Bot API — and each failure with the fix that goes with it."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from clawden import config as config_mod
from clawden import control, installed, natsauth, natsserver, setup
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.bus.ctl.vault import ModelCheck, ModelChecks
from clawden.cli import doctor
from clawden.cli.doctor import (
    DISK_WARN,
    Probe,
    Result,
    Storage,
    channel_check,
    check_ca_trust,
    check_config,
    check_image,
    check_keys,
    check_model,
    check_nats,
    check_vault_key,
    configured_channels,
    diagnose,
    disk_result,
    exit_code,
    model_check_result,
    read_storage,
    storage_result,
)
from clawden.cli.main import main
from clawden.pki import CertificateAuthority
from clawden.supervisor import Supervisor
from clawden.vaultfiles import trust_dir
from services.vault.certs import write_trust_files
from tests.conftest import NatsServer
from tests.e2e.harness import Stack
from tests.fakes.telegram import FakeTelegram
from tests.ops.conftest import Core, fresh_home
from tests.registry import counting_registry
from tests.vault.model_vault import API_KEY, model_vault


def by_name(results: list[tuple[str, Result]]) -> dict[str, Result]:
    return dict(results)


@pytest.mark.docker
async def test_a_running_install_passes_every_check(stack: Stack) -> None:
    results = by_name(await diagnose(config_mod.load(stack.home, environ={}), environ={}))

    assert {name for name, r in results.items() if r.status == "FAIL"} == set()
    assert results["Docker"].status == results["NATS"].status == results["vault key"].status == "ok"
    assert "a TLS handshake through the vault gateway verified" in results["CA trust in a container"].detail
    assert results["model credential"].detail.startswith("the vault holds anthropic")
    assert results["channels"].detail.startswith("none configured")


@pytest.mark.docker
def test_the_command_exits_0_when_nothing_failed(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(stack.home), "doctor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok    Docker ") and "FAIL" not in out


def test_each_failure_says_its_fix_and_hides_none_of_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = fresh_home(tmp_path / "home")  # never started: no NATS, no vault key, no CA, no model key

    results = by_name(asyncio.run(diagnose(cfg, environ={})))

    assert results["NATS"] == Result(
        "FAIL", f"cannot reach NATS at {cfg.nats_url} (NoServersError)", "start Clawden with `clawden up`"
    )
    assert results["vault key"].status == "WARN" and "creates it when it first starts" in results["vault key"].detail
    assert results["gateway CA"].status == results["CA trust in a container"].status == "FAIL"
    assert results["model credential"].status == "skip"  # the vault may hold one: it cannot be asked
    assert results["model credential"].fix == "start Clawden with `clawden up`, then run `clawden doctor` again"
    assert results["keys"].status == results["disk"].status == "ok"  # checked all the same
    assert exit_code(list(results.items())) == 1

    assert main(["--home", str(cfg.home), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  NATS " in out and "fix: start Clawden with `clawden up`" in out and "3 failed" in out


async def test_nats_refusing_the_cli_identity_is_a_failure_with_its_fix(secured_nats: config_mod.Config) -> None:
    natsauth.seed_path(secured_nats, natsauth.CLI).write_text(natsauth.new_seed() + "\n")
    probe = Probe(secured_nats, {})
    try:
        result = await check_nats(probe)
    finally:
        await probe.close()
    assert result.status == "FAIL" and "refused the owner's CLI identity" in result.detail
    assert "clawden init" in result.fix


async def test_secrets_others_may_read_fail_with_the_chmod_that_fixes_them(tmp_path: Path) -> None:
    cfg = fresh_home(tmp_path / "home")
    key = cfg.keys_dir / "vault.key"
    key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    key.chmod(0o644)
    (cfg.keys_dir / "anthropic").write_text("sk-ant-test\n")
    (cfg.keys_dir / "anthropic").chmod(0o640)
    (cfg.keys_dir / "gateway-ca.pem").write_text("a public certificate\n")
    (cfg.keys_dir / "gateway-ca.pem").chmod(0o644)
    probe = Probe(cfg, {})

    keys, vault_key = await check_keys(probe), await check_vault_key(probe)

    assert keys.status == "FAIL" and "keys/vault.key (644)" in keys.detail and "keys/anthropic (640)" in keys.detail
    assert keys.fix == f"chmod 600 {cfg.keys_dir / 'anthropic'} {key}"
    assert "gateway-ca.pem" not in keys.detail  # certificates are public
    assert vault_key == Result(
        "FAIL", f"{key} is mode 644: others may read the key to every secret", f"chmod 600 {key}"
    )

    key.chmod(0o600)
    (cfg.keys_dir / "anthropic").chmod(0o600)
    assert (await check_keys(probe)).status == (await check_vault_key(probe)).status == "ok"


async def row(cfg: config_mod.Config, env: dict[str, str], name: str) -> Result:
    """The row `clawden doctor` shows under `name`, checked alone."""
    [check] = [c for c in doctor.checks(cfg, env) if c.name == name]
    probe = Probe(cfg, env)
    try:
        return await check.run(probe)
    finally:
        await probe.close()


async def test_a_home_other_users_may_enter_is_warned_of_with_the_chmod_that_closes_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)  # made before `clawden init` closed new homes, or by hand
    cfg = fresh_home(home)

    opened = await row(cfg, {}, "home")
    home.chmod(0o700)
    closed = await row(cfg, {}, "home")

    assert opened.status == "WARN" and opened.detail.startswith(f"{home} is mode 755: other users here may read")
    assert opened.fix.startswith(f"chmod 700 {home} ")
    assert closed == Result("ok", f"{home} 0700: conversations, databases and logs are this user's alone")


async def test_a_damaged_vault_key_or_a_lost_one_with_sealed_secrets_fails(tmp_path: Path) -> None:
    cfg = fresh_home(tmp_path / "home")
    probe = Probe(cfg, {})
    key = cfg.keys_dir / "vault.key"
    key.touch(mode=0o600)
    key.write_text("not base64 of 32 bytes\n")
    assert "does not hold a base64 32-byte key" in (await check_vault_key(probe)).detail

    key.unlink()
    (cfg.data_dir / "vault").mkdir()
    (cfg.data_dir / "vault" / "vault.db").touch()
    lost = await check_vault_key(probe)
    assert lost.status == "FAIL" and "holds secrets sealed with it" in lost.detail and "backup" in lost.fix


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start_in_thread()
    yield fake
    fake.stop_thread()


async def test_a_telegram_token_is_asked_with_getme_where_the_bridge_would_ask(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    cfg = fresh_home(tmp_path / "home")
    env = {"CLAWDEN_TELEGRAM_TOKEN": telegram.token, "CLAWDEN_TELEGRAM_API_URL": telegram.url}
    assert configured_channels(cfg, env) == ["telegram"] and configured_channels(cfg, {}) == []

    result = await channel_check("telegram")(Probe(cfg, env))

    assert result.status == "ok" and result.detail.startswith("token accepted: @clawden_test_bot; privacy mode on:")
    assert "/setprivacy" in result.detail  # and how to let the bot read every group message
    assert [call.outcome for call in telegram.calls_to("getMe")] == ["ok"]


@pytest.mark.nats
def test_a_channel_with_a_good_token_is_ok_only_while_its_bridge_runs(
    tmp_path: Path, telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAWDEN_TELEGRAM_API_URL", telegram.url)  # for the bridge `clawden up` starts
    monkeypatch.setenv("CLAWDEN_TELEGRAM_POLL_TIMEOUT", "2")  # long polls the fake ends within its stop
    monkeypatch.setattr(installed, "installed_scope", lambda *_, **__: None)  # no units here: `clawden up` runs it
    cfg = setup.init(fresh_home(tmp_path / "home").home_path)  # as `clawden up` does: nats.conf on its port
    (cfg.keys_dir / "telegram").write_text(telegram.token + "\n")
    (cfg.keys_dir / "telegram").chmod(0o600)
    env = {"CLAWDEN_TELEGRAM_API_URL": telegram.url}
    console = io.StringIO()
    sup = Supervisor(cfg, ("scheduler", "channel@telegram"), out=console)
    try:
        sup.start_nats()
        deadline = time.monotonic() + 60
        while not all(c.ready for c in sup.children):
            assert time.monotonic() < deadline and "cannot run" not in console.getvalue(), console.getvalue()
            sup.poll()
            time.sleep(0.05)
        running = asyncio.run(row(cfg, env, "channel telegram"))

        bridge = sup.children[1].proc
        assert bridge is not None
        bridge.send_signal(signal.SIGTERM)  # the bridge stops; the rest of Clawden runs on
        bridge.wait(30)
        stopped = asyncio.run(row(cfg, env, "channel telegram"))
    finally:
        sup.stop()
    nats_down = asyncio.run(row(cfg, env, "channel telegram"))  # the NATS row says so; nothing is known of the bridge

    assert running.status == "ok" and running.detail.startswith("token accepted: @clawden_test_bot")
    assert (nats_down.status, nats_down.detail) == (running.status, running.detail)
    assert stopped.status == "WARN"
    assert stopped.detail.startswith("token accepted: @clawden_test_bot")
    assert stopped.detail.endswith("; but its bridge is not running")
    assert stopped.fix == (
        "restart `clawden up`: it starts every bridge that has a token when it starts (one it started that could not"
        " run starts again by itself once keys/telegram holds a new credential)"
    )


async def test_a_telegram_token_the_api_rejects_fails_with_where_to_put_the_right_one(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    cfg = fresh_home(tmp_path / "home")
    (cfg.keys_dir / "telegram").write_text("7012345678:revoked\n")
    (cfg.keys_dir / "telegram").chmod(0o600)
    env = {"CLAWDEN_TELEGRAM_API_URL": telegram.url}
    assert configured_channels(cfg, env) == ["telegram"]

    result = await channel_check("telegram")(Probe(cfg, env))

    assert result.status == "FAIL" and result.detail.startswith("telegram rejected the token (401")
    assert str(cfg.keys_dir / "telegram") in result.fix


async def test_a_telegram_token_file_others_may_read_is_refused_before_any_request(
    tmp_path: Path, telegram: FakeTelegram
) -> None:
    cfg = fresh_home(tmp_path / "home")
    (cfg.keys_dir / "telegram").write_text(telegram.token + "\n")
    (cfg.keys_dir / "telegram").chmod(0o644)

    result = await channel_check("telegram")(Probe(cfg, {"CLAWDEN_TELEGRAM_API_URL": telegram.url}))

    assert result.status == "FAIL" and "readable by other users" in result.detail
    assert telegram.calls_to("getMe") == []


HELD = "the vault holds anthropic (granted to every agent group)"


async def model_row(cfg: config_mod.Config) -> Result:
    probe = Probe(cfg, {})
    try:
        return await check_model(probe)
    finally:
        await probe.close()


@pytest.mark.nats
async def test_the_model_row_says_the_api_accepted_the_key_the_vault_sent(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {API_KEY}

        result = await model_row(v.cfg)

        assert result == Result("ok", f"{HELD}; api.anthropic.com accepted it")
        assert [h["x-api-key"] for h in v.asked_models()] == [API_KEY]  # the vault asked, with the key it holds


@pytest.mark.nats
async def test_a_key_the_api_rejects_fails_with_how_to_store_a_working_one(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}

        result = await model_row(v.cfg)

    assert result.status == "FAIL"
    assert result.detail.endswith(
        "rejected anthropic (401 authentication_error: invalid x-api-key): the key is wrong or revoked"
    )
    assert "`clawden secrets add anthropic --type anthropic --replace`" in result.fix
    assert API_KEY not in result.detail + result.fix


@pytest.mark.nats
async def test_a_host_map_pointing_nowhere_fails_with_the_host_map_to_correct(nats_server: NatsServer) -> None:
    closed = f"127.0.0.1:{natsserver.free_port()}"
    async with model_vault(nats_server.url, map_to=closed) as v:
        result = await model_row(v.cfg)

    assert result.status == "FAIL"
    assert "cannot reach api.anthropic.com (ConnectionRefusedError)" in result.detail
    assert result.detail.endswith(f"where [vault] host_map sends it ({closed})")
    assert "[vault] host_map" in result.fix


@pytest.mark.nats
async def test_a_certificate_the_vault_cannot_verify_fails_with_the_extra_ca_to_give(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url, trusted=False) as v:
        result = await model_row(v.cfg)

    assert result.status == "FAIL" and "presented a certificate that does not verify" in result.detail
    assert "[vault] extra_ca_file" in result.fix


@pytest.mark.nats
async def test_with_the_bus_down_a_key_the_vault_holds_is_not_called_missing(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        (v.cfg.keys_dir / "anthropic").unlink()  # the key lives in the vault alone, as `clawden secrets add` leaves it
        stored = await control.ask(v.cfg, vault_ctl.SECRETS_LIST, Nothing())
        assert [s.name for s in stored.secrets] == ["anthropic"]
        nats_server.stop()
        try:
            result = await model_row(v.cfg)
        finally:
            nats_server.restart()  # for the vault to stop cleanly

    assert result.status == "skip"
    assert result.detail.startswith("not checked: no ANTHROPIC_API_KEY or keys/anthropic here, and the vault, which")
    assert result.detail.endswith("cannot be asked while NATS is out of reach (the NATS row says why)")
    assert result.fix == f"{installed.start_hint(v.cfg)}, then run `clawden doctor` again"  # as the NATS row says


@pytest.mark.nats
async def test_with_the_vault_not_answering_on_a_running_bus_the_model_row_is_warned_of(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    setup.init(tmp_path / "home")
    (tmp_path / "home" / "config.toml").write_text(f'[nats]\nurl = "{nats_server.url}"\n')

    result = await model_row(config_mod.load(tmp_path / "home", environ={}))

    assert result.status == "WARN"
    assert result.detail.startswith("not checked: no ANTHROPIC_API_KEY or keys/anthropic here, and the vault, which")
    assert "could not be asked: the vault service did not answer" in result.detail
    assert result.fix.endswith("then run `clawden doctor` again")


@pytest.mark.nats
async def test_a_vault_that_answers_holding_no_model_key_fails_with_how_to_add_one(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        (v.cfg.keys_dir / "anthropic").unlink()
        await control.ask(v.cfg, vault_ctl.SECRETS_REMOVE, vault_ctl.Named(name="anthropic"))

        result = await model_row(v.cfg)

    assert result == Result("FAIL", "no model credential: the vault holds no anthropic secret", doctor.MODEL_FIX)


def checked(*checks: ModelCheck, mapped_to: str = "") -> ModelChecks:
    return ModelChecks(host="api.anthropic.com", mapped_to=mapped_to, checks=list(checks))


@pytest.mark.parametrize(
    ("check", "status", "says"),
    [
        # offline for a moment, or no DNS yet: warned of, not failed
        (
            ModelCheck(
                name="anthropic", outcome="unreachable", unreached="dns", message="api.anthropic.com does not resolve"
            ),
            "WARN",
            "tried from the vault: api.anthropic.com does not resolve: agents cannot answer until it can",
        ),
        (
            ModelCheck(name="anthropic", outcome="unreachable", unreached="timeout", message="connecting timed out"),
            "WARN",
            "connecting timed out",
        ),
        # a DNS filter answering a private address does not mend itself
        (
            ModelCheck(name="anthropic", outcome="unreachable", unreached="private", message="resolves to 10.0.0.1"),
            "FAIL",
            "(a DNS filter, or an /etc/hosts entry?)",
        ),
        # the subscription token is tried on a call Claude Code does not make: its refusal is only warned of
        (
            ModelCheck(name="anthropic", outcome="rejected", oauth=True, status=401, error_type="authentication_error"),
            "WARN",
            "refused the subscription token anthropic (401 authentication_error): it may have expired",
        ),
        (
            ModelCheck(
                name="anthropic", outcome="other", status=529, error_type="overloaded_error", message="Overloaded"
            ),
            "WARN",
            "api.anthropic.com answered 529 overloaded_error: Overloaded to anthropic",
        ),
    ],
    ids=["dns", "timeout", "private-address", "subscription-token", "overloaded"],
)
def test_the_model_row_weighs_what_the_api_said(check: ModelCheck, status: str, says: str) -> None:
    result = model_check_result(HELD, checked(check))

    assert result.status == status and result.detail.startswith(HELD + "; ") and says in result.detail
    assert result.fix


def test_of_several_model_secrets_the_worst_answer_makes_the_row() -> None:
    good = ModelCheck(name="anthropic", outcome="accepted", status=200)
    bad = ModelCheck(name="work", outcome="rejected", status=401, error_type="authentication_error", message="no")
    busy = ModelCheck(name="spare", outcome="other", status=429, error_type="rate_limit_error", message="slow")

    result = model_check_result("the vault holds anthropic, spare, work", checked(good, busy, bad))

    assert result.status == "FAIL" and "`clawden secrets add work --type anthropic --replace`" in result.fix
    assert result.detail.endswith("; api.anthropic.com accepted anthropic")
    assert "rate_limit_error: slow" in result.detail and "rejected work (401 authentication_error: no)" in result.detail
    assert model_check_result(HELD, checked(good, good)) == Result("ok", f"{HELD}; api.anthropic.com accepted each")
    assert (
        model_check_result(HELD, checked()).detail == f"{HELD}; none is for api.anthropic.com, so none was tried there"
    )


def vault_ca(cfg: config_mod.Config) -> CertificateAuthority:
    """The CA files as the vault writes them (its key and certificate, the trust folder)."""
    ca = CertificateAuthority.load_or_create(cfg.keys_dir / "gateway-ca.key", cfg.keys_dir / "gateway-ca.pem", "t")
    write_trust_files(ca, trust_dir(cfg))
    return ca


@pytest.mark.docker
async def test_a_container_trusts_the_ca_even_while_the_vault_is_down(tmp_path: Path, agent_image: str) -> None:
    cfg = fresh_home(tmp_path / "home")
    vault_ca(cfg)

    result = await check_ca_trust(Probe(cfg, {}))

    assert result == Result("ok", "the CA is in the container's default trust (no handshake: the vault is not running)")


@pytest.mark.docker
async def test_with_the_agent_image_missing_the_trust_check_is_not_run_and_no_registry_is_asked(
    tmp_path: Path, docker_client: object
) -> None:
    """docker-py's `containers.run` pulls an image it does not find: doctor asked a registry for the agent image,
    and would have run whatever came back. The image here names a registry on loopback that only counts callers."""
    cfg = fresh_home(tmp_path / "home")
    vault_ca(cfg)
    with counting_registry() as (image, callers):
        cfg = msgspec.structs.replace(cfg, runner=msgspec.structs.replace(cfg.runner, image=image))
        result = await check_ca_trust(Probe(cfg, {}))

    assert callers == []
    assert result == Result(
        "skip",
        f"not run: the agent image {image} is not on this machine (see the agent image row), and doctor pulls no image",
    )


@pytest.mark.docker
async def test_in_tcp_mode_the_trust_check_says_it_tries_no_socket_handshake(tmp_path: Path, agent_image: str) -> None:
    """Containers that reach the vault over TCP (Docker Desktop) have no gateway socket to try a handshake on."""
    cfg = fresh_home(tmp_path / "home")
    vault_ca(cfg)
    cfg = msgspec.structs.replace(cfg, runner=msgspec.structs.replace(cfg.runner, vault_transport="tcp"))

    result = await check_ca_trust(Probe(cfg, {}))

    assert result.status == "ok" and "containers reach the vault over TCP here" in result.detail


@pytest.mark.docker
async def test_a_container_whose_bundle_lacks_the_ca_fails(tmp_path: Path, agent_image: str) -> None:
    cfg = fresh_home(tmp_path / "home")
    vault_ca(cfg)
    (trust_dir(cfg) / "bundle.pem").write_bytes(CertificateAuthority.create("someone else").cert_pem)

    result = await check_ca_trust(Probe(cfg, {}))

    assert result.status == "FAIL"
    assert "Python's default trust (SSL_CERT_FILE=/run/clawden/trust/bundle.pem) lacks the gateway CA" in result.detail


def test_disk_space_warns_under_a_gibibyte_and_fails_near_empty(tmp_path: Path) -> None:
    assert disk_result(DISK_WARN + 1, tmp_path).status == "ok"
    assert disk_result(DISK_WARN - 1, tmp_path).status == "WARN"
    assert disk_result(10 << 20, tmp_path).status == "FAIL"


SHARED = Storage(True, Path("/srv/clawden"), in_home=False, exists=True, writable=True, has_groups=True)


@pytest.mark.parametrize(
    ("storage", "status", "says"),
    [
        (SHARED, "ok", "shared by every runner"),
        (replace(SHARED, in_home=True), "FAIL", "runner.storage is unset"),  # "shared", but on this host's disk
        (replace(SHARED, exists=False), "FAIL", "does not exist"),  # the NFS mount is not there
        (replace(SHARED, writable=False), "FAIL", "cannot write"),
        (replace(SHARED, has_groups=False), "WARN", "no groups/main"),  # groups/ left in the home
        (replace(SHARED, shared=False), "ok", "agent state in /srv/clawden"),  # a storage of its own: fine
    ],
)
def test_the_storage_row_says_what_keeps_sessions_from_moving(storage: Storage, status: str, says: str) -> None:
    result = storage_result(storage)
    assert result.status == status and says in result.detail
    assert bool(result.fix) == (status != "ok")


def test_the_storage_row_reads_the_folder_the_config_names(tmp_path: Path) -> None:
    home, shared = tmp_path / "home", tmp_path / "shared"
    home.mkdir()
    (home / "config.toml").write_text(f'[runner]\nshared_storage = true\nstorage = "{shared}"\n')
    assert read_storage(config_mod.load(home)) == Storage(True, shared, False, False, False, False)
    (shared / "groups" / "main").mkdir(parents=True)
    assert read_storage(config_mod.load(home)) == Storage(True, shared, False, True, True, True)


@pytest.mark.docker
def test_doctor_in_a_fresh_process_passes_against_a_running_install_every_time(stack: Stack) -> None:
    """Each run a new process, as a user runs it: the docker SDK imported by several check threads at
    once used to fail ("partially initialized module 'docker.types'") and blame Docker."""
    for _ in range(20):  # as the issue that found it asked: 20 in a row
        out = subprocess.run(
            [sys.executable, "-m", "clawden", "--home", str(stack.home), "doctor"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "FAIL" not in out.stdout, out.stdout + out.stderr


@pytest.mark.docker
async def test_each_groups_own_image_is_checked_and_the_fix_builds_that_tag(core: Core, docker_client: object) -> None:
    made = core.clawden("groups", "create", "painter", "--image", "clawden-agent:no-such-tag")
    assert made.returncode == 0, made.stderr
    probe = Probe(core.cfg, {})
    try:
        result = await check_image(probe)
    finally:
        await probe.close()
        core.clawden("groups", "delete", "painter", "--yes")

    assert result.status == "FAIL"
    assert result.detail == "missing: clawden-agent:no-such-tag (agent group painter)"
    assert result.fix == "clawden image build --tag clawden-agent:no-such-tag"


async def test_a_typo_in_config_and_a_model_that_is_not_claudes_are_warned_of(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = fresh_home(home)
    with (home / "config.toml").open("a") as file:
        file.write('[runner]\ncpu = 1\n[model]\nmodel = "gpt-4o"\n')
    probe = Probe(config_mod.load(home, environ={}), {})
    try:
        result = await check_config(probe)
    finally:
        await probe.close()

    assert result.status == "WARN"
    assert result.detail.startswith(
        "cpu in [runner] is not a setting Clawden knows (did you mean cpus?); "
        "[model] model: 'gpt-4o' is not a Claude model name"
    )
    assert result.fix == f"correct them (settings in {cfg.path('config.toml')})"


async def test_a_channel_value_the_bridge_would_refuse_fails_the_config_row_before_up_does(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = fresh_home(home)
    with (home / "config.toml").open("a") as file:
        file.write(
            '[channels.telegram]\nsend_deadline = "ten minutes"\npol_timeout = 3\n[channels.email]\nidle = "ture"\n'
        )
    probe = Probe(config_mod.load(home, environ={}), {"CLAWDEN_EMAIL_IMAP_PORT": "imaps"})
    try:
        result = await check_config(probe)
    finally:
        await probe.close()

    assert result.status == "FAIL"
    assert result.detail == (
        "[channels.email] imap_port must be a whole number, not 'imaps'; "
        "[channels.email] idle must be true or false, not 'ture'; "
        "[channels.telegram] send_deadline must be a number, not 'ten minutes'; "
        "pol_timeout in [channels.telegram] is not a setting the telegram bridge reads (did you mean poll_timeout?)"
    )
    assert result.fix == f"correct them in {cfg.path('config.toml')} (or the CLAWDEN_<NAME>_<KEY> variable)"


async def test_a_group_table_for_no_agent_group_is_warned_of_with_the_nearest_group(core: Core) -> None:
    cfg = msgspec.structs.replace(core.cfg, groups={"mian": config_mod.GroupConfig(memory="1g")})
    probe = Probe(cfg, {})
    try:
        result = await check_config(probe)
    finally:
        await probe.close()

    assert result.status == "WARN"
    assert (
        result.detail == "[groups.mian] is not an agent group: its settings apply to none (did you mean [groups.main]?)"
    )
