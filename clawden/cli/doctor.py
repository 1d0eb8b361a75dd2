"""`clawden doctor`: independent checks of what Clawden needs — Docker, the agent image, NATS, key
permissions, the gateway CA and its trust inside a container, the vault's TCP listener, the model credential,
each channel's token, disk space — each ok, WARN or FAIL, a failure with a one-line fix.

Checks run concurrently, each under its own timeout, so one that fails or hangs hides none of the
others; they share one NATS connection, made on first use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import sys
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import nkeys
from nats.aio.client import Client

from clawden import agentcontainer, installed, natsauth, packagespec
from clawden.bridgeconfig import BridgeConfigError, read_secret, settings_problems
from clawden.bus.ctl import Nothing, Verb
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import vault as vault_ctl
from clawden.bus.ctl.common import PING
from clawden.config import Config, configured_bridges, unknown_in_file
from clawden.installed import start_hint
from clawden.owner import Unreachable, connect_cli
from clawden.pki import is_loopback
from clawden.registry import CHANNEL_ENTRY_POINTS, CHANNEL_MODULE, installed_channels
from clawden.survey import ask
from clawden.vaultfiles import BUNDLE_FILE, CA_CERT, CA_FILE, VAULT_DB, VAULT_KEY, trust_dir, vault_dir
from clawden.vaultlisten import listener_names, split_listen, tls_on

GiB = 1 << 30
DISK_WARN = 1 * GiB
DISK_FAIL = 100 * (1 << 20)
CA_EXPIRY_WARN = dt.timedelta(days=30)
CONTAINER_WAIT = 45.0  # the trust check's container: start, Python, one TLS handshake
DOCTOR_LABEL = "dev.clawden.doctor"
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")

# skip: the check could not be run because of what another row found (said in its detail).
Status = Literal["ok", "WARN", "FAIL", "skip"]


@dataclass(frozen=True)
class Result:
    status: Status
    detail: str
    fix: str = ""


def ok(detail: str) -> Result:
    return Result("ok", detail)


def warn(detail: str, fix: str) -> Result:
    return Result("WARN", detail, fix)


def fail(detail: str, fix: str) -> Result:
    return Result("FAIL", detail, fix)


def skip(detail: str, fix: str = "") -> Result:
    return Result("skip", detail, fix)


@dataclass
class Probe:
    """What the checks share: this install's config, the environment they read, one NATS connection."""

    cfg: Config
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _nats: asyncio.Task[Client] | None = None

    async def nats(self) -> Client:
        """The owner's CLI connection, made once; `Unreachable` for every check if it cannot be."""
        if self._nats is None:
            self._nats = asyncio.ensure_future(connect_cli(self.cfg))
        return await asyncio.shield(self._nats)

    async def ask(self, verb: Verb[Req, Rep], request: Req) -> Rep:
        """A control request over the shared connection; a refusal or silence raises RuntimeError."""
        return await ask(await self.nats(), verb, request)

    async def close(self) -> None:
        if self._nats is None:
            return
        if not self._nats.done():
            self._nats.cancel()
        try:
            nc = await self._nats
        except BaseException:
            return
        await nc.close()


CheckFn = Callable[[Probe], Awaitable[Result]]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn
    timeout: float = 10.0


# ---- Docker and the image ------------------------------------------------------------------------


def _docker(timeout: int = 10) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


DOCKER_FIX = "start Docker (`sudo systemctl start docker`) and let this user use it (the `docker` group)"


async def check_docker(p: Probe) -> Result:
    def ask() -> tuple[dict[str, Any], agentcontainer.Engine]:
        client = _docker(5)
        try:
            return client.version(), agentcontainer.Engine.from_info(client.info())
        finally:
            client.close()

    try:
        v, engine = await asyncio.to_thread(ask)
    except Exception as exc:  # DockerException, requests' errors, PermissionError
        return fail(f"the Docker engine does not answer: {exc}", DOCKER_FIX)
    detail = f"engine {v.get('Version', '?')} ({v.get('Os', '?')}/{v.get('Arch', '?')})"
    if engine.rootless and os.getuid() == 0:
        return fail(
            f"{detail} is rootless Docker, whose containers' root is its user, not root: they cannot use the folders"
            " a root runner makes",
            "run Clawden as the user whose rootless Docker it talks to, or point DOCKER_HOST at the system engine",
        )
    detail += ", rootless: containers run as its user" if engine.rootless else ""
    # Where the engine would shift an agent's uid to a sub-uid that owns no host file (its session folder neither),
    # agents opt out of the remap: as on a plain engine, they run as a host uid with no capabilities.
    detail += (
        ", remaps containers' users (userns-remap): agents run in the host's user namespace" if engine.remapped else ""
    )
    if not engine.limits:
        return warn(
            f"{detail}; it drops containers' memory and pids limits: an agent may use all of this machine's memory",
            "give rootless Docker cgroup v2 delegation (systemd's `Delegate=yes` for the user manager) on a"
            " cgroup v2 host",
        )
    return ok(detail)


async def group_images(p: Probe) -> tuple[dict[str, list[str]], str]:
    """Image -> the agent groups that run it (config.toml's image for those without their own), and a
    note when the router could not say which groups have their own."""
    default = p.cfg.runner.image
    try:
        groups = await p.ask(router_ctl.GROUPS_LIST, router_ctl.ListAll(limit=10_000))
    except (Unreachable, RuntimeError):
        return {default: []}, "; groups' own images not checked (the router did not answer)"
    images: dict[str, list[str]] = {default: []}
    for group in groups:
        images.setdefault(group.container.image or default, []).append(group.name)
    return images, ""


def _used_by(groups: list[str]) -> str:
    return f" (agent group{'s' if len(groups) > 1 else ''} {', '.join(groups)})" if groups else ""


