"""Systemd units and launchd plists for a real install: the templates in `units/` rendered for this
install's interpreter, home and user, and the plan (files and commands) that installs or removes them.

Template syntax, kept small on purpose: `@NAME@` is replaced by a value of this install (XML-escaped in
plists), and a line starting with `@?flag@` is kept, without that prefix, only where the flag holds
(`@?!flag@`: only where it does not).
Everything else in a template is installed as written.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import plistlib
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from clawden import natsserver
from clawden.config import Config, http_services
from clawden.installed import SYSTEM_UNIT_DIR as SYSTEM_UNIT_DIR  # where they are installed: the kernel's too
from clawden.installed import TARGET as TARGET
from clawden.installed import Mode as Mode
from clawden.installed import unit_dir as unit_dir
from clawden.resources import resource_dir
from clawden.runtime import EX_CONFIG

UNITS_DIR = resource_dir("units")
SERVICES = ("vault", "router", "runner", "scheduler", "approvals")  # the core, as `clawden up` runs it
NATS_UNIT = "clawden-nats.service"
CHANNEL_TEMPLATE = "clawden-channel@.service"
# Starts the bridge again once keys/<name> changes: one that could not run with the credential it had (exit 78,
# which its unit does not restart) runs once the file is mended.
CHANNEL_PATH_TEMPLATE = "clawden-channel@.path"
LABEL_PREFIX = "dev.clawden"
# Hidden from every service by ProtectHome= and PrivateTmp=: install paths there are bound back read-only.
HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))
DOCKER_SOCKET = Path("/var/run/docker.sock")
LINGER_DIR = Path("/var/lib/systemd/linger")  # logind's record of who lingers
# What a unit file can carry without quoting or escaping (systemd specifiers use `%`, BindPaths `:`).
SAFE_PATH = re.compile(r"/[\w.+,@~/-]*", re.ASCII)
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
FLAG = re.compile(r"@\?(!?)([a-z][a-z0-9_]*)@")


class UnitsError(Exception):
    """Something the person running `clawden units` must fix; the message says how."""


# ---- rendering (pure) ----------------------------------------------------------------------------


def render(template: str, values: Mapping[str, str], flags: Mapping[str, bool]) -> str:
    out: list[str] = []
    for line in template.splitlines(keepends=True):
        cond = FLAG.match(line)
        if cond:
            negate, flag = cond.groups()
            if flag not in flags:
                raise UnitsError(f"template flag {flag!r} is not defined")
            if flags[flag] == bool(negate):
                continue
            line = line[cond.end() :]

        def value(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise UnitsError(f"template placeholder @{m.group(1)}@ has no value")
            return values[m.group(1)]

        out.append(PLACEHOLDER.sub(value, line))
    return "".join(out)


@dataclass(frozen=True)
class Install:
    """Everything about this install that the units name."""

    mode: Mode
    home: Path
    python: Path
    nats_server: Path | None  # None: an external NATS server, so no unit for it
    user: str
    group: str
    user_home: Path
    channels: tuple[str, ...] = ()  # bridges to run, one template instance each
    http: tuple[str, ...] = ()  # the HTTP services that run here (config.http_services): a unit each
    read_only: tuple[Path, ...] = ()  # interpreter and code under hidden folders, bound back read-only
    nats_seeds: bool = True  # every service has `keys/nats/<identity>.nk`, passed as a credential
    docker_group: str | None = None
    docker_host: str | None = None  # DOCKER_HOST as `clawden units install` saw it (rootless Docker, macOS)

    @property
    def services(self) -> tuple[str, ...]:
        """The services with a unit of their own: the core, and the HTTP services where they run."""
        return (*SERVICES, *self.http)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    def values(self) -> dict[str, str]:
        values = {
            "PYTHON": str(self.python),
            "CLAWDEN_HOME": str(self.home),
            "USER": self.user,
            "GROUP": self.group,
            "WANTED_BY": "multi-user.target" if self.mode == "system" else "default.target",
            "INSTALL_BINDS": " ".join(str(p) for p in self.read_only),
            "CONFIG_DIR": str(self.user_home / ".config" / "clawden"),
            "PATH": f"{self.python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        }
        if self.nats_server is not None:
            values["NATS_SERVER"] = str(self.nats_server)
        if self.docker_group:
            values["DOCKER_GROUP"] = self.docker_group
        if self.docker_host:
            values["DOCKER_HOST"] = self.docker_host
        if self.docker_socket is not None:
            values["DOCKER_SOCKET"] = str(self.docker_socket)
        return values

    @property
    def docker_socket(self) -> Path | None:
        """DOCKER_HOST's Unix socket where services cannot see it (rootless Docker's is in /run/user)."""
        if not (self.docker_host or "").startswith("unix://"):
            return None
        path = Path((self.docker_host or "").removeprefix("unix://"))
        return path if any(path.is_relative_to(h) for h in HIDDEN) else None

    def flags(self) -> dict[str, bool]:
        embedded = self.nats_server is not None
        return {
            "system": self.mode == "system",
            "root": self.mode == "system" and self.user == "root",
            "service_user": self.mode == "system" and self.user != "root",
            "embedded_nats": embedded,
            "remote_nats": not embedded and self.mode == "system",
            "nats_seeds": self.nats_seeds,
            "install_binds": bool(self.read_only),
            "docker_group": bool(self.docker_group) and self.mode == "system",
            "docker_host": bool(self.docker_host),
            "docker_socket_hidden": self.docker_socket is not None,
            # Docker over TCP (DOCKER_HOST=tcp://…) may be another machine: then the runner is not loopback-only.
            "runner_loopback": embedded and (self.docker_host or "unix://").startswith("unix://"),
        }

    def check_paths(self) -> None:
        paths = [self.home, self.python, self.user_home, *self.read_only]
        paths += [self.docker_socket] if self.docker_socket is not None else []
        paths += [self.nats_server] if self.nats_server is not None else []
        if self.docker_host and not re.fullmatch(r"[\w.+,@~/:\[\]-]+", self.docker_host, re.ASCII):
            raise UnitsError(f"DOCKER_HOST={self.docker_host!r} cannot go into a unit file as is")
        for path in paths:
            if not SAFE_PATH.fullmatch(str(path)):
                raise UnitsError(
                    f"{path}: unit files cannot name this path as is (only letters, digits and "
                    "._+,@~-/ are safe there); use a plainer path for the home or the venv"
                )


@dataclass(frozen=True)
class UnitFile:
    name: str  # as installed
    text: str


def _template(kind: str, name: str) -> str:
    path = UNITS_DIR / kind / name
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UnitsError(
            f"unit template {path} is missing: this Clawden install lacks its unit templates; reinstall Clawden"
        ) from None


def systemd_units(inst: Install) -> list[UnitFile]:
    """The target, the NATS server (when embedded), one unit per service and the bridge templates (its service, and
    the path unit that starts it when its credential file changes)."""
    inst.check_paths()
    names = [
        TARGET,
        *([NATS_UNIT] if inst.nats_server is not None else []),
        *(f"clawden-{s}.service" for s in inst.services),
        CHANNEL_TEMPLATE,
        CHANNEL_PATH_TEMPLATE,
    ]
    values, flags = inst.values(), inst.flags()
    return [UnitFile(n, render(_template("systemd", n), values, flags)) for n in names]


def enabled_units(inst: Install) -> list[str]:
    """What `systemctl enable` gets: the target and every unit it should pull in, bridges (and their path units)
    included."""
    return [
        TARGET,
        *([NATS_UNIT] if inst.nats_server is not None else []),
        *(f"clawden-{s}.service" for s in inst.services),
        *(unit for c in inst.channels for unit in channel_units(c)),
    ]


def channel_unit(channel: str) -> str:
    return CHANNEL_TEMPLATE.replace("@", f"@{channel}")


def channel_path_unit(channel: str) -> str:
    return CHANNEL_PATH_TEMPLATE.replace("@", f"@{channel}")


def channel_units(channel: str) -> tuple[str, str]:
    """A bridge's instances: its service, and the path unit that starts it again when keys/<channel> changes."""
    return channel_unit(channel), channel_path_unit(channel)


