"""Malformed payloads on every subject each bus identity may publish, drawn by hypothesis, and the
check that a running Clawden shrugs them off: shared by tests/chaos and bench/chaos.py.

Each identity is the one `clawden init` made (its own seed, so the server's permissions apply, as
for a compromised or buggy service); the subjects are what `natsauth.grants` lets it publish, with
each wildcard made concrete, and every control endpoint the services announce (`$SRV.INFO`). The
JetStream API subjects an identity may use are left out: the server, not Clawden, answers those.

A payload is one of:
- garbage: random bytes;
- json: a random JSON value;
- truncated: a well-formed event of the subject's kind, cut short;
- retyped: one field of such an event given a value of another JSON type;
- untagged: its `type` tag missing or unknown;
- missing: a required field left out;
- oversized: a text field past the contract's limit, or a payload near NATS's 1 MB cap;
- spoofed: a well-formed inbound event whose route names another channel than its subject;
- wellformed: a well-formed event of random values (ids nobody has), where one cannot start work.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec.inspect as mi
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import NoRespondersError

from clawden import config, natsauth
from clawden.bus import events as ev
from clawden.bus import sentlog, subjects

# The kinds a subject carries, as the contract says (clawden/bus/events.py).
KINDS: dict[str, tuple[type[Any], ...]] = {
    "inbound": (ev.InboundMessage, ev.InboundAction, ev.ChatMoved, ev.MessagesLost),
    "receipt": (ev.DeliveryReceipt,),
    "wake": (ev.Wake,),
    "outbound": (ev.OutboundMessage, ev.OutboundEdit, ev.OutboundReaction, ev.Typing),
    "task": (ev.TaskOp,),
    "due": (ev.TaskDue,),  # the scheduler's due runs, for the router
    "approval.request": (ev.ApprovalRequest, ev.ApprovalWithdrawn),
    "approval.click": (ev.InboundAction,),
    "approval.decision": (ev.ApprovalDecision,),
    "event": (ev.AuditEvent,),
    "heartbeat": (ev.RunnerHeartbeat,),  # core NATS; the router reads it to place sessions
    "placement": (ev.SessionPlaced,),  # the router's record of each session's runner (the vault reads it)
    "sent": (sentlog.PartRecord,),  # a bridge's shared sent-log: what its other instances read before they send
    "typing_off": (ev.TypingOff,),  # core NATS: an instance of a bridge tells its twins "typing…" is over
    "ctl": (),
    "webhook": (),  # a platform's own body, verified by the front door: any JSON object
}
NATS_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class Target:
    identity: str
    subject: str
    family: str  # a KINDS key
    channel: str = ""  # inbound/receipt/outbound: the subject's channel


@dataclass(frozen=True)
class Shot:
    target: Target
    kind: str
    payload: bytes


# ---- what each identity may publish ------------------------------------------------------------


def _concrete(pattern: str, runner: str, channels: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(subject, family, channel) for one granted publish pattern."""
    p = subjects.PREFIX
    fixed = {
        subjects.ALL_WAKES: [(subjects.wake(runner), "wake", "")],
        subjects.ALL_OUTBOUND: [(subjects.outbound_lane(c, lane), "outbound", c) for c in channels for lane in (0, 5)],
        subjects.ALL_TASKS: [(subjects.task("op"), "task", "")],
        subjects.TASK_DUE: [(subjects.TASK_DUE, "due", "")],
        subjects.APPROVAL_REQUEST: [(pattern, "approval.request", "")],
        subjects.APPROVAL_CLICK: [(pattern, "approval.click", "")],
        f"{p}.approval.decision.>": [(subjects.approval_decision("fuzz0000"), "approval.decision", "")],
    }
    if pattern in fixed:
        return fixed[pattern]
    if pattern.startswith(f"{p}.event.") and pattern.endswith(".>"):
        return [(subjects.event(pattern.split(".")[2], "fuzz"), "event", "")]
    for family in ("inbound", "receipt"):
        if pattern.startswith(f"{p}.{family}."):
            return [(pattern, family, pattern.rsplit(".", 1)[1])]
    if pattern.startswith(f"{p}.sent.") and pattern.endswith(".>"):
        channel = pattern.split(".")[2]
        return [(subjects.sent(channel, "fuzz-outbound", 0), "sent", channel)]
    if pattern.startswith(f"{p}.bridge.") and pattern.endswith(".typing_off"):
        return [(pattern, "typing_off", pattern.split(".")[2])]
    if pattern == subjects.ALL_PLACEMENTS:
        return [(subjects.placement("fuzz-session"), "placement", "")]
    if pattern.startswith(f"{p}.runner.heartbeat."):
        return [(pattern, "heartbeat", "")]
    if pattern.startswith(f"{p}.ctl."):  # `ctl.runner.*.containers`: each runner's own, this stack's one
        return [(pattern.replace("*", runner), "ctl", "")]
    if pattern.startswith(f"{p}.webhook."):
        return [(pattern, "webhook", pattern.rsplit(".", 1)[1])]
    if pattern.startswith(("$SRV.", "$JS.API.")):  # asked of every service's micro layer, or of the server
        return [(pattern, "ctl", "")]
    raise AssertionError(f"the fuzzer does not know how to aim at {pattern}: teach it")


