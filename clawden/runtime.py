"""The service runtime: one event loop, NATS, a micro endpoint, systemd notify, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
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
from clawden.bus import ensure_streams, subjects
from clawden.bus.streams import wait_streams
from clawden.registry import CHANNEL_ENTRY_POINTS, CHANNEL_MODULE
from clawden.sdnotify import Notifier

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


class ConfigurationError(Exception):
    """The service cannot run as configured (a missing token, a refused identity): it exits with
    EX_CONFIG after logging why, and is not restarted until someone fixes the configuration."""


class ControlError(Exception):
    """Raised by a control endpoint for a bad request; its message goes back to the caller as is."""


T = TypeVar("T")


def decode_request(kind: type[T], data: bytes) -> T:
    """A control request decoded into its Struct, once; a bad one is the caller's mistake, said in one
    shape by every service ("bad request: <what, at which JSON path>"). No body is an empty object."""
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise ControlError(f"bad request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ControlError(f"bad request: not JSON ({exc})") from None


class ServiceMain(Protocol):
    def __call__(self, ctx: ServiceContext) -> Awaitable[None]: ...


EndpointHandler = Callable[[bytes], Awaitable[Any]]


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
    _micro: Service | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, verb: str, handler: EndpointHandler) -> None:
        """Request/reply control at `clawden.ctl.<service>.<verb>`; replies are JSON."""
        assert self._micro is not None

        # A ServiceError is answered by micro as is, and counted in the endpoint's `num_errors`; a caller's
        # mistake (a typo on the CLI) is answered the same way but not counted: it is no fault of ours.
        async def serve(req: Request) -> None:
            try:
                result = await handler(req.data)
            except ControlError as exc:  # the caller's mistake, said in plain words
                await req.respond_error("400", str(exc))
                return
            except Exception as exc:  # never leak a traceback to a caller
                log.exception("ctl %s failed", verb)
                raise ServiceError("500", f"{verb} failed: {type(exc).__name__}") from None
            await req.respond(json.dumps(result, default=vars).encode())

        await self._micro.add_endpoint(
            name=verb, subject=subjects.ctl(natsauth.identity(self.name), verb), handler=serve
        )

    async def ready(self, status: str = "") -> None:
        """Called by a service once it takes work: flushes subscriptions, then tells systemd."""
        await self.nc.flush()
        self.notifier.ready(status or f"{self.name} ready")
        self._ready.set()
        log.info("%s ready", self.name)


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
        return asyncio.run(_serve(name, cfg, main))
    return uvloop.run(_serve(name, cfg, main))


async def _serve(name: str, cfg: config_mod.Config, main: ServiceMain) -> int:
    notifier = Notifier()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    notifier.status(f"connecting to {cfg.nats_url}")
    ident = natsauth.identity(name)
    connecting = asyncio.ensure_future(natsauth.connect_as(cfg, ident))
    stop_wait = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({connecting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    if not connecting.done():  # told to stop while NATS was still away
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        return 0
    try:
        nc = connecting.result()
    except natsauth.IdentityError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except AuthorizationError:
        log.error(
            "NATS at %s refused the identity %r: `clawden init` gives each installed service one; "
            "then reload NATS (`systemctl reload clawden-nats`, or restart `clawden up`)",
            cfg.nats_url,
            ident,
        )
        return EX_CONFIG
    # Said once: a unit whose credential came up empty would otherwise quietly use the home's file.
    log.info("connected to %s as %s (seed: %s)", cfg.nats_url, ident, natsauth.find_seed(cfg, ident) or "none")
    js = nc.jetstream()
    # Where the server checks identities only the core makes streams; on an open one anyone may.
    if ident in natsauth.CORE or not nc._server_info.get("auth_required"):
        await ensure_streams(js)
    else:  # a bridge may not shape streams; the core services make them
        await wait_streams(js, notifier)
    ctx = ServiceContext(name=name, config=cfg, nc=nc, js=js, notifier=notifier, stopping=stopping)
    ctx._micro = await nats.micro.add_service(
        nc,
        name=f"clawden-{natsauth.identity(name)}",
        version=VERSION,
        description=f"Clawden {name}",
        metadata={"pid": str(os.getpid()), "package": _pkg},
    )
    await ctx.endpoint("ping", lambda _data: _ping(ctx))

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


async def _ping(ctx: ServiceContext) -> dict[str, Any]:
    return {
        "service": ctx.name,
        "pid": os.getpid(),
        "uptime": round(time.time() - ctx.started_at, 3),
        "ready": ctx._ready.is_set(),
        "stats": ctx.stats,
    }
