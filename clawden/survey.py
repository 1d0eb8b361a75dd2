"""What `clawden status` reports, asked over a connection the caller holds: every instance's micro stats and
ping, agent containers, the durables' backlogs, pending approvals, bridges' delivery counters. The CLI asks
it as the owner (clawden/cli/status.py), the web service's status page over its own identity."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import control, natsauth
from clawden.bus import streams, subjects
from clawden.bus.ctl import Nothing, Verb, approvals, runner
from clawden.bus.ctl.common import PING, Pong

Report = dict[str, Any]
DISCOVERY_WAIT = 1.0  # the most we wait for instances to answer $SRV.STATS
DISCOVERY_GRACE = 0.1  # once every expected service answered: how long to wait for more instances
CTL_TIMEOUT = 3.0
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


def expected_services(cfg: config_mod.Config) -> list[str]:
    """What should answer: the core services, the webhook front door where it is configured, and every bridge
    with a token (what `clawden up` runs)."""
    return [
        *natsauth.CORE,
        *config_mod.http_services(cfg),
        *(natsauth.identity(b) for b in config_mod.configured_bridges(cfg)),
    ]


# ---- asking ----------------------------------------------------------------------------------------


async def discover(nc: Client, expected: list[str], wait: float = DISCOVERY_WAIT) -> list[dict[str, Any]]:
    """Every instance's micro stats (`$SRV.STATS`): waits until all expected names answered, or `wait`."""
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=replies.put)
    await nc.publish("$SRV.STATS", b"", reply=inbox)
    found: list[dict[str, Any]] = []
    missing = {f"clawden-{name}" for name in expected}
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(replies.get(), min(left, DISCOVERY_GRACE) if not missing else left)
            except TimeoutError:
                if not missing:
                    break
                continue
            stats = json.loads(msg.data)
            if str(stats.get("name", "")).startswith("clawden-"):
                found.append(stats)
                missing.discard(stats["name"])
    finally:
        await sub.unsubscribe()
    return found


async def ask(nc: Client, verb: Verb[Req, Rep], request: Req, timeout: float = CTL_TIMEOUT) -> Rep:
    """A control request with the typed client; a refusal or silence raises RuntimeError with the reason."""
    try:
        return await control.ask_on(nc, verb, request, timeout=timeout)
    except control.Refused as exc:
        raise RuntimeError(f"{verb.service} refused {verb.key}: {exc}") from None
    except control.ControlError as exc:
        raise RuntimeError(str(exc)) from None


async def _section(work: Awaitable[Any]) -> Any:
    """One part of the report: its answer as plain data, or {"error": why} so the other parts still show."""
    try:
        return msgspec.to_builtins(await work)
    except Exception as exc:
        return {"error": str(exc) or type(exc).__name__}


async def _ping(nc: Client, name: str) -> Pong | str:
    """A service's ping, or why it did not answer."""
    try:
        return await ask(nc, PING.at(name), Nothing())
    except Exception as exc:
        return str(exc) or type(exc).__name__


