"""Agent containers: the hardened run spec (pure) and the Docker adapter (docker SDK on a bounded pool)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import msgspec
from docker.models.containers import Container
from docker.types import Mount

from clawden import agentcontainer, mcpservers, sessiondb
from clawden.agentcontainer import (
    ADMIN_MOUNT,
    CACHE_MOUNT,
    GATEWAY_MOUNT,
    GLOBAL_MOUNT,
    GROUP_MOUNT,
    HOME_MOUNT,
    PROJECT_SETTINGS,
    RELAY_MOUNT,
    SESSION_MOUNT,
    SKILLS_MOUNT,
    TRUST_MOUNT,
    Engine,
    Tuning,
)
from clawden.bus import events as ev
from clawden.config import Config, GroupConfig
from clawden.mcpservers import MCP_ENV, McpServer
from clawden.skills import SKILLS_DIR
from services.runner.mounts import ExtraMount

log = logging.getLogger("clawden.runner.docker")
T = TypeVar("T")

LABEL_INSTALL = "dev.clawden.install"
LABEL_GROUP = "dev.clawden.agent-group"
LABEL_SESSION = "dev.clawden.session"
MCP_FAILED_MAX = 64 * 1024  # characters of the agent runner's list read at most
ALIVE = frozenset({"running", "paused", "restarting"})  # what Docker says of a container whose process is there
GONE = -1  # the exit code of a container gone with its record (Docker's own when it says none)


@dataclass(frozen=True)
class GroupRun:
    """How a group's containers run: the router's setting for each field where it sent a sound one,
    else config.toml's `[groups.<name>]`, else the runner's own (`[runner]`, `[model]`)."""

    folder: str
    model: str
    image: str
    memory: str
    cpus: float
    pids: int
    idle_timeout: float
    max_turns: int
    turn_budget: float
    effort: str = ""
    max_messages_per_prompt: int = 0
    assistant_name: str = ""
    skills: tuple[str, ...] | None = None  # None: every skill on the host
    mcp: dict[str, McpServer] = field(default_factory=dict)  # config.toml's and the router's, checked
    refused: tuple[str, ...] = ()  # what the router sent that is not used, and why


def group_run(
    agent_group: str, sent: ev.GroupSettings | None, cfg: Config, *, engine_cpus: int | None = None
) -> GroupRun:
    """Pure: what arrived on the bus is checked field by field; a field out of bounds is refused (and
    reported in `refused`) and the next source applies, so a bad setting never stops a container."""
    local = cfg.groups.get(agent_group, GroupConfig())
    sent = sent or ev.GroupSettings()
    problems = sent.problems()
    problems.pop("mcp", None)  # each bad server is left out alone, below
    mcp, mcp_refused = mcpservers.usable(local.mcp, sent.mcp)
    # Docker refuses a CPU limit above what its engine has; every start would fail.
    if sent.cpus and engine_cpus and sent.cpus > engine_cpus and "cpus" not in problems:
        problems["cpus"] = f"cpus {sent.cpus:g}: the Docker engine has only {engine_cpus}"

    def pick(name: str, *fallbacks: Any) -> Any:
        value = getattr(sent, name)
        if value and name not in problems:
            return value
        return next((f for f in fallbacks if f), fallbacks[-1])

    return GroupRun(
        folder=pick("folder", agent_group),
        model=pick("model", cfg.model.model),
        image=pick("image", cfg.runner.image),
        memory=pick("memory", local.memory, cfg.runner.memory),
        cpus=float(pick("cpus", local.cpus, cfg.runner.cpus)),
        pids=int(pick("pids", local.pids, cfg.runner.pids)),
        idle_timeout=float(pick("idle_timeout", cfg.runner.idle_timeout)),
        max_turns=int(pick("max_turns", cfg.runner.max_turns)),
        turn_budget=float(pick("turn_budget", cfg.runner.turn_budget)),
        effort=pick("effort", ""),
        max_messages_per_prompt=int(pick("max_messages_per_prompt", 0)),
        assistant_name=pick("assistant_name", ""),
        skills=None if "skills" in problems else sent.skills,
        mcp=mcp,
        refused=(*problems.values(), *mcp_refused),
    )


def mcp_failed(folder: Path) -> dict[str, str]:
    """The MCP servers the session's agent runner says failed to start, as it keeps them in outbound.db. The
    container writes that file, so what does not decode as names and reasons is read as nothing."""
    try:
        text = sessiondb.get_state(folder, sessiondb.MCP_FAILED_KEY) or "{}"
        failed = msgspec.json.decode(text[:MCP_FAILED_MAX], type=dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError, sqlite3.Error, OSError):
        return {}
    return {name[:64]: why[:300] for name, why in list(failed.items())[: mcpservers.MAX_SERVERS]}


def group_folder(groups_dir: Path, folder: str, agent_group: str) -> tuple[Path, str]:
    """The group's folder under `groups_dir`, refusing one that is a link or resolves elsewhere (then
    the group's default, its name); returns the folder and why the asked one was refused ("")."""
    candidate = groups_dir / folder
    if folder == agent_group or (not candidate.is_symlink() and candidate.resolve().parent == groups_dir.resolve()):
        return candidate, ""
    return groups_dir / agent_group, f"folder {folder!r} is a link or leaves {groups_dir}"


