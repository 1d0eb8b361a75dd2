"""`clawden groups|chats|wire|users|roles|members|destinations|sessions|dropped|pair`: the router's
entities, over NATS request/reply (`clawden.ctl.router.<resource>`, declared in clawden/bus/ctl/router.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import Nothing, Verb
from clawden.bus.ctl import router as ctl
from clawden.bus.ctl.common import CAPABILITIES
from clawden.bus.events import AGENT_CHANNEL, DEFAULT_MAX_HOPS, EFFORTS
from clawden.cli.commands import mcp as mcp_cli
from clawden.cli.commands import packages as packages_cli
from clawden.cli.commands import skills as skills_cli
from clawden.cli.commands._args import LIMIT, PRIORITY, int_between
from clawden.cli.commands._output import show as _show
from clawden.cli.commands._output import table as _table
from clawden.cli.commands._output import when as _when
from clawden.models import model_warning

Options = dict[str, Any]
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

ENGAGE_MODES = ("pattern", "mention", "mention-sticky")
SENDER_SCOPES = ("all", "known")
IGNORED = ("drop", "accumulate")
SESSION_MODES = ("shared", "per-thread", "agent-shared")
POLICIES = ("strict", "request_approval", "public")
CLI_SCOPES = ("disabled", "group", "global")


def _ask(args: argparse.Namespace, verb: Verb[Req, Rep], request: Req) -> Rep:
    home = Path(args.home).expanduser() if args.home else None
    return control.run(config_mod.load(home), verb, request)


def _known_channel(args: argparse.Namespace, channel: str, *, to_pair: bool = False) -> None:
    """Refuse a channel no bridge here serves: a wiring or chat for a typo would wait for nobody. `local`
    is the terminal; pairing needs a bridge with its token (the one `clawden up` runs)."""
    from clawden.registry import installed_channels

    bridges = sorted(installed_channels())
    known = bridges if to_pair else ["local", *bridges]
    if channel not in known:
        why = " (`local` is the terminal: its user is the machine's owner, no pairing)" if channel == "local" else ""
        raise control.ControlError(f"no channel {channel}{why}; the channels are: {', '.join(known)}")
    if to_pair:
        cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
        if f"channel@{channel}" not in config_mod.configured_bridges(cfg):
            raise control.ControlError(
                f"the {channel} bridge has no token, so nobody could send it the code: put the token in "
                f"{cfg.keys_dir / channel} (chmod 600) or CLAWDEN_{channel.upper()}_TOKEN, and restart `clawden up`"
            )


def _fields(reply: msgspec.Struct) -> str:
    def shown(key: str, value: object) -> object:
        if isinstance(value, dict | list):
            return json.dumps(value)
        return _when(value) if key.endswith("_at") and isinstance(value, float | int) else value

    return "\n".join(f"{k}: {shown(k, v)}" for k, v in msgspec.to_builtins(reply).items())


def _only(args: argparse.Namespace, *names: str) -> Options:
    """The options a person actually gave (None means "leave as it is")."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _resource(sub: Sub, name: str, help_text: str) -> tuple[argparse.ArgumentParser, Sub]:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--json", action="store_true", help="print JSON")
    verbs = p.add_subparsers(dest=f"{name}_verb", metavar="VERB")
    return p, verbs


