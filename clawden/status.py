"""`clawden status`: every Clawden service instance that answers on the bus (NATS micro discovery) with
its request stats, and what the services report about work in flight: agent containers, stream
backlogs, pending approvals, failed deliveries. `gather` does the asking; `render` is pure."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, NoServersError
from nats.errors import Error as NatsError

from clawden import config as config_mod
from clawden import natsauth
from clawden.bus import streams, subjects
from clawden.commands._output import table

Report = dict[str, Any]
DISCOVERY_WAIT = 1.0  # the most we wait for instances to answer $SRV.STATS
DISCOVERY_GRACE = 0.1  # once every expected service answered: how long to wait for more instances
CTL_TIMEOUT = 3.0


class Unreachable(ConnectionError):
    """NATS is down, or refuses the owner's CLI identity: `str()` says which, `fix` what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def start_hint(cfg: config_mod.Config, unit: str = "clawden.target") -> str:
    """How to start Clawden (or one unit of it) here: as installed units, or `clawden up`."""
    from clawden.logview import installed_scope

    if not cfg.embedded_nats and unit == "clawden.target":
        return f"check that the NATS server at {cfg.nats_url} runs and this machine can reach it"
    scope = installed_scope(ask_systemctl=False)
    if scope == "user":
        return f"systemctl --user start {unit}"
    if scope == "system":
        return f"sudo systemctl start {unit}"
    return "start Clawden with `clawden up`"


async def connect_cli(cfg: config_mod.Config, timeout: float = 5.0, reconnects: int = 1) -> Client:
    """The owner's CLI connection, or `Unreachable` in plain words."""
    try:
        return await asyncio.wait_for(
            natsauth.connect_as(cfg, natsauth.CLI, max_reconnect_attempts=reconnects), timeout
        )
    except natsauth.IdentityError as exc:
        raise Unreachable(str(exc), f"chmod 600 {natsauth.seed_path(cfg, natsauth.CLI)}") from None
    except AuthorizationError:
        if other := another_server(cfg):
            raise Unreachable(
                other,
                f"stop that one, or give this install its own port: [nats] port in "
                f"{cfg.path('config.toml')}, then `clawden init` and `clawden up`",
            ) from None
        seed = natsauth.seed_path(cfg, natsauth.CLI)
        why = "with the seed in " + str(seed) if seed.exists() else f"without a seed ({seed} is missing)"
        raise Unreachable(
            f"NATS at {cfg.nats_url} refused the owner's CLI identity {why}",
            "run `clawden init` (it writes the seeds and nats.conf), then restart NATS "
            "(`systemctl --user restart clawden-nats`, or restart `clawden up`)",
        ) from None
    except (NoServersError, OSError, TimeoutError, NatsError) as exc:
        raise Unreachable(f"cannot reach NATS at {cfg.nats_url} ({type(exc).__name__})", start_hint(cfg)) from None


def another_server(cfg: config_mod.Config) -> str | None:
    """When the embedded server's port is held by a NATS server that is not this install's, says whose."""
    from clawden import natsserver

    if not cfg.embedded_nats:
        return None
    name = natsserver.announced_name(cfg.nats.port)
    if name is None or name in (natsauth.server_name(cfg), "clawden"):  # "clawden": a server from before names
        return None
    if name.startswith("clawden-"):
        return (
            f"port {cfg.nats.port} belongs to another Clawden install (install id {name.removeprefix('clawden-')};"
            f" this home {cfg.home} is {cfg.install_id})"
        )
    return f"port {cfg.nats.port} is held by a NATS server that is not this install's ({name or 'unnamed'})"


