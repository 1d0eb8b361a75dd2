"""Per-service NATS identities: one nkey user per service, allowed only the subjects it needs.

`clawden init` keeps a seed per identity in `keys/nats/<identity>.nk` (mode 0600) and writes the
embedded server's `nats.conf` with each identity's public key and permissions. A service reads
its seed from `$CREDENTIALS_DIRECTORY/nats.nk` (a systemd `LoadCredential=`), else from the home;
with no seed it connects without one (an external server, or a test's open server).

What each identity may do is derived from the bus contract: the durables it reads (so it may
create, pull from and acknowledge only those, on the subject their filter names), the subjects
it publishes to, the control endpoints it calls. A bridge may publish only its own inbound and
receipt subjects and read only its own outbound lanes; only the core services manage streams.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import Client

from clawden.bus import connect, ctl, placements, sentlog, streams, subjects, webhooks
from clawden.bus.connection import inbox_prefix
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import scheduler as scheduler_ctl
from clawden.bus.ctl import vault as vault_ctl
from clawden.config import Config

SEED_CREDENTIAL = "nats.nk"  # the name under $CREDENTIALS_DIRECTORY
CLI = "cli"  # the owner's command line: may do anything (it can read every seed anyway)
CORE = ("router", "runner", "vault", "scheduler", "approvals")
RUNNER = "runner"  # the install's own runner (`[runner] id` of the home that writes nats.conf)
RUNNER_SERVICE = "clawden-runner"  # every runner's micro name, whatever its identity: discovery finds them all
SERVICE_QUEUE = "q"  # micro's queue group (nats.micro.service.DEFAULT_QUEUE_GROUP)
# What the in-container `clawden` reads and (once an admin approved) writes through the runner
# (services/runner/admin.py); its scope check runs in the runner, and nothing here reaches the vault.
# Each router op by its own subject (`clawden.ctl.router.groups.create`): never `groups delete`, `wire
# update`, chats, users or roles, which the agent CLI (admin.py) and create_agent (newagent.py) never ask.
RUNNER_CLI_VERBS: tuple[ctl.Verb[Any, Any], ...] = (
    router_ctl.GROUPS_LIST,
    router_ctl.GROUPS_GET,
    router_ctl.GROUPS_CREATE,  # create_agent, once an admin approved
    router_ctl.GROUPS_UPDATE,  # its own group's tuning, its image (services/runner/images.py)
    router_ctl.SESSIONS_LIST,
    router_ctl.DESTINATIONS_LIST,
    router_ctl.DESTINATIONS_ADD,
    router_ctl.DESTINATIONS_REMOVE,
    router_ctl.MEMBERS_LIST,
    router_ctl.MEMBERS_ADD,
    router_ctl.MEMBERS_REMOVE,
    router_ctl.WIRINGS_LIST,
    router_ctl.WIRINGS_CREATE,
    router_ctl.WIRINGS_DELETE,
    router_ctl.DROPPED_LIST,
    scheduler_ctl.TASKS,
)


def call_of(verb: ctl.Verb[Any, Any]) -> str:
    """A verb as a grant names it: `router.groups.create` for one op, `scheduler.tasks` for a whole verb."""
    return verb.subject.removeprefix(f"{subjects.PREFIX}.ctl.")


RUNNER_CLI_CALLS = tuple(call_of(v) for v in RUNNER_CLI_VERBS)
WEB_CHANNEL = "web"
WEB_CALLS = (
    "router.chats",
    "router.wirings",
    "router.groups",
    # who is signed in: every page is scoped by it (services/web/scope.py). Never `router.roles`, whose
    # subject also grants and revokes: a web service taken over could make itself owner.
    "router.standing",
    "router.members",
    "router.sessions",
    "router.dropped",
    "approvals.list",
    "approvals.show",
    "approvals.decide",
    "runner.containers",
    "vault.secrets-add",
    "vault.secrets-list",
    "vault.secrets-remove",
    "vault.secrets-grant",
    "vault.rules-add",
    "vault.rules-list",
    "vault.rules-remove",
    "vault.audit",
    "vault.egress",
    # never vault.model-check: each call sends the model key to api.anthropic.com; only the owner's
    # `clawden doctor` (the cli identity, allowed everything) asks it
    "scheduler.tasks",
    "scheduler.get",
    "scheduler.runs",
    "scheduler.pause",
    "scheduler.resume",
    "scheduler.cancel",
    "*.ping",
)


class IdentityError(RuntimeError):
    pass


def identity(service: str) -> str:
    """`channel@telegram` -> `channel-telegram`: the name a service has on the bus."""
    return service.replace("@", "-")


@dataclass(frozen=True)
class Grant:
    consumes: tuple[streams.Consumer, ...] = ()
    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()  # core NATS subscriptions to stream subjects
    calls: tuple[str, ...] = ()  # control endpoints: (service, verb) as `service.verb`
    manages_streams: bool = False
    # Control subjects it may serve, where not all of `clawden.ctl.<identity>.>`: a runner serves the shared
    # ones and its own id's only (`clawden.ctl.runner.<id>.<verb>`), never another runner's.
    serves: tuple[str, ...] = ()
    service: str = ""  # its micro service's name, where not `clawden-<identity>` (every runner: clawden-runner)


def grants(cfg: Config, channels: tuple[str, ...], runners: tuple[str, ...] = ()) -> dict[str, Grant]:
    """Every identity's grant. `runners`: the ids `clawden runners add` gave an identity of their own
    (`added_runners`), each `runner-<id>` with the install's own runner's grant for its id alone."""
    table = {
        "router": Grant(
            consumes=(
                streams.router_inbound(),
                streams.router_decisions(),
                streams.router_agents(),
                streams.router_due(),  # the scheduler's due runs, woken where each session is now
            ),
            publishes=(
                subjects.ALL_WAKES,
                subjects.receipt("agent"),  # its word on each agent-to-agent send (services/router/relay.py)
                subjects.ALL_OUTBOUND,
                subjects.APPROVAL_REQUEST,
                subjects.APPROVAL_CLICK,
                f"{subjects.PREFIX}.event.router.>",
                subjects.ALL_PLACEMENTS,  # where each session runs (SessionPlaced)
                # a runner declared gone, with shared storage: the wakes it had not taken, re-sent to the session's
                # new runner (how far its durable got, then each later message on its wake subject)
                "$JS.API.CONSUMER.INFO.CLAWDEN_WAKE.*",
                "$JS.API.STREAM.MSG.GET.CLAWDEN_WAKE",
            ),
            calls=("web.login",),  # `/web` from an owner or admin: a sign-in link (services/router/weblink.py)
            subscribes=(subjects.ALL_HEARTBEATS,),  # every runner's load, to place new sessions (placement.py)
            manages_streams=True,
        ),
        RUNNER: runner_grant(cfg.runner.id),
        "scheduler": Grant(
            consumes=(streams.scheduler_tasks(), streams.scheduler_chat_moves(), streams.scheduler_orphans()),
            # a due run goes to the router, which wakes the session where it is: never a wake subject itself
            publishes=(subjects.TASK_DUE, subjects.ALL_OUTBOUND),
            manages_streams=True,
        ),
        "approvals": Grant(
            consumes=(
                streams.approvals_requests(),
                streams.approvals_clicks(),
                streams.approvals_receipts(),
                streams.approvals_inbound(),
            ),
            publishes=(f"{subjects.PREFIX}.approval.decision.>", subjects.ALL_OUTBOUND),
            calls=("router.approvers",),
            manages_streams=True,
        ),
        "vault": Grant(
            # the placement of a session a runner registers a container token for (which runner may)
            publishes=(subjects.APPROVAL_REQUEST, f"{subjects.PREFIX}.event.vault.>", placements.DIRECT_GET),
            subscribes=(f"{subjects.PREFIX}.approval.decision.>",),
            # The HTTP API's approvals (services/vault/api.py): listed and decided by the approvals service.
            calls=("approvals.list", "approvals.show", "approvals.decide"),
            manages_streams=True,
        ),
    }
    routes = webhook_routes(cfg)
    # The webhook front door publishes only what it verified, each channel to its own subject.
    table["webhooks"] = Grant(publishes=tuple(subjects.webhook(c) for c in sorted(routes)))
    # The web service: the `web` channel like a bridge (its own inbound and receipts, its lanes), the control
    # verbs its pages use (services/web/backend.py), and what `clawden status` reads: micro stats, every
    # service's ping, the durables' backlogs. Nothing else: it decides approvals through approvals.decide.
    table["web"] = Grant(
        consumes=streams.bridge_lanes(WEB_CHANNEL),
        publishes=(
            subjects.inbound(WEB_CHANNEL),
            subjects.receipt(WEB_CHANNEL),
            f"{subjects.PREFIX}.event.web.>",  # each change made from a page, with who made it
            "$SRV.STATS",
            # every runner's containers for the status page: found by discovery, each asked at its own subject
            "$SRV.INFO.clawden-runner",
            f"{subjects.PREFIX}.ctl.runner.*.containers",
            *(f"$JS.API.CONSUMER.LIST.{s.name}" for s in streams.STREAMS),
        ),
        calls=WEB_CALLS,
    )
    for name in channels:
        hooks = (streams.bridge_webhooks(name),) if name in routes else ()
        table[identity(f"channel@{name}")] = Grant(
            consumes=(*streams.bridge_lanes(name), *hooks),
            # its own channel's shared sent-log, written and read by direct get (clawden/bus/sentlog.py)
            publishes=(
                subjects.inbound(name),
                subjects.receipt(name),
                subjects.sent_all(name),
                sentlog.direct_get(name),
                subjects.typing_off(name),  # "typing…" is over in a chat, to its twins (services/channels)
            ),
            subscribes=(subjects.typing_off(name),),
            calls=("router.admit",),
        )  # may the bot join a chat it was invited to (Inbound.admit)
    for rid in runners:
        table[runner_identity(rid)] = runner_grant(rid)
    return table


def runner_grant(runner_id: str) -> Grant:
    """What one runner may do, for its id alone: its own wake, receipts and decisions durables, its own
    heartbeat, its own control subjects (`clawden.ctl.runner.<id>.*`), and what every runner does (replies,
    approval requests, tasks, its audit events, the vault gateway, the router ops the agent CLI asks).

    The shared subjects (`clawden.ctl.runner.<verb>`: ping, containers, restart) are served by every runner,
    but only in micro's queue group, where each request reaches one of them: a runner acts there on its own
    containers only, and may not listen in on the requests meant for the others."""
    rid = subjects.token(runner_id)
    return Grant(
        consumes=(streams.runner_wake(rid), streams.runner_receipts(rid), streams.runner_decisions(rid)),
        publishes=(
            subjects.ALL_OUTBOUND,
            subjects.APPROVAL_REQUEST,
            subjects.ALL_TASKS,
            f"{subjects.PREFIX}.event.runner.>",  # the in-container `clawden`'s audit (services/runner/admin.py)
            subjects.heartbeat(rid),  # its own only (services/runner/heartbeat.py)
            # its containers' vault tokens, at its own subject: the vault takes the runner from it
            vault_ctl.container_token_at(rid),
            # a session moved here from a runner declared gone: the decision already given to a question the old
            # runner asked, the last on its subject (Runner._last_decision); a direct get by subject, decisions only
            f"$JS.API.DIRECT.GET.{streams.runner_decisions(rid).stream}.{subjects.PREFIX}.approval.decision.>",
        ),
        calls=("vault.gateway", "scheduler.list", *RUNNER_CLI_CALLS),
        manages_streams=True,
        serves=(f"{subjects.PREFIX}.ctl.runner.* {SERVICE_QUEUE}", f"{subjects.PREFIX}.ctl.runner.{rid}.*"),
        service=RUNNER_SERVICE,
    )


def webhook_routes(cfg: Config) -> dict[str, str]:
    """Channel -> signature scheme of every route the front door serves: the built-in bridges' and
    config.toml's `[webhooks.routes]`."""
    return {**webhooks.BUILT_IN_ROUTES, **cfg.webhooks.routes}


