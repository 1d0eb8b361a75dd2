"""Clawden's configuration: `$CLAWDEN_HOME/config.toml`, overridden by `CLAWDEN_<SECTION>_<KEY>` variables."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from clawden.bus import subjects
from clawden.bus.events import CPUS_RANGE, MEMORY_RANGE, PIDS_RANGE, GroupSettings, memory_bytes
from clawden.mcpservers import McpServer
from clawden.registry import installed_channels


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True):
    # Empty url: Clawden's own embedded server on 127.0.0.1:port. Anything else: use that server, or a
    # cluster: a list of servers (or one string, comma-separated), every one handed to the client.
    url: str | list[str] = ""
    port: int = 4322  # DEFAULT_NATS_PORT; `clawden init` writes a free one
    credentials_dir: str = ""
    # Copies JetStream keeps of each stream: 1 (one server), or 3 (a cluster of three, `clawden cluster init`).
    replicas: int = 1
    # The CA that signed the servers' certificates, for a cluster reached off loopback over TLS.
    ca_file: str = ""

    @property
    def servers(self) -> tuple[str, ...]:
        """The configured servers, each once, in the order given (empty: the embedded server)."""
        given = self.url.split(",") if isinstance(self.url, str) else self.url
        return tuple(dict.fromkeys(u.strip() for u in given if u.strip()))


# Bounds a value must keep for the services to work at all, checked when the config loads (a `max_containers` of 0
# or `cpus` of 0 is not a choice: every chat would wait, or every container fail to start).
Positive = Annotated[float, msgspec.Meta(gt=0)]
NotNegative = Annotated[float, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]

# A runner's id names its subjects (clawden.wake.<id>, clawden.runner.heartbeat.<id>).
RunnerId = Annotated[str, msgspec.Meta(pattern=subjects.TOKEN_PATTERN)]


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: RunnerId = "local"  # one per runner where several share the bus
    # Seconds without a runner's heartbeat (every 5 s) before the router places no new session on it.
    dead_after: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    image: str = "clawden-agent:latest"
    idle_timeout: Positive = 1800.0
    memory: str = "2g"  # Docker's notation, as `clawden groups update --memory` takes it (`runner_problem`)
    # The bounds `clawden groups update --cpus/--pids` takes.
    cpus: Annotated[float, msgspec.Meta(ge=CPUS_RANGE[0], le=CPUS_RANGE[1])] = 2.0
    pids: Annotated[int, msgspec.Meta(ge=PIDS_RANGE[0], le=PIDS_RANGE[1])] = 512
    docker_workers: AtLeastOne = 4
    safety_poll: Positive = 2.0
    max_containers: AtLeastOne = 8
    # Containers coming up at once (docker start until the agent's Claude Code answers); 0: one per
    # CPU. Fifty starting together on two cores each take the whole wave's time.
    parallel_starts: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Seconds without a heartbeat while the agent owes an answer before it counts as hung
    # (a declared long tool call extends it).
    hang_timeout: Positive = 600.0
    # Model calls the agent may make for one message, and seconds it may work on it (waits for a
    # person's answer not counted), before it is stopped and the chat told.
    max_turns: AtLeastOne = 100
    turn_budget: Positive = 1800.0
    # Tries a message gets across container crashes and hangs before it fails for good.
    max_tries: AtLeastOne = 3
    # Seconds a chat may wait for a free container slot before it is told so.
    queue_notice_after: NotNegative = 5.0
    # systemd restarts keep containers for the next runner to adopt; `clawden up` stops them.
    stop_containers_on_exit: bool = False
    # How containers reach the vault: "socket" (a Unix socket per group, mounted in; the socket names the
    # group), "tcp" (the vault's `tcp_listen`, with a per-container token the agent never sees) or "auto":
    # tcp where the Docker engine is Docker Desktop (no Unix socket crosses into its VM), else socket.
    vault_transport: Literal["socket", "tcp", "auto"] = "auto"
    # tcp: the name a container reaches the host by. "unix:/path" names a Unix socket on this host that
    # leads to the listener instead (tests on Linux: --network none leaves a container no route out).
    vault_tcp_host: str = "host.docker.internal"
    # tcp: the Docker network containers join to reach vault_tcp_host ("": none, for a unix: route only).
    vault_network: str = ""
    # Whether every runner mounts the same `storage` (NFS or the like): then the router moves the sessions of a
    # runner declared gone to a live one, fenced by a placement epoch; without it they wait for their runner.
    # The router reads it, so say it alike in every host's config.toml.
    shared_storage: bool = False
    # Where `sessions/`, `groups/` and `state/` (each session's Claude Code home) live: "" is the Clawden home.
    # With shared_storage, the folder every runner mounts.
    storage: str = ""


class MountConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    name: str
    read_write: bool = False


class GroupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Per agent group container settings: `[groups.<name>]`. Unset limits use the runner's."""

    memory: str = ""
    cpus: float = 0.0
    pids: int = 0
    # Extra folders, each also checked against ~/.config/clawden/mount-allowlist.json.
    mounts: tuple[MountConfig, ...] = ()
    # MCP servers its agents get: `[groups.<name>.mcp.<server>]` (clawden/mcpservers.py).
    mcp: dict[str, McpServer] = {}


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True):
    # The vault adds the model key to every request it sends here: https only (http on loopback, a local
    # proxy's or the tests' fake), checked at load (`model_problem`).
    upstream: str = "https://api.anthropic.com"
    # The real key never lives in config.toml: ANTHROPIC_API_KEY in the vault's environment,
    # or the file keys/anthropic (mode 0600).
    model: str = ""


