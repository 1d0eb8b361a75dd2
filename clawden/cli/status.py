"""`clawden status`: every Clawden service instance that answers on the bus (NATS micro discovery) with
its request stats, and what the services report about work in flight: agent containers, stream
backlogs, pending approvals, failed deliveries. `gather` does the asking; `render` is pure."""

from __future__ import annotations

from typing import Any

from clawden import config as config_mod
from clawden.cli.commands._output import table
from clawden.owner import connect_cli

# The asking lives in clawden/survey.py, which the web service shares; these names stay importable from here.
from clawden.survey import CTL_TIMEOUT as CTL_TIMEOUT
from clawden.survey import DELIVERY_COUNTERS as DELIVERY_COUNTERS
from clawden.survey import DISCOVERY_GRACE as DISCOVERY_GRACE
from clawden.survey import DISCOVERY_WAIT as DISCOVERY_WAIT
from clawden.survey import Report as Report
from clawden.survey import ask as ask
from clawden.survey import deliveries as deliveries
from clawden.survey import discover as discover
from clawden.survey import expected_services as expected_services
from clawden.survey import fold_lanes as fold_lanes
from clawden.survey import report as report
from clawden.survey import service_state


async def gather(cfg: config_mod.Config, wait: float = DISCOVERY_WAIT) -> Report:
    """The whole report; raises `Unreachable` when the bus itself cannot be asked."""
    nc = await connect_cli(cfg)
    try:
        return await report(nc, cfg, wait)
    finally:
        await nc.close()


async def status(cfg: config_mod.Config, wait: float = DISCOVERY_WAIT) -> Report:
    """Kept for `clawden channels list`: the report, whose `services` are the answering instances."""
    return await gather(cfg, wait)


def healthy(report: Report) -> bool:
    """Every expected service answers, and none says it cannot do its work (`trouble`: degraded)."""
    return not report["down"] and not any("error" in s or s.get("trouble") for s in report["services"])


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


def _count(pending: int | None) -> object:
    return "-" if pending is None else pending  # None: not a backlog of its own (survey.fold_lanes)


def render(report: Report) -> str:
    out = [f"NATS {report['nats']}", ""]
    rows: list[list[object]] = []
    for inst in report["services"]:
        requests, errors, avg = _totals(inst)
        state = service_state(inst)
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
        elif inst.get("trouble"):
            out.append(f"{inst['name']}: {inst['trouble']}")

    out.append("")
    box = report["containers"]
    # One block per runner (survey.merge_runners); a report from before several runners has the one box.
    for runner in box.get("runners") or [box]:
        out += render_runner(runner)

    out.append("")
    backlog = report["streams"]
    if isinstance(backlog, dict):
        out.append(f"stream backlogs: unknown ({backlog['error']})")
    else:
        out.append(
            "stream backlogs (pending: not yet delivered, `-` where each reads other chats' too; "
            "ack pending: delivered, not yet done):"
        )
        out.append(
            table(
                [
                    [
                        r["stream"],
                        r["durable"] or "-",
                        r.get("owner") or "-",
                        "missing" if r.get("missing") else r.get("error") or _count(r["pending"]),
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


def render_runner(box: dict[str, Any]) -> list[str]:
    """One runner's block: its slots, then each session with a container or waiting for one."""
    if "error" in box:
        who = f" (runner {box['runner']})" if box.get("runner") else ""
        return [f"containers{who}: unknown ({box['error']})"]
    running, waiting = box["running"], box["waiting"]
    out = [
        f"containers (runner {box['runner']}): {len(running)} of {box['max']} running"
        + (f", {len(waiting)} waiting for a slot" if waiting else "")
        + _host(box)
    ]
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
    return out + [
        f"MCP server {name} of {c['agent_group']} failed to start in session {c['session_id']}: {why}"
        for c in running
        for name, why in sorted((c.get("mcp_failed") or {}).items())
    ]


def _host(box: dict[str, Any]) -> str:
    """`; host: load 0.52 on 4 CPUs, 3.1 GiB available`, or nothing from a runner that does not say."""
    if not box.get("cpus"):
        return ""
    memory = box.get("memory_available", -1)
    free = f", {memory / 2**30:.1f} GiB available" if memory >= 0 else ""
    return f"; host: load {box.get('load', 0.0):.2f} on {box['cpus']} CPUs{free}"


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
        if d.get("waiting_on_files"):
            out.append(
                f"{d['channel']}: messages of {d['waiting_on_files']} chat(s) wait for files the platform has not"
                " handed over yet (each goes without its files after 5 minutes, saying why)"
            )
        if d.get("expired"):
            out.append(
                f"{d['channel']}: {d['expired']} incoming message(s) expired on the platform before the "
                f"bridge could fetch them (it was away too long); their senders were not answered"
            )
    return "\n".join(out)