def _consumer_subjects(c: streams.Consumer) -> list[str]:
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.CREATE.{c.stream}.{c.durable}.{c.filter_subject}",
        f"{api}.INFO.{c.stream}.{c.durable}",
        f"{api}.MSG.NEXT.{c.stream}.{c.durable}",
        f"$JS.ACK.{c.stream}.{c.durable}.>",
    ]


def call_subjects(call: str) -> list[str]:
    """What a granted call may publish: `service.verb` is the verb's subject and, where ops share it, each
    op's own (`.create`…); `service.verb.op` is that op's subject alone."""
    subject = f"{subjects.PREFIX}.ctl.{call}"
    service, _, name = call.partition(".")
    shared = any(v.own_op and v.service == service and v.name == name for v in ctl.VERBS)
    return [subject, f"{subject}.*"] if shared and "." not in name else [subject]


def permissions(ident: str, grant: Grant) -> dict[str, Any]:
    service = grant.service or f"clawden-{ident}"
    publish = [*grant.publishes, *(s for call in grant.calls for s in call_subjects(call))]
    for consumer in grant.consumes:
        publish += _consumer_subjects(consumer)
    names = sorted({s.name for s in streams.STREAMS})
    publish += [f"$JS.API.STREAM.INFO.{n}" for n in names]
    if grant.manages_streams:
        publish += [f"$JS.API.STREAM.{verb}.{n}" for verb in ("CREATE", "UPDATE") for n in names]
    subscribe = [
        f"{inbox_prefix(ident)}.>",
        *(grant.serves or (f"{subjects.PREFIX}.ctl.{ident}.>",)),
        "$SRV.*",
        f"$SRV.*.{service}",
        f"$SRV.*.{service}.*",
        *grant.subscribes,
        *(streams.given_up(c) for c in grant.consumes),  # what JetStream gave up on, logged by the reader
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}


