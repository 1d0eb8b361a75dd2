"""What an agent may run of the owner's CLI from inside its container (`clawden ...` over the session's admin
socket), decided on the host from the group's `cli_scope` and the group the socket belongs to. Pure: argv in,
a parsed command out (`parse`), then read, write or refuse (`allow`); nothing the agent sends names its group."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgspec

from clawden import mcpservers, packagespec
from clawden.bus import events as ev
from clawden.bus.events import CLI_SCOPES as SCOPES
from clawden.bus.events import GROUP_NAME

DEFAULT_SCOPE = "group"
OWN_GROUP = "."  # as a command's group: the caller's own

ENGAGE_MODES = ("pattern", "mention", "mention-sticky")
SENDER_SCOPES = ("all", "known")
IGNORED = ("drop", "accumulate")
SESSION_MODES = ("shared", "per-thread", "agent-shared")
TASK_STATES = ("active", "paused", "done", "cancelled")
MAX_ARGS = 32
MAX_ARG = 1024
MAX_DIGITS = 9  # every number a command takes is far smaller; a longer one would not fit the bus's int64


@dataclass(frozen=True)
class Spec:
    """One command as the owner's CLI spells it: its positionals, its options (each with the values it may
    take, or () for any), whether it changes anything, and whether it is global only (no group to scope to)."""

    positionals: tuple[str, ...] = ()
    options: dict[str, tuple[str, ...]] | None = None
    write: bool = False
    global_only: bool = False


WIRE_OPTIONS: dict[str, tuple[str, ...]] = {
    "--engage": ENGAGE_MODES,
    "--pattern": (),
    "--scope": SENDER_SCOPES,
    "--ignored": IGNORED,
    "--session": SESSION_MODES,
    "--priority": (),
}

# How an agent may ask to tune its own group; never another image, folder, provider or cli_scope (ways out of
# its box), and no resources (those are the machine's).
SETTINGS_OPTIONS: dict[str, tuple[str, ...]] = {
    "--model": (),
    "--assistant-name": (),
    "--effort": ev.EFFORTS,
    "--max-messages-per-prompt": (),
    "--max-turns": (),
    "--turn-budget": (),
    "--idle-timeout": (),
}

# Packages an agent may ask for in its group's image (clawden/groupimage.py builds it once an admin approves);
# each of --apt, --npm and --pip may repeat, and --reason says why, for the admin.
PACKAGE_OPTIONS: dict[str, tuple[str, ...]] = {"--apt": (), "--npm": (), "--pip": (), "--reason": ()}
# A stdio MCP server an agent may ask for (add_mcp_server): its command, each argument and each NAME=VALUE.
MCP_OPTIONS: dict[str, tuple[str, ...]] = {"--command": (), "--arg": (), "--env": (), "--reason": ()}
AGENT_POSITIONALS = ("agent_group", "name")  # `destinations add` with --agent: the rest comes from it
LIST_OPTIONS = frozenset({"--apt", "--npm", "--pip", "--arg", "--env"})  # may repeat: every value is kept
SEP = "\x00"  # between a list option's values: no argument holds it (parse refuses one)

COMMANDS: dict[str, Spec] = {
    "groups list": Spec(),
    "tasks list": Spec(options={"--group": (), "--status": TASK_STATES}),
    "sessions": Spec(options={"--group": (), "--limit": ()}),
    "destinations list": Spec(options={"--group": ()}),
    "members list": Spec(options={"--group": ()}),
    "wire list": Spec(options={"--channel": (), "--chat": (), "--group": ()}),
    "dropped": Spec(options={"--channel": (), "--limit": ()}, global_only=True),
    "groups get": Spec(positionals=("agent_group",)),
    "wire add": Spec(positionals=("channel", "chat_id", "agent_group"), options=WIRE_OPTIONS, write=True),
    "wire remove": Spec(positionals=("channel", "chat_id", "agent_group"), write=True),
    "members add": Spec(positionals=("agent_group", "user"), write=True),
    "members remove": Spec(positionals=("agent_group", "user"), write=True),
    "destinations add": Spec(
        positionals=("agent_group", "name", "channel", "chat_id"),
        options={"--thread": (), "--display-name": (), "--agent": (), "--max-hops": ()},
        write=True,
    ),
    "destinations remove": Spec(positionals=("agent_group", "name"), write=True),
    "groups update": Spec(positionals=("agent_group",), options=SETTINGS_OPTIONS, write=True),
    "groups packages add": Spec(positionals=("agent_group",), options=PACKAGE_OPTIONS, write=True),
    "groups mcp add": Spec(positionals=("agent_group", "name"), options=MCP_OPTIONS, write=True),
}
# `clawden groups` is `clawden groups list`, as in the owner's CLI.
DEFAULT_VERB = {"groups": "list", "tasks": "list", "destinations": "list", "members": "list", "wire": "list"}
INTEGER_OPTIONS = frozenset({"--limit", "--priority", "--max-messages-per-prompt", "--max-turns", "--max-hops"})
DECIMAL_OPTIONS = frozenset({"--turn-budget", "--idle-timeout"})
NOT_CONTAINER = frozenset({"--model", "--assistant-name"})  # a group's own fields, not its container's


class BadCommand(ValueError):
    """Not a command the container's `clawden` knows, or not as the owner's CLI spells it."""


@dataclass(frozen=True)
class Command:
    name: str  # a key of COMMANDS
    args: dict[str, str]  # positionals by name, options by flag; "--group" is the group it is about

    @property
    def group(self) -> str:
        """The agent group the command is about ("" for every group it may see)."""
        return self.args.get("agent_group", self.args.get("--group", ""))

    def line(self) -> str:
        """The command as a person would type it."""
        spec = COMMANDS[self.name]
        given = AGENT_POSITIONALS if "--agent" in self.args else spec.positionals
        words = ["clawden", *self.name.split(), *(self.args[p] for p in given)]
        for flag, value in self.args.items():
            if flag.startswith("--"):
                words += [w for v in value.split(SEP) for w in ((f"{flag}={v}",) if v.startswith("-") else (flag, v))]
        return shlex.join(words)


def _name(argv: list[str]) -> tuple[str, list[str]]:
    if not argv:
        raise BadCommand("no command; try `clawden help`")
    if argv[0] in COMMANDS:
        return argv[0], argv[1:]
    if " ".join(argv[:3]) in COMMANDS:
        return " ".join(argv[:3]), argv[3:]
    if len(argv) > 1 and not argv[1].startswith("-") and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv[0] in DEFAULT_VERB and (len(argv) == 1 or argv[1].startswith("-")):
        return f"{argv[0]} {DEFAULT_VERB[argv[0]]}", argv[1:]
    raise BadCommand(f"unknown command {' '.join(argv[:2])!r}; try `clawden help`")


def _option(spec: Spec, flag: str, value: str | None) -> str:
    options = spec.options or {}
    if flag not in options:
        raise BadCommand(f"unknown option {flag}")
    if value is None:
        raise BadCommand(f"{flag} needs a value")
    if options[flag] and value not in options[flag]:
        raise BadCommand(f"{flag} must be one of {', '.join(options[flag])}")
    if flag in INTEGER_OPTIONS and not (value.removeprefix("-").isdigit() and len(value) <= MAX_DIGITS):
        raise BadCommand(f"{flag} takes a whole number")
    if flag in DECIMAL_OPTIONS and not _decimal(value):
        raise BadCommand(f"{flag} takes a number of seconds")
    return value


def _decimal(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return len(value) <= 2 * MAX_DIGITS


def container_settings(args: dict[str, str]) -> dict[str, str | int | float]:
    """A `groups update`'s container settings, by field name, typed."""
    out: dict[str, str | int | float] = {}
    for flag, value in args.items():
        if flag in SETTINGS_OPTIONS and flag not in NOT_CONTAINER:
            field = flag.removeprefix("--").replace("-", "_")
            out[field] = int(value) if flag in INTEGER_OPTIONS else float(value) if flag in DECIMAL_OPTIONS else value
    return out


