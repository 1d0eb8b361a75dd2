"""The approvals service's control verbs (`clawden.ctl.approvals.<verb>`), behind `clawden approvals`."""

from __future__ import annotations

from clawden.bus.ctl.verb import Reply, Request, declare

SERVICE = "approvals"


class ListRequest(Request, frozen=True):
    status: str = ""
    limit: int = 200


class ShowRequest(Request, frozen=True):
    id: str  # the approval's id, or its card's


class DecideRequest(Request, frozen=True):
    id: str
    choice: str  # a button's id, label or number: "approve", "deny", "2"
    by: str = ""  # who decided, as the audit and the edited card show it


class Approval(Reply, frozen=True):
    id: str
    card_id: str
    kind: str
    requester: str
    agent_group: str
    status: str
    approver: str
    channel: str
    chat_id: str
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str
    value: str
    reason: str


class ButtonInfo(Reply, frozen=True):
    id: str
    label: str


class AuditEntry(Reply, frozen=True):
    at: float
    what: str
    actor: str
    detail: str


class ApprovalDetail(Approval, frozen=True):
    thread_id: str | None
    card_message_id: str | None
    edited: int
    unreachable: str  # JSON: the approvers no card reached
    deciders: list[str]
    title: str
    body: str
    buttons: list[ButtonInfo]
    audit: list[AuditEntry]


LIST = declare(SERVICE, "list", ListRequest, list[Approval])
SHOW = declare(SERVICE, "show", ShowRequest, ApprovalDetail)
DECIDE = declare(SERVICE, "decide", DecideRequest, ApprovalDetail)