def _instance(stats: dict[str, Any], now: float) -> dict[str, Any]:
    started_at: float | None = None
    try:
        at = dt.datetime.fromisoformat(str(stats.get("started", "")))
        started_at = (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()
    except ValueError:
        pass
    pid = (stats.get("metadata") or {}).get("pid", "")
    return {
        "name": str(stats["name"]).removeprefix("clawden-"),
        "id": stats.get("id", ""),
        "version": stats.get("version", ""),
        "pid": int(pid) if str(pid).isdigit() else None,
        "started": started_at,
        "uptime": round(now - started_at, 3) if started_at else None,
        "endpoints": [
            {
                "name": e.get("name", ""),
                "requests": e.get("num_requests", 0),
                "errors": e.get("num_errors", 0),
                "last_error": e.get("last_error", ""),
                # micro reports nanoseconds
                "average_ms": round(e.get("average_processing_time", 0) / 1e6, 3),
            }
            for e in stats.get("endpoints") or []
        ],
    }


async def _services(nc: Client, expected: list[str], wait: float) -> tuple[list[dict[str, Any]], list[str]]:
    now = time.time()
    instances = [_instance(s, now) for s in await discover(nc, expected, wait)]
    names = sorted({i["name"] for i in instances})
    # `ctl.<service>.ping` reaches one instance of a name (a queue group): its app stats go to that one.
    pings = await asyncio.gather(*(_ping(nc, name) for name in names))
    for name, ping in zip(names, pings, strict=True):
        mine = [i for i in instances if i["name"] == name]
        if isinstance(ping, str):
            mine[0]["error"] = ping
            continue
        target = next((i for i in mine if i["pid"] == ping.pid), mine[0])
        target.update(ready=ping.ready, stats=ping.stats, trouble=ping.trouble)
        target["uptime"] = ping.uptime  # the service's own clock
    down = [name for name in expected if name not in names]
    return sorted(instances, key=lambda i: (i["name"], i["pid"] or 0)), down


async def _backlogs(nc: Client, cfg: config_mod.Config, channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each durable's backlog (delivered-not-yet and unacknowledged), and the expected ones missing."""
    table = natsauth.grants(cfg, channels, natsauth.added_runners(cfg))
    owners = {(c.stream, c.durable): ident for ident, grant in table.items() for c in grant.consumes}
    # An HTTP service that is not configured runs nowhere: its durables are not missing, only never made.
    unconfigured = {"webhooks", "web"} - set(config_mod.http_services(cfg))
    js = nc.jetstream()
    rows: list[dict[str, Any]] = []
    for stream in streams.STREAMS:
        try:
            infos = await js.consumers_info(stream.name)
        except Exception as exc:
            rows.append({"stream": stream.name, "durable": "", "error": f"no stream ({type(exc).__name__})"})
            continue
        for info in infos:
            rows.append(
                {
                    "stream": stream.name,
                    "durable": info.name,
                    "owner": owners.get((stream.name, info.name), ""),
                    "pending": info.num_pending or 0,
                    "ack_pending": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                    "waiting_pulls": info.num_waiting or 0,
                }
            )
        present = {info.name for info in infos}
        rows += [
            {"stream": stream.name, "durable": durable, "owner": owner, "missing": True}
            for (name, durable), owner in sorted(owners.items())
            if name == stream.name and durable not in present and owner not in unconfigured
        ]
    return fold_lanes(rows, channels)


def service_state(inst: dict[str, Any]) -> str:
    """An instance's state as `clawden status` and the web's status page show it: degraded where it is ready but
    says what it cannot do (`trouble`, shown beside it)."""
    if "error" in inst:
        return "not answering"
    if not inst.get("ready", True):
        return "starting"
    return "degraded" if inst.get("trouble") else "up"


# `clawden chat`'s durables, one per terminal chat (`chat.terminal_outbound`, named after the chat).
TERMINALS = ("CLAWDEN_OUTBOUND", "channel-local-")


def fold_lanes(rows: list[dict[str, Any]], channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """A bridge's outbound lanes as one row (`channel-telegram-0..7`), their backlogs summed; missing
    only when every lane is. The terminal chats' durables as one row too, `pending` None: each reads every terminal
    lane and skips other chats' replies, so its count of them is no backlog of its own (a closed chat's would only
    grow); what one was handed and has not done (`ack_pending`) is."""
    lane_of = {(c.stream, c.durable): channel for channel in channels for c in streams.bridge_lanes(channel)}
    out: list[dict[str, Any]] = []
    folded: dict[str, dict[str, Any]] = {}
    terminals = []
    for row in rows:
        if row["stream"] == TERMINALS[0] and row["durable"].startswith(TERMINALS[1]):
            terminals.append(row)
            continue
        channel = lane_of.get((row["stream"], row["durable"]))
        if channel is None:
            out.append(row)
            continue
        into = folded.get(channel)
        if into is None:
            into = folded[channel] = {
                "stream": row["stream"],
                "owner": row.get("owner", ""),
                "lanes": 0,
                "durable": f"channel-{channel}-0..{subjects.OUTBOUND_LANES - 1}",
                "pending": 0,
                "ack_pending": 0,
                "redelivered": 0,
                "waiting_pulls": 0,
            }
            out.append(into)
        if row.get("missing"):
            continue
        into["lanes"] += 1
        for key in ("pending", "ack_pending", "redelivered", "waiting_pulls"):
            into[key] += row[key]
    for row in folded.values():
        if not row["lanes"]:
            for key in ("pending", "ack_pending", "redelivered", "waiting_pulls"):
                del row[key]
            row["missing"] = True
    if terminals:
        n = len(terminals)
        out.append(
            {"stream": TERMINALS[0], "durable": f"{TERMINALS[1]}* ({n} chat{'s' * (n != 1)})", "owner": natsauth.CLI}
            | {"chats": n, "pending": None}
            | {k: sum(r[k] for r in terminals) for k in ("ack_pending", "redelivered", "waiting_pulls")}
        )
    return out


async def _approvals(nc: Client) -> dict[str, Any]:
    pending = await ask(nc, approvals.LIST, approvals.ListRequest(status="pending", limit=10_000))
    return {
        "pending": len(pending),
        "items": [
            {
                "id": p.id,
                "kind": p.kind,
                "agent_group": p.agent_group,
                "requester": p.requester,
                "approver": p.approver,
                "created_at": p.created_at,
                "expires_at": p.expires_at,
            }
            for p in pending
        ],
    }


async def _containers(nc: Client) -> dict[str, Any]:
    """Every runner's containers: each runner found by discovery and asked at its own subject, merged."""
    answers = await control.ask_all(nc, runner.CONTAINERS, Nothing(), timeout=CTL_TIMEOUT)
    return merge_runners({rid: a if isinstance(a, Exception) else msgspec.to_builtins(a) for rid, a in answers.items()})


def merge_runners(answers: dict[str, dict[str, Any] | Exception]) -> dict[str, Any]:
    """The runners' `containers` answers (runner id -> answer, or why it did not answer) as one: every running
    and waiting session with its runner's id, the slots summed, and `runners`, one entry per runner (its own
    answer, or {"runner", "error"}). No runner answered: {"error"} naming each, with `runners`."""
    runners: list[dict[str, Any]] = [
        {"runner": rid, "error": str(a) or type(a).__name__} if isinstance(a, Exception) else a
        for rid, a in answers.items()
    ]
    good = [r for r in runners if "error" not in r]
    if not good:
        why = "; ".join(f"runner {r['runner']}: {r['error']}" if r["runner"] else r["error"] for r in runners)
        return {"error": why or "no runner answered", "runners": runners}
    return {
        "runner": ", ".join(r["runner"] for r in good),
        "max": sum(r["max"] for r in good),
        "running": [{**c, "runner": r["runner"]} for r in good for c in r["running"]],
        "waiting": [{**w, "runner": r["runner"]} for r in good for w in r["waiting"]],
        "runners": runners,
    }


# unsent: calls whose connection failed before the request left; ambiguous: calls whose connection dropped
# after it left (a bridge may send those again once, see Capabilities.ambiguous_resends); expired: updates
# the platform dropped before the bridge could fetch them (Telegram keeps them 24 h).
DELIVERY_COUNTERS = ("sent", "failed", "unconfirmed", "retries", "unsent", "ambiguous", "expired")


def deliveries(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each running bridge's delivery counters (since it started), from its ping stats."""
    out = []
    for inst in instances:
        if not inst["name"].startswith("channel-"):
            continue
        channel = inst["name"].removeprefix("channel-")
        counts = (inst.get("stats") or {}).get(channel) or {}
        out.append({"channel": channel, **{k: counts.get(k, 0) for k in (*DELIVERY_COUNTERS, "waiting_on_files")}})
    return out


async def report(nc: Client, cfg: config_mod.Config, wait: float = DISCOVERY_WAIT) -> Report:
    """The whole report, asked over a connection the caller holds (the CLI's, or the web service's own)."""
    channels = tuple(b.split("@", 1)[1] for b in config_mod.configured_bridges(cfg))
    instances, down = await _services(nc, expected_services(cfg), wait)
    up = {i["name"] for i in instances}
    absent = {"error": "the service is not running"}
    containers, backlogs, approvals = await asyncio.gather(
        _section(_containers(nc)) if "runner" in up else asyncio.sleep(0, absent),
        _section(_backlogs(nc, cfg, channels)),
        _section(_approvals(nc)) if "approvals" in up else asyncio.sleep(0, absent),
    )
    return {
        "nats": cfg.nats_url,
        "at": time.time(),
        "services": instances,
        "down": down,
        "containers": containers,
        "streams": backlogs,
        "approvals": approvals,
        "deliveries": deliveries(instances),
    }