ADMIN_PERMISSIONS: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


# ---- seeds on disk ----


def seed_dir(cfg: Config) -> Path:
    return cfg.keys_dir / "nats"


def seed_path(cfg: Config, ident: str) -> Path:
    return seed_dir(cfg) / f"{ident}.nk"


def new_seed() -> str:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode()


def public_key(seed: str) -> str:
    return str(nkeys.from_seed(bytearray(seed.strip().encode())).public_key.decode())


def ensure_seed(cfg: Config, ident: str) -> str:
    """This identity's seed, created (0600, written atomically) when it has none yet."""
    path = seed_path(cfg, ident)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    seed = new_seed()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed + "\n")
    os.replace(tmp, path)
    return seed


# ---- runners on other hosts ----


def runner_identity(runner_id: str) -> str:
    """The identity `clawden runners add` makes for a runner on another host: `runner-<id>`."""
    return f"{RUNNER}-{subjects.token(runner_id)}"


def runner_id_of(ident: str) -> str | None:
    """`runner-b` -> `b`: the id an added runner's identity names; None for every other identity."""
    rid = ident.removeprefix(f"{RUNNER}-")
    if rid == ident:
        return None
    try:
        return subjects.token(rid)
    except ValueError:
        return None


def choose_runner_identity(runner_id: str, has_own_seed: bool) -> str:
    """A runner is `runner-<id>` where its home holds that seed (the owner copied it from the install that
    added it), else the install's own `runner`: a single-host install changes nothing."""
    return runner_identity(runner_id) if has_own_seed else RUNNER