async def check_image(p: Probe) -> Result:
    """The image every agent group runs: config.toml's, and each group's own (`groups update --image`)."""
    images, note = await group_images(p)

    def inspect() -> Result:
        import docker.errors

        from clawden.cli import image as image_mod

        try:
            client = _docker()
        except Exception as exc:
            return fail(f"cannot ask Docker for {', '.join(images)}: {exc}", DOCKER_FIX)
        found: dict[str, Any] = {}
        missing: list[str] = []
        try:
            for image in images:
                try:
                    found[image] = client.images.get(image)
                except docker.errors.ImageNotFound:
                    missing.append(image)
        finally:
            client.close()
        if missing:
            return fail(
                "missing: " + "; ".join(f"{i}{_used_by(images[i])}" for i in missing),
                "; ".join(f"clawden image build --tag {i}" for i in missing),
            )
        sources = _agent_sources_hash()
        stale = [
            i
            for i, f in found.items()
            if (built := (f.labels or {}).get(image_mod.SOURCE_HASH_LABEL)) and built != sources
        ]
        details = []
        for image, f in found.items():
            built = dt.datetime.fromisoformat(f.attrs["Created"]).astimezone().strftime("%Y-%m-%d %H:%M")
            details.append(f"{image}{_used_by(images[image])}, {f.attrs.get('Size', 0) / 1e6:.0f} MB, built {built}")
        detail = "; ".join(details) + note
        if stale:
            return warn(
                detail + f"; {', '.join(stale)} built from other agent sources than these",
                "; ".join(rebuild_fix(i, found[i].labels or {}) for i in stale),
            )
        return ok(detail)

    return await asyncio.to_thread(inspect)


def rebuild_fix(image: str, labels: dict[str, str]) -> str:
    """A group's own image (packages on the agent image) is built again on the current one by its group."""
    group = labels.get(packagespec.GROUP_LABEL)
    return f"clawden groups restart {group} --rebuild" if group else f"clawden image build --tag {image}"


def _agent_sources_hash() -> str | None:
    """The hash `clawden image build` labels an image with, for the agent sources installed here."""
    import tempfile

    from clawden.cli import image as image_mod

    with tempfile.TemporaryDirectory(prefix="clawden-hash-") as tmp:
        try:
            image_mod.write_sources(Path(tmp))
        except OSError:  # no agent sources next to this install: nothing to compare with
            return None
        return image_mod.source_hash(Path(tmp))


# ---- NATS ------------------------------------------------------------------------------------------


async def check_nats(p: Probe) -> Result:
    try:
        nc = await p.nats()
    except Unreachable as exc:
        return fail(str(exc), exc.fix)
    try:
        await nc.jetstream().account_info()
    except Exception as exc:
        return fail(
            f"{p.cfg.nats_url} accepts the CLI but JetStream does not answer ({type(exc).__name__})",
            "run NATS with JetStream enabled (`clawden up` and the units do)",
        )
    version = nc.connected_server_version._server_version  # nats-py keeps the plain string only here
    return ok(f"{p.cfg.nats_url} (nats-server {version}) accepts the owner's CLI identity; JetStream answers")


# ---- keys and permissions ------------------------------------------------------------------------


def key_problems(keys: Path) -> tuple[list[Path], list[Path]]:
    """Folders under `keys/` others may enter, and secret files others may read (certificates are public)."""
    dirs: list[Path] = []
    files: list[Path] = []
    for path in [keys, *sorted(keys.rglob("*"))]:
        mode = path.lstat().st_mode
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            continue
        if mode & 0o077 and path.is_dir():
            dirs.append(path)
        elif mode & 0o077 and path.suffix != ".pem":
            files.append(path)
    return dirs, files


async def check_keys(p: Probe) -> Result:
    keys = p.cfg.keys_dir
    if not keys.is_dir():
        return fail(f"{keys} does not exist", "clawden init")
    try:
        dirs, files = await asyncio.to_thread(key_problems, keys)
    except PermissionError as exc:
        return fail(f"cannot read {exc.filename}", "run `clawden doctor` as the user Clawden runs as")
    if dirs or files:
        shown = ", ".join(f"{q.relative_to(p.cfg.home_path)} ({q.stat().st_mode & 0o777:o})" for q in [*dirs, *files])
        fix = "; ".join(
            f"chmod {mode} {' '.join(str(q) for q in group)}"
            for mode, group in (("700", dirs), ("600", files))
            if group
        )
        return fail(f"readable by others: {shown}", fix)
    seeds = len(list(natsauth.seed_dir(p.cfg).glob("*.nk")))
    return ok(f"{keys} 0700, secrets 0600 ({seeds} NATS seeds)")


async def check_home(p: Probe) -> Result:
    """The home keeps other users out: the conversations, the services' databases and logs are in it (`clawden init`
    makes it 0700; a home made before that, or by hand, may let them in)."""
    home = p.cfg.home_path
    mode = (await asyncio.to_thread(home.stat)).st_mode & 0o777
    if mode & 0o077:
        return warn(
            f"{home} is mode {mode:o}: other users here may read the conversations, databases (data/) and logs in it",
            f"chmod 700 {home} (agent containers are given their folders by mount: they need no way through it)",
        )
    return ok(f"{home} {mode:04o}: conversations, databases and logs are this user's alone")


# ---- runners on other hosts (`clawden runners add`) -----------------------------------------------


@dataclass(frozen=True)
class RunnerSeed:
    runner_id: str
    path: Path
    mode: int
    valid: bool  # an nkey user seed
    listed: bool | None  # its public key in this home's nats.conf; None without an embedded server
    this_host: bool  # the runner here ([runner] id) is this one


def runner_seed_result(s: RunnerSeed) -> Result:
    ident = natsauth.runner_identity(s.runner_id)
    if s.mode & 0o077:
        return fail(f"{s.path} is mode {s.mode:o}: others may act as runner {s.runner_id}", f"chmod 600 {s.path}")
    if not s.valid:
        return fail(
            f"{s.path} holds no nkey seed",
            f"copy it again from the install that ran `clawden runners add {s.runner_id}`",
        )
    if s.this_host:
        return ok(f"this host's runner connects as {ident} ({s.path}, 0600)")
    if s.listed is False:
        return warn(f"nats.conf does not list {ident}", "clawden init (it rewrites nats.conf), then reload NATS")
    return ok(f"{ident}, seed {s.path} 0600 (copy it to that runner's host only)")


def read_runner_seed(cfg: Config, runner_id: str) -> RunnerSeed:
    path = natsauth.seed_path(cfg, natsauth.runner_identity(runner_id))
    try:
        key = natsauth.public_key(path.read_text())
    except (nkeys.NkeysError, ValueError):
        key = ""
    conf = natsauth.conf_path(cfg)
    listed = (bool(key) and key in conf.read_text()) if cfg.embedded_nats and conf.exists() else None
    mode = path.stat().st_mode & 0o777
    return RunnerSeed(runner_id, path, mode, bool(key), listed, runner_id == cfg.runner.id)