def enabled_channel_units(folder: Path) -> list[str]:
    """The bridge instances `enable` linked into the target's wants (services and path units), by name."""
    wants = folder / f"{TARGET}.wants"
    return sorted(
        p.name for pattern in ("clawden-channel@?*.service", "clawden-channel@?*.path") for p in wants.glob(pattern)
    )


def label(name: str) -> str:
    return f"{LABEL_PREFIX}.{name}"


def launchd_plists(inst: Install) -> list[UnitFile]:
    """One LaunchAgent per service, the NATS server (when embedded) and one per bridge."""
    inst.check_paths()
    values = {k: escape(v) for k, v in inst.values().items()}
    flags = inst.flags()
    jobs = [*(["nats"] if inst.nats_server is not None else []), *inst.services]
    plists = [
        UnitFile(f"{label(j)}.plist", render(_template("launchd", f"{label(j)}.plist"), values, flags)) for j in jobs
    ]
    template = _template("launchd", f"{label('channel')}.plist")
    for channel in inst.channels:
        text = render(template, {**values, "CHANNEL": escape(channel)}, flags)
        plists.append(UnitFile(f"{label('channel.' + channel)}.plist", text))
    for plist in plists:
        check_plist(plist)
    return plists


def check_plist(plist: UnitFile) -> dict[str, object]:
    """What launchd needs and plistlib cannot tell: a matching Label, absolute program, log and watched paths."""
    try:
        data = plistlib.loads(plist.text.encode())
    except (ValueError, plistlib.InvalidFileException) as exc:
        raise UnitsError(f"{plist.name} is not a valid plist: {exc}") from exc
    if data.get("Label") != plist.name.removesuffix(".plist"):
        raise UnitsError(f"{plist.name}: Label {data.get('Label')!r} does not match the file name")
    argv = data.get("ProgramArguments")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) and os.path.isabs(argv[0])):
        raise UnitsError(f"{plist.name}: ProgramArguments must be strings starting with an absolute path")
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        if not (isinstance(data.get(key), str) and os.path.isabs(data[key])):
            raise UnitsError(f"{plist.name}: {key} must be an absolute path")
    watched = data.get("WatchPaths", [])
    if not (isinstance(watched, list) and all(isinstance(w, str) and os.path.isabs(w) for w in watched)):
        raise UnitsError(f"{plist.name}: WatchPaths must be a list of absolute paths")
    return dict(data)


