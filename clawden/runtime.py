"""The service runtime: one event loop, NATS, a micro endpoint, systemd notify, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import nats.micro
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.js import JetStreamContext
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service

from clawden import __name__ as _pkg
from clawden import config as config_mod
from clawden import logs, natsauth
from clawden.bus import ctl, ensure_streams, subjects
from clawden.bus.streams import wait_streams
from clawden.registry import CHANNEL_ENTRY_POINTS, CHANNEL_MODULE
from clawden.sdnotify import TROUBLE_FIELD, Notifier

TROUBLE_MAX = 500  # characters of a trouble line: a datagram field, and one line of `clawden status`

log = logging.getLogger("clawden.runtime")
VERSION = "0.1.0"
DRAIN_TIMEOUT = 10.0

# `clawden run <name>` -> module with `async def main(ctx)`. Bridges run as `channel@<platform>`.
SERVICES = {
    "router": "services.router.service",
    "runner": "services.runner.service",
    "vault": "services.vault.service",
    "scheduler": "services.scheduler.service",
    "approvals": "services.approvals.service",
    "webhooks": "services.webhooks.service",
    "web": "services.web.service",
}


EX_CONFIG = 78  # sysexits.h: units name it in RestartPreventExitStatus=, so no restart loop
# sysexits.h's EX_TEMPFAIL: the service stopped so as to be started again (`ServiceContext.restart`). `clawden up`
# starts it again at once, outside its crash backoff; systemd (Restart=on-failure) and launchd (KeepAlive
# SuccessfulExit=false) restart it as after any failure.
EX_RESTART = 75


class ConfigurationError(Exception):
    """The service cannot run as configured (a missing token, a refused identity): it exits with
    EX_CONFIG after logging why, and is not restarted until someone fixes the configuration."""


class ControlError(Exception):
    """Raised by a control endpoint for a bad request; its message goes back to the caller as is."""


class ServiceMain(Protocol):
    def __call__(self, ctx: ServiceContext) -> Awaitable[None]: ...


Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
Handler = Callable[[Any], Awaitable[Any]]
# Counters in `ping`'s stats may be plain objects: they are sent as their attributes.
_encoder = msgspec.json.Encoder(enc_hook=vars)


class _Subject:
    """One control subject as served: its declared verbs and the handlers registered for them so far."""

    def __init__(self, identity: str, name: str, op: str | None = None) -> None:
        self.name = name
        self.contract = ctl.Subject(identity, name, op)
        self.handlers: dict[type, Handler] = {}

    async def answer(self, data: bytes) -> bytes:
        """The reply's bytes; a ControlError for the caller's mistake, ServiceError for ours (no traceback)."""
        try:
            _verb, request = self.contract.decode(data)
        except ctl.BadRequest as exc:
            raise ControlError(str(exc)) from None
        handler = self.handlers.get(type(request))
        if handler is None:  # declared, and registered a moment later in the service's start
            raise ServiceError("503", f"{self.name}: not this far into its start; ask again")
        try:
            return _encoder.encode(await handler(request))
        except (ControlError, ServiceError):
            raise
        except Exception as exc:  # never leak a traceback to a caller
            log.exception("ctl %s failed", self.name)
            raise ServiceError("500", f"{self.name} failed: {type(exc).__name__}") from None


@dataclass
class ServiceContext:
    name: str
    config: config_mod.Config
    nc: Client
    js: JetStreamContext
    notifier: Notifier
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stats: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    trouble: str = ""  # what the ready service cannot do right now (`set_trouble`), for ping and `clawden status`
    restarting: str = ""  # why the service asked to be started again (`restart`); "" when it did not
    _micro: Service | None = None
    _status: str = ""  # the status line it became ready with, shown again once its trouble is over
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _subjects: dict[str, _Subject] = field(default_factory=dict)

    async def endpoint(self, verb: ctl.Verb[Req, Rep], handler: Callable[[Req], Awaitable[Rep]]) -> None:
        """Serve a declared verb at `clawden.ctl.<service>.<verb>`: the handler gets the decoded request and
        returns the reply Struct. A bad request is answered "400 bad request: <what, at which JSON path>", a
        ControlError "400 <its message>", anything else "500 <verb> failed: <kind>" (logged, no traceback)."""
        assert self._micro is not None
        identity = natsauth.identity(self.name)
        if not verb.served_by(identity):
            raise ValueError(f"{identity} does not serve {verb.label}: see clawden/bus/ctl")
        if verb.own_op:  # its own subject too, where a NATS grant can name it alone
            await self._serve(identity, verb.name, verb.own_op, verb.request, handler)
        await self._serve(identity, verb.name, None, verb.request, handler)

    async def _serve(self, identity: str, name: str, op: str | None, request: type, handler: Handler) -> None:
        key = f"{name}.{op}" if op else name
        served = self._subjects.get(key)
        if served is not None:  # another op at a subject already served
            served.handlers[request] = handler
            return
        served = self._subjects[key] = _Subject(identity, name, op)
        served.handlers[request] = handler

        # A ServiceError is answered by micro as is, and counted in the endpoint's `num_errors`; a caller's
        # mistake (a typo on the CLI) is answered the same way but not counted: it is no fault of ours.
        async def serve(req: Request) -> None:
            try:
                answer = await served.answer(req.data)
            except ControlError as exc:  # the caller's mistake, said in plain words
                await req.respond_error("400", str(exc))
                return
            await req.respond(answer)

        subject = subjects.ctl(identity, name) + (f".{op}" if op else "")
        assert self._micro is not None
        await self._micro.add_endpoint(name=f"{name}-{op}" if op else name, subject=subject, handler=serve)

    def served(self) -> list[ctl.Verb[Any, Any]]:
        """The declared verbs this service has registered a handler for (a test checks they are all)."""
        return [
            v
            for v in ctl.served_by(natsauth.identity(self.name))
            if v.name in self._subjects and v.request in self._subjects[v.name].handlers
        ]

    async def ready(self, status: str = "") -> None:
        """Called by a service once it takes work: flushes subscriptions, then tells systemd."""
        await self.nc.flush()
        self._status = status or f"{self.name} ready"
        self.notifier.notify(ready="1", status=self.trouble or self._status, **{TROUBLE_FIELD: self.trouble})
        self._ready.set()
        log.info("%s ready", self.name)

    def set_trouble(self, line: str) -> None:
        """Say what the service cannot do right now in a person's words ("cannot reach Telegram since 21:14 …"),
        or "" once it can again: ping carries it, so `clawden status` shows the service degraded with the line
        instead of up, and systemd's status line shows it. Set on the failure itself and cleared on the success
        that ends it, never by a timer."""
        line = " ".join(line.split())[:TROUBLE_MAX]  # one line on the notify socket, whatever an error said
        if line == self.trouble:
            return
        self.trouble = line
        self.notifier.notify(status=line or self._status or f"{self.name} starting", **{TROUBLE_FIELD: line})

    def restart(self, why: str) -> None:
        """Stop the way SIGTERM stops the service (in-flight work finished or left unacked, NATS drained), then
        exit EX_RESTART so its supervisor starts it again: for a change only a fresh process takes, such as a
        new credential. `why` ("keys/telegram changed") becomes the status line systemd and `clawden up` show."""
        self.restarting = why
        self.notifier.status(f"restarting: {why}")
        self.stopping.set()


async def sleep_unless_stopping(stopping: asyncio.Event, seconds: float, *wakers: asyncio.Event) -> bool:
    """Sleep `seconds`, ended early once `stopping` (or any of `wakers`) is set; False once stopping,
    so a periodic chore reads `while await sleep_unless_stopping(ctx.stopping, EVERY): chore()`."""
    events = (stopping, *wakers)
    if not any(event.is_set() for event in events):
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    return not stopping.is_set()


def load_main(name: str) -> ServiceMain:
    if name.startswith("channel@"):
        return load_channel(name.split("@", 1)[1])
    if name not in SERVICES:
        raise SystemExit(f"unknown service {name!r}; known: {', '.join(SERVICES)}, channel@<name>")
    main: ServiceMain = importlib.import_module(SERVICES[name]).main
    return main


def load_channel(channel: str) -> ServiceMain:
    """A bridge from an installed package's `clawden.channels` entry point, else a built-in module."""
    try:
        subjects.token(channel)
    except ValueError:
        raise SystemExit(f"not a channel name: {channel!r}") from None
    for entry in importlib.metadata.entry_points(group=CHANNEL_ENTRY_POINTS, name=channel):
        target = entry.load()
        found: ServiceMain = getattr(target, "main", target)  # `pkg.mod` or `pkg.mod:main`
        return found
    module_name = CHANNEL_MODULE.format(channel)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the bridge exists but one of its own imports is missing: show that
        raise SystemExit(
            f"no channel bridge named {channel!r}: none is built in, and no installed "
            f"package registers one (entry point group {CHANNEL_ENTRY_POINTS!r})"
        ) from None
    main: ServiceMain | None = getattr(module, "main", None)
    if main is None:  # e.g. `local`, the terminal client, which is not a service
        raise SystemExit(f"channel {channel!r} has no bridge service to run")
    return main


