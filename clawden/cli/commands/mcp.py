"""`clawden groups mcp add|remove|list <group> [<name>]`: the MCP servers an agent group's agents get. The
router keeps them with the group's settings and sends them on every wake; config.toml's
`[groups.<name>.mcp.<server>]` adds the host's own, which a router server of the same name replaces. A
stdio server runs inside the group's containers; a remote one (`--url`) is reached through the vault. A
credential is never given here: `--stub NAME` gives the server a placeholder, and the vault's secret for
the server's host goes on the wire (`clawden secrets add`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawden import config as config_mod
from clawden import control, mcpservers
from clawden.bus.ctl import router as ctl
from clawden.cli.commands._output import show, table
from clawden.mcpservers import McpServer

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

# A variable named like a credential whose value is not the placeholder: the container would hold it.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE|CREDENTIAL|AUTH", re.IGNORECASE)


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _servers(args: argparse.Namespace) -> tuple[ctl.GroupDetail, dict[str, McpServer], dict[str, McpServer]]:
    """The group, its servers in the router, and those config.toml gives it on this machine."""
    cfg = _config(args)
    group = control.run(cfg, ctl.GROUPS_GET, ctl.GroupGet(name=args.group))
    local = cfg.groups.get(group.name, config_mod.GroupConfig()).mcp
    return group, dict(group.container.mcp or {}), dict(local)


def _set(args: argparse.Namespace, servers: dict[str, McpServer]) -> None:
    settings = ctl.ContainerSettings(mcp=servers)
    control.run(_config(args), ctl.GROUPS_UPDATE, ctl.GroupUpdate(name=args.group, container=settings))


def parse_env(text: str) -> tuple[str, str]:
    """`--env K=V`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE")
    return key, value


def server_from(args: argparse.Namespace) -> McpServer:
    """The server `add` describes; a clear error for what cannot be one."""
    if args.url and (args.command or args.args or args.env or args.stub):
        raise control.ControlError("give --url for a remote server, or --command (with --arg, --env) for a local one")
    if args.url:
        return McpServer(transport=args.transport or "http", url=args.url)
    if args.transport not in (None, "stdio"):
        raise control.ControlError(f"a {args.transport} server needs --url")
    env = dict(args.env) | {name: mcpservers.STUB_VALUE for name in args.stub}
    return McpServer(command=args.command or "", args=tuple(args.args), env=env)


def credential_warnings(server: McpServer) -> list[str]:
    """Variables named like credentials that carry something other than the placeholder."""
    return [
        f"{key} looks like a credential: the container holds its value. Put the real one in the vault "
        f"(clawden secrets add) and give --stub {key} instead."
        for key, value in server.env.items()
        if _SECRET_NAME.search(key) and value != mcpservers.STUB_VALUE
    ]


def mcp_add(args: argparse.Namespace) -> int:
    server = server_from(args)
    if why := mcpservers.problem(args.name, server):
        raise control.ControlError(why)
    group, servers, local = _servers(args)
    if args.name in servers and not args.replace:
        raise control.ControlError(
            f"agent group {group.name} has an MCP server {args.name}; give --replace to change it"
        )
    for warning in credential_warnings(server):
        print(f"clawden: warning: {warning}")
    _set(args, {**servers, args.name: server})
    over = " (over config.toml's of that name)" if args.name in local else ""
    print(f"agent group {group.name} has MCP server {args.name}{over}; its next container start runs it")
    return 0


def mcp_remove(args: argparse.Namespace) -> int:
    group, servers, local = _servers(args)
    if args.name not in servers:
        where = " It comes from config.toml here: remove it there." if args.name in local else ""
        raise control.ControlError(f"agent group {group.name} has no MCP server {args.name} in the router.{where}")
    _set(args, {n: s for n, s in servers.items() if n != args.name})
    after = " config.toml's of that name applies again." if args.name in local else ""
    print(f"agent group {group.name} no longer has MCP server {args.name}.{after}")
    return 0


def _row(name: str, server: McpServer, source: str) -> dict[str, Any]:
    run = server.url if server.transport != "stdio" else " ".join((server.command, *server.args))
    return {"name": name, "from": source, "transport": server.transport, "runs": run, "env": sorted(server.env)}


def mcp_list(args: argparse.Namespace) -> int:
    group, servers, local = _servers(args)
    rows = [_row(n, s, "router") for n, s in sorted(servers.items())]
    rows += [_row(n, s, "config.toml") for n, s in sorted(local.items()) if n not in servers]

    def render(data: dict[str, Any]) -> str:
        if not data["servers"]:
            return f"agent group {group.name} has no MCP servers of its own"
        shown = [(r["name"], r["from"], r["transport"], r["runs"][:60], ", ".join(r["env"])) for r in data["servers"]]
        return table(shown, ("SERVER", "FROM", "TRANSPORT", "RUNS", "ENV"))

    return show(args, {"group": group.name, "servers": rows}, render)


def register(groups: Sub) -> None:
    """`mcp` under `clawden groups`."""
    p = groups.add_parser("mcp", help="the MCP servers a group's agents get: add, remove, list")
    verbs = p.add_subparsers(dest="mcp_verb", metavar="VERB", required=True)
    v = verbs.add_parser("list", help="the group's MCP servers (the router's and config.toml's)")
    v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    v.add_argument("group", help="the agent group")
    v.set_defaults(func=mcp_list)
    v = verbs.add_parser(
        "add",
        help="give the group an MCP server (its next container start runs it)",
        description="A local server: --command with --arg (once per argument; --arg=-y for one starting with -)"
        " and --env. It runs inside the container, its HTTPS through the vault. A remote server: --url.",
    )
    v.add_argument("group", help="the agent group")
    v.add_argument("name", help="the server's name: its tools are mcp__<name>__<tool>")
    v.add_argument("--command", help="the program that starts a stdio server inside the container")
    v.add_argument("--arg", dest="args", action="append", default=[], help="one argument (repeat for more)")
    v.add_argument("--env", action="append", type=parse_env, default=[], help="NAME=VALUE (repeat for more)")
    v.add_argument(
        "--stub", action="append", default=[], help="NAME: a placeholder the vault replaces with its secret on the wire"
    )
    v.add_argument("--url", help="an https:// address of a remote (HTTP or SSE) server")
    v.add_argument("--transport", choices=("stdio", "http", "sse"), help="stdio (with --command) or http (--url)")
    v.add_argument("--replace", action="store_true", help="change a server the group already has")
    v.set_defaults(func=mcp_add)
    v = verbs.add_parser("remove", help="take an MCP server from the group")
    v.add_argument("group", help="the agent group")
    v.add_argument("name", help="the server's name")
    v.set_defaults(func=mcp_remove)