def added_runners(cfg: Config) -> tuple[str, ...]:
    """The runner ids given an identity of their own: one seed each, `keys/nats/runner-<id>.nk`."""
    found = (runner_id_of(p.stem) for p in seed_dir(cfg).glob(f"{RUNNER}-*.nk"))
    return tuple(sorted(rid for rid in found if rid is not None))


def bus_identity(cfg: Config, ident: str) -> str:
    """Who a service connects as: its own name, but the runner by its `[runner] id` (`choose_runner_identity`)."""
    if ident != RUNNER:
        return ident
    rid = cfg.runner.id
    return choose_runner_identity(rid, seed_path(cfg, runner_identity(rid)).exists())


def find_seed(cfg: Config, ident: str, environ: dict[str, str] | None = None) -> Path | None:
    """Where this identity's seed is: the systemd credential first, else the home's file. An added runner's
    is always the home's file: the runner unit's credential is the install's own `runner.nk`."""
    ident = bus_identity(cfg, ident)
    env = os.environ if environ is None else environ
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and runner_id_of(ident) is None and (Path(credentials) / SEED_CREDENTIAL).exists():
        return Path(credentials) / SEED_CREDENTIAL
    path = seed_path(cfg, ident)
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise IdentityError(f"{path} is readable by others; run: chmod 600 {path}")
        return path
    return None


