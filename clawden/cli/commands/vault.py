"""`clawden secrets|rules|audit|egress`: the vault's credentials, rules and audit trail, over NATS.

A secret's value is read from stdin or a hidden prompt, never from the command line (where `ps`
and the shell history would keep it), and no command ever prints one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import Nothing, Verb, router
from clawden.bus.ctl import vault as ctl
from clawden.cli.commands._args import LIMIT
from clawden.cli.commands._output import table as _table
from clawden.grants import EVERY_GROUP, MODEL_TYPE, default_grants

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d` ago; an ISO date or time (local unless it says otherwise); or epoch seconds."""
    now = time.time() if now is None else now
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since: {text!r} is not like 30m, 2h, 7d, 2026-11-21 or 2026-11-21T08:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


def _cfg(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _ask(args: argparse.Namespace, verb: Verb[Req, Rep], request: Req) -> Rep:
    return control.run(_cfg(args), verb, request)


def _print_json(data: object) -> None:
    print(json.dumps(msgspec.to_builtins(data), indent=2))


def _groups(args: argparse.Namespace) -> set[str]:
    """The agent groups the router knows. NoBus: the vault cannot be asked either (say that once); another
    ControlError: a vault run on its own, with no router to ask."""
    return {g.name for g in control.run(_cfg(args), router.GROUPS_LIST, router.ListAll(), timeout=3)}


def _groups_or_exit(args: argparse.Namespace, refusal: Callable[[str], str]) -> list[str]:
    """The agent groups, sorted; where the router alone cannot be asked (a vault run on its own), exit with
    `refusal` given why. With no bus at all, NoBus goes up: the vault cannot be asked either (said once)."""
    try:
        return sorted(_groups(args))
    except control.NoBus:
        raise
    except control.ControlError as exc:
        raise SystemExit(refusal(f"which groups there are: {exc}")) from None


def _known_groups(args: argparse.Namespace, names: list[str] | None) -> None:
    """Refuse agent groups the router does not know: a rule or grant for a typo protects nobody."""
    asked = {n for n in names or [] if n and n != "*"}
    if not asked:
        return
    try:
        known = _groups(args)
    except control.NoBus:
        raise  # the vault cannot be asked either: say that once
    except control.ControlError as exc:  # a vault run on its own: say what could not be checked
        print(f"clawden: not checked that agent group {', '.join(sorted(asked))} exists: {exc}", file=sys.stderr)
        return
    if unknown := sorted(asked - known):
        raise SystemExit(
            f"clawden: no agent group {', '.join(unknown)}; the groups are: {', '.join(sorted(known))} (or '*' for all)"
        )


def _read_value(args: argparse.Namespace) -> str:
    prompt = f"value of {args.name} (not shown): "
    value = (getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.read()).strip()
    if not value:
        raise SystemExit("clawden: no value given (type it at the prompt or pipe it in)")
    return value


def _describe(secret: ctl.SecretInfo) -> str:
    if secret.kind == "anthropic":
        return "x-api-key (or Bearer for OAuth)"
    if secret.kind == "openai":
        return "Authorization: Bearer"
    if secret.param_name:
        return f"?{secret.param_name}="
    if secret.kind == "aws" or secret.path_template or secret.path_regex:
        return _describe_more(secret)
    return f"{secret.header_name}: {secret.value_format}"


# --- secrets ---------------------------------------------------------------------------------------


def grants_for(args: argparse.Namespace, name: str, kind: str) -> list[str]:
    """The agent groups `--agent` names (each checked), or, with none named, those `clawden.grants` gives a
    credential of `kind` (a secret's type, or an app's); exits saying why when the owner must name them."""
    if args.agent:
        _known_groups(args, args.agent)
        return list(args.agent)
    if kind == MODEL_TYPE:
        return [EVERY_GROUP]
    how = "--agent G (repeatable), or --agent '*' for every agent group, now and later"
    groups = _groups_or_exit(
        args, lambda why: f"clawden: say which agent groups may use {name}: {how} (the router could not be asked {why})"
    )
    if (grants := default_grants(kind, groups)) is not None:
        return grants
    if not groups:
        raise SystemExit(f"clawden: there is no agent group yet to grant {name} to: create one, or give {how}")
    raise SystemExit(f"clawden: say which agent groups may use {name} (there are {', '.join(groups)}): {how}")


def _stored(args: argparse.Namespace, name: str) -> bool:
    return any(s.name == name for s in _ask(args, ctl.SECRETS_LIST, Nothing()).secrets)


def cmd_secrets_add(args: argparse.Namespace) -> int:
    # A name stored already, with no groups named: a replacement keeps its grants (the vault's rule for an empty
    # list), and without --replace the vault's own refusal ("exists; add --replace") is what to say, not the groups
    # (the model key's default, every group, asks the router nothing: the vault says it itself).
    stored = not args.agent and (args.replace or args.type != MODEL_TYPE) and _stored(args, args.name)
    agents = [] if stored else grants_for(args, args.name, args.type)
    request = ctl.AddSecret(
        name=args.name,
        type=args.type,
        value=_read_value(args),
        host=args.host or "",
        path=args.path,
        header=args.header or "",
        format=args.format,
        param=args.param or "",
        path_template=args.path_template or "",
        path_regex=args.path_regex or "",
        path_replacement=args.path_replacement or "",
        agents=agents,
        replace=args.replace,
        force=args.force,
    )
    reply = _ask(args, ctl.SECRETS_ADD, request)
    secret = reply.secret
    verb = "stored" if reply.created else "replaced"
    grants = ", ".join(secret.grants).replace("*", "every agent group") or "nobody"
    kept = ", as before" if not agents and not reply.created else ""
    print(f"{verb} {secret.name}: {_describe(secret)} for {secret.where()} (granted to {grants}{kept})")
    if agents and not args.agent and agents != [EVERY_GROUP]:  # the only group, by name: say how to let others
        print(
            f"{agents[0]} is the only agent group; to grant it to others: clawden secrets grant {secret.name} --agent G"
        )
    _say_model_key_sources(reply.model_key_sources, removed=False)
    if secret.kind == MODEL_TYPE:
        _say_model_check(args, secret.name)
    return 0


def _say_model_check(args: argparse.Namespace, name: str) -> None:
    """The model key just stored, tried on the model API by the vault as `clawden doctor` has it tried, and read as
    doctor reads it: a wrong key is told now, not by the first chat that fails after minutes of retries. Stored is
    stored: a refusal is a warning, not a failure of the command."""
    from clawden.cli.doctor import model_check_result  # a large module, needed only here

    try:
        reply = asyncio.run(_ask_now(_cfg(args), ctl.MODEL_CHECK, Nothing(), ctl.MODEL_CHECK_WAIT + 2))
    except control.NotListening:  # it has just stored the key, so it runs: a vault from before the check
        print(
            "not checked on the model API: the vault is older than its model check (restart it to update it), and"
            " `clawden doctor` checks the key then",
            file=sys.stderr,
        )
        return
    except control.ControlError as exc:  # it did not answer in time
        print(f"not checked on the model API: {exc}", file=sys.stderr)
        return
    mine = [c for c in reply.checks if c.name == name]
    if not mine:  # stored for another host than the one the check asks
        print(f"not checked on the model API: the check asks {reply.host}, which {name} is not for", file=sys.stderr)
        return
    result = model_check_result("", msgspec.structs.replace(reply, checks=mine))
    said = result.detail.removeprefix("; ")  # doctor's words after what it says the vault holds, said above here
    if result.status == "ok":
        print(said)
        return
    lead = "warning" if mine[0].outcome == "rejected" else "not checked"  # unreachable, or a 429 or 5xx: no verdict
    print(f"{lead}: {said}", file=sys.stderr)
    if result.fix:
        print(f"  fix: {result.fix}", file=sys.stderr)


async def _ask_now(cfg: config_mod.Config, verb: Verb[Req, Rep], request: Req, timeout: float) -> Rep:
    """Ask a service that has just answered another verb: nobody listening for this one is a service older than the
    verb, not one still starting, so it is said at once (`control.ask` would ask again until its timeout)."""
    from clawden.owner import Unreachable, connect_cli

    try:
        nc = await connect_cli(cfg, timeout)
    except Unreachable as exc:
        raise control.NoBus(f"{exc}\n  fix: {exc.fix}") from None
    try:
        return await control.ask_on(nc, verb, request, timeout=timeout)
    finally:
        await nc.close()


def cmd_secrets_list(args: argparse.Namespace) -> int:
    secrets = _ask(args, ctl.SECRETS_LIST, Nothing()).secrets
    if args.json:
        _print_json(secrets)
        return 0
    if not secrets:
        print("no secrets stored (clawden secrets add NAME --type ...)")
        return 0
    rows = [
        [
            s.name,
            s.kind,
            s.host_pattern + ("" if s.path_pattern == "*" else s.path_pattern),
            _describe(s),
            ",".join(s.grants) or "(nobody)",
        ]
        for s in secrets
    ]
    print(_table(rows, ["NAME", "TYPE", "HOST", "INJECTED AS", "AGENTS"]))
    return 0


def cmd_secrets_remove(args: argparse.Namespace) -> int:
    removed = _ask(args, ctl.SECRETS_REMOVE, ctl.Named(name=args.name))
    print(f"removed {args.name}")
    _say_model_key_sources(removed.model_key_sources, removed=True)
    return 0


def _say_model_key_sources(sources: list[ctl.ModelKeySource], removed: bool) -> None:
    """The model key was set or removed while a place the vault imports it from holds another: say so, since that
    place is imported again once it changes (and a stale copy is easy to forget). The vault says which places:
    only it sees its own environment (a systemd unit's is not this shell's) and reads the file as it does."""
    what, fix = ("a model key", " if that key is done") if removed else ("another key", ", or put the new key there")
    for source in sources:
        where, drop = (
            (f"{source.where} in the vault's environment", "Unset it there")
            if source.kind == "env"
            else (source.where, "Delete it")
        )
        print(
            f"note: {where} still holds {what}; the vault imports it again only if it changes. {drop}{fix}.",
            file=sys.stderr,
        )


def cmd_secrets_grant(args: argparse.Namespace) -> int:
    _known_groups(args, args.agent)
    request = ctl.Grant(name=args.name, agents=args.agent, revoke=args.revoke)
    secret = _ask(args, ctl.SECRETS_GRANT, request).secret
    print(f"{secret.name} is granted to: {', '.join(secret.grants) or 'nobody'}")
    return 0


# --- rules -----------------------------------------------------------------------------------------


def cmd_rules_add(args: argparse.Namespace) -> int:
    _known_groups(args, [args.agent])
    request = ctl.AddRule(
        name=args.name,
        action=args.action,
        host=args.host,
        path=args.path,
        method=args.method,
        agent=args.agent,
        limit=args.limit or 0,
        window=args.window,
        conditions=_conditions(args) or [],
        large_body=args.large_body,
    )
    rule = _ask(args, ctl.RULES_ADD, request).rule
    print(f"added rule {rule.name}: {_rule_text(rule)}")
    return 0


def _rule_text(rule: ctl.RuleInfo) -> str:
    action: str = rule.action
    if action == "rate_limit":
        action = f"rate_limit {rule.rate_limit}/{rule.rate_window}"
    path = "" if rule.path_pattern == "*" else rule.path_pattern
    where = f"{rule.method or '*'} {rule.host_pattern}{path}"
    return f"{action} {where} for {'every agent group' if rule.agent_group == '*' else rule.agent_group}"


def cmd_rules_list(args: argparse.Namespace) -> int:
    rules = _ask(args, ctl.RULES_LIST, Nothing()).rules
    if args.json:
        _print_json(rules)
        return 0
    if not rules:
        print("no rules (clawden rules add NAME --action block|manual_approval|rate_limit|allow --host ...)")
        return 0
    rows = [
        [
            r.name,
            r.action + (f" {r.rate_limit}/{r.rate_window}" if r.action == "rate_limit" else ""),
            r.method or "*",
            r.host_pattern + ("" if r.path_pattern == "*" else r.path_pattern),
            r.agent_group,
        ]
        for r in rules
    ]
    print(_table(rows, ["NAME", "ACTION", "METHOD", "WHERE", "AGENTS"]))
    return 0


def cmd_rules_remove(args: argparse.Namespace) -> int:
    _ask(args, ctl.RULES_REMOVE, ctl.Named(name=args.name))
    print(f"removed rule {args.name}")
    return 0


# --- audit and egress ------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    records = _ask(args, ctl.AUDIT, ctl.AuditQuery(agent=args.agent, since=args.since, limit=args.limit)).records
    if args.json:
        _print_json(records)
        return 0
    if not records:
        print("no audited requests match")
        return 0
    rows = [
        [
            dt.datetime.fromtimestamp(r.at).strftime("%Y-%m-%d %H:%M:%S"),
            r.agent_group,
            r.method,
            r.host + r.path,
            str(r.status),
            r.said(),
            f"{r.duration_ms:.0f}ms",
            r.injected,
        ]
        for r in records
    ]
    print(_table(rows, ["TIME", "AGENT", "METHOD", "WHERE", "STATUS", "DECISION", "TOOK", "INJECTED"]))
    return 0


def cmd_egress(args: argparse.Namespace) -> int:
    if args.group is None:
        return _egress_of_every_group(args)
    _known_groups(args, [args.group])
    reply = _ask(args, ctl.EGRESS, ctl.EgressRequest(agent_group=args.group, mode=args.mode))
    print(f"{reply.agent_group}: egress {reply.egress}")
    return 0


def _egress_of_every_group(args: argparse.Namespace) -> int:
    """`clawden egress` alone: each agent group's mode. The vault keeps a mode only for the groups given one, so the
    router says which groups there are and the vault answers for each (its default for the rest)."""
    groups = _groups_or_exit(
        args, lambda why: f"clawden: name an agent group (clawden egress GROUP): the router could not be asked {why}"
    )
    if not groups:
        print("no agent groups yet (clawden groups create NAME)")
        return 0
    for group in groups:
        print(f"{group}: egress {_ask(args, ctl.EGRESS, ctl.EgressRequest(agent_group=group)).egress}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = sub.add_parser("secrets", help="credentials the vault adds to agents' requests")
    ssub = secrets.add_subparsers(dest="secrets_command", required=True)

    add = ssub.add_parser(
        "add",
        help="store a secret (--replace: replace one); its value comes from stdin or a prompt",
        description="The value is read from stdin or a hidden prompt, never from arguments.",
    )
    add.add_argument("name")
    add.add_argument(
        "--type",
        required=True,
        choices=["anthropic", "openai", "generic", "aws"],
        help="anthropic (the model key), openai, generic (give --header, --param or --path-template), "
        "or aws (the JSON `aws configure export-credentials` prints; requests are SigV4-signed)",
    )
    add.add_argument(
        "--host", help="host pattern, e.g. api.github.com or *.example.com (anthropic and openai have defaults)"
    )
    add.add_argument("--path", default="*", help="path pattern (default: every path)")
    add.add_argument("--header", help="generic: header to set, e.g. Authorization")
    add.add_argument(
        "--format", default="{value}", help="generic: header value format (default {value}), e.g. 'Bearer {value}'"
    )
    add.add_argument("--param", help="generic: query parameter to set instead of a header")
    add.add_argument(
        "--agent",
        action="append",
        help="agent group to grant it to (repeatable; '*': every group, now and later). Default: the only agent "
        "group (with several, name them); --type anthropic: every group; --replace: the grants it had",
    )
    add.add_argument("--replace", action="store_true", help="replace a secret of the same name")
    add.add_argument(
        "--force", action="store_true", help="let a secret that is not the model key match the model API's host"
    )
    add.set_defaults(func=cmd_secrets_add)
    _secret_path_options(add)

    lst = ssub.add_parser("list", help="stored secrets (never their values)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_secrets_list)

    rm = ssub.add_parser("remove", help="forget a secret")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_secrets_remove)

    grant = ssub.add_parser("grant", help="let agent groups use a secret (or --revoke)")
    grant.add_argument("name")
    grant.add_argument("--agent", action="append", required=True, help="agent group, or '*' for all (repeatable)")
    grant.add_argument("--revoke", action="store_true", help="take the grant away instead")
    grant.set_defaults(func=cmd_secrets_grant)

    rules = sub.add_parser("rules", help="block, hold for approval, rate-limit or allow agents' requests")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    radd = rsub.add_parser("add", help="add a rule (order: block > manual_approval > rate_limit)")
    radd.add_argument("name")
    radd.add_argument(
        "--action",
        required=True,
        choices=["block", "manual_approval", "rate_limit", "allow"],
        help="what happens to a matching request",
    )
    radd.add_argument("--host", required=True, help="host pattern, e.g. api.stripe.com, *.example.com or *")
    radd.add_argument("--path", default="*", help="path pattern (default: every path)")
    radd.add_argument("--method", help="only this method (default: every method)")
    radd.add_argument("--agent", default="*", help="only this agent group (default: every group)")
    radd.add_argument("--limit", type=LIMIT, help="rate_limit: requests per window")
    radd.add_argument("--window", choices=["minute", "hour", "day"], help="rate_limit: the window (default minute)")
    radd.set_defaults(func=cmd_rules_add)
    _condition_options(radd)
    rlist = rsub.add_parser("list", help="the rules")
    rlist.add_argument("--json", action="store_true", help="print JSON")
    rlist.set_defaults(func=cmd_rules_list)
    rrm = rsub.add_parser("remove", help="remove a rule")
    rrm.add_argument("name")
    rrm.set_defaults(func=cmd_rules_remove)
    _rule_change_commands(rsub)

    audit = sub.add_parser("audit", help="requests agents made through the vault")
    audit.add_argument("--agent", help="only this agent group")
    audit.add_argument("--since", type=parse_since, help="30m, 2h, 7d, or a date/time like 2026-11-21T08:00")
    audit.add_argument("--limit", type=LIMIT, default=100, help="the newest N (default 100)")
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(func=cmd_audit)

    egress = sub.add_parser(
        "egress", help="show or set where an agent group may go: open or allowlist (no group: every group's)"
    )
    egress.add_argument("group", nargs="?")
    egress.add_argument("mode", nargs="?", choices=["open", "allowlist"])
    egress.set_defaults(func=cmd_egress)


# --- the vault's policy completions (issue 26): path secrets, body conditions, rule changes -----------


def _describe_more(secret: ctl.SecretInfo) -> str:
    if secret.kind == "aws":
        return "AWS SigV4 signature"
    if secret.path_template:
        return f"path {secret.path_template}"
    return f"path {secret.path_regex} -> {secret.path_replacement}"


def _secret_path_options(add: argparse.ArgumentParser) -> None:
    add.add_argument(
        "--path-template",
        help="generic: the value goes into the path, e.g. /bot{value} (the agent sends any placeholder)",
    )
    add.add_argument("--path-regex", help="generic: or this regex's first match on the path is replaced...")
    add.add_argument("--path-replacement", help="...by this, holding {value} (and \\1 for groups), e.g. /bot{value}")


def _condition_options(parser: argparse.ArgumentParser, update: bool = False) -> None:
    parser.add_argument("--body-contains", action="append", metavar="TEXT", help="only when the body holds TEXT")
    parser.add_argument(
        "--json-equals", action="append", metavar="POINTER=VALUE", help="only when the JSON body's /pointer is VALUE"
    )
    parser.add_argument(
        "--json-contains", action="append", metavar="POINTER=TEXT", help="only when the JSON body's /pointer holds TEXT"
    )
    parser.add_argument(
        "--large-body",
        choices=["match", "ignore", "default"] if update else ["match", "ignore"],
        help="a body too large (or compressed) to test: the rule applies (match) or not (ignore); default: "
        "block, approval and rate limits apply, allow does not",
    )
    if update:
        parser.add_argument("--no-conditions", action="store_true", help="drop the rule's body conditions")


def _conditions(args: argparse.Namespace) -> list[ctl.Condition] | None:
    """The body conditions the options give; None when they give none."""
    found = [ctl.Condition(operator="contains", value=text) for text in args.body_contains or []]
    options: tuple[tuple[ctl.Operator, str], ...] = (("equals", "json_equals"), ("contains", "json_contains"))
    for operator, option in options:
        for item in getattr(args, option) or []:
            pointer, sep, value = item.partition("=")
            if not sep or not pointer.startswith("/"):
                raise SystemExit(f"clawden: --{option.replace('_', '-')} takes /pointer=value, not {item!r}")
            found.append(ctl.Condition(operator=operator, value=value, pointer=pointer))
    return found or None


def _rule_details(rule: ctl.RuleInfo) -> str:
    lines = [f"{rule.name}: {_rule_text(rule)}", f"  {'enabled' if rule.enabled else 'disabled (kept, not applied)'}"]
    for c in rule.conditions:
        where = f"the JSON body's {c.pointer}" if c.pointer else "the body"
        lines.append(f"  when {where} {'is' if c.operator == 'equals' else 'holds'} {c.value!r}")
    if rule.conditions:
        default = "applies" if rule.action != "allow" else "does not apply"
        applies = {"match": "applies", "ignore": "does not apply"}.get(rule.large_body or "", default)
        lines.append(f"  a body too large or compressed to test: the rule {applies}")
    return "\n".join(lines)


def cmd_rules_get(args: argparse.Namespace) -> int:
    rule = _ask(args, ctl.RULES_GET, ctl.Named(name=args.name)).rule
    if args.json:
        _print_json(rule)
    else:
        print(_rule_details(rule))
    return 0


def cmd_rules_update(args: argparse.Namespace) -> int:
    if args.agent is not None:
        _known_groups(args, [args.agent])
    conditions = [] if args.no_conditions else _conditions(args)
    request = ctl.UpdateRule(
        name=args.name,
        action=args.action,
        host=args.host,
        path=args.path,
        method=args.method,
        agent=args.agent,
        limit=args.limit,
        window=args.window,
        conditions=conditions,
        large_body=args.large_body,
    )
    rule = _ask(args, ctl.RULES_UPDATE, request).rule
    print(f"updated rule {_rule_details(rule)}")
    return 0


def cmd_rules_enable(args: argparse.Namespace) -> int:
    rule = _ask(args, ctl.RULES_DISABLE if args.disable else ctl.RULES_ENABLE, ctl.Named(name=args.name)).rule
    print(f"rule {rule.name} is {'enabled' if rule.enabled else 'disabled: kept, not applied'}")
    return 0


def _rule_change_commands(rsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = rsub.add_parser("get", help="one rule, with its conditions")
    get.add_argument("name")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=cmd_rules_get)
    update = rsub.add_parser("update", help="change a rule's fields; only those given change")
    update.add_argument("name")
    update.add_argument(
        "--action", choices=["block", "manual_approval", "rate_limit", "allow"], help="what the rule now does"
    )
    update.add_argument("--host", help="host pattern")
    update.add_argument("--path", help="path pattern")
    update.add_argument("--method", help="only this method ('*': every method)")
    update.add_argument("--agent", help="only this agent group ('*': every group)")
    update.add_argument("--limit", type=LIMIT, help="rate_limit: requests per window")
    update.add_argument("--window", choices=["minute", "hour", "day"], help="rate_limit: the window")
    _condition_options(update, update=True)
    update.set_defaults(func=cmd_rules_update)
    for name, disable, text in (
        ("enable", False, "apply a disabled rule again"),
        ("disable", True, "keep a rule, unapplied"),
    ):
        toggle = rsub.add_parser(name, help=text)
        toggle.add_argument("name")
        toggle.set_defaults(func=cmd_rules_enable, disable=disable)