def run(name: str, home: str | None = None) -> int:
    """Entry point of `clawden run <name>`: returns the process exit code."""
    logs.setup(f"clawden-{natsauth.identity(name)}")
    main = load_main(name)
    cfg = config_mod.load(Path(home) if home else None)
    try:
        import uvloop
    except ImportError:
        return exit_code(asyncio.run(_serve(name, cfg, main)))
    return exit_code(uvloop.run(_serve(name, cfg, main)))


def exit_code(code: int, environ: Mapping[str, str] = os.environ) -> int:
    """The process's exit code for the service's `code`. launchd has no RestartPreventExitStatus=, and its KeepAlive
    (SuccessfulExit=false) would start a service that cannot run as configured every ThrottleInterval, asking the
    platform with a refused token each time: under it (the plists set CLAWDEN_SUPERVISOR=launchd) that exit is 0, so
    the job stays down, and a bridge's WatchPaths starts it again once its key file changes."""
    if code == EX_CONFIG and environ.get("CLAWDEN_SUPERVISOR") == "launchd":
        return 0
    return code


async def _before_stop(work: asyncio.Future[Any], stopping: asyncio.Event) -> bool:
    """Whether `work` finished before `stopping` was set; if not, it is cancelled (a start that waits on NATS or
    JetStream must still stop at once when told to)."""
    stop_wait = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({work, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    if work.done():
        return True
    work.cancel()
    with contextlib.suppress(BaseException):
        await work
    return False


async def _serve(name: str, cfg: config_mod.Config, main: ServiceMain) -> int:
    notifier = Notifier()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    notifier.status(f"connecting to {cfg.nats_url}")
    ident = natsauth.identity(name)
    connecting = asyncio.ensure_future(natsauth.connect_as(cfg, ident))
    if not await _before_stop(connecting, stopping):  # told to stop while NATS was still away
        return 0
    try:
        nc = connecting.result()
    except natsauth.IdentityError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except AuthorizationError:
        log.error(
            "NATS at %s refused the identity %r: `clawden init` gives each installed service one, and "
            "`clawden runners add ID` a runner on another host; then reload NATS (`systemctl reload clawden-nats`, "
            "or restart `clawden up`)",
            cfg.nats_url,
            natsauth.bus_identity(cfg, ident),
        )
        return EX_CONFIG
    # Said once: a unit whose credential came up empty would otherwise quietly use the home's file.
    seed = natsauth.find_seed(cfg, ident) or "none"
    log.info("connected to %s as %s (seed: %s)", cfg.nats_url, natsauth.bus_identity(cfg, ident), seed)
    js = nc.jetstream()
    # Where the server checks identities only the core makes streams; on an open one anyone may.
    if ident in natsauth.CORE or not nc._server_info.get("auth_required"):
        streams = asyncio.ensure_future(ensure_streams(js, replicas=cfg.nats.replicas, notifier=notifier))
    else:  # a bridge may not shape streams; the core services make them
        streams = asyncio.ensure_future(wait_streams(js, notifier))
    if not await _before_stop(streams, stopping):  # told to stop while JetStream or the streams were awaited
        await nc.close()
        return 0
    streams.result()
    ctx = ServiceContext(name=name, config=cfg, nc=nc, js=js, notifier=notifier, stopping=stopping)
    ctx._micro = await nats.micro.add_service(
        nc,
        name=f"clawden-{natsauth.identity(name)}",
        version=VERSION,
        description=f"Clawden {name}",
        metadata={"pid": str(os.getpid()), "package": _pkg},
    )
    await ctx.endpoint(ctl.common.PING, lambda _request: _ping(ctx))

    async with asyncio.TaskGroup() as tg:
        work = tg.create_task(_guarded(main, ctx), name=f"{name}-main")
        watchdog = tg.create_task(_watchdog(ctx), name=f"{name}-watchdog")
        stop_wait = tg.create_task(stopping.wait())
        await asyncio.wait({work, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        notifier.stopping()
        stopping.set()
        log.info("%s stopping", name)
        try:
            await asyncio.wait_for(asyncio.shield(work), DRAIN_TIMEOUT)
        except TimeoutError:
            log.warning("%s: in-flight work did not finish in %.0fs; cancelling", name, DRAIN_TIMEOUT)
            work.cancel()
        watchdog.cancel()
    code = work.result() if work.done() and not work.cancelled() else 0
    if code == 0 and ctx.restarting:
        code = EX_RESTART
    try:
        await ctx._micro.stop()
        await asyncio.wait_for(nc.drain(), 5)
    except Exception as exc:
        log.warning("draining nats: %s", exc)
    notifier.close()
    return code


async def _guarded(main: ServiceMain, ctx: ServiceContext) -> int:
    """The service's exit code: 0 when it returned, EX_CONFIG for a ConfigurationError, else 1."""
    try:
        await main(ctx)
    except asyncio.CancelledError:
        raise
    except ConfigurationError as exc:
        log.error("%s cannot run as configured: %s", ctx.name, exc)
        return EX_CONFIG
    except Exception:
        log.exception("%s crashed", ctx.name)
        return 1
    return 0


async def _watchdog(ctx: ServiceContext) -> None:
    interval = ctx.notifier.watchdog_interval
    if interval is None:
        return
    await ctx._ready.wait()
    while True:
        # Runs on the service's own loop: a blocked loop stops the pings and systemd restarts us.
        ctx.notifier.watchdog()
        await asyncio.sleep(interval)


async def _ping(ctx: ServiceContext) -> ctl.common.Pong:
    return ctl.common.Pong(
        service=ctx.name,
        pid=os.getpid(),
        uptime=round(time.time() - ctx.started_at, 3),
        ready=ctx._ready.is_set(),
        stats=ctx.stats,
        verbs=sorted(v.key for v in ctx.served()),
        trouble=ctx.trouble,
    )