def load_seed(cfg: Config, ident: str, environ: dict[str, str] | None = None) -> str | None:
    path = find_seed(cfg, ident, environ)
    return None if path is None else path.read_text().strip()


async def connect_as(cfg: Config, ident: str, **options: Any) -> Client:
    """Connect to this install's NATS as `ident` (the runner as `bus_identity` says), with its seed when it has one."""
    ident = bus_identity(cfg, ident)
    seed = load_seed(cfg, ident)
    if seed is not None:
        options.setdefault("nkeys_seed_str", seed)
    return await connect(cfg.nats_url, ident, ca_file=cfg.nats.ca_file, **options)


# ---- the embedded server's config ----


def server_name(cfg: Config) -> str:
    """What this install's embedded server calls itself, so a port held by another install can be named."""
    return f"clawden-{cfg.install_id}"


def conf_path(cfg: Config) -> Path:
    return cfg.path("nats.conf")


def jetstream(store_dir: str) -> dict[str, str]:
    """The server's JetStream block. Each write is on disk before it is acknowledged (`sync_interval: always`):
    by default the server syncs every two minutes, so a power cut or a kernel crash could lose messages a bridge
    had already confirmed to its platform. It costs an fsync per write (`bench/sync.py`)."""
    return {"store_dir": store_dir, "sync_interval": "always"}


def server_config(cfg: Config, channels: tuple[str, ...]) -> dict[str, Any]:
    users = [{"nkey": public_key(ensure_seed(cfg, CLI)), "permissions": ADMIN_PERMISSIONS}]
    for ident, grant in sorted(grants(cfg, channels, added_runners(cfg)).items()):
        users.append({"nkey": public_key(ensure_seed(cfg, ident)), "permissions": permissions(ident, grant)})
    return {
        "server_name": server_name(cfg),
        "listen": f"127.0.0.1:{cfg.nats.port}",
        "jetstream": jetstream(str(cfg.data_dir / "nats")),
        "authorization": {"users": users},
    }


def write_server_config(cfg: Config, channels: tuple[str, ...]) -> Path:
    """(Re)write nats.conf for the identities this install has; returns its path. JSON is valid
    NATS config, and quoting every string keeps `$JS...` subjects from reading as variables."""
    path = conf_path(cfg)
    text = json.dumps(server_config(cfg, channels), indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        os.replace(tmp, path)
    return path