@dataclass(frozen=True)
class ContainerSpec:
    install_id: str
    agent_group: str
    session_id: str
    image: str
    session_dir: Path
    group_dir: Path
    global_dir: Path
    claude_home: Path
    cache_dir: Path
    gateway_dir: Path | None  # mounted read-only at GATEWAY_MOUNT: the group's socket (None: none)
    memory: str
    cpus: float
    pids: int
    user: str
    userns_mode: str | None = None  # "host" on a remapped engine (`agentcontainer.Engine.userns_mode`)
    model: str = ""
    timezone: str = ""
    tuning: Tuning = field(default_factory=Tuning)
    skills: tuple[tuple[str, Path], ...] = ()  # (name, folder with SKILL.md) for each skill it gets
    mcp: dict[str, McpServer] = field(default_factory=dict)  # run by the agent runner, through the vault
    extra_mounts: tuple[ExtraMount, ...] = ()  # already checked against the mount allowlist
    trust_dir: Path | None = None  # from the vault: clawden-ca.pem and bundle.pem
    admin_dir: Path | None = None  # the session's admin socket folder (services/runner/admin.py)
    # vault_transport = "tcp" (services/runner/vaultroute.py): where the relay dials ("": the group's socket),
    # the folder holding the container's token (mounted read-write; the relay deletes the token), the network.
    gateway: str = ""
    relay_dir: Path | None = None
    network: str = "none"
    # The placement the container writes the session folder under (`sessiondb.claim`); no runner: unfenced.
    runner: str = ""
    epoch: int = 0

    @property
    def name(self) -> str:
        return f"clawden-{self.install_id}-{self.session_id}"

    def labels(self) -> dict[str, str]:
        return {LABEL_INSTALL: self.install_id, LABEL_GROUP: self.agent_group, LABEL_SESSION: self.session_id}

    def environment(self) -> dict[str, str]:
        return (
            agentcontainer.environment(
                model=self.model,
                timezone=self.timezone,
                trust=self.trust_dir is not None,
                tuning=self.tuning,
                gateway=self.gateway,
            )
            | ({MCP_ENV: mcpservers.encode(self.mcp)} if self.mcp else {})
            | self.fence_env()
        )

    def fence_env(self) -> dict[str, str]:
        """The placement the container writes under (none from an unfenced runner)."""
        return {"CLAWDEN_RUNNER": self.runner, "CLAWDEN_EPOCH": str(self.epoch)} if self.runner else {}

    def run_kwargs(self) -> dict[str, Any]:
        """Everything `containers.create` gets: no network (vault_network in tcp mode), read-only root, no
        capabilities, limits."""
        mounts = [
            Mount(SESSION_MOUNT, str(self.session_dir), type="bind"),
            Mount(GROUP_MOUNT, str(self.group_dir), type="bind"),
            # Claude Code's project settings (hooks, skills, agents) are the owner's to write, never the
            # agent's: a planted hook would run in every later session of the group.
            Mount(
                f"{GROUP_MOUNT}/{PROJECT_SETTINGS}", str(self.group_dir / PROJECT_SETTINGS), type="bind", read_only=True
            ),
            Mount(HOME_MOUNT, str(self.claude_home), type="bind"),
            Mount(CACHE_MOUNT, str(self.cache_dir), type="bind"),
        ]
        if self.gateway_dir is not None:
            mounts.append(Mount(GATEWAY_MOUNT, str(self.gateway_dir), type="bind", read_only=True))
        if self.relay_dir is not None:
            mounts.append(Mount(RELAY_MOUNT, str(self.relay_dir), type="bind"))
        if self.global_dir.is_dir():
            mounts.append(Mount(GLOBAL_MOUNT, str(self.global_dir), type="bind", read_only=True))
        if (self.group_dir / SKILLS_DIR).is_dir():  # the group's skills are the owner's, like its .claude/
            mounts.append(
                Mount(f"{GROUP_MOUNT}/{SKILLS_DIR}", str(self.group_dir / SKILLS_DIR), type="bind", read_only=True)
            )
        mounts += [
            Mount(f"{SKILLS_MOUNT}/.claude/skills/{name}", str(source), type="bind", read_only=True)
            for name, source in self.skills
        ]
        mounts += [Mount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in self.extra_mounts]
        if self.trust_dir is not None:
            mounts.append(Mount(TRUST_MOUNT, str(self.trust_dir), type="bind", read_only=True))
        if self.admin_dir is not None:
            mounts.append(Mount(ADMIN_MOUNT, str(self.admin_dir), type="bind", read_only=True))
        return {
            "image": self.image,
            "name": self.name,
            "detach": True,
            "labels": self.labels(),
            "environment": self.environment(),
            "user": self.user,
            "userns_mode": self.userns_mode,
            "network_mode": self.network,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,size=256m,mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": self.memory,
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids,
            "mounts": mounts,
            "working_dir": GROUP_MOUNT,
            "stop_signal": "SIGTERM",
        }