class VaultConfig(msgspec.Struct, frozen=True, kw_only=True):
    # Extra roots the gateway trusts toward sites (a test CA), on top of the system's.
    extra_ca_file: str = ""
    # Host -> "address:port" the gateway dials instead of resolving the name (tests' fake sites).
    host_map: dict[str, str] = {}
    # Groups without their own `clawden egress` setting: "open" (any host, audited) or "allowlist". Any
    # other word is an error at load: a typo must never leave egress open unnoticed.
    default_egress: Literal["open", "allowlist"] = "open"
    approval_timeout: Positive = 180.0  # seconds a held request waits for a human
    # Connections one agent group may hold open to the gateway at once (tunnels and WebSockets included); past
    # it a connection gets a 429, so one group cannot take the descriptors the others need.
    max_connections_per_group: Annotated[int, msgspec.Meta(ge=1)] = 128
    read_timeout: Positive = 600.0  # seconds a site may stay silent mid-request (a model thinking)
    # Connections on the TCP listener that have not shown a proxy token yet belong to no group's cap: at most this
    # many at once, the oldest dropped past it (each burst of drops one audit record, group `tcp:no-token`). At
    # most half the 8192 descriptors the vault asks for, so that a flood of them leaves the groups theirs.
    max_tokenless_connections: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    # Seconds from accept (a TLS handshake included) for such a connection to show its token; a relay needs a
    # round trip. At most an idle authenticated connection's 300: one that names nobody never gets longer.
    tokenless_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    audit_retention_days: Positive = 30.0
    # "host:port" for the TCP listener with per-group proxy tokens (engines where sockets cannot
    # cross into containers); empty: off.
    tcp_listen: str = ""
    # Whether that listener speaks TLS, with a certificate from the gateway CA: "auto" is on off loopback
    # (runners on other hosts reach it across the network), off on loopback.
    tcp_tls: bool | Literal["auto"] = "auto"
    # The names and addresses runners dial it by (their `[runner] vault_tcp_host`), for its certificate,
    # beside the address it binds; none, on a wildcard address: this host's name.
    tcp_names: list[str] = []
    # "host:port" (or ":port", loopback) for the OneCLI-shaped HTTP API (services/vault/api.py); empty: off.
    # A non-loopback host is used only when written here, and the vault says so when it starts.
    api_listen: str = ""


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True):
    # Shortest `every` interval a task may have without a pre-check script: each run is a model turn.
    min_interval: NotNegative = 60.0


class WebhooksConfig(msgspec.Struct, frozen=True, kw_only=True):
    # The front door (`clawden run webhooks`) runs where this is set (`clawden up`, the units); empty: off.
    # Loopback by default: a reverse proxy or a tunnel in front gives it HTTPS and a public name.
    listen: str = ""
    DEFAULT_LISTEN: ClassVar[str] = "127.0.0.1:8787"  # where `clawden run webhooks` alone listens
    # The https URL the platforms are told (through the proxy); `clawden doctor` checks it reaches us.
    public_url: str = ""
    max_body: AtLeastOne = 1 << 20  # bytes; WhatsApp's deliveries are a few KiB
    rate: Positive = 50.0  # requests per second per source, with a burst of `burst`
    burst: AtLeastOne = 200
    # Seconds a client may take to send its whole body (slowloris), and to wait for JetStream's ack.
    body_timeout: Positive = 10.0
    ack_timeout: Positive = 5.0
    # Behind a proxy every request comes from it: take the source from X-Forwarded-For's last hop.
    forwarded_for: bool = False
    # Third-party bridges' routes: channel -> scheme (clawden/bus/webhooks.py).
    routes: dict[str, str] = {}