def runner_seed_check(runner_id: str) -> CheckFn:
    async def check(p: Probe) -> Result:
        return runner_seed_result(await asyncio.to_thread(read_runner_seed, p.cfg, runner_id))

    return check


def decode_key(data: bytes) -> bool:
    try:
        return len(base64.b64decode(data.strip(), validate=True)) == 32
    except binascii.Error:
        return False


async def check_vault_key(p: Probe) -> Result:
    key = p.cfg.keys_dir / VAULT_KEY
    sealed = vault_dir(p.cfg) / VAULT_DB
    if not key.exists():
        if sealed.exists():
            return fail(
                f"{key} is missing but {sealed} holds secrets sealed with it",
                f"restore {key} from a backup (or remove {sealed} and add the secrets again)",
            )
        return warn(
            f"{key} does not exist yet (the vault creates it when it first starts)", start_hint(p.cfg, "clawden-vault")
        )
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        return fail(f"{key} is mode {mode:o}: others may read the key to every secret", f"chmod 600 {key}")
    try:
        data = await asyncio.to_thread(key.read_bytes)
    except PermissionError:
        return fail(f"cannot read {key}", "run `clawden doctor` as the user Clawden runs as")
    if not decode_key(data):
        return fail(f"{key} does not hold a base64 32-byte key", f"restore {key} from a backup")
    return ok(f"{key} 0600, a 32-byte key")


# ---- the gateway CA --------------------------------------------------------------------------------


def vault_start(cfg: Config) -> str:
    return f"{start_hint(cfg, 'clawden-vault')} (the vault makes the CA when it starts)"


async def check_ca(p: Probe) -> Result:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert_file = p.cfg.keys_dir / CA_CERT
    if not cert_file.exists():
        return fail(f"no gateway CA ({cert_file} is missing)", vault_start(p.cfg))
    pem = cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    until = cert.not_valid_after_utc
    left = until - dt.datetime.now(dt.UTC)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()[:16]
    trust = trust_dir(p.cfg)
    mounted, bundle = trust / CA_FILE, trust / BUNDLE_FILE
    restart = "restart the vault: it rewrites " + str(trust)
    if not mounted.exists() or not bundle.exists():
        return fail(f"{trust} lacks {CA_FILE} or {BUNDLE_FILE}, which containers mount", restart)
    if mounted.read_bytes() != pem or pem.strip() not in bundle.read_bytes():
        return fail(f"{trust} holds another CA than {cert_file}: containers would not trust the gateway", restart)
    detail = f"sha256 {fingerprint}…, valid until {until:%Y-%m-%d}; {trust} matches it"
    if left <= dt.timedelta(0):
        return fail(
            f"the gateway CA expired on {until:%Y-%m-%d}",
            f"move {cert_file} and its key aside and restart the vault (it makes a new CA)",
        )
    if left < CA_EXPIRY_WARN:
        return warn(detail, f"the CA expires soon: move {cert_file} and its key aside and restart the vault")
    return ok(detail)


# Runs inside the agent image (stdlib and clawden_agent only): is the CA in Python's default trust, and
# when a gateway socket is mounted, does a TLS handshake through the relay verify?
TRUST_SCRIPT = r"""
import asyncio, json, os, ssl, sys

def done(ok, detail):
    print(json.dumps({"ok": ok, "detail": detail}))
    sys.exit(0 if ok else 1)

ca = os.environ.get("CLAWDEN_CA_FILE", "")
try:
    der = ssl.PEM_cert_to_DER_cert(open(ca).read())
except (OSError, ValueError) as exc:
    done(False, "cannot read the mounted CA %s: %s" % (ca, exc))
if der not in ssl.create_default_context().get_ca_certs(binary_form=True):
    done(False, "Python's default trust (SSL_CERT_FILE=%s) lacks the gateway CA" % os.environ.get("SSL_CERT_FILE"))
sock = os.environ.get("CLAWDEN_GATEWAY_SOCKET", "")
if not os.path.exists(sock):
    done(True, "the CA is in the container's default trust (no handshake: the vault is not running)")
from clawden_agent import selftest
from clawden_agent.relay import serve_relay

async def handshake():
    relay = await serve_relay(sock, "127.0.0.1", 0)
    try:
        return await asyncio.to_thread(selftest.python_check, relay.sockets[0].getsockname()[1], 10.0)
    finally:
        relay.close()

try:
    answer = asyncio.run(handshake())
except selftest.SelfTestFailed as exc:
    done(False, str(exc))
done(True, "a TLS handshake through the vault gateway verified (agent group %s)" % answer.get("agent_group"))
"""


def _probe_group(cfg: Config) -> str:
    groups = sorted(d.name for d in cfg.groups_dir.glob("*") if d.is_dir() and d.name != "global")
    return "main" if "main" in groups or not groups else groups[0]


class ImageAbsent(Exception):
    """The image is not on this machine. Doctor never pulls one: it would reach a registry, then run what it got."""


def run_trust_container(cfg: Config, trust: Path, gateway_dir: Path | None) -> tuple[bool, str]:
    """The trust script in a container made like an agent's: no network, read-only, no capabilities. Made with
    `containers.create`, which never pulls (docker-py's `containers.run` pulls an image it does not find)."""
    import docker.errors
    from docker.types import Mount

    env = agentcontainer.environment(trust=True)  # an agent's environment, trust variables included
    mounts = [Mount(agentcontainer.TRUST_MOUNT, str(trust), type="bind", read_only=True)]
    if gateway_dir is not None:
        mounts.append(Mount(agentcontainer.GATEWAY_MOUNT, str(gateway_dir), type="bind", read_only=True))
    client = _docker(int(CONTAINER_WAIT) + 15)
    container = None
    try:
        engine = agentcontainer.Engine.from_info(client.info())
        try:
            container = client.containers.create(
                cfg.runner.image,
                ["python", "-c", TRUST_SCRIPT],
                environment=env,
                user=agentcontainer.container_user(engine.rootless)[0],
                userns_mode=engine.userns_mode,
                name=f"clawden-{cfg.install_id}-doctor-{secrets.token_hex(3)}",
                labels={"dev.clawden.install": cfg.install_id, DOCTOR_LABEL: "trust"},
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": "rw,size=16m,mode=1777"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                mem_limit="256m",
                pids_limit=64,
                mounts=mounts,
            )
        except docker.errors.ImageNotFound as exc:
            raise ImageAbsent(cfg.runner.image) from exc
        container.start()
        code = int(container.wait(timeout=CONTAINER_WAIT).get("StatusCode", -1))
        output = bytes(container.logs()).decode("utf-8", "replace").strip()
    finally:
        if container is not None:
            container.remove(force=True)
        client.close()
    try:
        answer = json.loads(output.splitlines()[-1])
        return bool(answer["ok"]) and code == 0, str(answer["detail"])
    except (ValueError, IndexError, KeyError, TypeError):
        return False, f"the check exited {code}: {output[-300:] or '(no output)'}"


