"""Agents that talk to each other: may this send on the agent channel reach its group, into which session,
and with what hop count? A pure decision over what router.db knows; `store.relay` applies it.

A send names a group (`route.chat_id`). Without a thread it is a new conversation, allowed by a destination
of the sender's group on the agent channel; it lands in the target group's session for the sending session
(`agent:<sender group>`, thread: the sending session), so the target's answer in its own chat comes back
with that thread and lands in the very session that asked. The hop count follows the conversation: a
person's message resets a session's count, each relay adds one, and one past the limit is dropped."""

from __future__ import annotations

from dataclasses import dataclass

from clawden.bus import events as ev

AGENT = ev.AGENT_CHANNEL


@dataclass(frozen=True, slots=True)
class Source:
    """The session a send comes from, as router.db has it."""

    session_id: str
    agent_group: str
    channel: str
    chat_id: str
    thread_id: str
    hops: int  # of the last message relayed into it since a person's (0: a person spoke last)
    hop_limit: int  # the limit of the conversation that opened it (0: none, or not an agent's session)


@dataclass(frozen=True, slots=True)
class Target:
    """A session an answer may go back to: its group and its own conversation."""

    session_id: str
    agent_group: str
    route: ev.Route


@dataclass(frozen=True, slots=True)
class Deliver:
    agent_group: str
    # The target's session: an existing one (a reply) or "" for the one keyed by `route` (made if new).
    session_id: str
    route: ev.Route  # the target session's conversation
    hops: int
    hop_limit: int


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


def decide(
    route: ev.Route,
    source: Source | None,
    *,
    destination_hops: int | None,
    reply_to: Target | None,
) -> Deliver | Drop:
    """`destination_hops`: the max hops of the sender group's destination naming `route.chat_id` (0: the
    default), None when it has none. `reply_to`: the session `route.thread_id` names, None when there is none."""
    if source is None:
        return Drop("from a session the router does not know")
    if route.thread_id:
        return _reply(route, source, reply_to)
    if destination_hops is None:
        return Drop(f"{source.agent_group} has no destination for agent group {route.chat_id!r}")
    limit = destination_hops or ev.DEFAULT_MAX_HOPS
    conversation = ev.Route(channel=AGENT, chat_id=source.agent_group, thread_id=source.session_id)
    return _counted(Deliver(route.chat_id, "", conversation, source.hops + 1, limit), source)


def _reply(route: ev.Route, source: Source, reply_to: Target | None) -> Deliver | Drop:
    # Only the session an agent's send opened may answer, and only into the session that sent it.
    opened_by = (source.channel, source.chat_id, source.thread_id)
    if (
        reply_to is None
        or opened_by != (AGENT, route.chat_id, route.thread_id)
        or reply_to.agent_group != route.chat_id
    ):
        return Drop(f"session {source.session_id} may not answer into session {route.thread_id!r}")
    limit = source.hop_limit or ev.DEFAULT_MAX_HOPS
    deliver = Deliver(reply_to.agent_group, reply_to.session_id, reply_to.route, source.hops + 1, limit)
    return _counted(deliver, source)


def _counted(deliver: Deliver, source: Source) -> Deliver | Drop:
    if deliver.hops > deliver.hop_limit:
        return Drop(
            f"hop limit {deliver.hop_limit} reached ({deliver.hops} agent-to-agent sends in a row):"
            f" {source.agent_group} -> {deliver.agent_group}"
        )
    return deliver


def relayed(kind: str, thread_id: str | None) -> bool:
    """What of the agent channel's outbound the router relays: an agent's send or answer, and the runner's
    error in a session another agent opened ("couldn't answer"), so the asker hears its question failed
    instead of waiting. Other notices and a session's error with no asker mean nothing to an agent."""
    return kind == "reply" or (kind == "error" and bool(thread_id))


def text_of(kind: str, agent_group: str, text: str) -> str:
    """What the receiving agent reads: an answer as it is; a failure said as one, from the host."""
    return text if kind == "reply" else f"(Clawden: agent group {agent_group} could not answer: {text})"


def sender(agent_group: str) -> ev.Sender:
    """Who a relayed message is from: an agent, never a person (no `agent:` user may hold a role)."""
    return ev.Sender(id=f"{AGENT}:{agent_group}", name=f"agent {agent_group}", is_bot=True)