# ---- discovering this install ----------------------------------------------------------------------


def default_mode() -> Mode:
    if sys.platform == "darwin":
        return "launchd"
    return "system" if os.geteuid() == 0 else "user"


def install_roots(python: Path, extra: Iterable[Path] = ()) -> tuple[Path, ...]:
    """Where the interpreter, the venv and the code live, as far as those places are hidden from services."""
    import clawden

    services = importlib.util.find_spec("services")  # found, not imported: the kernel uses no service
    paths = sysconfig.get_paths()
    candidates = {
        Path(os.path.realpath(python)),
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(clawden.__file__).resolve().parent,
        *([Path(services.origin).resolve().parent] if services and services.origin else []),
        *(Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths),
        *extra,
    }
    hidden = sorted({c for c in candidates if c.exists() and any(c.is_relative_to(h) for h in HIDDEN)})
    roots: list[Path] = []
    for path in hidden:  # sorted, so a folder comes before what it holds
        if not any(path.is_relative_to(r) for r in roots):
            roots.append(path)
    return tuple(roots)


def discover(cfg: Config, mode: Mode, channels: Sequence[str], environ: Mapping[str, str] | None = None) -> Install:
    """This install as units see it: the running interpreter, the home and the home's owner."""
    env = os.environ if environ is None else environ
    home = cfg.home_path
    if not home.is_dir():
        raise UnitsError(f"no Clawden home at {home}: run `clawden init` first")
    python = Path(sys.executable)
    if not python.is_absolute():
        raise UnitsError(f"cannot tell the interpreter's absolute path ({sys.executable!r})")
    nats_server = None
    if cfg.embedded_nats:
        try:
            nats_server = natsserver.binary()
        except natsserver.NatsServerError as exc:
            raise UnitsError(str(exc)) from None
    # System services run as the home's owner; user services as whoever installs them.
    account = pwd.getpwuid(home.stat().st_uid if mode == "system" else os.getuid())
    user_home = Path(env.get("HOME") or account.pw_dir) if mode != "system" else Path(account.pw_dir)
    roots = install_roots(python, [nats_server] if nats_server is not None else [])
    http = http_services(cfg)
    seeds = [cfg.keys_dir / "nats" / f"{s}.nk" for s in [*SERVICES, *http, *(f"channel-{c}" for c in channels)]]
    return Install(
        mode=mode,
        home=home,
        python=python,
        nats_server=nats_server,
        user=account.pw_name,
        group=grp.getgrgid(account.pw_gid).gr_name,
        user_home=user_home,
        channels=tuple(channels),
        http=http,
        read_only=tuple(r for r in roots if not r.is_relative_to(home)),
        # Embedded NATS: the plan makes every seed before the units need it. External: only those present.
        nats_seeds=cfg.embedded_nats or all(s.exists() for s in seeds),
        docker_group=_docker_group(account, env) if mode == "system" else None,
        docker_host=env.get("DOCKER_HOST") or None,
    )