def targets(cfg: config.Config, channels: tuple[str, ...], endpoints: list[str]) -> list[Target]:
    """Every (identity, subject) pair to aim at: the services' grants, then the owner's CLI, which
    may publish anything: the terminal's subjects and every control endpoint."""
    out: list[Target] = []
    for ident, grant in sorted(natsauth.grants(cfg, channels, natsauth.added_runners(cfg)).items()):
        # A verb of a service this stack does not run (the web app's login, which the router may ask for)
        # has nobody to answer: only what runs is aimed at.
        calls = (f"{subjects.PREFIX}.ctl.{call}" for call in grant.calls)
        patterns = [*grant.publishes, *(c for c in calls if c in endpoints)]
        for pattern in patterns:
            out += [Target(ident, s, f, c) for s, f, c in _concrete(pattern, cfg.runner.id, channels)]
    out += [
        Target(natsauth.CLI, subjects.inbound("local"), "inbound", "local"),
        Target(natsauth.CLI, subjects.receipt("local"), "receipt", "local"),
    ]
    out += [Target(natsauth.CLI, e, "ctl") for e in endpoints]
    return out


async def control_endpoints(nc: Client, services: Iterable[str], timeout: float = 60.0) -> list[str]:
    """The subject of every endpoint the running `services` announce: once each has answered `$SRV.INFO`,
    however slow the machine (the timeout only ends a wait for one that is down). Only malformed and
    random payloads go to them: a well-formed request (`secrets-remove` of a real name) would act for real."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO", b"", reply=inbox)
    missing = {f"clawden-{natsauth.identity(s)}" for s in services}
    found: set[str] = set()
    deadline = time.monotonic() + timeout
    while missing:
        msg = await sub.next_msg(timeout=max(0.0, deadline - time.monotonic()))  # TimeoutError: one is down
        info = json.loads(msg.data)
        missing.discard(str(info.get("name", "")))
        if str(info.get("name", "")).startswith("clawden-"):
            found.update(e["subject"] for e in info.get("endpoints") or [])
    await sub.unsubscribe()
    return sorted(found)


# ---- payloads --------------------------------------------------------------------------------------

_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _value(t: Any) -> st.SearchStrategy[Any]:
    """A JSON value of msgspec type `t` (the contract's own types, as msgspec.inspect sees them)."""
    if isinstance(t, mi.StrType):
        return st.text(max_size=min(t.max_length or 60, 60))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(_value(u) for u in t.types))
    if isinstance(t, mi.VarTupleType | mi.ListType):
        return st.lists(_value(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(st.text(max_size=10), _value(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return _struct(t.cls)
    return _json


def _struct(cls: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.encode_name: _value(f.type) for f in info.fields if f.required}
    optional = {f.encode_name: _value(f.type) for f in info.fields if not f.required}
    fixed = {info.tag_field: st.just(info.tag)} if info.tag_field else {}
    return st.fixed_dictionaries({**fixed, **required}, optional=optional)


def _wellformed(target: Target) -> st.SearchStrategy[dict[str, Any]]:
    kinds = KINDS[target.family]
    return st.one_of(*(_struct(k) for k in kinds)) if kinds else st.dictionaries(st.text(max_size=8), _json)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _mutations(target: Target, doc: dict[str, Any], draw: st.DrawFn) -> tuple[str, bytes]:
    kinds = ["garbage", "json", "truncated", "retyped", "untagged", "missing", "oversized"]
    if target.family == "inbound":
        kinds.append("spoofed")
    elif target.family not in ("ctl", "approval.request", "outbound"):
        # Random ids match no group, session, task or approval; an inbound message could be wired
        # (`local *`), an approval card or an outbound message would reach a person: those stay malformed.
        kinds.append("wellformed")
    kind = draw(st.sampled_from(kinds))
    if kind == "garbage":
        return kind, draw(st.binary(max_size=200))
    if kind == "json":
        return kind, _encode(draw(_json))
    if kind == "truncated":
        data = _encode(doc)
        return kind, data[: draw(st.integers(0, max(0, len(data) - 1)))]
    _mutate(kind, target, doc, draw)
    return kind, _encode(doc)


def _mutate(kind: str, target: Target, doc: dict[str, Any], draw: st.DrawFn) -> None:
    """A well-formed document made wrong in place, as `kind` says."""
    keys = [k for k in doc if k != "type"]
    if kind == "retyped" and keys:
        key = draw(st.sampled_from(keys))
        old = doc[key]
        doc[key] = draw(_json.filter(lambda v: type(v) is not type(old)))
    elif kind == "untagged":
        doc.pop("type", None) if draw(st.booleans()) else doc.update(type=draw(st.text(max_size=20)))
    elif kind == "missing" and keys:
        doc.pop(draw(st.sampled_from(keys)))
    elif kind == "oversized":
        if draw(st.booleans()) and "text" in doc:
            doc["text"] = "x" * (ev.MAX_TEXT + 1)
        else:
            doc["pad"] = "y" * (NATS_MAX_PAYLOAD - 4096)
    elif kind == "spoofed":
        route = doc.get("route")
        if isinstance(route, dict):
            route["channel"] = "local" if target.channel != "local" else "telegram"


@st.composite
def shots(draw: st.DrawFn, aims: list[Target]) -> Shot:
    target = draw(st.sampled_from(aims))
    doc = draw(_wellformed(target))
    kind, payload = _mutations(target, doc, draw)
    return Shot(target, kind, payload[: NATS_MAX_PAYLOAD - 1024])


def corpus(aims: list[Target], count: int) -> list[Shot]:
    """`count` payloads spread over the targets; the same ones every run (derandomized)."""
    out: list[Shot] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(shots(aims))
    def collect(shot: Shot) -> None:
        out.append(shot)

    collect()
    return out


# ---- firing them -----------------------------------------------------------------------------------


@dataclass
class Fired:
    by_kind: Counter[str]
    by_family: Counter[str]
    unanswered: list[str]  # control endpoints that did not answer a request at all


async def fire(cfg: config.Config, all_shots: list[Shot]) -> Fired:
    """Publish every shot as its identity; a control request must be answered (an error is an answer)."""
    clients: dict[str, Client] = {}
    fired = Fired(Counter(), Counter(), [])
    try:
        for shot in all_shots:
            ident = shot.target.identity
            if ident not in clients:
                clients[ident] = await natsauth.connect_as(cfg, ident)
            nc = clients[ident]
            if shot.target.family == "ctl":
                try:
                    await nc.request(shot.target.subject, shot.payload, timeout=10)
                except (TimeoutError, NoRespondersError):
                    fired.unanswered.append(shot.target.subject)
            else:
                await nc.publish(shot.target.subject, shot.payload)
            fired.by_kind[shot.kind] += 1
            fired.by_family[shot.target.family] += 1
        for nc in clients.values():
            await nc.flush()
    finally:
        for nc in clients.values():
            await nc.close()
    return fired


async def drained(nc: Client, timeout: float = 300) -> dict[str, dict[str, int]]:
    """Wait until every durable has nothing pending or unacknowledged: each payload was taken and
    settled. Returns each durable's redelivery count, the sign of a payload handled more than once."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, dict[str, int]] = {}
        busy: list[str] = []
        for stream in await js.streams_info():
            for c in await js.consumers_info(stream.config.name or ""):
                name = f"{stream.config.name}/{c.name}"
                state[name] = {
                    "pending": c.num_pending or 0,
                    "ack_pending": c.num_ack_pending or 0,
                    "redelivered": c.num_redelivered or 0,
                }
                # A closed terminal's durable keeps what came after its last reply (typing off):
                # nobody reads it until that chat opens again.
                if (c.num_pending or c.num_ack_pending) and not c.name.startswith("channel-local-"):
                    busy.append(name)
        if not busy:
            return state
        assert time.monotonic() < deadline, {n: state[n] for n in busy}
        await asyncio.sleep(0.2)