def expected_services(cfg: config_mod.Config) -> list[str]:
    """What should answer: the core services, the webhook front door where it is configured, and every bridge
    with a token (what `clawden up` runs)."""
    return [
        *natsauth.CORE,
        *(["webhooks"] if cfg.webhooks.listen else []),
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


async def ctl(
    nc: Client, service: str, verb: str, payload: dict[str, Any] | None = None, timeout: float = CTL_TIMEOUT
) -> Any:
    """A control request; a refusal or silence raises RuntimeError with the reason."""
    try:
        reply = await nc.request(subjects.ctl(service, verb), json.dumps(payload or {}).encode(), timeout=timeout)
    except Exception as exc:
        raise RuntimeError(f"{service} did not answer {verb} ({type(exc).__name__})") from None
    error = (reply.headers or {}).get("Nats-Service-Error")
    if error:
        raise RuntimeError(f"{service} refused {verb}: {error}")
    return json.loads(reply.data)


async def _section(work: Awaitable[Any]) -> Any:
    """One part of the report: its answer, or {"error": why} so the other parts still show."""
    try:
        return await work
    except Exception as exc:
        return {"error": str(exc) or type(exc).__name__}


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
    pings = await asyncio.gather(*(_section(ctl(nc, name, "ping")) for name in names))
    for name, ping in zip(names, pings, strict=True):
        mine = [i for i in instances if i["name"] == name]
        target = next((i for i in mine if i["pid"] == ping.get("pid")), mine[0])
        if "error" in ping:
            target["error"] = ping["error"]
        else:
            target.update(ready=ping.get("ready"), stats=ping.get("stats", {}))
            target["uptime"] = ping.get("uptime", target["uptime"])  # the service's own clock
    down = [name for name in expected if name not in names]
    return sorted(instances, key=lambda i: (i["name"], i["pid"] or 0)), down


async def _backlogs(nc: Client, cfg: config_mod.Config, channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each durable's backlog (delivered-not-yet and unacknowledged), and the expected ones missing."""
    table = natsauth.grants(cfg, channels)
    owners = {(c.stream, c.durable): ident for ident, grant in table.items() for c in grant.consumes}
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
            if name == stream.name and durable not in present
        ]
    return fold_lanes(rows, channels)


def fold_lanes(rows: list[dict[str, Any]], channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """A bridge's outbound lanes as one row (`channel-telegram-0..7`), their backlogs summed; missing
    only when every lane is."""
    lane_of = {(c.stream, c.durable): channel for channel in channels for c in streams.bridge_lanes(channel)}
    out: list[dict[str, Any]] = []
    folded: dict[str, dict[str, Any]] = {}
    for row in rows:
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
    return out


async def _approvals(nc: Client) -> dict[str, Any]:
    pending = await ctl(nc, "approvals", "list", {"status": "pending", "limit": 10_000})
    return {
        "pending": len(pending),
        "items": [
            {k: p.get(k) for k in ("id", "kind", "agent_group", "requester", "approver", "created_at", "expires_at")}
            for p in pending
        ],
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
        out.append({"channel": channel, **{k: counts.get(k, 0) for k in DELIVERY_COUNTERS}})
    return out


async def gather(cfg: config_mod.Config, wait: float = DISCOVERY_WAIT) -> Report:
    """The whole report; raises `Unreachable` when the bus itself cannot be asked."""
    channels = tuple(b.split("@", 1)[1] for b in config_mod.configured_bridges(cfg))
    nc = await connect_cli(cfg)
    try:
        instances, down = await _services(nc, expected_services(cfg), wait)
        up = {i["name"] for i in instances}
        absent = {"error": "the service is not running"}
        containers, backlogs, approvals = await asyncio.gather(
            _section(ctl(nc, "runner", "containers")) if "runner" in up else asyncio.sleep(0, absent),
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
    finally:
        await nc.close()


async def status(cfg: config_mod.Config, wait: float = DISCOVERY_WAIT) -> Report:
    """Kept for `clawden channels list`: the report, whose `services` are the answering instances."""
    return await gather(cfg, wait)


def healthy(report: Report) -> bool:
    return not report["down"] and not any("error" in s for s in report["services"])


# ---- showing (pure) --------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _totals(inst: dict[str, Any]) -> tuple[int, int, str]:
    eps = inst["endpoints"]
    requests = sum(e["requests"] for e in eps)
    errors = sum(e["errors"] for e in eps)
    avg = sum(e["average_ms"] * e["requests"] for e in eps) / requests if requests else 0.0
    return requests, errors, f"{avg:.1f}ms" if requests else "-"


def render(report: Report) -> str:
    out = [f"NATS {report['nats']}", ""]
    rows: list[list[object]] = []
    for inst in report["services"]:
        requests, errors, avg = _totals(inst)
        state = "not answering" if "error" in inst else "up" if inst.get("ready", True) else "starting"
        rows.append(
            [inst["name"], state, inst["version"], inst["pid"] or "-", duration(inst["uptime"]), requests, errors, avg]
        )
    rows += [[name, "DOWN", "", "", "", "", "", ""] for name in report["down"]]
    out.append(table(rows, ["SERVICE", "STATE", "VERSION", "PID", "UPTIME", "REQUESTS", "ERRORS", "AVG"]))
    busy = [
        [inst["name"], e["name"], e["requests"], e["errors"], f"{e['average_ms']:.1f}ms", e["last_error"][:60]]
        for inst in report["services"]
        for e in inst["endpoints"]
        if e["requests"] or e["errors"]
    ]
    if busy:
        out += ["", table(busy, ["SERVICE", "ENDPOINT", "REQUESTS", "ERRORS", "AVG", "LAST ERROR"])]
    for inst in report["services"]:
        if "error" in inst:
            out.append(f"{inst['name']}: {inst['error']}")

    out.append("")
    box = report["containers"]
    if "error" in box:
        out.append(f"containers: unknown ({box['error']})")
    else:
        running, waiting = box["running"], box["waiting"]
        out.append(
            f"containers (runner {box['runner']}): {len(running)} of {box['max']} running"
            + (f", {len(waiting)} waiting for a slot" if waiting else "")
        )
        if running or waiting:
            out.append(
                table(
                    [
                        [c["session_id"], c["agent_group"], c["container"] or "-", c["state"], duration(c["idle"])]
                        for c in running
                    ]
                    + [[w["session_id"], w["agent_group"], "-", "waiting", duration(w["waiting"])] for w in waiting],
                    ["SESSION", "GROUP", "CONTAINER", "STATE", "IDLE"],
                )
            )

    out.append("")
    backlog = report["streams"]
    if isinstance(backlog, dict):
        out.append(f"stream backlogs: unknown ({backlog['error']})")
    else:
        out.append("stream backlogs (pending: not yet delivered; ack pending: delivered, not yet done):")
        out.append(
            table(
                [
                    [
                        r["stream"],
                        r["durable"] or "-",
                        r.get("owner") or "-",
                        "missing" if r.get("missing") else r.get("error") or r["pending"],
                        "" if r.get("missing") or r.get("error") else r["ack_pending"],
                        "" if r.get("missing") or r.get("error") else r["redelivered"],
                    ]
                    for r in backlog
                ],
                ["STREAM", "DURABLE", "READER", "PENDING", "ACK PENDING", "REDELIVERED"],
            )
        )

    out.append("")
    approvals = report["approvals"]
    if "error" in approvals:
        out.append(f"pending approvals: unknown ({approvals['error']})")
    else:
        out.append(f"pending approvals: {approvals['pending']}")
        if approvals["items"]:
            now = report["at"]
            out.append(
                table(
                    [
                        [
                            a["id"],
                            a["kind"],
                            a["agent_group"],
                            a["approver"] or "-",
                            f"in {duration(max(0.0, (a['expires_at'] or now) - now))}",
                        ]
                        for a in approvals["items"]
                    ],
                    ["ID", "KIND", "GROUP", "APPROVER", "EXPIRES"],
                )
            )

    if report["deliveries"]:
        out += ["", render_deliveries(report["deliveries"])]
    return "\n".join(out)


def render_deliveries(rows: list[dict[str, Any]]) -> str:
    """The bridges' counters as `clawden status` prints them, with a line per bridge that lost messages."""
    out = [
        "deliveries since each bridge started:",
        table(
            [[d["channel"], *(d.get(k, 0) for k in DELIVERY_COUNTERS[:-1])] for d in rows],
            ["CHANNEL", "SENT", "FAILED", "UNCONFIRMED", "RETRIES", "NOT SENT", "DROPPED MID-SEND"],
        ),
    ]
    for d in rows:
        if d.get("expired"):
            out.append(
                f"{d['channel']}: {d['expired']} incoming message(s) expired on the platform before the "
                f"bridge could fetch them (it was away too long); their senders were not answered"
            )
    return "\n".join(out)