def _docker_group(account: pwd.struct_passwd, env: Mapping[str, str]) -> str | None:
    """The group owning the Docker socket, for the runner's SupplementaryGroups= (root needs none)."""
    if account.pw_uid == 0:
        return None
    host = env.get("DOCKER_HOST", "")
    socket = Path(host.removeprefix("unix://")) if host.startswith("unix://") else DOCKER_SOCKET
    try:
        return grp.getgrgid(socket.stat().st_gid).gr_name
    except (OSError, KeyError):
        return None


# ---- the plan: files and commands ------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    path: Path
    text: str

    def __str__(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True)
class Remove:
    path: Path

    def __str__(self) -> str:
        return f"remove {self.path}"


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    check: bool = True  # False: a failure is reported and the plan goes on
    hint: str = ""

    def __str__(self) -> str:
        return "$ " + " ".join(self.argv)


@dataclass(frozen=True)
class Call:
    """An in-process step (writing nats.conf), described for --dry-run."""

    description: str
    do: Callable[[], str] = field(compare=False)

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class Start:
    """`systemctl start` of the enabled units, then a word on each that did not start: why, and the fix. A bridge that
    did not start leaves the install standing (its path unit starts it once keys/<name> is mended); any other unit
    fails it, for without the core nothing is answered."""

    mode: Mode
    units: tuple[str, ...]
    keys: Path  # keys/<name>, the files the bridges' path units watch

    def __str__(self) -> str:
        return "$ " + " ".join(_systemctl(self.mode, "start", *self.units))


Action = Write | Remove | Run | Call | Start


# ---- what did not start, and why (pure) ------------------------------------------------------------

# What `systemctl show` tells of each unit once its start is over: whether it runs, and if not, why.
SHOWN = "Id,ActiveState,SubState,Result,ExecMainStatus,ExecMainStartTimestamp,SyslogIdentifier"
RESULTS = {  # systemd's Result= in plain words ({status}: ExecMainStatus, the exit code or the signal)
    "exit-code": "it exited {status}",
    "signal": "it was killed by signal {status}",
    "core-dump": "it dumped core (signal {status})",
    "timeout": "it did not say it was ready in time (TimeoutStartSec=)",
    "watchdog": "its watchdog expired",
    "start-limit-hit": "it failed too often to be started again now (StartLimitBurst=)",
}