def _vault_by_tcp(cfg: Config) -> bool:
    """Whether this runner's containers reach the vault over TCP (`[runner] vault_transport`, auto by the engine)."""
    if cfg.runner.vault_transport in ("socket", "tcp"):
        return cfg.runner.vault_transport == "tcp"
    client = _docker(10)
    try:
        engine = str(client.info().get("OperatingSystem", ""))
    finally:
        client.close()
    return agentcontainer.vault_transport(cfg.runner.vault_transport, engine) == "tcp"


async def check_ca_trust(p: Probe) -> Result:
    trust = trust_dir(p.cfg)
    if not (trust / CA_FILE).exists():
        return fail(f"no CA in {trust} to check", vault_start(p.cfg))
    gateway_dir: Path | None = None
    by_tcp = await asyncio.to_thread(_vault_by_tcp, p.cfg)
    try:  # with the vault up, the whole path: relay, gateway socket, TLS to its self-test host
        answer = await p.ask(vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group=_probe_group(p.cfg)))
    except (Unreachable, RuntimeError):
        pass
    else:
        if Path(answer.socket).parent.is_dir() and not by_tcp:  # not when the vault is on another machine
            gateway_dir, trust = Path(answer.socket).parent, Path(answer.trust_dir)
    try:
        trusted, detail = await asyncio.to_thread(run_trust_container, p.cfg, trust, gateway_dir)
        if trusted and by_tcp:
            detail = (
                "the CA is in the container's default trust (no handshake: containers reach the vault over TCP"
                " here, and the check goes through a gateway socket)"
            )
    except ImageAbsent:
        return skip(
            f"not run: the agent image {p.cfg.runner.image} is not on this machine (see the agent image row), and"
            " doctor pulls no image"
        )
    except Exception as exc:
        return fail(
            f"could not run a container from {p.cfg.runner.image}: {exc}",
            f"see the Docker and agent image checks; `clawden image build --tag {p.cfg.runner.image}`",
        )
    if not trusted:
        return fail(
            f"a container from {p.cfg.runner.image} does not trust the gateway: {detail}",
            f"rebuild the image (`clawden image build --tag {p.cfg.runner.image}`) and restart the vault",
        )
    return ok(detail)


# ---- the vault's TCP listener ([vault] tcp_listen) -------------------------------------------------

TCP_DIAL_WAIT = 5.0  # connect with the TLS handshake, and the 407, each (the row's own limit is 30 s: Docker, NATS)
WILDCARD_DIAL = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # a wildcard bind, dialled on loopback
NAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# A request with no proxy token: the listener answers 407 (tcpauth.NO_TOKEN) and does nothing else.
NO_TOKEN_PROBE = b"CONNECT clawden-doctor.invalid:443 HTTP/1.1\r\nHost: clawden-doctor.invalid:443\r\n\r\n"
RESTART_VAULT = "restart the vault (it listens as config.toml said when it started)"


@dataclass(frozen=True)
class Listener:
    """The vault's TCP listener as config.toml makes it (`vaultlisten.tls_on`, `vaultlisten.listener_names`, as the
    vault reads them), and the name this host's runner checks on its certificate ("": none runs here in tcp mode)."""

    listen: str  # [vault] tcp_listen as written
    host: str
    port: int | None  # None: tcp_listen names no port; 0: the vault picks one
    tls: bool
    names: tuple[str, ...]  # the certificate's, the first its subject (TLS only)
    named: bool = True  # the bind address or tcp_names gave names, not this machine's host name alone
    runner_dials: str = ""  # this host's runner: [runner] vault_tcp_host, when it reaches the vault over TCP


@dataclass(frozen=True)
class Answer:
    """What dialling the listener found: `problem` "" when it answered as the vault's gateway (a 407 to a
    request with no token), else what went wrong, in `detail`; the certificate's names where it spoke TLS."""

    problem: Literal["", "unreachable", "no_tls", "untrusted", "name", "not_gateway"] = ""
    detail: str = ""
    names: tuple[str, ...] = ()


ANSWER_FIXES = {
    "unreachable": RESTART_VAULT + "; if it still fails, its log says why it could not listen",
    "no_tls": RESTART_VAULT + ": it listens in clear, not with TLS as [vault] tcp_tls says now",
    "untrusted": "see the gateway CA row; another program may hold the port, else " + RESTART_VAULT,
    "name": RESTART_VAULT + ": its certificate carries the names config.toml gave then",
    "not_gateway": "another program may hold the port, or the vault speaks TLS there: " + RESTART_VAULT,
}


def same_name(a: str, b: str) -> bool:
    """Whether two certificate names are one: DNS names ignoring case and a trailing dot, addresses as addresses."""

    def norm(name: str) -> str:
        name = name.strip("[]").lower().rstrip(".")
        try:
            return ipaddress.ip_address(name).compressed
        except ValueError:
            return name

    return norm(a) == norm(b)


def covers(names: Sequence[str], name: str) -> bool:
    return any(same_name(n, name) for n in names)


def listener_problem(s: Listener) -> Result | None:
    """What is wrong with the listener as config.toml makes it, before anything is dialled; None: nothing."""
    if s.port is None:
        return fail(f"[vault] tcp_listen {s.listen!r} is not host:port", 'write it as host:port, e.g. "127.0.0.1:8471"')
    if not s.tls and not is_loopback(s.host):
        return fail(
            f"{s.listen} is off loopback without TLS: the containers' tokens and traffic would cross the network"
            " in clear",
            "set [vault] tcp_tls = true or auto (the default), and restart the vault",
        )
    if s.tls and not s.names:
        return fail(f"{s.listen} speaks TLS, but its certificate would have no name", "set [vault] tcp_names")
    if s.tls and s.runner_dials and not covers(s.names, s.runner_dials):
        return fail(
            f"this host's runner dials {s.runner_dials} ([runner] vault_tcp_host), which the listener's certificate"
            f" would not name (it names {', '.join(s.names)})",
            f'add "{s.runner_dials}" to [vault] tcp_names and restart the vault',
        )
    return None