def _verb(verbs: Sub, name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = verbs.add_parser(name, help=help_text)
    # SUPPRESS: `clawden groups --json list` keeps the flag given before the verb.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.set_defaults(func=func)
    return p


# --- agent groups ----------------------------------------------------------------------------------


def _group_options(p: argparse.ArgumentParser) -> None:
    # The runner applies these at the group's next container start, over config.toml's
    # [groups.<name>] and [runner]; "" or 0 clears one so config.toml's applies again.
    p.add_argument("--folder", help="folder under groups/ with the group's memory (default: the name)")
    p.add_argument("--assistant-name", dest="assistant_name", help="what the assistant calls itself")
    p.add_argument("--provider", help="agent provider (only claude, the default)")
    p.add_argument("--model", help="model for this group (default: config.toml's [model] model)")
    p.add_argument(
        "--runner",
        help='the runner (its [runner] id) that runs its new sessions; "" for any (default: the least loaded)',
    )
    p.add_argument("--image", help="container image (default: config.toml's)")
    p.add_argument("--memory", help="container memory limit, e.g. 2g (default: config.toml's)")
    p.add_argument("--cpus", type=float, help="container CPU limit (default: config.toml's)")
    p.add_argument("--pids", type=int_between(1, 1 << 22), help="container pids limit (default: config.toml's)")
    p.add_argument(
        "--idle-timeout",
        dest="idle_timeout",
        type=float,
        help="seconds an idle container lives (default: config.toml's)",
    )
    p.add_argument(
        "--max-turns",
        dest="max_turns",
        type=int_between(0, 1_000_000),
        help="model calls the agent may make for one message (default: config.toml's)",
    )
    p.add_argument(
        "--turn-budget",
        dest="turn_budget",
        type=float,
        help="seconds the agent may work on one message, not counting waits for an answer (default: config.toml's)",
    )
    p.add_argument("--effort", choices=(*EFFORTS, ""), help="how hard the model thinks (default: Claude Code's)")
    p.add_argument(
        "--max-messages-per-prompt",
        dest="max_messages_per_prompt",
        type=int_between(0, 100),
        help="waiting messages one prompt carries at most (default: 10)",
    )
    p.add_argument(
        "--skills", type=skills_cli.parse_setting, help="skills it gets: all (the default), none, or names a,b"
    )
    p.add_argument(
        "--cli-scope",
        dest="cli_scope",
        choices=CLI_SCOPES,
        help="what its agent may run of this CLI from its container: disabled, group (the default: its own"
        " group's tasks, sessions, destinations, members and wirings; writes need an admin's approval) or global",
    )


def _group_options_given(args: argparse.Namespace) -> Options:
    """The group's fields a person gave, its container settings as one `ContainerSettings` when any."""
    given = _only(args, "folder", "assistant_name", "provider", "model", "runner")
    container = _only(
        args,
        *("image", "memory", "cpus", "pids", "idle_timeout", "max_turns", "turn_budget"),
        *("effort", "max_messages_per_prompt", "skills", "cli_scope"),
    )
    if container:
        given["container"] = ctl.ContainerSettings(**container)
    return given


def _render_groups(rows: list[ctl.GroupListed]) -> str:
    return _table(
        [(r.name, r.folder, r.model or "-", r.runner or "any", r.chats, r.sessions) for r in rows],
        ("NAME", "FOLDER", "MODEL", "RUNNER", "WIRED CHATS", "SESSIONS"),
    )


def groups_list(args: argparse.Namespace) -> int:
    return _show(args, _ask(args, ctl.GROUPS_LIST, ctl.ListAll()), _render_groups)


def groups_get(args: argparse.Namespace) -> int:
    return _show(args, _ask(args, ctl.GROUPS_GET, ctl.GroupGet(name=args.name)), _fields)


def _warn_of_model(args: argparse.Namespace) -> None:
    if problem := model_warning(args.model or ""):  # the router checks only its shape
        print(f"clawden: warning: {problem}", file=sys.stderr)


def groups_create(args: argparse.Namespace) -> int:
    _warn_of_model(args)
    group = _ask(args, ctl.GROUPS_CREATE, ctl.GroupCreate(name=args.name, **_group_options_given(args)))
    return _show(args, group, lambda g: f"created agent group {g.name} (folder groups/{g.folder})")


def groups_update(args: argparse.Namespace) -> int:
    group = _ask(args, ctl.GROUPS_UPDATE, ctl.GroupUpdate(name=args.name, **_group_options_given(args)))
    _warn_of_model(args)  # after the update: a group that does not exist is the first thing to hear
    return _show(args, group, _fields)


def groups_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        group = _ask(args, ctl.GROUPS_GET, ctl.GroupGet(name=args.name))
        what = f"agent group {args.name} with its {len(group.wirings)} wiring(s) and its sessions" + (
            " (the one `clawden chat` and new chats talk to)" if args.name == "main" else ""
        )
        if not sys.stdin.isatty():
            raise control.ControlError(f"deleting {what} needs --yes")
        if input(f"Delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
    deleted = _ask(args, ctl.GROUPS_DELETE, ctl.GroupDelete(name=args.name))
    return _show(
        args,
        deleted,
        lambda d: (
            f"deleted agent group {d.deleted} ({d.wirings} wiring(s),"
            f" {d.sessions} session(s)); its folder stays on disk"
        ),
    )


# --- chats -----------------------------------------------------------------------------------------


def _render_chats(rows: list[ctl.Chat]) -> str:
    # A chat with no wiring of its own is answered through its channel's `*` row, if that one is wired.
    every = {r.channel: r.wired for r in rows if r.chat_id == "*"}

    def wired(r: ctl.Chat) -> str:
        if r.wired:
            return ",".join(r.wired)
        return f"{','.join(every[r.channel])} (via *)" if every.get(r.channel) else "-"

    return _table(
        [
            (
                r.channel,
                r.chat_id,
                r.name,
                "group" if r.is_group else "direct",
                r.policy + (" (declined)" if r.denied else ""),
                wired(r),
            )
            for r in rows
        ],
        ("CHANNEL", "CHAT", "NAME", "KIND", "UNKNOWN SENDERS", "WIRED TO"),
    )


def _reach_lines(reach: dict[str, str]) -> str:
    return "\n".join(f"{name} groups: {note}" for name, note in sorted(reach.items()))


async def _group_reach(cfg: config_mod.Config, channel: str) -> dict[str, str]:
    """Each running bridge's word on which group messages reach it (Telegram's privacy mode), by channel."""
    from clawden.cli.commands.channels import running

    out: dict[str, str] = {}
    for name in sorted(await running(cfg) or {}):
        if channel and name != channel:
            continue
        try:
            caps = await control.ask(cfg, CAPABILITIES.at(f"channel-{name}"), Nothing(), timeout=3.0)
        except control.ControlError:
            continue
        if caps.group_note:
            out[name] = caps.group_note
    return out


def chats_list(args: argparse.Namespace) -> int:
    rows = _ask(args, ctl.CHATS_LIST, ctl.ChatList(channel=args.channel or ""))
    code = _show(args, rows, _render_chats)
    if not args.json:
        # A group the bot cannot read (privacy mode) never shows here: say what the bridge can see.
        home = Path(args.home).expanduser() if args.home else None
        if reach := asyncio.run(_group_reach(config_mod.load(home), args.channel or "")):
            print("\n" + _reach_lines(reach))
    return code


def chats_create(args: argparse.Namespace) -> int:
    _known_channel(args, args.channel)
    request = ctl.ChatCreate(
        channel=args.channel, chat_id=args.chat_id, is_group=args.group, **_only(args, "name", "policy")
    )
    return _show(args, _ask(args, ctl.CHATS_CREATE, request), lambda chat: _render_chats([chat]))


def chats_update(args: argparse.Namespace) -> int:
    request = ctl.ChatUpdate(
        channel=args.channel, chat_id=args.chat_id, allow=args.allow, **_only(args, "name", "policy", "is_group")
    )
    return _show(args, _ask(args, ctl.CHATS_UPDATE, request), lambda chat: _render_chats([chat]))


def chats_delete(args: argparse.Namespace) -> int:
    deleted = _ask(args, ctl.CHATS_DELETE, ctl.ChatDelete(channel=args.channel, chat_id=args.chat_id))
    return _show(args, deleted, lambda d: f"deleted chat {d.deleted} and {d.wirings} wiring(s)")


def chats_move(args: argparse.Namespace) -> int:
    request = ctl.ChatMove(channel=args.channel, chat_id=args.chat_id, new_chat_id=args.new_chat_id)
    return _show(args, _ask(args, ctl.CHATS_MOVE, request), lambda chat: _render_chats([chat]))


# --- wirings ---------------------------------------------------------------------------------------


def _wiring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engage",
        dest="engage_mode",
        choices=ENGAGE_MODES,
        help="when the agent answers (default: every message in a direct chat, mentions in a group)",
    )
    p.add_argument("--pattern", dest="engage_pattern", help="regular expression for --engage pattern ('.': always)")
    p.add_argument("--scope", dest="sender_scope", choices=SENDER_SCOPES, help="who may engage it")
    p.add_argument(
        "--ignored",
        dest="ignored_messages",
        choices=IGNORED,
        help="messages that do not engage: drop, or keep as context",
    )
    p.add_argument("--session", dest="session_mode", choices=SESSION_MODES, help="which conversation a message joins")
    p.add_argument("--priority", type=PRIORITY, help="higher answers first (-1000000 to 1000000)")


WIRING_FIELDS = ("engage_mode", "engage_pattern", "sender_scope", "ignored_messages", "session_mode", "priority")


def _render_wirings(rows: list[ctl.Wiring]) -> str:
    return _table(
        [
            (
                r.channel,
                r.chat_id,
                r.agent_group,
                r.engage_mode + (f" {r.engage_pattern!r}" if r.engage_mode == "pattern" else ""),
                r.sender_scope,
                r.ignored_messages,
                r.session_mode,
                r.priority,
            )
            for r in rows
        ],
        ("CHANNEL", "CHAT", "GROUP", "ENGAGE", "SCOPE", "IGNORED", "SESSION", "PRIORITY"),
    )


def wire_list(args: argparse.Namespace) -> int:
    request = ctl.WiringList(channel=args.channel or "", chat_id=args.chat or "", agent_group=args.group or "")
    return _show(args, _ask(args, ctl.WIRINGS_LIST, request), _render_wirings)


def _wiring_key(args: argparse.Namespace) -> Options:
    return {"channel": args.channel, "chat_id": args.chat_id, "agent_group": args.agent_group}


def wire_add(args: argparse.Namespace) -> int:
    _known_channel(args, args.channel)
    wiring = _ask(args, ctl.WIRINGS_CREATE, ctl.WiringCreate(**_wiring_key(args), **_only(args, *WIRING_FIELDS)))
    return _show(args, wiring, lambda w: _render_wirings([w]))


def wire_update(args: argparse.Namespace) -> int:
    wiring = _ask(args, ctl.WIRINGS_UPDATE, ctl.WiringUpdate(**_wiring_key(args), **_only(args, *WIRING_FIELDS)))
    return _show(args, wiring, lambda w: _render_wirings([w]))


def wire_remove(args: argparse.Namespace) -> int:
    unwired = _ask(args, ctl.WIRINGS_DELETE, ctl.WiringDelete(**_wiring_key(args)))
    return _show(args, unwired, lambda u: f"unwired {u.unwired} from {u.chat_id} on {u.channel}")


# --- users, roles, members, destinations -----------------------------------------------------------


def users_list(args: argparse.Namespace) -> int:
    return _show(
        args,
        _ask(args, ctl.USERS_LIST, ctl.ListAll()),
        lambda rows: _table(
            [
                (
                    r.id,
                    r.display_name,
                    ",".join(r.roles) or "-",
                    ",".join(r.member_of) or "-",
                    _when(r.last_seen),
                )
                for r in rows
            ],
            ("USER", "NAME", "ROLES", "MEMBER OF", "LAST SEEN"),
        ),
    )


def users_unregistered(args: argparse.Namespace) -> int:
    return _show(
        args,
        _ask(args, ctl.USERS_UNREGISTERED, ctl.UsersUnregistered()),
        lambda rows: _table(
            [
                (
                    r.user_id,
                    r.name,
                    f"{r.channel}:{r.chat_id}",
                    r.agent_group,
                    r.reason,
                    r.message_count,
                    _when(r.last_seen),
                )
                for r in rows
            ],
            ("USER", "NAME", "CHAT", "GROUP", "REASON", "MESSAGES", "LAST SEEN"),
        ),
    )


def roles_list(args: argparse.Namespace) -> int:
    return _show(
        args,
        _ask(args, ctl.ROLES_LIST, ctl.ListAll()),
        lambda rows: _table(
            [(r.user_id, r.role, r.agent_group or "(global)", r.granted_by, _when(r.granted_at)) for r in rows],
            ("USER", "ROLE", "SCOPE", "GRANTED BY", "SINCE"),
        ),
    )


def roles_grant(args: argparse.Namespace) -> int:
    request = ctl.RoleGrant(user_id=args.user, role=args.role, agent_group=args.group or "")
    granted = _ask(args, ctl.ROLES_GRANT, request)
    scope = f" of {granted.agent_group}" if granted.agent_group else ""
    return _show(args, granted, lambda g: f"{g.user_id} is {g.role}{scope}" + ("" if g.changed else " (already was)"))


def roles_revoke(args: argparse.Namespace) -> int:
    request = ctl.RoleRevoke(user_id=args.user, role=args.role, agent_group=args.group or "")
    return _show(args, _ask(args, ctl.ROLES_REVOKE, request), lambda r: f"{r.user_id} is no longer {r.role}")


def members_list(args: argparse.Namespace) -> int:
    return _show(
        args,
        _ask(args, ctl.MEMBERS_LIST, ctl.GroupFilter(agent_group=args.group or "")),
        lambda rows: _table(
            [(r.agent_group, r.user_id, r.added_by, _when(r.added_at)) for r in rows],
            ("GROUP", "USER", "ADDED BY", "SINCE"),
        ),
    )


def members_add(args: argparse.Namespace) -> int:
    added = _ask(args, ctl.MEMBERS_ADD, ctl.MemberAdd(agent_group=args.agent_group, user_id=args.user))
    return _show(
        args,
        added,
        lambda a: f"{a.user_id} is a member of {a.agent_group}" + ("" if a.changed else " (already was)"),
    )


def members_remove(args: argparse.Namespace) -> int:
    removed = _ask(args, ctl.MEMBERS_REMOVE, ctl.MemberRemove(agent_group=args.agent_group, user_id=args.user))
    return _show(args, removed, lambda r: f"{r.user_id} is no longer a member of {r.agent_group}")


def destinations_list(args: argparse.Namespace) -> int:
    return _show(
        args,
        _ask(args, ctl.DESTINATIONS_LIST, ctl.GroupFilter(agent_group=args.group or "")),
        lambda rows: _table(
            [(r.agent_group, r.name, r.channel, r.chat_id, r.thread_id or "-", _hops(r), r.display_name) for r in rows],
            ("GROUP", "NAME", "CHANNEL", "CHAT", "THREAD", "MAX HOPS", "DISPLAY NAME"),
        ),
    )


def _hops(d: ctl.Destination) -> str:
    """An agent destination's hop limit (0 kept means the default); a chat has none."""
    if d.channel != AGENT_CHANNEL:
        return "-"
    return str(d.max_hops) if d.max_hops else f"{DEFAULT_MAX_HOPS} (default)"


def destinations_add(args: argparse.Namespace) -> int:
    added = _ask(args, ctl.DESTINATIONS_ADD, _destination(args))
    return _show(args, added, lambda d: f"{d.agent_group} may now send to {d.name}")


def _destination(args: argparse.Namespace) -> ctl.DestinationAdd:
    """A chat (name, channel, chat id) or, with --agent, another agent group (named after it by default)."""
    if args.agent:
        if args.channel or args.chat_id:
            raise control.ControlError("give --agent or a channel and chat id, not both")
        channel, chat_id, name = AGENT_CHANNEL, args.agent, args.name or args.agent
    else:
        if not (args.name and args.channel and args.chat_id) or args.max_hops is not None:
            raise control.ControlError(
                "give a name, a channel and a chat id (--max-hops is for --agent), or --agent <group>"
            )
        _known_channel(args, args.channel)
        channel, chat_id, name = args.channel, args.chat_id, args.name
    return ctl.DestinationAdd(
        agent_group=args.agent_group,
        name=name,
        channel=channel,
        chat_id=chat_id,
        thread_id=args.thread,
        display_name=args.display_name or "",
        max_hops=args.max_hops or 0,
    )


def destinations_remove(args: argparse.Namespace) -> int:
    removed = _ask(args, ctl.DESTINATIONS_REMOVE, ctl.DestinationRemove(agent_group=args.agent_group, name=args.name))
    return _show(args, removed, lambda r: f"removed destination {r.name} of {r.agent_group}")


# --- sessions, drops, pairing ----------------------------------------------------------------------


def sessions_list(args: argparse.Namespace) -> int:
    request = ctl.GroupFilter(agent_group=args.group or "", limit=args.limit)
    return _show(
        args,
        _ask(args, ctl.SESSIONS_LIST, request),
        lambda rows: _table(
            [
                (
                    r.id,
                    r.agent_group,
                    r.channel,
                    r.chat_id,
                    r.thread_id or "-",
                    r.runner,
                    _when(r.last_message_at),
                )
                for r in rows
            ],
            ("SESSION", "GROUP", "CHANNEL", "CHAT", "THREAD", "RUNNER", "LAST MESSAGE"),
        ),
    )


def dropped_list(args: argparse.Namespace) -> int:
    request = ctl.DroppedList(channel=args.channel or "", limit=args.limit)
    return _show(
        args,
        _ask(args, ctl.DROPPED_LIST, request),
        lambda rows: _table(
            [(_when(r.at), r.channel, r.chat_id, r.sender_id, r.reason) for r in rows],
            ("WHEN", "CHANNEL", "CHAT", "SENDER", "REASON"),
        ),
    )


def pair(args: argparse.Namespace) -> int:
    _known_channel(args, args.channel, to_pair=True)
    pairing = _ask(args, ctl.PAIR, ctl.PairCreate(channel=args.channel))
    minutes = max(1, round((pairing.expires_at - time.time()) / 60))
    if warning := _bridge_warning(args, args.channel):
        print(f"warning: {warning}", file=sys.stderr)
    return _show(
        args,
        pairing,
        lambda d: (
            f"Pairing code for {d.channel}: {d.code}\n"
            f"Send it as a message to the assistant on {d.channel} within {minutes} minutes;"
            " whoever sends it first becomes an owner."
        ),
    )


BRIDGE_PING_WAIT = 2.0  # a bridge that runs answers its ping at once; this much covers one still starting


def _bridge_warning(args: argparse.Namespace, channel: str) -> str:
    """Why a code handed out now would wait for nobody ("" when the bridge answers untroubled, or may: only one
    nobody listens for is said down, as `clawden status` says DOWN), with how to mend it."""
    from clawden import natsauth
    from clawden.bus.ctl.common import PING
    from clawden.cli.doctor import bridge_start_fix  # the fix doctor's channel row gives

    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    try:
        pong = control.run(cfg, PING.at(natsauth.identity(f"channel@{channel}")), Nothing(), timeout=BRIDGE_PING_WAIT)
    except control.NotListening:
        return (
            f"the {channel} bridge is not running (`clawden status` shows it DOWN): nobody there reads the code"
            f" until it runs; {bridge_start_fix(cfg, channel)}"
        )
    except control.ControlError:  # slow, or NATS away: not known to be down
        return ""
    return degraded_warning(channel, pong.trouble)


def degraded_warning(channel: str, trouble: str) -> str:
    """A bridge that runs but cannot work (`clawden status` shows it degraded): the code reaches it only once
    what it says is mended."""
    if not trouble:
        return ""
    return (
        f"the {channel} bridge is degraded (`clawden status`): {trouble}. A message with the code is read only"
        " once that is mended, and pairs only if that is before the code expires"
    )


def register(sub: Sub) -> None:
    p, verbs = _resource(sub, "groups", "agent groups: list, get, create, update, delete")
    p.set_defaults(func=groups_list)
    _verb(verbs, "list", "list agent groups", groups_list)
    _verb(verbs, "get", "one agent group in full", groups_get).add_argument("name", help="the agent group")
    v = _verb(verbs, "create", "create an agent group", groups_create)
    v.add_argument("name")
    _group_options(v)
    v = _verb(verbs, "update", "change an agent group's settings (its next container start uses them)", groups_update)
    v.add_argument("name")
    _group_options(v)
    v = _verb(verbs, "delete", "delete an agent group, its wirings and sessions (asks first)", groups_delete)
    v.add_argument("name", help="the agent group")
    v.add_argument("--yes", action="store_true", help="do not ask (needed where nobody can answer)")
    skills_cli.register(verbs)
    mcp_cli.register(verbs)
    packages_cli.register_under_groups(verbs)

    p, verbs = _resource(sub, "chats", "chats (messaging groups): list, create, update, delete")
    p.set_defaults(func=chats_list, channel=None)
    _verb(verbs, "list", "list chats", chats_list).add_argument("--channel", help="only this channel's chats")
    v = _verb(verbs, "create", "register a chat before anyone writes in it", chats_create)
    v.add_argument("channel")
    v.add_argument("chat_id", help="the platform's chat id, or '*' for every chat of the channel")
    v.add_argument("--name", help="a name to show for the chat")
    v.add_argument("--group", action="store_true", help="a group chat (default: a direct chat)")
    v.add_argument("--policy", choices=POLICIES, help="what happens to unknown senders")
    v = _verb(verbs, "update", "change a chat", chats_update)
    v.add_argument("channel")
    v.add_argument("chat_id")
    v.add_argument("--name", help="a name to show for the chat")
    v.add_argument("--policy", choices=POLICIES, help="what happens to unknown senders")
    kind = v.add_mutually_exclusive_group()
    kind.add_argument("--group", dest="is_group", action="store_const", const=True, help="it is a group chat")
    kind.add_argument("--direct", dest="is_group", action="store_const", const=False, help="it is a direct chat")
    v.add_argument("--allow", action="store_true", help="forget that the owner declined this chat")
    v = _verb(verbs, "delete", "forget a chat and its wirings", chats_delete)
    v.add_argument("channel")
    v.add_argument("chat_id")
    v = _verb(
        verbs,
        "move",
        "the platform gave a chat a new id: its wirings, sessions and held messages follow "
        "(bridges that see it happen do this themselves)",
        chats_move,
    )
    v.add_argument("channel")
    v.add_argument("chat_id")
    v.add_argument("new_chat_id", help="the chat's id on the platform now")

    p, verbs = _resource(sub, "wire", "wirings between chats and agent groups: list, add, update, remove")
    p.set_defaults(func=wire_list, channel=None, chat=None, group=None)
    v = _verb(verbs, "list", "list wirings", wire_list)
    v.add_argument("--channel", help="only this channel's wirings")
    v.add_argument("--chat", help="only this chat's wirings")
    v.add_argument("--group", help="only this agent group's wirings")
    for verb, func, help_text in (
        ("add", wire_add, "wire an agent group to a chat ('*': every chat)"),
        ("update", wire_update, "change how a wired group engages"),
        ("remove", wire_remove, "unwire an agent group from a chat"),
    ):
        v = _verb(verbs, verb, help_text, func)
        v.add_argument("channel")
        v.add_argument("chat_id")
        v.add_argument("agent_group")
        if verb != "remove":
            _wiring_options(v)

    p, verbs = _resource(sub, "users", "users (platform identities): list, unregistered")
    p.set_defaults(func=users_list)
    _verb(verbs, "list", "users the router has seen or granted something", users_list)
    _verb(verbs, "unregistered", "senders the router turned away", users_unregistered)

    p, verbs = _resource(sub, "roles", "owner and admin roles: list, grant, revoke")
    p.set_defaults(func=roles_list)
    _verb(verbs, "list", "list role grants", roles_list)
    for verb, func in (("grant", roles_grant), ("revoke", roles_revoke)):
        v = _verb(verbs, verb, f"{verb} a role", func)
        v.add_argument("user", help="a platform identity, e.g. telegram:12345")
        v.add_argument("role", choices=("owner", "admin"))
        v.add_argument("--group", help="admin of this agent group only (default: global)")

    p, verbs = _resource(sub, "members", "agent group members: list, add, remove")
    p.set_defaults(func=members_list, group=None)
    _verb(verbs, "list", "list members", members_list).add_argument("--group", help="only this agent group's")
    for verb, func in (("add", members_add), ("remove", members_remove)):
        v = _verb(verbs, verb, f"{verb} a member", func)
        v.add_argument("agent_group")
        v.add_argument("user", help="a platform identity, e.g. telegram:12345")

    p, verbs = _resource(sub, "destinations", "chats an agent group may send to by name: list, add, remove")
    p.set_defaults(func=destinations_list, group=None)
    _verb(verbs, "list", "list destinations", destinations_list).add_argument("--group", help="only this agent group's")
    v = _verb(verbs, "add", "let an agent group send to a chat, or to another agent group, by name", destinations_add)
    v.add_argument("agent_group")
    v.add_argument("name", nargs="?", help="what the agent calls it (with --agent: the other group's name)")
    v.add_argument("channel", nargs="?")
    v.add_argument("chat_id", nargs="?")
    v.add_argument("--agent", help="another agent group: its agent gets what this one sends, and answers back")
    v.add_argument(
        "--max-hops",
        dest="max_hops",
        type=int,
        help=f"with --agent: agent-to-agent sends in a row before the next is dropped (default {DEFAULT_MAX_HOPS})",
    )
    v.add_argument("--thread", help="a thread in that chat (default: none)")
    v.add_argument("--display-name", dest="display_name", help="how the agent sees the destination named")
    v = _verb(verbs, "remove", "remove a destination", destinations_remove)
    v.add_argument("agent_group")
    v.add_argument("name")

    p = sub.add_parser("sessions", help="sessions, most recent first")
    p.add_argument("--group", help="only this agent group's")
    p.add_argument("--limit", type=LIMIT, default=50, help="the newest N (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=sessions_list)

    p = sub.add_parser("dropped", help="messages that reached no agent, and why")
    p.add_argument("--channel", help="only this channel's")
    p.add_argument("--limit", type=LIMIT, default=50, help="the newest N (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=dropped_list)

    p = sub.add_parser("pair", help="print a one-time code; whoever sends it on CHANNEL becomes an owner")
    p.add_argument("channel", help="the platform the code is sent on: telegram, slack, discord, matrix, ...")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=pair)