def _check_settings(args: dict[str, str]) -> None:
    """A settings change must change something, within the bounds the router and runner hold it to."""
    if not any(flag in SETTINGS_OPTIONS for flag in args):
        raise BadCommand(f"`clawden groups update` needs a setting: {', '.join(SETTINGS_OPTIONS)}")
    given = {"model": args.get("--model", ""), "assistant_name": args.get("--assistant-name", "")}
    settings = msgspec.convert(given | container_settings(args), ev.GroupSettings)
    if problems := settings.problems():
        raise BadCommand("; ".join(problems.values()))


def parse(argv: list[str]) -> Command:
    """The command `argv` names, with its arguments checked as the owner's CLI checks them."""
    if len(argv) > MAX_ARGS or any(len(a) > MAX_ARG or "\x00" in a for a in argv):
        raise BadCommand(f"too many or too long arguments (at most {MAX_ARGS} of {MAX_ARG} characters)")
    name, rest = _name(argv)
    spec = COMMANDS[name]
    args: dict[str, str] = {}
    positionals: list[str] = []
    words = iter(rest)
    for word in words:
        if word == "--json":  # the answer is always JSON
            continue
        if word.startswith("--"):
            flag, eq, inline = word.partition("=")
            value = _option(spec, flag, inline if eq else next(words, None))
            args[flag] = f"{args[flag]}{SEP}{value}" if flag in LIST_OPTIONS and flag in args else value
        else:
            positionals.append(word)
    if name == "destinations add":
        positionals = _destination(positionals, args)
    if len(positionals) != len(spec.positionals):
        wanted = " ".join(p.upper() for p in spec.positionals) or "no arguments"
        raise BadCommand(f"`clawden {name}` takes {wanted}")
    command = Command(name, dict(zip(spec.positionals, positionals, strict=True)) | args)
    if name == "groups update":
        _check_settings(command.args)
    if name == "groups packages add":
        _check_packages(command.args)
    if name == "groups mcp add":
        _check_mcp(command.args)
    return command


