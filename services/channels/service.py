"""A bridge's process: `serve()` runs any `Bridge` with the shared outbound delivery, listener
supervision and housekeeping; a bridge module's `main(ctx)` only builds its bridge and calls it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden.bus import ConsumeStats, bind, consume, ctl, subjects
from clawden.bus import events as ev
from clawden.bus.pull import Puller
from clawden.bus.streams import bridge_lanes
from clawden.keywatch import Check, KeyFile, watch
from clawden.runtime import ServiceContext
from services.channels.bridge import Bridge, BridgeStats, Inbound
from services.channels.delivery import Delivery, TypingIndicators
from services.channels.reach import Reach, Trouble, why_unreachable
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.state import BridgeState

log = logging.getLogger("clawden.channels")


# --- the process --------------------------------------------------------------------------------------


async def serve(
    ctx: ServiceContext,
    bridge: Bridge,
    *,
    policy: RetryPolicy | None = None,
    typing_horizon: float = 120.0,
    key_check: Check | None = None,
) -> None:
    """Run a bridge: check it can start, take outbound work, listen, until the service stops, or until keys/<name>
    holds a new credential (`keywatch`; `key_check` is the bridge's own reading of it, raising BridgeConfigError for
    one it would refuse at its start)."""
    # Request lines carry tokens in their URLs (Telegram's do); client libraries log them at INFO.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    name = bridge.name
    # What the file holds now is what the bridge was built with a moment ago: later bytes are a new credential.
    key = await asyncio.to_thread(KeyFile.of, ctx.config, name, key_check)
    state = await BridgeState.open(ctx.config.data_dir / "channels" / f"{name}.db")
    stats = BridgeStats()
    ctx.stats[name] = stats
    typing = TypingIndicators(bridge, lambda notice: ctx.nc.publish(subjects.typing_off(name), ev.encode(notice)))
    # Ping's `trouble` while the platform cannot be reached: `clawden status` then shows the bridge degraded.
    reach = Reach(bridge.platform or name.capitalize(), ctx.set_trouble)
    try:
        # A BridgeConfigError stops the service with EX_CONFIG (runtime); a platform away is said before READY.
        if (away := await bridge.start()) is not None:
            reach.failed(bridge.start_trouble(away))
        await follow_twins(ctx.nc, name, typing)
        await state.prune()
        inbound = Inbound(
            ctx.js,
            name,
            state,
            ctx.config.data_dir / "channels" / name / "files",
            stats,
            bridge=bridge,
            stopping=ctx.stopping,
            reach=reach,
        )
        delivery = Delivery(
            bridge,
            state,
            ctx.js,
            stats,
            typing,
            stopping=ctx.stopping,
            policy=policy or RetryPolicy(),
            typing_horizon=typing_horizon,
            file_roots=(ctx.config.sessions_dir,),
        )
        # One at a time per lane: with a single message in flight (see bridge_outbound) a larger pull only waits.
        lanes = [await bind(ctx.js, lane, batch=1) for lane in bridge_lanes(name)]
        await ctx.endpoint(ctl.common.CAPABILITIES, lambda _request: _capabilities(bridge))
        await ctx.ready(f"{name} bridge ready")
        consume_stats = ConsumeStats()
        ctx.stats["outbound"] = consume_stats

        async def take(puller: Puller) -> None:
            await consume(
                puller,
                ev.OUTBOUND_DECODER,
                delivery.handle,
                stopping=ctx.stopping,
                stats=consume_stats,
            )

        await inbound.resume()  # messages an earlier run left waiting for a file, before anything newer
        try:
            async with asyncio.TaskGroup() as tg:
                for puller in lanes:
                    tg.create_task(take(puller))
                tg.create_task(_listen_forever(bridge, inbound, ctx.stopping, stats))
                tg.create_task(_housekeeping(state, inbound.files_dir, ctx.stopping))
                if key is not None:
                    tg.create_task(watch(key, ctx))
        finally:
            await inbound.close()
    finally:
        await typing.close()
        await bridge.close()
        await state.close()


async def follow_twins(nc: Client, channel: str, typing: TypingIndicators) -> None:
    """Hear the bridge's other instances end "typing…" in a chat (`TypingIndicators.off`)."""

    async def heard(msg: Msg) -> None:
        try:
            notice = ev.TYPING_OFF_DECODER.decode(msg.data)
        except msgspec.DecodeError as exc:  # a malformed notice ends nothing; said once, with why
            log.warning("%s: ignored a malformed typing-off notice (%s)", channel, exc)
            return
        typing.off(notice)

    await nc.subscribe(subjects.typing_off(channel), cb=heard)


async def _capabilities(bridge: Bridge) -> ctl.common.Capabilities:
    reach = bridge.group_reach
    group = {"group_messages": reach.messages, "group_note": reach.note} if reach is not None else {}
    return msgspec.convert({"channel": bridge.name, **bridge.capabilities.describe(), **group}, ctl.common.Capabilities)


async def _listen_forever(bridge: Bridge, inbound: Inbound, stopping: asyncio.Event, stats: BridgeStats) -> None:
    """Keep the listener running: restart it when it fails, and when it goes deaf, reconnect first."""
    failures = 0
    while not stopping.is_set():
        inbound.listening()
        started = time.monotonic()
        listener = asyncio.create_task(bridge.listen(inbound), name=f"{bridge.name}-listen")
        deaf = asyncio.create_task(inbound.liveness.wait_deaf(bridge.deaf_after))
        stop = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({listener, deaf, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, deaf, stop):
            task.cancel()
        await asyncio.gather(listener, deaf, stop, return_exceptions=True)
        if stop in done:
            return
        if deaf in done and listener not in done:
            stats.reconnects += 1
            log.warning(
                "%s: the listener showed no sign of life for %.0fs; reconnecting", bridge.name, bridge.deaf_after
            )
            with contextlib.suppress(Exception):
                await bridge.reconnect()
            continue
        if time.monotonic() - started > 300:
            failures = 0  # it ran well for a while: this is a new problem, not the old one again
        failures += 1
        stats.listener_errors += 1
        exc = listener.exception() if not listener.cancelled() else None
        delay = min(30.0, 2.0 ** min(failures, 5))
        inbound.reach.failed(listener_trouble(inbound.reach.platform, exc))
        if exc is not None:
            log.error("%s listener failed (%r); restarting in %.0fs", bridge.name, exc, delay, exc_info=exc)
        else:
            log.error("%s listener returned; restarting in %.0fs", bridge.name, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)


def listener_trouble(platform: str, exc: BaseException | None) -> Trouble:
    """Why the listener stopped, as the service says it: one that could not get through cannot reach the platform;
    any other (refused, or a bug) cannot hear it."""
    if isinstance(exc, OSError | TimeoutError) or (isinstance(exc, PlatformError) and (exc.connection or exc.outage)):
        return Trouble(why_unreachable(exc))
    return Trouble(
        why=f"its listener failed: {type(exc).__name__}: {exc}" if exc is not None else "its listener stopped",
        problem=f"cannot hear {platform}",
        outcome="what people write waits there; the bridge's log says why",
    )


async def _housekeeping(state: BridgeState, files_dir: Path, stopping: asyncio.Event) -> None:
    """Old sent-log rows, card buttons and downloaded files go after their keeping time."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 6 * 3600)
        if stopping.is_set():
            return
        await state.prune()
        await asyncio.to_thread(_prune_files, files_dir, time.time() - 7 * 24 * 3600)


def _prune_files(root: Path, before: float) -> None:
    if not root.exists():
        return
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink()