class WebConfig(msgspec.Struct, frozen=True, kw_only=True):
    # The browser chat and dashboard (`clawden run web`) run under `clawden up` and the units where this is
    # set; `clawden run web` alone listens on DEFAULT_LISTEN when it is empty. Loopback: a proxy adds TLS.
    listen: str = ""
    DEFAULT_LISTEN: ClassVar[str] = "127.0.0.1:8790"
    # The address the browser uses (through a proxy: `https://clawden.example.org`). Login links name it,
    # state-changing requests must come from this origin, and an https one makes the cookie Secure.
    public_url: str = ""
    link_minutes: Positive = 10.0  # how long a one-time login link lasts
    session_days: Positive = 14.0  # how long a signed-in browser stays signed in
    login_rate: Positive = 0.2  # login attempts per second per source (one every 5 s), with a burst of
    login_burst: AtLeastOne = 10


# An install's id names its containers (`clawden-<id>-<session>`) and its NATS server: a name Docker and NATS take.
InstallId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Config(msgspec.Struct, frozen=True, kw_only=True):
    home: str = ""
    install_id: InstallId = "default"
    nats: NatsConfig = NatsConfig()
    runner: RunnerConfig = RunnerConfig()
    model: ModelConfig = ModelConfig()
    vault: VaultConfig = VaultConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    web: WebConfig = WebConfig()
    groups: dict[str, GroupConfig] = {}

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    @property
    def nats_url(self) -> str:
        """The server, or a cluster's servers comma-separated (`bus.connect` takes either)."""
        return ",".join(self.nats.servers) or f"nats://127.0.0.1:{self.nats.port}"

    @property
    def embedded_nats(self) -> bool:
        return not self.nats.servers

    def path(self, *parts: str) -> Path:
        return self.home_path.joinpath(*parts)

    @property
    def data_dir(self) -> Path:
        return self.path("data")

    @property
    def storage_path(self) -> Path:
        """Where the session, group and agent-state folders live: `[runner] storage`, else the home."""
        return Path(self.runner.storage).expanduser() if self.runner.storage else self.home_path

    @property
    def groups_dir(self) -> Path:
        return self.storage_path / "groups"

    @property
    def sessions_dir(self) -> Path:
        return self.storage_path / "sessions"

    @property
    def state_dir(self) -> Path:
        """Each agent group's Claude Code state (`<group>/homes/<session>`, `cache`, `claude`)."""
        return self.storage_path / "state"

    @property
    def gateway_dir(self) -> Path:
        return self.path("run", "gateway")

    @property
    def keys_dir(self) -> Path:
        return self.path("keys")


class ConfigError(ValueError):
    pass