def _destination(positionals: list[str], args: dict[str, str]) -> list[str]:
    """`destinations add GROUP [NAME] --agent OTHER` as the chat form's four positionals (the agent channel, the
    other group as its chat, named after it by default), as the owner's CLI reads it."""
    if "--agent" not in args:
        if "--max-hops" in args:
            raise BadCommand("--max-hops is for --agent")
        return positionals
    if len(positionals) not in (1, 2) or "--thread" in args:
        raise BadCommand("with --agent, `clawden destinations add` takes AGENT_GROUP [NAME] and no --thread")
    other = args["--agent"]
    if not GROUP_NAME.fullmatch(other):
        raise BadCommand(f"--agent {other!r} is not an agent group's name")
    return [positionals[0], positionals[1] if len(positionals) == 2 else other, ev.AGENT_CHANNEL, other]


def channel_problem(command: Command, channels: frozenset[str]) -> str:
    """Why a wiring or chat destination names a channel no bridge here serves ("" when it names one), as the
    owner's CLI refuses it: a typo would wait for nobody. An agent destination's channel is the router's own."""
    if command.name not in ("wire add", "destinations add") or "--agent" in command.args:
        return ""
    channel = command.args["channel"]
    if channel in channels:
        return ""
    return f"no channel {channel}; the channels are: {', '.join(sorted(channels))}"


def packages(args: dict[str, str]) -> packagespec.Packages:
    """A `groups packages add`'s packages."""
    lists = (tuple(args[f"--{k}"].split(SEP)) if f"--{k}" in args else () for k in packagespec.KINDS)
    return packagespec.Packages(*lists)


def mcp_server(args: dict[str, str]) -> mcpservers.McpServer:
    """A `groups mcp add`'s stdio server."""
    listed = {flag: args[flag].split(SEP) if flag in args else [] for flag in ("--arg", "--env")}
    env = dict(pair.partition("=")[::2] for pair in listed["--env"])
    return mcpservers.McpServer(command=args.get("--command", ""), args=tuple(listed["--arg"]), env=env)


def _check_mcp(args: dict[str, str]) -> None:
    if "--env" in args and any("=" not in pair for pair in args["--env"].split(SEP)):
        raise BadCommand("--env takes NAME=VALUE")
    if why := mcpservers.problem(args["name"], mcp_server(args)):
        raise BadCommand(why)


def _check_packages(args: dict[str, str]) -> None:
    asked = packages(args)
    if asked.empty():
        raise BadCommand("`clawden groups packages add` needs a package: --apt NAME, --npm NAME or --pip NAME")
    if why := packagespec.problem(asked):
        raise BadCommand(why)


@dataclass(frozen=True)
class Read:
    command: Command  # with its group filled in where the scope narrows it
    only_group: str  # "" for every group; else answers about any other group are left out


@dataclass(frozen=True)
class Write:
    command: Command
    change: str  # what it would change, in words for the approver's card


@dataclass(frozen=True)
class Refuse:
    reason: str