def shares(running_env: Sequence[str], wanted: Mapping[str, str]) -> bool:
    """Whether a container already running under the session's name may serve a start that wants the placement
    `wanted` (`ContainerSpec.fence_env`): only one started under that same placement (another instance of this
    runner got there first). One started under an older epoch is fenced and stops at its next write: it was the
    session's before it moved away and back, and is replaced, never taken for the new one."""
    found = {name: value for name, _, value in (entry.partition("=") for entry in running_env)}
    return all(found.get(name, "") == wanted.get(name, "") for name in ("CLAWDEN_RUNNER", "CLAWDEN_EPOCH"))


def removed(container: Container) -> None:
    """Remove the container (killed if it still runs) and return once it is gone. Where another call is removing it
    already (a restart's stop racing the stop its death brings, or a drop's), Docker answers 409 at once: then wait
    for that removal, so a start that follows finds the session's name free instead of failing on it."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        if "already in progress" in str(exc):
            with contextlib.suppress(docker.errors.NotFound):
                container.wait(condition="removed")


def exit_code(container: Container) -> int | None:
    """None while the container runs, as it was when read; once it has stopped, the exit code it stopped with."""
    if container.status in ALIVE:
        return None
    return int(container.attrs.get("State", {}).get("ExitCode", GONE))


def docker_time(time_ns: int) -> str:
    """A time as Docker's events API takes it (`since`): seconds and nanoseconds."""
    return f"{time_ns // 10**9}.{time_ns % 10**9:09d}"


@dataclass(frozen=True)
class Died:
    session_id: str
    container_id: str
    exit_code: int


class ImageMissing(RuntimeError):
    pass