def vault_tcp_result(s: Listener, answer: Answer | None) -> Result:
    """The `vault tcp` row: the listener as config.toml makes it, and, where it was dialled, how it answered."""
    if problem := listener_problem(s):
        return problem
    where = f"{s.listen}, " + (f"TLS for {', '.join(s.names)}" if s.tls else "plain TCP on loopback")
    if answer is None:
        return ok(where + "; not dialled: " + ("the vault picks its port" if s.port == 0 else "the vault does not run"))
    if answer.problem:
        return fail(f"{where}: {answer.detail}", ANSWER_FIXES[answer.problem])
    if missing := [n for n in s.names if not covers(answer.names, n)]:
        return fail(
            f"{where}: the listener's certificate names {', '.join(answer.names)}, not {', '.join(missing)}",
            ANSWER_FIXES["name"],
        )
    checked = s.runner_dials or (s.names[0] if s.names else "")
    detail = where + (
        f"; a TLS handshake trusting the gateway CA alone, checking {checked}, then a 407 to a request without a token"
        if s.tls
        else "; it answers a request without a token with 407"
    )
    if s.tls and not s.named:
        return warn(
            detail + f": only this machine's name, since it binds {s.host or 'every address'} and tcp_names is empty",
            "list the names and addresses runners dial ([runner] vault_tcp_host) in [vault] tcp_names, and restart"
            " the vault: a runner that dials another name or an address fails the TLS handshake",
        )
    return ok(detail)


def read_listener(cfg: Config, by_tcp: bool) -> Listener:
    """The listener from config.toml, as the vault makes it (by `clawden/vaultlisten.py`'s rules, the vault's)."""
    host, port = split_listen(cfg.vault.tcp_listen)
    tls = tls_on(cfg.vault.tcp_tls, host)
    names = listener_names(host, cfg.vault.tcp_names, (socket.gethostname(),))
    route = cfg.runner.vault_tcp_host
    return Listener(
        cfg.vault.tcp_listen,
        host,
        port,
        tls,
        names if tls else (),
        named=bool(listener_names(host, cfg.vault.tcp_names, ())),
        # Through a unix: route the relay checks the certificate's first name, which it always carries.
        runner_dials=route if by_tcp and not route.startswith("unix:") else "",
    )