@dataclass(frozen=True)
class UnitState:
    """One unit as `systemctl show -p SHOWN` describes it."""

    name: str
    active: str  # ActiveState: active, failed, activating (as in auto-restart), inactive
    sub: str = ""
    result: str = ""  # Result: success, exit-code, signal, timeout, watchdog, start-limit-hit, …
    status: int = 0  # ExecMainStatus: the main process's exit code (or signal)
    started_at: str = ""  # ExecMainStartTimestamp, as `journalctl --since` takes it
    identifier: str = ""  # SyslogIdentifier: what its journal lines are tagged with

    @property
    def channel(self) -> str:
        """The bridge's channel, for a bridge's service or path unit; "" for any other unit."""
        prefix = CHANNEL_TEMPLATE.partition("@")[0] + "@"
        return self.name.removeprefix(prefix).rpartition(".")[0] if self.name.startswith(prefix) else ""


def unit_states(shown: str) -> list[UnitState]:
    """`systemctl show -p SHOWN <units>`: one block of KEY=value lines per unit, a blank line between blocks."""
    states = []
    for block in shown.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in props:
            continue
        status = props.get("ExecMainStatus", "")
        states.append(
            UnitState(
                name=props["Id"],
                active=props.get("ActiveState", ""),
                sub=props.get("SubState", ""),
                result=props.get("Result", ""),
                status=int(status) if status.isdigit() else 0,
                started_at=props.get("ExecMainStartTimestamp", ""),
                identifier=props.get("SyslogIdentifier", ""),
            )
        )
    return states


def cannot_run_as_configured(unit: UnitState) -> bool:
    """Whether it exited 78: then the error it logged last says why (`… cannot run as configured: …`)."""
    return unit.result == "exit-code" and unit.status == EX_CONFIG


def why_not_started(unit: UnitState, logged: str = "") -> str:
    """Why a unit does not run: its process's own words where the journal had them, else systemd's."""
    if logged:
        return logged
    if cannot_run_as_configured(unit):
        return f"it exited {EX_CONFIG}: it cannot run as configured (its journal says why)"
    if unit.result in RESULTS:
        return RESULTS[unit.result].format(status=unit.status)
    return f"it is {unit.active} ({unit.sub})"


def not_started(down: Sequence[UnitState], logged: Mapping[str, str], mode: Mode, keys: Path) -> tuple[list[str], str]:
    """What to say of the units that did not start: lines on the bridges, which leave the install standing (a bridge's
    path unit starts it once its key file is mended), and the error that fails it ("" when only bridges are down)."""
    user = " --user" if mode == "user" else ""
    said: list[str] = []
    core: list[str] = []
    for unit in down:
        line = f"{unit.name} did not start: {why_not_started(unit, logged.get(unit.name, ''))}"
        if not unit.channel:
            core.append(line)
        elif unit.name == channel_unit(unit.channel):
            said += [
                f"  {line}",
                f"  the rest runs without it; `clawden doctor` checks its credential, and once "
                f"{keys / unit.channel} holds one that works, {channel_path_unit(unit.channel)} starts it",
            ]
        else:  # its path unit: mending the key file would start nothing
            said += [f"  {line}", f"  see `systemctl{user} status {unit.name}`"]
    if not core:
        return said, ""
    first = next(u.name for u in down if not u.channel)
    failed = "\n  ".join(core)
    return said, (
        f"installed and enabled, but Clawden's core did not start:\n  {failed}\n"
        f"see `systemctl{user} status 'clawden*'` and `journalctl{user} -u {first}`; `clawden doctor` checks what "
        f"the services need, and `systemctl{user} start {TARGET}` starts them again"
    )