Verdict = Read | Write | Refuse


def own(command: Command, caller_group: str) -> Command:
    """The command with the caller's group where it names "." (the agent's tools need not know their group's name)."""
    if command.args.get("agent_group") != OWN_GROUP:
        return command
    return replace(command, args=command.args | {"agent_group": caller_group})


def allow(cli_scope: str, caller_group: str, command: Command) -> Verdict:
    """May the agent of `caller_group` (known from the socket, never from the request) run `command`?"""
    if cli_scope not in SCOPES:
        return Refuse(f"cli_scope {cli_scope!r} is not one of {', '.join(SCOPES)}")
    if cli_scope == "disabled":
        return Refuse(f"the clawden command is disabled for agent group {caller_group}")
    command = own(command, caller_group)
    spec = COMMANDS[command.name]
    target = command.group
    if cli_scope == "group":
        if spec.global_only:
            return Refuse(f"`clawden {command.name}` covers every group; agent group {caller_group} sees only its own")
        if target and target != caller_group:
            return Refuse(f"agent group {caller_group} may only see and change its own group, not {target}")
    if spec.write:
        return Write(command, change(command))
    if cli_scope == "group":
        if command.name in ("groups list", "groups get"):
            return Read(command, caller_group)
        return Read(replace(command, args=command.args | {"--group": caller_group}), caller_group)
    return Read(command, "")


def _options(a: dict[str, str]) -> str:
    return ", ".join(f"{flag.removeprefix('--')} {value}" for flag, value in a.items() if flag.startswith("--"))


CHANGES: dict[str, Callable[[dict[str, str]], str]] = {
    "wire add": lambda a: (
        f"Agent group {a['agent_group']} would answer chat {a['chat_id']} on {a['channel']}"
        + (f" ({_options(a)})." if _options(a) else " (engaged as the owner's CLI does by default).")
    ),
    "wire remove": lambda a: (
        f"Agent group {a['agent_group']} would stop answering chat {a['chat_id']} on {a['channel']}."
    ),
    "members add": lambda a: f"{a['user']} would become a member of agent group {a['agent_group']}.",
    "members remove": lambda a: f"{a['user']} would no longer be a member of agent group {a['agent_group']}.",
    "destinations add": lambda a: (
        f"Agent group {a['agent_group']} could send messages, as {a['name']!r},"
        + (
            f" to agent group {a['--agent']}, whose agent would answer back"
            f" (at most {a.get('--max-hops', ev.DEFAULT_MAX_HOPS)} agent-to-agent sends in a row)."
            if "--agent" in a
            else f" to chat {a['chat_id']} on {a['channel']}" + (f" ({_options(a)})." if _options(a) else ".")
        )
    ),
    "destinations remove": lambda a: f"Agent group {a['agent_group']} could no longer send to {a['name']!r}.",
    "groups update": lambda a: (
        f"Agent group {a['agent_group']}'s settings would change: {_options(a)} (at its next container start)."
    ),
    "groups packages add": lambda a: (
        f"Agent group {a['agent_group']}'s image would be rebuilt with {packages(a).words()}, built offline from"
        f" packages this host fetches, and this session's container restarted on it."
        f" The agent's reason: {a.get('--reason') or '(none given)'}"
    ),
    "groups mcp add": lambda a: (
        f"Agent group {a['agent_group']} would get the MCP server {a['name']!r}, run in its containers as"
        f" {shlex.join((mcp_server(a).command, *mcp_server(a).args))}"
        + "".join(f"\n  {k}={v}" for k, v in mcp_server(a).env.items())
        + f"\nThis session's container restarts with it. The agent's reason: {a.get('--reason') or '(none given)'}"
    ),
}


def change(command: Command) -> str:
    """What a write would change, for the approver."""
    if command.name not in CHANGES:
        raise ValueError(f"{command.name} changes nothing")
    return CHANGES[command.name](command.args)


def commands_for(cli_scope: str) -> list[str]:
    """The commands an agent with this scope may run, for `clawden help`."""
    if cli_scope == "disabled" or cli_scope not in SCOPES:
        return []
    return [
        f"clawden {name}"
        + "".join(f" {p.upper()}" for p in spec.positionals)
        + (" (needs an admin's approval)" if spec.write else "")
        for name, spec in COMMANDS.items()
        if cli_scope == "global" or not spec.global_only
    ]
