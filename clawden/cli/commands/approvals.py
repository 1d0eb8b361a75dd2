"""`clawden approvals list|show|approve|deny|answer`: pending and past approvals with who decided, and
deciding at the machine without a chat, over NATS request/reply (`clawden.ctl.approvals.<verb>`)."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import Verb
from clawden.bus.ctl import approvals as ctl
from clawden.cli.commands._args import LIMIT
from clawden.cli.commands._output import show as _show
from clawden.cli.commands._output import table as _table
from clawden.cli.commands._output import when as _when

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

STATUSES = ("pending", "approved", "denied", "expired", "answered")


def _ask(args: argparse.Namespace, verb: Verb[Req, Rep], request: Req) -> Rep:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    return control.run(cfg, verb, request)


def _render_list(rows: list[ctl.Approval]) -> str:
    return _table(
        [
            (
                r.id,
                r.kind,
                r.agent_group,
                r.status,
                r.approver or r.chat_id or "-",
                _when(r.created_at),
                _when(r.expires_at if r.status == "pending" else r.decided_at),
                r.decided_by or r.reason[:40],
            )
            for r in rows
        ],
        ("ID", "KIND", "GROUP", "STATUS", "SENT TO", "ASKED", "EXPIRES/DECIDED", "BY"),
    )


def _render_one(row: ctl.ApprovalDetail) -> str:
    lines = [
        f"{k}: {getattr(row, k)}"
        for k in (
            "id",
            "card_id",
            "kind",
            "requester",
            "agent_group",
            "status",
            "approver",
            "deciders",
            "channel",
            "chat_id",
            "decided_by",
            "value",
            "reason",
        )
    ]
    lines += [
        f"created: {_when(row.created_at)}",
        f"expires: {_when(row.expires_at)}",
        f"decided: {_when(row.decided_at)}",
        "",
        row.title,
        row.body,
        "",
        "audit:",
    ]
    lines += [f"  {_when(a.at)}  {a.what:<11} {a.actor:<20} {a.detail}" for a in row.audit]
    return "\n".join(lines)


def approvals_list(args: argparse.Namespace) -> int:
    rows = _ask(args, ctl.LIST, ctl.ListRequest(status=args.status or "", limit=args.limit))
    return _show(args, rows, _render_list)


def approvals_show(args: argparse.Namespace) -> int:
    return _show(args, _ask(args, ctl.SHOW, ctl.ShowRequest(id=args.approval_id)), _render_one)


def approvals_decide(choice: str | None) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        request = ctl.DecideRequest(id=args.approval_id, choice=choice or args.choice, by=f"local:{getpass.getuser()}")
        row = _ask(args, ctl.DECIDE, request)
        return _show(args, row, lambda r: f"{r.id} is {r.status}" + (f": {r.value}" if choice is None else ""))

    return run


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "approvals", help="approval requests and questions: list, show (with their audit), approve, deny, answer"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=approvals_list, status=None, limit=200)
    verbs = p.add_subparsers(dest="approvals_verb", metavar="VERB")
    v = verbs.add_parser("list", help="list approvals, newest first")
    v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    v.add_argument("--status", choices=STATUSES, help="only approvals in this state")
    v.add_argument("--limit", type=LIMIT, default=200, help="the newest N (default 200)")
    v.set_defaults(func=approvals_list)
    v = verbs.add_parser("show", help="one approval in full, with its audit trail")
    v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    v.add_argument("approval_id", help="the request id or the card id")
    v.set_defaults(func=approvals_show)
    for name, choice, help_text in (
        ("approve", "approve", "say yes to a pending request, as the machine's owner"),
        ("deny", "deny", "say no to a pending request, as the machine's owner"),
        ("answer", None, "answer a pending question with one of its choices"),
    ):
        v = verbs.add_parser(name, help=help_text)
        v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        v.add_argument("approval_id", help="the request id or the card id")
        if choice is None:
            v.add_argument("choice", help="the choice's label or number")
        v.set_defaults(func=approvals_decide(choice))