def identities(cfg: Config) -> Call | None:
    """With the embedded server: each service's seed and nats.conf, as `clawden init` makes them (idempotent),
    so that no unit's `LoadCredential=` names a missing file. Written by root (`sudo … --system`) into
    someone else's home, they are handed to the home's owner, whom the services run as."""
    if not cfg.embedded_nats:
        return None
    from clawden import natsauth
    from clawden.registry import installed_channels

    channels = tuple(installed_channels())
    conf, seeds = natsauth.conf_path(cfg), natsauth.seed_dir(cfg)
    said = f"nats identities: {conf} and {seeds}/<identity>.nk (0600)"

    def write() -> str:
        natsauth.write_server_config(cfg, channels)
        owner = cfg.home_path.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            for path in (conf, seeds, *seeds.glob("*.nk")):
                os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
        return said

    return Call(said, write)


def _systemctl(mode: Mode, *args: str) -> tuple[str, ...]:
    return ("systemctl", *(["--user"] if mode == "user" else []), *args)


def install_plan(inst: Install, folder: Path, identities: Call | None = None, *, now: bool = False) -> list[Action]:
    if inst.mode == "launchd":
        domain = f"gui/{inst.uid}"
        plan: list[Action] = [identities] if identities else []
        for plist in launchd_plists(inst):
            path = folder / plist.name
            plan += [
                Write(path, plist.text),
                Run(("launchctl", "bootout", f"{domain}/{plist.name.removesuffix('.plist')}"), check=False),
                Run(("launchctl", "bootstrap", domain, str(path))),
            ]
        return plan
    plan = [identities] if identities else []
    plan += [Write(folder / unit.name, unit.text) for unit in systemd_units(inst)]
    plan.append(Run(_systemctl(inst.mode, "daemon-reload")))
    # A bridge whose token is gone stops and stays off; the ones configured now are enabled below.
    configured = {unit for c in inst.channels for unit in channel_units(c)}
    gone = [name for name in enabled_channel_units(folder) if name not in configured]
    if gone:
        plan.append(Run(_systemctl(inst.mode, "disable", "--now", *gone), check=False))
    plan.append(Run(_systemctl(inst.mode, "enable", *enabled_units(inst))))
    if inst.nats_server is not None:  # a running server picks up identities added to nats.conf, before a bridge asks
        plan.append(Run(_systemctl(inst.mode, "try-reload-or-restart", NATS_UNIT)))
    if inst.mode == "user" and not (LINGER_DIR / inst.user).exists():
        # Without polkit only root may turn it on: then say how, but the units are installed all the same.
        plan.append(
            Run(
                ("loginctl", "enable-linger", inst.user),
                check=False,
                hint=f"without linger your services start at your login and stop when you log out; "
                f"turn it on with `sudo loginctl enable-linger {inst.user}`",
            )
        )
    if now:  # last: what did not start is the last thing said
        plan.append(Start(inst.mode, tuple(enabled_units(inst)), inst.home / "keys"))
    return plan


def uninstall_plan(mode: Mode, folder: Path, uid: int) -> list[Action]:
    """Stop, disable and remove whatever Clawden units or plists `folder` holds."""
    if mode == "launchd":
        plan: list[Action] = []
        for path in sorted(folder.glob(f"{LABEL_PREFIX}.*.plist")):
            plan += [
                Run(("launchctl", "bootout", f"gui/{uid}/{path.name.removesuffix('.plist')}"), check=False),
                Remove(path),
            ]
        return plan
    files = sorted(p for p in folder.glob("clawden*") if p.is_file() and not p.is_symlink())
    instances = enabled_channel_units(folder)
    if not files and not instances:
        return []
    units = {p.name for p in files} - {CHANNEL_TEMPLATE, CHANNEL_PATH_TEMPLATE}
    plan = [
        Run(_systemctl(mode, "disable", "--now", *sorted(units), *instances), check=False),
        # The path units too: one left watching would start its bridge again when the key file changes.
        Run(_systemctl(mode, "stop", "clawden-channel@*.path", "clawden-channel@*.service"), check=False),
    ]
    plan += [Remove(p) for p in files]
    plan += [Run(_systemctl(mode, "daemon-reload")), Run(_systemctl(mode, "reset-failed", "clawden*"), check=False)]
    return plan