def default_home() -> Path:
    env = os.environ.get("CLAWDEN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".clawden"


def home_problem(home: Path, given: bool = False, *, missing_ok: bool = False) -> str | None:
    """What is wrong with `home` as a Clawden home, in one line that names the fix; None when nothing.
    `given`: it came from --home, so the fix repeats it."""
    home = home.expanduser().resolve()
    where = f"--home {home} " if given else ""
    if home.exists() and not home.is_dir():
        return (
            f"{home} is a file, not a Clawden home: move it aside and run `clawden {where}init`, or point "
            "--home or CLAWDEN_HOME at your home"
        )
    if not home.exists() and not missing_ok:
        return f"no home at {home}: run `clawden {where}init` (or point --home or CLAWDEN_HOME at yours)"
    return None


_SECTIONS = ("nats", "runner", "model", "vault", "scheduler", "webhooks", "web")


def _env_overrides(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """CLAWDEN_RUNNER_IDLE_TIMEOUT=60 -> {"runner": {"idle_timeout": "60"}} (converted non-strictly)."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("CLAWDEN_") or key == "CLAWDEN_HOME":
            continue
        rest = key[len("CLAWDEN_") :].lower()
        section, _, field = rest.partition("_")
        if section in _SECTIONS and field:
            out.setdefault(section, {})[field] = value
        elif rest == "install_id":
            out["install_id"] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(home: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    home = (home or default_home()).resolve()
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = home / "config.toml"
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    raw = _merge(raw, _env_overrides(env))
    raw["home"] = str(home)
    try:
        cfg = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_said(str(exc), raw, file, env)) from exc
    if problem := nats_problem(cfg.nats) or model_problem(cfg.model) or runner_problem(cfg):
        named = _NAMED.match(problem)
        raise ConfigError(_blame(named and (named["section"], named["key"]), problem, file, env))
    return cfg


_AT = re.compile(r"^(?P<why>.*) - at `\$\.(?:(?P<section>\w+)\.)?(?P<key>\w+)`$")
_NAMED = re.compile(r"^(?P<section>\w+)\.(?P<key>\w+) ")  # "nats.port is 0: ..."


def _said(error: str, raw: dict[str, Any], file: Path, environ: Mapping[str, str]) -> str:
    """msgspec's `Expected `int` >= 1 - at `$.runner.max_containers`` as `runner.max_containers = 0: Expected `int`
    >= 1`, said of where the value came from."""
    found = _AT.match(error)
    if found is None:
        return f"{file}: {error}"
    section, key = found["section"], found["key"]
    value = (raw.get(section) or {}).get(key) if section else raw.get(key)
    why = _wrong_type(found["why"], key) or found["why"]
    text = f"{f'{section}.' if section else ''}{key} = {value!r}: {why}{_choices(error)}"
    return _blame((section or "", key), text, file, environ)


_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}
_TYPE_WORDS |= {"array": "a list", "object": "a table", "null": "nothing"}
_UNITS = (("_days", "days"), ("_minutes", "minutes"))
_UNITLESS = frozenset({"cpus", "rate", "login_rate"})  # numbers that are not seconds


def _wrong_type(why: str, key: str) -> str | None:
    """msgspec's `Expected `float`, got `str`` in the words of config.toml: "expected a number of seconds, not
    text" (`idle_timeout = '30m'`); None for any other complaint."""
    found = re.fullmatch(r"Expected `(\w+)`, got `(\w+)`", why)
    if found is None:
        return None
    wanted, got = found[1], found[2]
    if wanted == "float" and key not in _UNITLESS:
        unit = next((u for end, u in _UNITS if key.endswith(end)), "seconds")
        how = ", written without quotes or a unit (e.g. 90 or 1.5)" if got == "str" else ""
        return f"expected a number of {unit}{how}, not {_TYPE_WORDS.get(got, got)}"
    said = "a fraction" if got == "float" else _TYPE_WORDS.get(got, got)
    return f"expected {_TYPE_WORDS.get(wanted, wanted)}, not {said}"


def _blame(setting: tuple[str, str] | None, problem: str, file: Path, environ: Mapping[str, str]) -> str:
    """`problem` said of where the value came from: config.toml, or the `CLAWDEN_<SECTION>_<KEY>` variable that
    overrides it there (a bad variable is not fixed by editing the file)."""
    if setting is not None and (setting[0] in _SECTIONS or setting == ("", "install_id")):
        variable = "_".join(("CLAWDEN", *filter(None, setting))).upper()
        name = next((k for k in environ if k.upper() == variable), None)
        if name is not None:
            return f"environment variable {name}: {problem} (it overrides {file}; unset or correct it)"
    return f"{file}: {problem}"


def _choices(error: str) -> str:
    """For a word a setting does not accept (`Invalid enum value 'alowlist' - at `$.vault.default_egress``),
    the words it does."""
    import typing

    found = re.search(r"^Invalid enum value .* at `\$\.(\w+)\.(\w+)`$", error)
    section = found and {f.name: f.type for f in msgspec.structs.fields(Config)}.get(found[1])
    if not found or not (isinstance(section, type) and issubclass(section, msgspec.Struct)):
        return ""
    kind = {f.name: f.type for f in msgspec.structs.fields(section)}.get(found[2])
    if typing.get_origin(kind) is not Literal:
        return ""
    return f" (it must be one of {', '.join(repr(v) for v in typing.get_args(kind))})"


NATS_SCHEMES = ("nats://", "tls://")


def nats_problem(nats: NatsConfig) -> str | None:
    """What is wrong with the `[nats]` section, in one line that names the fix; None when nothing."""
    if not 0 < nats.port < 65536:
        return f"nats.port is {nats.port}: a port is a number from 1 to 65535 (`clawden init` picks a free one)"
    if nats.replicas not in (1, 3):
        return f"nats.replicas is {nats.replicas}: it must be 1 (one server) or 3 (a cluster of three)"
    for url in nats.servers:
        if not url.startswith(NATS_SCHEMES):
            return f"nats.url {url!r} is not a NATS address: write it as nats://host:port (or tls://host:port)"
    if nats.replicas > 1 and not nats.servers:
        return "nats.replicas = 3 needs a cluster, but the embedded server is one server: set nats.url to its servers"
    if nats.ca_file and not Path(nats.ca_file).is_file():
        return f"nats.ca_file {nats.ca_file} is not a file: point it at the cluster's ca.pem (clawden cluster init)"
    return None


def runner_problem(cfg: Config) -> str | None:
    """What is wrong with the container limits, `[runner]`'s and each `[groups.<name>]`'s, in one line that names
    the fix; None when nothing. Sizes and images are read as `clawden groups update --memory/--image` reads them
    (`GroupSettings.problems`): a limit Docker refuses would fail every container start, long after the config
    loaded, as "my container could not be started"."""
    runner = cfg.runner
    size = memory_bytes(runner.memory)
    if size is None or not MEMORY_RANGE[0] <= size <= MEMORY_RANGE[1]:
        return f"runner.memory {runner.memory!r} is not a memory size: give one from 64m to 1024g, e.g. 2g"
    if not runner.image:
        return "runner.image is empty: give an image reference like clawden-agent:latest"
    if why := GroupSettings(image=runner.image).problems().get("image"):
        return f"runner.{why}"
    for name, group in cfg.groups.items():
        # 0 and "" are "not set" in both: the runner's own apply.
        for why in GroupSettings(memory=group.memory, cpus=group.cpus, pids=group.pids).problems().values():
            return f"[groups.{name}] {why}"
    return None


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def model_problem(model: ModelConfig) -> str | None:
    """What is wrong with `[model] upstream`, in one line that names the fix; None when nothing. The model
    key goes wherever it points, so it must be an https origin (http only on loopback) and nothing else."""
    from urllib.parse import urlsplit

    fix = "write it as https://host (or https://host:port/path), e.g. https://api.anthropic.com"
    url = urlsplit(model.upstream.strip())
    try:
        url.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        return f"model.upstream {model.upstream!r} has a port that is not one: {fix}"
    host = (url.hostname or "").lower()
    if url.scheme not in ("https", "http") or not host:
        return f"model.upstream {model.upstream!r} is not a web address with a host: {fix}"
    if url.scheme == "http" and not (host in _LOOPBACK_HOSTS or host.startswith("127.")):
        return f"model.upstream {model.upstream!r} would send the model key unencrypted: {fix}"
    if url.username is not None or url.password is not None or url.query or url.fragment or "\\" in model.upstream:
        return f"model.upstream {model.upstream!r} has a user, query or fragment the key must not go with: {fix}"
    return None


def unknown_settings(raw: dict[str, Any]) -> list[str]:
    """Sections and keys of a config.toml that Clawden does not read, each with the nearest it does
    (`[runer]`, `cpu =`): a typo is otherwise a setting silently not applied. `[channels.*]` belongs to
    the bridges, which read their own keys."""
    found = _unknown(raw, Config, "", skip=frozenset({"home", "channels"}))
    channels = raw.get("channels")
    return found + (_unknown_in_channels(channels) if isinstance(channels, dict) else [])


def _unknown_in_channels(channels: dict[str, Any]) -> list[str]:
    """`[channels.<name>]` for no installed bridge, a token written there (a bridge reads its token only
    from keys/<name> or CLAWDEN_<NAME>_TOKEN, never from config.toml), and a key a built-in bridge does not read
    (`channelsettings.SETTINGS`; another's bridge reads what it likes)."""
    import difflib

    from clawden.channelsettings import SETTINGS

    names = sorted(installed_channels())
    found: list[str] = []
    for name, table in channels.items():
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f" (did you mean [channels.{near[0]}]?)" if near else ""
            found.append(f"[channels.{name}] is not a channel Clawden knows{hint}")
            continue
        if not isinstance(table, dict):
            continue
        if "token" in table:
            found.append(
                f"token in [channels.{name}] is not read: put it in keys/{name} (chmod 600) or "
                f"CLAWDEN_{name.upper()}_TOKEN, and take it out of config.toml"
            )
        known = SETTINGS.get(name, {})
        for key in [k for k in table if name in SETTINGS and k not in known and k != "token"]:
            near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else ""
            found.append(f"{key} in [channels.{name}] is not a setting the {name} bridge reads{hint}")
    return found


def _unknown(
    raw: dict[str, Any], kind: type[msgspec.Struct], where: str, skip: frozenset[str] = frozenset()
) -> list[str]:
    import difflib

    known = {f.name: f.type for f in msgspec.structs.fields(kind)}
    found: list[str] = []
    for key, value in raw.items():
        if key in skip:
            continue
        if key not in known:
            near = difflib.get_close_matches(key, [k for k in known if k not in skip], n=1, cutoff=0.6)
            is_table = isinstance(value, dict)
            name = f"[{where}{key}]" if is_table else f"{key} in [{where.rstrip('.')}]" if where else key
            hint = f" (did you mean {f'[{where}{near[0]}]' if is_table else near[0]}?)" if near else ""
            found.append(f"{name} is not a setting Clawden knows{hint}")
            continue
        field_type = known[key]
        if isinstance(value, dict):
            if isinstance(field_type, type) and issubclass(field_type, msgspec.Struct):
                found += _unknown(value, field_type, f"{where}{key}.")
            elif key == "groups" and not where:  # [groups.<name>]: each one a GroupConfig
                for group, table in value.items():
                    if isinstance(table, dict):
                        found += _unknown(table, GroupConfig, f"groups.{group}.")
    return found


def unknown_in_file(cfg: Config) -> list[str]:
    """`unknown_settings` of this home's config.toml ([] when there is none, or it does not parse:
    loading it says that)."""
    file = cfg.path("config.toml")
    try:
        return unknown_settings(tomllib.loads(file.read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        return []


def http_services(cfg: Config) -> tuple[str, ...]:
    """The services that serve HTTP, run where their `listen` is set: the webhook front door, the web app."""
    return (*(("webhooks",) if cfg.webhooks.listen else ()), *(("web",) if cfg.web.listen else ()))


def token_variable(channel: str) -> str:
    """The environment variable that gives a bridge its credential instead of keys/<channel>."""
    return f"CLAWDEN_{channel.upper()}_TOKEN"


def configured_bridges(cfg: Config, environ: dict[str, str] | None = None) -> list[str]:
    """Bridges with a token (`keys/<name>` or `CLAWDEN_<NAME>_TOKEN`): `clawden up` runs those."""
    env = dict(os.environ) if environ is None else environ
    names = installed_channels()
    return [f"channel@{n}" for n in sorted(names) if (cfg.keys_dir / n).exists() or env.get(token_variable(n))]


DEFAULT_CONFIG_TOML = """\
# Clawden configuration. Every key can be overridden by CLAWDEN_<SECTION>_<KEY>.
install_id = "{install_id}"

[nats]
# Empty: run the embedded server (clawden up) on 127.0.0.1:port. Set a URL to use an existing
# NATS server instead, or a list of URLs for a cluster (with replicas = 3; `clawden cluster init`).
url = ""
port = {port}

[runner]
image = "clawden-agent:latest"
idle_timeout = 1800   # seconds a container may sit idle before it is stopped
memory = "2g"
cpus = 2.0
pids = 512

[model]
# Only for agents' model calls that reach the vault over plain HTTP (a container without the gateway's CA);
# the usual ones, over HTTPS through the gateway, go to api.anthropic.com whatever this says.
# The key is the vault's `anthropic` secret (`clawden secrets add anthropic --type anthropic --replace`),
# imported from ANTHROPIC_API_KEY or keys/anthropic when it is new or changed there.
upstream = "https://api.anthropic.com"
"""


def init_home(home: Path | None = None) -> Config:
    """Create the home, its private keys folder and a default config; never overwrites."""
    home = (home or default_home()).resolve()
    # The home holds the conversations (sessions/, state/), the services' databases (data/) and logs: the owner's
    # alone. Agent containers need no way through it: Docker mounts each folder they get by its own path, as root.
    home.parent.mkdir(parents=True, exist_ok=True)
    home.mkdir(mode=0o700, exist_ok=True)
    for sub in ("data", "logs"):  # never mounted into a container
        (home / sub).mkdir(mode=0o700, exist_ok=True)
    for sub in ("groups", "sessions", "run"):  # mounted, some read by the agent's uid under a root install
        (home / sub).mkdir(exist_ok=True)
    keys = home / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    keys.chmod(0o700)
    file = home / "config.toml"
    if not file.exists():
        file.write_text(DEFAULT_CONFIG_TOML.format(install_id=os.urandom(4).hex(), port=free_nats_port()))
    return load(home)


DEFAULT_NATS_PORT = 4322


def free_nats_port(preferred: int = DEFAULT_NATS_PORT) -> int:
    """The port a new install's NATS gets: the usual one, unless something (another install) holds it."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