def _listener_context(cfg: Config, check_name: bool) -> ssl.SSLContext:
    """The relay's context (`container/clawden_agent/relay.py`): the gateway CA alone, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=str(cfg.keys_dir / CA_CERT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_name
    return context


def _certificate_names(der: bytes | None) -> tuple[str, ...]:
    from cryptography import x509

    if der is None:
        return ()
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return tuple(str(n.value) for n in sans.value if isinstance(n, x509.DNSName | x509.IPAddress))


async def _open(
    host: str, port: int, tls: ssl.SSLContext | None, name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    secure: dict[str, Any] = (
        {"ssl": tls, "server_hostname": name, "ssl_handshake_timeout": TCP_DIAL_WAIT} if tls else {}
    )
    return await asyncio.wait_for(asyncio.open_connection(host, port, **secure), TCP_DIAL_WAIT)


async def _names_anyway(cfg: Config, host: str, port: int) -> tuple[str, ...]:
    """The certificate's names, from a handshake that checks the CA but no name (after one that checked it)."""
    try:
        _, writer = await _open(host, port, _listener_context(cfg, check_name=False), "")
    except (OSError, TimeoutError):
        return ()
    names = _certificate_names(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    await _close(writer)
    return names


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):  # a TLS peer that never says close_notify
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def dial_listener(cfg: Config, s: Listener) -> Answer:
    """Dial the listener as a runner's relay does (the bind address; a wildcard's on loopback), then ask it
    something without a token: the vault's gateway answers 407."""
    assert s.port
    host, checked = WILDCARD_DIAL.get(s.host, s.host), s.runner_dials or (s.names[0] if s.names else "")
    at = f"{host}:{s.port}"
    try:
        tls = _listener_context(cfg, check_name=True) if s.tls else None
    except (OSError, ssl.SSLError) as exc:
        return Answer("untrusted", f"the gateway CA {cfg.keys_dir / CA_CERT} cannot be loaded ({exc})")
    try:
        reader, writer = await _open(host, s.port, tls, checked)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in NAME_MISMATCH:
            names = await _names_anyway(cfg, host, s.port)
            return Answer("name", f"its certificate does not name {checked} (it names {', '.join(names)})", names)
        return Answer("untrusted", f"its certificate is not one the gateway CA issued ({exc.verify_message})")
    except ssl.SSLError as exc:
        return Answer("no_tls", f"no TLS handshake on {at} ({exc.reason or exc})")
    except (OSError, TimeoutError) as exc:  # refused, unreachable, silent
        return Answer("unreachable", f"nothing answers on {at} ({exc or type(exc).__name__})")
    names = _certificate_names(writer.get_extra_info("ssl_object").getpeercert(binary_form=True)) if tls else ()
    try:
        writer.write(NO_TOKEN_PROBE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TCP_DIAL_WAIT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        head = b""
    finally:
        await _close(writer)
    if not head.startswith(b"HTTP/1.1 407"):
        first = head.split(b"\r\n", 1)[0].decode("latin-1")[:80]
        return Answer("not_gateway", f"{at} does not answer as the vault's gateway ({first or 'no answer'})", names)
    return Answer(names=names)


def _runner_by_tcp(cfg: Config) -> bool:
    """Whether this host's runner reaches the vault over TCP; not when Docker cannot say (auto)."""
    try:
        return _vault_by_tcp(cfg)
    except Exception:  # the Docker row says why Docker does not answer
        return False


async def check_vault_tcp(p: Probe) -> Result:
    """`[vault] tcp_listen`: where it binds, with TLS for which names; with the vault running, dialled."""
    listener = read_listener(p.cfg, await asyncio.to_thread(_runner_by_tcp, p.cfg))
    answer = None
    if listener_problem(listener) is None and listener.port:
        try:
            await p.ask(vault_ctl.SECRETS_LIST, Nothing())  # the vault runs: its listener should answer
        except (Unreachable, RuntimeError):
            pass
        else:
            answer = await dial_listener(p.cfg, listener)
    return vault_tcp_result(listener, answer)


# ---- the model credential --------------------------------------------------------------------------


def local_model_key(cfg: Config, environ: dict[str, str]) -> str:
    """Where the vault would take the model key from at its start, or ''."""
    if environ.get("ANTHROPIC_API_KEY", "").strip():
        return "ANTHROPIC_API_KEY (in this shell)"
    file = cfg.keys_dir / "anthropic"
    try:
        return str(file) if file.read_text().strip() else ""
    except OSError:
        return ""


MODEL_FIX = (
    "`clawden secrets add anthropic --type anthropic` (or write the key to keys/anthropic, chmod 600, "
    "and restart the vault)"
)


def model_check_result(held: str, reply: vault_ctl.ModelChecks) -> Result:
    """The model row from what the API said to each model secret, sent by the vault: the worst of them. A rejected
    API key fails; so does a way to the API that will not mend itself (a certificate that does not verify, a
    private address, a host map pointing nowhere). A name that does not resolve or a connection refused is
    warned of: a machine offline for a moment. A subscription token refused is warned of too: the call it is
    tried with is not the one Claude Code makes, so the refusal may be the endpoint's, not the token's."""
    host = reply.host + (f" (mapped to {reply.mapped_to} by [vault] host_map)" if reply.mapped_to else "")
    if not reply.checks:
        return ok(f"{held}; none is for {reply.host}, so none was tried there")
    rows = [_model_check_row(host, reply.mapped_to, c) for c in reply.checks]
    accepted = [c.name for c in reply.checks if c.outcome == "accepted"]
    if all(r.status == "ok" for r in rows):
        it = "it" if len(accepted) == 1 else "each"
        return ok(f"{held}; {reply.host} accepted {it}")
    worst = next(r for level in ("FAIL", "WARN") for r in rows if r.status == level)
    said = "; ".join(r.detail for r in rows if r.status != "ok")
    if accepted:
        said += f"; {reply.host} accepted {', '.join(accepted)}"
    return Result(worst.status, f"{held}; {said}", worst.fix)


def _model_check_row(host: str, mapped_to: str, c: vault_ctl.ModelCheck) -> Result:
    said = f"{c.status} {c.error_type}: {c.message}".strip(": ")
    replace = f"`clawden secrets add {c.name} --type anthropic --replace` (it asks for the value)"
    if c.outcome == "accepted":
        return ok(c.name)
    if c.outcome == "rejected" and c.oauth:
        return warn(
            f"{host} refused the subscription token {c.name} ({said}): it may have expired or been revoked",
            f"if chats fail too, make a new one with `claude setup-token` and store it: {replace}",
        )
    if c.outcome == "rejected":
        return fail(
            f"{host} rejected {c.name} ({said}): the key is wrong or revoked",
            f"store a working key: {replace}; a revoked one is replaced in the Anthropic Console",
        )
    if c.outcome == "other":
        return warn(f"{host} answered {said} to {c.name}", _other_fix(c.status))
    tried = f"tried from the vault: {c.message}"
    where = f", where [vault] host_map sends it ({mapped_to})" if mapped_to else ""
    if c.unreached == "tls":
        return fail(
            f"{tried}{where or ': a proxy intercepting TLS?'}",
            "give the CA that signed that certificate as [vault] extra_ca_file (a proxy's that intercepts TLS), or let"
            " the vault reach api.anthropic.com directly",
        )
    if mapped_to:
        return fail(
            f"{tried}{where}",
            "correct or remove api.anthropic.com in [vault] host_map (config.toml), then restart the vault",
        )
    if c.unreached == "private":
        return fail(
            f"{tried} (a DNS filter, or an /etc/hosts entry?)",
            "let this machine resolve api.anthropic.com to its public address",
        )
    return warn(
        f"{tried}: agents cannot answer until it can",
        "check this machine's network (DNS, a firewall or proxy in the way), then run `clawden doctor` again",
    )


def _other_fix(status: int) -> str:
    if status == 429:
        return "the key works, but is being rate limited now: see its limits in the Anthropic Console"
    if status >= 500:
        return "Anthropic is failing or overloaded now: try again later"
    return "something other than the API may have answered: look at [vault] host_map and any proxy in the way"


def unasked_vault_result(cfg: Config, local: str, why: Unreachable | RuntimeError) -> Result:
    """The model row when the vault could not be asked. Its secrets are its own (the CLI never opens vault.db), so
    with no key here to fall back on, whether a credential exists is not known: said so, not failed."""
    if local:
        return ok(f"{local} (the vault could not be asked; it imports the key at its start if new or changed)")
    unknown = "not checked: no ANTHROPIC_API_KEY or keys/anthropic here, and the vault, which may hold a stored key,"
    if isinstance(why, Unreachable):  # the bus is down, or refuses the CLI: the NATS row fails with why
        return skip(
            f"{unknown} cannot be asked while NATS is out of reach (the NATS row says why)",
            f"{why.fix}, then run `clawden doctor` again",
        )
    return warn(
        f"{unknown} could not be asked: {why}",
        f"{start_hint(cfg, 'clawden-vault')} (if it runs, `clawden status` and its log say why it does not answer),"
        " then run `clawden doctor` again",
    )


async def check_model(p: Probe) -> Result:
    local = local_model_key(p.cfg, p.environ)
    try:
        stored = (await p.ask(vault_ctl.SECRETS_LIST, Nothing())).secrets
    except (Unreachable, RuntimeError) as exc:
        return unasked_vault_result(p.cfg, local, exc)
    names = [s.name for s in stored if s.kind == "anthropic"]
    if names:
        grants = sorted({g for s in stored if s.name in names for g in s.grants})
        who = ", ".join(grants).replace("*", "every agent group") or "nobody"
        held = f"the vault holds {', '.join(names)} (granted to {who})"
        try:  # the vault asks api.anthropic.com itself: the key never leaves it
            checked = await ask(await p.nats(), vault_ctl.MODEL_CHECK, Nothing(), vault_ctl.MODEL_CHECK_WAIT + 2)
        except (Unreachable, RuntimeError) as exc:  # a vault older than the check, or one that did not answer
            return ok(f"{held}; not tried on the API ({exc})")
        return model_check_result(held, checked)
    if local:
        return fail(
            f"{local} holds a key but the vault holds no anthropic secret (removed with `clawden secrets remove`, or "
            "not imported: see the vault's log)",
            "give it again: `clawden secrets add anthropic --type anthropic < keys/anthropic`, or delete the file if"
            " that key is done",
        )
    return fail("no model credential: the vault holds no anthropic secret", MODEL_FIX)


# ---- config.toml -----------------------------------------------------------------------------------


async def check_config(p: Probe) -> Result:
    """Values a bridge would refuse at its start (`clawden up` would say so only then), names config.toml has that
    Clawden does not read (typos), `[groups.<name>]` for no agent group, and model names that are not Claude's."""
    import difflib

    from clawden.models import model_warning

    file = p.cfg.path("config.toml")
    refused = [
        problem
        for channel in configured_channels(p.cfg, p.environ)
        for problem in settings_problems(p.cfg, channel, p.environ)
    ]
    problems = unknown_in_file(p.cfg)
    if problem := model_warning(p.cfg.model.model):
        problems.append(f"[model] model: {problem}")
    try:
        groups = await p.ask(router_ctl.GROUPS_LIST, router_ctl.ListAll(limit=10_000))
    except (Unreachable, RuntimeError):
        groups = None  # which groups there are is the router's to say: their tables go unchecked
    names = [g.name for g in groups or ()]
    for name in [n for n in p.cfg.groups if groups is not None and n not in names]:
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" (did you mean [groups.{near[0]}]?)" if near else f" (`clawden groups create {name}` makes it)"
        problems.append(f"[groups.{name}] is not an agent group: its settings apply to none{hint}")
    problems += [
        f"agent group {g.name}: {problem} (`clawden groups update {g.name} --model ...`)"
        for g in groups or ()
        if (problem := model_warning(g.model))
    ]
    if refused:
        return fail("; ".join(refused + problems), f"correct them in {file} (or the CLAWDEN_<NAME>_<KEY> variable)")
    if problems:
        return warn("; ".join(problems), f"correct them (settings in {file})")
    return ok(f"{file}: every setting is one Clawden reads" if file.exists() else "no config.toml (defaults)")


# ---- channels --------------------------------------------------------------------------------------


def configured_channels(cfg: Config, environ: dict[str, str]) -> list[str]:
    """Installed bridges with a token (what `clawden up` runs) or a `[channels.<name>]` table."""
    tables: dict[str, Any] = {}
    file = cfg.path("config.toml")
    if file.exists():
        tables = tomllib.loads(file.read_text()).get("channels", {})
    bridges = configured_bridges(cfg, environ)
    return [name for name in installed_channels() if f"channel@{name}" in bridges or name in tables]


def bridge_module(channel: str) -> Any:
    for entry in importlib.metadata.entry_points(group=CHANNEL_ENTRY_POINTS, name=channel):
        target = entry.load()
        return sys.modules.get(getattr(target, "__module__", ""), target)
    return importlib.import_module(CHANNEL_MODULE.format(channel))


def bridge_start_fix(cfg: Config, channel: str) -> str:
    """How to run the bridge of `channel` here: `clawden up` starts every bridge with a token when it starts; the
    units run one whose unit `clawden units install` enabled (it enables those with a token when it runs)."""
    scope = installed.installed_scope(ask_systemctl=False)
    if scope is None:
        return (
            f"restart `clawden up`: it starts every bridge that has a token when it starts (one it started that could"
            f" not run starts again by itself once keys/{channel} holds a new credential)"
        )
    unit = f"clawden-channel@{channel}.service"
    folder = installed.SYSTEM_UNIT_DIR if scope == "system" else installed.unit_dir("user", Path.home())
    if not (folder / f"{installed.TARGET}.wants" / unit).exists():  # the token came after the units were installed
        sudo, home = ("sudo " if scope == "system" else ""), f"--home {cfg.home} "
        return f"`{sudo}clawden {home}units install --{scope} --now`: it enables and starts every bridge with a token"
    return (
        f"{start_hint(cfg, unit)} (`clawden logs channel@{channel}` says why it stopped; one that stopped on its"
        f" credential starts by itself once keys/{channel} holds a new one)"
    )


async def bridge_running(p: Probe, channel: str) -> bool | None:
    """Whether the bridge answers on the bus: a token that works is no use to a bridge that does not run. None when
    NATS itself cannot be reached: its own row says so, and nothing is known of the bridge."""
    try:
        await p.ask(PING.at(natsauth.identity(f"channel@{channel}")), Nothing())
    except Unreachable:
        return None
    except RuntimeError:  # nobody answers as this bridge
        return False
    return True


def channel_row(channel: str) -> CheckFn:
    """A channel's row: its token (`channel_check`), then whether its bridge runs: a token that works is no use to a
    bridge that does not."""
    token_check = channel_check(channel)

    async def check(p: Probe) -> Result:
        token = await token_check(p)
        if token.status != "ok" or await bridge_running(p, channel) is not False:
            return token
        return warn(f"{token.detail}; but its bridge is not running", bridge_start_fix(p.cfg, channel))

    return check


def channel_check(channel: str) -> CheckFn:
    """The channel's token: present, and (where the bridge can ask) accepted by the platform."""

    async def check(p: Probe) -> Result:
        token_fix = (
            f"put the {channel} token in {p.cfg.keys_dir / channel} (chmod 600) or CLAWDEN_{channel.upper()}_TOKEN"
        )
        if hasattr(bridge_module(channel), "login"):  # a bridge that logs in with a password (Matrix) stores it
            token_fix = f"run `clawden channels login {channel}` (it writes {p.cfg.keys_dir / channel}, mode 0600)"
        try:
            read_secret(p.cfg, channel, p.environ)
        except BridgeConfigError as exc:
            return fail(str(exc), token_fix)
        online: Callable[[Config, dict[str, str]], Awaitable[str]] | None = getattr(
            bridge_module(channel), "check_token", None
        )
        if online is None:
            return ok("token present (this bridge has no online check)")
        try:
            who = await online(p.cfg, p.environ)
        except Exception as exc:
            code = getattr(exc, "code", 0)
            if code in (401, 403, 404):
                return fail(f"{channel} rejected the token ({code} {exc})", token_fix)
            return fail(
                f"could not ask {channel} about the token: {exc}",
                f"check this machine's network, or [channels.{channel}] api_url in config.toml",
            )
        return ok(f"token accepted: {who}")

    return check


async def check_webhooks(p: Probe) -> Result:
    """The front door answers Meta's handshake locally, and through [webhooks] public_url when it is set."""
    from clawden.cli import probes  # with httpx: loaded only when the row runs

    level, detail, fix = await probes.webhooks_row(p.cfg, p.environ)
    return ok(detail) if level == "ok" else warn(detail, fix) if level == "warn" else fail(detail, fix)


async def check_web(p: Probe) -> Result:
    """The web app answers with its headers locally, and through [web] public_url when it is set."""
    from clawden.cli import probes

    level, detail, fix = await probes.web_row(p.cfg)
    return ok(detail) if level == "ok" else warn(detail, fix) if level == "warn" else fail(detail, fix)


async def no_channels(p: Probe) -> Result:
    return ok("none configured (`clawden chat` works from this machine's terminal)")


# ---- disk ------------------------------------------------------------------------------------------


def disk_result(free: int, where: Path) -> Result:
    text = f"{free / GiB:.1f} GiB free in {where}"
    if free < DISK_FAIL:
        return fail(text, "free space: old sessions under sessions/, Docker images (`docker image prune`)")
    if free < DISK_WARN:
        return warn(text, "free space soon: old sessions under sessions/, Docker images (`docker image prune`)")
    return ok(text)


async def check_disk(p: Probe) -> Result:
    usage = await asyncio.to_thread(shutil.disk_usage, p.cfg.home_path)
    return disk_result(usage.free, p.cfg.home_path)


@dataclass(frozen=True)
class Storage:
    """What the storage check found: `[runner] shared_storage` and `storage`, and the folder as it is."""

    shared: bool
    path: Path
    in_home: bool  # `storage` unset: the Clawden home
    exists: bool
    writable: bool
    has_groups: bool  # groups/main is there (the home's groups/ was moved in)


def storage_result(s: Storage) -> Result:
    where = f"sessions, groups and agent state in {s.path}"
    if s.shared and s.in_home:
        return fail(
            "runner.shared_storage is on, but runner.storage is unset: the sessions are on this host's disk",
            "set [runner] storage to the folder every runner mounts (README: Growing past one machine)",
        )
    if not s.exists:
        return fail(f"{where}: the folder does not exist", f"mount or create {s.path}")
    if not s.writable:
        return fail(f"{where}: this user cannot write there", f"give the user running Clawden write access to {s.path}")
    if not s.has_groups:
        return warn(f"{where}: no groups/main there", f"move the home's groups/ into {s.path}")
    return ok(where + (", shared by every runner" if s.shared else ""))


def read_storage(cfg: Config) -> Storage:
    path = cfg.storage_path
    return Storage(
        shared=cfg.runner.shared_storage,
        path=path,
        in_home=not cfg.runner.storage,
        exists=path.is_dir(),
        writable=os.access(path, os.W_OK | os.X_OK),
        has_groups=(cfg.groups_dir / "main").is_dir(),
    )


async def check_storage(p: Probe) -> Result:
    return storage_result(await asyncio.to_thread(read_storage, p.cfg))


# ---- running them ----------------------------------------------------------------------------------


def checks(cfg: Config, environ: dict[str, str]) -> list[Check]:
    channels = configured_channels(cfg, environ)
    return [
        Check("Docker", check_docker, 15),
        Check("agent image", check_image, 30),
        Check("NATS", check_nats, 10),
        Check("config", check_config, 10),
        Check("home", check_home, 5),
        Check("keys", check_keys, 5),
        *(Check(f"runner {rid}", runner_seed_check(rid), 5) for rid in natsauth.added_runners(cfg)),
        Check("vault key", check_vault_key, 5),
        Check("gateway CA", check_ca, 5),
        Check("CA trust in a container", check_ca_trust, CONTAINER_WAIT + 20),
        *([Check("vault tcp", check_vault_tcp, 30)] if cfg.vault.tcp_listen else []),
        Check("model credential", check_model, vault_ctl.MODEL_CHECK_WAIT + 8),  # the vault asks the API
        *([Check(f"channel {name}", channel_row(name), 20) for name in channels] or [Check("channels", no_channels)]),
        *([Check("webhooks", check_webhooks, 25)] if cfg.webhooks.listen else []),
        *([Check("web", check_web, 25)] if cfg.web.listen else []),
        Check("disk", check_disk, 5),
        *([Check("storage", check_storage, 10)] if cfg.runner.storage or cfg.runner.shared_storage else []),
    ]


async def _guarded(check: Check, probe: Probe) -> Result:
    try:
        return await asyncio.wait_for(check.run(probe), check.timeout)
    except TimeoutError:
        return fail(
            f"no answer within {check.timeout:.0f}s", "run `clawden doctor` again; if it persists, this part is stuck"
        )
    except Exception as exc:
        return fail(f"the check itself failed: {type(exc).__name__}: {exc}", "please report this")


async def diagnose(cfg: Config, environ: dict[str, str] | None = None) -> list[tuple[str, Result]]:
    probe = Probe(cfg, dict(os.environ) if environ is None else environ)
    todo = checks(cfg, probe.environ)
    # Imported here, once, before the checks' threads start: the docker SDK imported lazily by several
    # threads at once fails ("partially initialized module 'docker.types'"). Kept out of the module's
    # imports so other commands do not pay for it.
    importlib.import_module("docker.errors")
    try:
        results = await asyncio.gather(*(_guarded(c, probe) for c in todo))
    finally:
        await probe.close()
    return [(c.name, r) for c, r in zip(todo, results, strict=True)]


def render(results: Sequence[tuple[str, Result]]) -> str:
    width = max(len(name) for name, _ in results) + 2
    lines = []
    for name, r in results:
        lines.append(f"{r.status:<5} {name:<{width}}{r.detail}")
        if r.fix:
            lines.append(f"{'':<6}{'':<{width}}fix: {r.fix}")
    failed = sum(r.status == "FAIL" for _, r in results)
    warned = sum(r.status == "WARN" for _, r in results)
    skipped = sum(r.status == "skip" for _, r in results)
    summary = [
        f"{failed} failed" if failed else "",
        f"{warned} to look at" if warned else "",
        f"{skipped} not run" if skipped else "",
    ]
    lines += ["", ", ".join(s for s in summary if s) or "all checks passed"]
    return "\n".join(lines)


def exit_code(results: Sequence[tuple[str, Result]]) -> int:
    return 1 if any(r.status == "FAIL" for _, r in results) else 0