def apply(plan: Sequence[Action], say: Callable[[str], object], *, dry_run: bool = False) -> None:
    """Carry the plan out in order, saying each step as it is done (or, dry, would be)."""
    if not dry_run:
        tools = {a.argv[0] for a in plan if isinstance(a, Run)}
        missing = sorted(t for t in tools if shutil.which(t) is None)
        if missing:
            raise UnitsError(
                f"{', '.join(missing)} not found: this machine does not run "
                f"{'launchd' if 'launchctl' in missing else 'systemd'}. Run Clawden in the "
                "foreground with `clawden up`, or see the units with `clawden units show`"
            )
    for action in plan:
        if dry_run:
            say(str(action))
            continue
        if isinstance(action, Write):
            action.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = action.path.with_name(f".{action.path.name}.tmp")
            tmp.write_text(action.text)
            tmp.chmod(0o644)
            os.replace(tmp, action.path)
            say(str(action))
        elif isinstance(action, Remove):
            action.path.unlink(missing_ok=True)
            say(str(action))
        elif isinstance(action, Call):
            say(action.do())
        elif isinstance(action, Start):
            say(str(action))
            start(action, say)
        else:
            say(str(action))
            result = subprocess.run(action.argv, capture_output=True, text=True, check=False)
            output = (result.stdout + result.stderr).strip()
            if result.returncode == 0:
                continue
            if action.check:
                hint = f"\n{action.hint}" if action.hint else ""
                raise UnitsError(f"`{' '.join(action.argv)}` failed ({result.returncode}): {output}{hint}")
            say(f"  (exit {result.returncode}{': ' + output.splitlines()[-1] if output else ''})")
            if action.hint:
                say(f"  {action.hint}")


def start(action: Start, say: Callable[[str], object]) -> None:
    """Start the units, wait for their starts to be over (systemctl does), and say what did not start and why; raise
    if any unit but a bridge's did not."""
    argv = _systemctl(action.mode, "start", *action.units)
    started = _run(argv)
    shown = _run(_systemctl(action.mode, "show", "-p", SHOWN, *action.units))
    if shown.returncode != 0:
        raise UnitsError(f"`systemctl show` failed ({shown.returncode}): {(shown.stdout + shown.stderr).strip()}")
    down = [u for u in unit_states(shown.stdout) if u.active != "active"]
    if started.returncode != 0 and not down:  # systemctl failed for a reason of its own: its words, then
        raise UnitsError(
            f"`{' '.join(argv)}` failed ({started.returncode}): {(started.stdout + started.stderr).strip()}"
        )
    logged = {u.name: logged_error(action.mode, u) for u in down if cannot_run_as_configured(u)}
    said, failed = not_started(down, logged, action.mode, action.keys)
    for line in said:
        say(line)
    if failed:
        raise UnitsError(failed)


def logged_error(mode: Mode, unit: UnitState) -> str:
    """The last error the unit's process logged since it started ("" if the journal cannot tell: not readable by
    this user, or not written yet)."""
    if not (unit.identifier and unit.started_at):
        return ""
    argv = ["journalctl", *(["--user"] if mode == "user" else []), "--quiet", "--no-pager", "--output=cat"]
    argv += ["--priority=err", "--lines=1", f"--identifier={unit.identifier}", f"--since={unit.started_at}"]
    try:
        result = _run(tuple(argv), timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = result.stdout.strip().splitlines()
    return lines[0] if result.returncode == 0 and lines else ""


def _run(argv: tuple[str, ...], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