class Docker:
    """The docker SDK is blocking: every call goes through a small dedicated pool."""

    def __init__(self, install_id: str, workers: int = 4) -> None:
        self.install_id = install_id
        self.client = docker.from_env(timeout=60)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._closing = threading.Event()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def ping(self) -> bool:
        return bool(await self.call(self.client.ping))

    async def engine(self) -> Engine:
        """What the engine says of itself; a Linux engine with its defaults if it does not answer."""
        try:
            info = await self.call(self.client.info)
        except Exception as exc:  # then vault_transport = "auto" means the socket, and Docker checks `--cpus` itself
            log.warning("docker info failed (%s); taking the engine for a Linux one", exc)
            return Engine()
        return Engine.from_info(info)

    async def start(self, spec: ContainerSpec) -> Container:
        def run() -> Container:
            try:
                existing = self.client.containers.get(spec.name)
            except docker.errors.NotFound:
                pass
            else:
                env = existing.attrs.get("Config", {}).get("Env") or []
                if existing.status == "running" and shares(env, spec.fence_env()):
                    return existing  # another runner instance got there first: share it
                removed(existing)  # a stopped one, or one of an older placement, would block the name
            try:  # create and start, never docker-py's run(): that pulls an image it does not find
                container: Container = self.client.containers.create(**spec.run_kwargs())
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(
                    f"agent image {spec.image} is missing; build it with `clawden image build --tag {spec.image}`"
                ) from exc
            container.start()
            return container

        return await self.call(run)

    async def ours(self) -> list[Container]:
        """Every container of this install, running or not (labels are the source of truth)."""
        return await self.call(
            self.client.containers.list,
            all=True,
            filters={"label": [f"{LABEL_INSTALL}={self.install_id}", LABEL_SESSION]},
        )

    async def stop_and_remove(self, container_id: str, timeout: int = 5) -> int | None:
        """Stop the container and remove it. None when it was running: its death comes as an event. Else the exit code
        it had stopped with (GONE: removed already): no event will say it died, and its own may have gone unseen
        (`watch_deaths`), so the caller handles that death itself."""

        def stop() -> int | None:
            try:
                container = self.client.containers.get(container_id)
            except docker.errors.NotFound:
                return GONE
            stopped = exit_code(container)
            try:
                container.stop(timeout=timeout)
            except docker.errors.NotFound:
                return stopped
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: another call is already removing it
                    raise
            removed(container)
            return stopped

        return await self.call(stop)

    async def ended(self, container_id: str) -> int | None:
        """None while the container runs; once it has stopped, the exit code it stopped with (GONE: removed)."""

        def get() -> int | None:
            try:
                return exit_code(self.client.containers.get(container_id))
            except docker.errors.NotFound:
                return GONE

        return await self.call(get)

    async def status(self, container_id: str) -> str:
        def get() -> str:
            try:
                return str(self.client.containers.get(container_id).status)
            except docker.errors.NotFound:
                return "gone"

        return await self.call(get)

    async def drain(self, container_id: str) -> None:
        """Ask the agent to finish what it was given and stop (SIGUSR1, which tini passes on to it)."""

        def kill() -> None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # gone already, or not running
                self.client.containers.get(container_id).kill(signal="SIGUSR1")

        await self.call(kill)

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        def get() -> str:
            try:
                return bytes(self.client.containers.get(container_id).logs(tail=lines)).decode("utf-8", "replace")
            except docker.errors.APIError:  # gone, or already being removed
                return ""

        return await self.call(get)

    def watch_deaths(self, on_death: Callable[[Died], None], on_followed: Callable[[], None] | None = None) -> None:
        """Follow Docker's event stream in its own thread (not the pool): one event per death.

        A stream that breaks or ends (the daemon restarting, a connection cut) is followed again from the time of the
        last event it brought (`since`), so the deaths Docker still holds from the break are delivered then. A daemon
        that restarted holds none from before its restart: so each time the stream is followed (the first time too),
        `on_followed` is called, once the daemon has taken the subscription, for the caller to ask once after the
        containers it thinks run (None: it keeps no such table); a death after that comes on the stream. A death may
        be told twice."""
        loop = asyncio.get_running_loop()
        filters = {"type": "container", "event": "die", "label": f"{LABEL_INSTALL}={self.install_id}"}

        def follow() -> None:
            last = docker_time(time.time_ns())
            while not self._closing.is_set():
                try:
                    self._events_stream = self.client.events(decode=True, since=last, filters=filters)
                    if on_followed is not None:
                        loop.call_soon_threadsafe(on_followed)
                    for event in self._events_stream:
                        if stamp := event.get("timeNano"):
                            last = docker_time(int(stamp))
                        attrs = event.get("Actor", {}).get("Attributes", {})
                        died = Died(attrs.get(LABEL_SESSION, ""), event.get("id", ""), int(attrs.get("exitCode", GONE)))
                        loop.call_soon_threadsafe(on_death, died)
                    why = "it ended"
                except Exception as exc:
                    why = str(exc)
                if self._closing.is_set():
                    return  # closed on purpose
                log.warning("docker event stream broke (%s); following it again from its last event", why)
                self._closing.wait(1.0)  # a pace between attempts while the daemon is away

        self._events_thread = threading.Thread(target=follow, name="docker-events", daemon=True)
        self._events_thread.start()

    def close(self) -> None:
        self._closing.set()
        stream, self._events_stream = self._events_stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
