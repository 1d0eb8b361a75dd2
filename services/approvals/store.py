"""`approvals.db`: each request, its card and its outcome, with an audit trail; every step commits its
state and the events it causes together (an outbox), so a crash between the two loses nothing."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from clawden import outbox
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.streams import STREAMS, approvals_requests
from services.approvals import cards, policy
from services.approvals.schema import MIGRATIONS

log = logging.getLogger("clawden.approvals")
DECIDER = "approvals"  # decided_by when no person decided (no approver, undeliverable card)
TOO_LATE = "nobody answered in time"
UNROUTED = "it expired before the router said who may approve it"
ROUTING = "waiting for the router"  # the reason `approvals list` gives a request the router has not answered about
_card_decoder = msgspec.json.Decoder(ev.Card)
_request_decoder = msgspec.json.Decoder(ev.ApprovalRequest)
# How long a withdrawal waits for its request: a copy of the request is stored at the latest the duplicate window
# after it was asked (a publisher's retries), before the withdrawal, and is delivered at the latest the stream's
# max_age after that. Past it, no copy can come, and the withdrawal is forgotten.
_REQUESTS = next(s for s in STREAMS if s.name == approvals_requests().stream)
WITHDRAWAL_KEPT = _REQUESTS.max_age + _REQUESTS.duplicate_window


@dataclass
class Step:
    """What one store step did, for the service's counters and logs."""

    result: str
    counts: dict[str, int] = field(default_factory=dict)


def _settling(row: sqlite3.Row) -> policy.Card:
    return policy.Card(
        kind=row["kind"],
        status=row["status"],
        deciders=tuple(json.loads(row["deciders"])),
        route=ev.Route(channel=row["channel"], chat_id=row["chat_id"], thread_id=row["thread_id"]),
        buttons=_card_decoder.decode(row["card"]).buttons,
        expires_at=row["expires_at"],
    )


def _unrouted_card(request: ev.ApprovalRequest, waiting: sqlite3.Row) -> policy.Card:
    """What the owner's choice at the machine is judged by for a request waiting for the router: sent to nobody."""
    return policy.Card(
        kind=request.kind,
        status="pending",
        deciders=(),
        route=ev.Route(channel="", chat_id=""),
        buttons=cards.card_for(request).buttons,
        expires_at=waiting["expires_at"],
    )


def _unrouted_row(request: ev.ApprovalRequest, waiting: sqlite3.Row) -> dict[str, Any]:
    """How `list` gives a request waiting for the router: pending, sent to nobody, and the reason saying why."""
    return {
        "id": request.id,
        "card_id": "",
        "kind": request.kind,
        "requester": request.requester,
        "agent_group": request.agent_group,
        "status": "pending",
        "approver": "",
        "channel": "",
        "chat_id": "",
        "created_at": waiting["asked_at"],
        "expires_at": waiting["expires_at"],
        "decided_at": None,
        "decided_by": "",
        "value": "",
        "reason": ROUTING,
    }


def _withdrawn_after_deciding(row: sqlite3.Row) -> bool:
    """Whether its requester withdrew it after it was decided (one withdrawn before is settled as expired by that)."""
    return row["withdrawn"] is not None and row["status"] != "expired"


def _settled(row: sqlite3.Row) -> str:
    """How a settled request is told to a late press."""
    by = f" by {row['decided_by']}" if row["decided_by"] and row["decided_by"] != DECIDER else ""
    withdrawn = row["withdrawn"]
    if withdrawn is None:
        return f"{row['status']}{by}"
    if _withdrawn_after_deciding(row):
        return f"{row['status']}{by}, but its requester had stopped waiting ({withdrawn}); nothing was let through"
    return f"withdrawn ({withdrawn}); nothing was let through"


class Store(outbox.OutboxStore):
    migrations = MIGRATIONS
    synchronous = "FULL"  # a decision, once told, is never forgotten

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self._chats: dict[str, ev.Route] = {}
        for row in conn.execute("SELECT * FROM direct_chats"):
            self._chats[row["user_id"]] = ev.Route(
                channel=row["channel"], chat_id=row["chat_id"], thread_id=row["thread_id"]
            )

    def _audit(self, approval_id: str, now: float, what: str, actor: str = "", detail: str = "") -> None:
        self.conn.execute(
            "INSERT INTO audit (approval_id, at, what, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (approval_id, now, what, actor, detail),
        )

    # --- requests -------------------------------------------------------------------------------

    def amend(self, request: ev.ApprovalRequest, now: float) -> Step:
        """The requester's word on a request it asked that is decided now: shown under the card's outcome (edited again
        where it was edited already). Only the requester that asked may amend it, once, and only once decided."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (request.amends,)).fetchone()
            if row is None or row["status"] == "pending" or row["requester"] != request.requester or row["note"]:
                return Step("amend_ignored")
            db.execute("UPDATE approvals SET note = ? WHERE id = ?", (request.card.body, request.amends))
            self._audit(request.amends, now, "amended", request.requester, request.card.body)
            if row["edited"]:
                db.execute("UPDATE approvals SET edited = 0 WHERE id = ?", (request.amends,))
                self._edit(request.amends)
            return Step("amended")

    def withdraw(self, withdrawn: ev.ApprovalWithdrawn, now: float) -> Step:
        """The requester stopped waiting on a request it asked: a pending one is settled as expired, once (the
        decision published, the card edited "Withdrawn"), so a later press decides nothing. One already decided
        stays so (`_withdrawn_after`); one waiting for the router is settled so at once; one not here yet, when it
        comes."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (withdrawn.id,)).fetchone()
            if row is not None and row["requester"] != withdrawn.requester:
                return Step("withdraw_ignored")
            reason = withdrawn.reason or "its requester stopped waiting"
            if row is not None and row["status"] != "pending":
                return self._withdrawn_after(row, withdrawn, reason, now)
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO withdrawals (id, requester, reason, at) VALUES (?, ?, ?, ?)",
                    (withdrawn.id, withdrawn.requester, reason, now),
                )
                self._audit(withdrawn.id, now, "withdrawn_early", withdrawn.requester, reason)
                waiting = self._waiting(withdrawn.id)
                if waiting is None or waiting[0].requester != withdrawn.requester:
                    return Step("withdrawn_early")
                # Waiting for the router: settled now, without a card, and waiting no more (`routed` skips it).
                return self._add(waiting[0], (), now, waiting[1]["asked_at"])
            db.execute("UPDATE approvals SET withdrawn = ? WHERE id = ?", (reason, withdrawn.id))
            self._decide(withdrawn.id, "expired", "", "", f"withdrawn by {withdrawn.requester}: {reason}", now)
            log.info("approval %s withdrawn by %s: %s", withdrawn.id, withdrawn.requester, reason)
            return Step("withdrawn")

    def _withdrawn_after(self, row: sqlite3.Row, withdrawn: ev.ApprovalWithdrawn, reason: str, now: float) -> Step:
        """A withdrawal of a request approved or answered before it came, which its requester never acted on (it was
        down when the press was applied, or gone just before): recorded, and its card, still saying who decided,
        says so under the outcome, once. Not after a last call, when the requester may still have let it through (it
        withdraws again, for good, if it did not); nor for one denied or expired, whose card says already that nothing
        was."""
        said = row["withdrawn"] is not None  # amended once already
        if row["status"] not in ("approved", "answered") or said or withdrawn.last_call:
            return Step("withdraw_ignored")
        self.conn.execute("UPDATE approvals SET withdrawn = ? WHERE id = ?", (reason, row["id"]))
        self._audit(row["id"], now, "withdrawn_after", withdrawn.requester, f"{row['status']} first: {reason}")
        if row["edited"]:  # else the receipt, when it comes, draws the card with it
            self.conn.execute("UPDATE approvals SET edited = 0 WHERE id = ?", (row["id"],))
            self._edit(row["id"])
        log.warning(
            "approval %s was %s, but %s had stopped waiting: %s", row["id"], row["status"], withdrawn.requester, reason
        )
        return Step("withdrawn_after")

    def forget_withdrawals(self, now: float) -> int:
        """Forget the withdrawals whose request can no longer come (`WITHDRAWAL_KEPT`); how many."""
        with self._tx() as db:
            return db.execute("DELETE FROM withdrawals WHERE at <= ?", (now - WITHDRAWAL_KEPT,)).rowcount

    def _forget_withdrawal(self, approval_id: str) -> None:
        """A request has its row now: a copy of it, or of its withdrawal, is told by the row."""
        self.conn.execute("DELETE FROM withdrawals WHERE id = ?", (approval_id,))

    def _withdrawal(self, approval_id: str, requester: str) -> str | None:
        """The reason the requester gave when it withdrew this request; None when it did not."""
        row = self.conn.execute(
            "SELECT reason FROM withdrawals WHERE id = ? AND requester = ?", (approval_id, requester)
        ).fetchone()
        return None if row is None else str(row[0])

    def add_request(
        self, request: ev.ApprovalRequest, approvers: Sequence[str], now: float, asked_at: float | None = None
    ) -> Step:
        """Record a request and send its card; with nobody to send it to, deny it at once and say why. Without an
        expiry of its own it lives its kind's lifetime from `asked_at` (when it reached the bus; else `now`). One its
        requester withdrew already is recorded as such, and no card goes out."""
        with self._tx():
            return self._add(request, approvers, now, now if asked_at is None else asked_at)

    def _add(self, request: ev.ApprovalRequest, approvers: Sequence[str], now: float, asked_at: float) -> Step:
        db = self.conn
        if db.execute("SELECT 1 FROM approvals WHERE id = ?", (request.id,)).fetchone():
            return Step("duplicate")
        card = cards.card_for(request)
        expires_at = policy.expiry(request, asked_at)
        withdrawn = self._withdrawal(request.id, request.requester)
        delivery = None if withdrawn is not None else policy.choose_delivery(request, approvers, self._chats)
        card_id = self._record(request, card, now, expires_at, approvers, delivery, withdrawn)
        if withdrawn is not None:
            self._decide(request.id, "expired", "", "", f"withdrawn by {request.requester}: {withdrawn}", now)
            return Step("withdrawn")
        if delivery is None:
            reason = (
                "nobody can approve it: no admin of this agent group, no global admin and no owner"
                " has a chat Clawden can reach (grant one with `clawden roles`)"
            )
            self._decide(request.id, "denied", DECIDER, "", reason, now)
            log.warning("approval %s (%s for %s) denied: no approver", request.id, request.kind, request.agent_group)
            return Step("no_approver")
        if expires_at <= now:
            self._decide(request.id, "expired", "", "", "it had expired before it arrived", now)
            return Step("expired")
        self._send_card(request, card, card_id, delivery, now)
        if not card.buttons:  # a notice (a rate limit tripped): nothing to decide, nothing to expire or edit
            db.execute("UPDATE approvals SET edited = 1 WHERE id = ?", (request.id,))
            self._decide(request.id, "answered", DECIDER, "", "a notice: nothing to decide", now)
            return Step("notice")
        return Step("sent")

    def _record(
        self,
        request: ev.ApprovalRequest,
        card: ev.Card,
        now: float,
        expires_at: float,
        approvers: Sequence[str] = (),
        delivery: policy.Delivery | None = None,
        withdrawn: str | None = None,
    ) -> str:
        """Insert a request's row, pending, its card to go to `delivery` (or to nobody); returns the card's id. It
        waits no longer for the router, and a withdrawal kept for it is told by the row from now on."""
        card_id = self._new_card_id()
        route = delivery.route if delivery else None
        self.conn.execute(
            "INSERT INTO approvals (id, card_id, kind, requester, agent_group, request, card, approver, deciders,"
            " channel, chat_id, thread_id, created_at, expires_at, withdrawn)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request.id,
                card_id,
                request.kind,
                request.requester,
                request.agent_group,
                ev.encode(request),
                msgspec.json.encode(card),
                delivery.approver if delivery else "",
                json.dumps(list(approvers)),
                route.channel if route else "",
                route.chat_id if route else "",
                route.thread_id if route else None,
                now,
                expires_at,
                withdrawn,
            ),
        )
        self.conn.execute("DELETE FROM waiting WHERE id = ?", (request.id,))
        self._forget_withdrawal(request.id)
        self._audit(
            request.id, now, "requested", request.requester, f"{request.kind} for {request.agent_group}: {card.title}"
        )
        return card_id

    def _new_card_id(self) -> str:
        card_id = cards.short_id()
        while self.conn.execute("SELECT 1 FROM approvals WHERE card_id = ?", (card_id,)).fetchone():
            card_id = cards.short_id()
        return card_id

    def _send_card(
        self, request: ev.ApprovalRequest, card: ev.Card, card_id: str, delivery: policy.Delivery, now: float
    ) -> None:
        # A question is the agent speaking; any other card is the host asking (a notice: the chat's answer
        # still follows), which the terminal labels as Clawden's, not the agent's.
        self.emit(
            subjects.outbound(delivery.route.channel, delivery.route.chat_id),
            card_id,
            ev.OutboundMessage(
                id=card_id,
                route=delivery.route,
                text=cards.text_of(card),
                card=card,
                agent_group=request.agent_group,
                kind="reply" if request.kind == "question" else "notice",
            ),
        )
        self._audit(
            request.id,
            now,
            "card_sent",
            delivery.approver,
            f"{delivery.route.channel}:{delivery.route.chat_id} as {card_id}",
        )

    def _unrouted(
        self,
        request: ev.ApprovalRequest,
        outcome: Literal["denied", "expired"],
        why: str,
        expires_at: float,
        now: float,
    ) -> Step:
        self._record(request, cards.card_for(request), now, expires_at)
        if outcome == "expired":
            self._decide(request.id, "expired", "", "", why, now)
            return Step("expired_unasked")
        self._decide(request.id, "denied", DECIDER, "", why, now)
        return Step("no_approver")

    # --- waiting for the router -----------------------------------------------------------------

    def wait_for_router(self, request: ev.ApprovalRequest, asked_at: float, now: float) -> Step:
        """A request that names no approvers waits in `waiting` until the router says who may approve it (`routed`):
        committed here, so its delivery is acked and holds up nothing behind it, and listed and shown as pending,
        decided by its owner (`decide`) and expired at its own time (`expire_due`), across a restart too. A copy of
        one waiting or recorded already (published twice, or delivered again after a crash before its ack) is a
        duplicate; one withdrawn before it came is recorded as such (`add_request`)."""
        with self._tx() as db:
            recorded = db.execute("SELECT 1 FROM approvals WHERE id = ?", (request.id,)).fetchone()
            if recorded or self._withdrawal(request.id, request.requester) is not None:
                return self._add(request, (), now, asked_at)
            if db.execute("SELECT 1 FROM waiting WHERE id = ?", (request.id,)).fetchone():
                return Step("duplicate")
            db.execute(
                "INSERT INTO waiting (id, agent_group, request, asked_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (request.id, request.agent_group, ev.encode(request), asked_at, policy.expiry(request, asked_at)),
            )
            self._audit(request.id, asked_at, "waiting", request.requester, ROUTING)
        return Step("waiting")

    def waiting_groups(self, now: float) -> list[str]:
        """The agent groups the router is to be asked about: one ask serves all of a group's waiting requests (one
        expired is left to `expire_due`)."""
        sql = "SELECT DISTINCT agent_group FROM waiting WHERE expires_at > ? ORDER BY agent_group"
        return [r[0] for r in self.conn.execute(sql, (now,))]

    def routed(self, agent_group: str, approvers: Sequence[str], now: float) -> Step:
        """The router named who may approve for `agent_group`: each request of it still waiting is recorded and its
        card sent (as `add_request`), and waits no more, in one transaction."""
        with self._tx():
            counts: Counter[str] = Counter()
            for request, row in self._waiting_in(agent_group, now):
                counts[self._add(request, approvers, now, row["asked_at"]).result] += 1
            return Step("routed", dict(counts))

    def refused(self, agent_group: str, why: str, now: float) -> Step:
        """The router refused to say who may approve for `agent_group` (its "400"): each request of it still waiting
        is denied, and its requester told why, rather than left to wait for an answer that will not come."""
        with self._tx():
            counts: Counter[str] = Counter()
            for request, row in self._waiting_in(agent_group, now):
                counts[self._unrouted(request, "denied", why, row["expires_at"], now).result] += 1
            return Step("refused", dict(counts))

    def _waiting_in(self, agent_group: str, now: float) -> list[tuple[ev.ApprovalRequest, sqlite3.Row]]:
        rows = self.conn.execute(
            "SELECT * FROM waiting WHERE agent_group = ? AND expires_at > ? ORDER BY asked_at", (agent_group, now)
        ).fetchall()
        return [(_request_decoder.decode(row["request"]), row) for row in rows]

    def _waiting(self, approval_id: str) -> tuple[ev.ApprovalRequest, sqlite3.Row] | None:
        row = self.conn.execute("SELECT * FROM waiting WHERE id = ?", (approval_id,)).fetchone()
        return None if row is None else (_request_decoder.decode(row["request"]), row)

    # --- deciding -------------------------------------------------------------------------------

    def _decide(
        self,
        approval_id: str,
        decision: policy.Decision | Literal["expired"],
        decided_by: str,
        value: str,
        reason: str,
        now: float,
        label: str = "",
        target: str | None = None,
    ) -> None:
        """Settle a pending row: the decision to the requester (keyed by the id, so once), the card
        edited to show it (once its platform id is known), and the audit line."""
        db = self.conn
        db.execute(
            "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, value = ?, reason = ?,"
            " card_message_id = COALESCE(card_message_id, ?) WHERE id = ?",
            (decision, now, decided_by, value, reason, target, approval_id),
        )
        self.emit(
            subjects.approval_decision(approval_id),
            f"decision:{approval_id}",
            ev.ApprovalDecision(
                id=approval_id, decision=decision, decided_by=decided_by, value=value, decided_at=now, reason=reason
            ),
        )
        self._audit(approval_id, now, decision, decided_by, reason or value)
        self._edit(approval_id, label)

    def _edit(self, approval_id: str, label: str = "") -> None:
        db = self.conn
        row = db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row["edited"] or not row["card_message_id"] or not row["channel"]:
            return  # no card went out, or the receipt naming it has not come yet (it edits then)
        card = _card_decoder.decode(row["card"])
        if not label and row["value"]:
            label = next((b.label for b in card.buttons if b.id == row["value"]), row["value"])
        decided_by = "" if row["decided_by"] == DECIDER else row["decided_by"]
        withdrawn, after = row["withdrawn"], _withdrawn_after_deciding(row)
        if withdrawn is not None and not after:
            line = cards.outcome_line("withdrawn", "", reason=withdrawn)
        else:
            line = cards.outcome_line(row["status"], decided_by, label, row["reason"])
            if after:
                line += "\n" + cards.stopped_waiting_line(withdrawn)
        shown = cards.decided_card(card, f"{line}\n{row['note']}" if row["note"] else line)
        route = ev.Route(channel=row["channel"], chat_id=row["chat_id"], thread_id=row["thread_id"])
        edit_id = f"{row['card_id']}:{row['status']}" + (":amended" if row["note"] else "")
        edit_id += ":withdrawn" if after else ""
        self.emit(
            subjects.outbound(route.channel, route.chat_id),
            edit_id,
            ev.OutboundEdit(
                id=edit_id, route=route, target_message_id=row["card_message_id"], text=cards.text_of(shown), card=shown
            ),
        )
        db.execute("UPDATE approvals SET edited = 1 WHERE id = ?", (approval_id,))

    def click(self, action: ev.InboundAction, now: float) -> Step:
        """A button press at `now` (when it reached the bus): applied once, and only when the presser may
        decide; anyone else is told politely and nothing changes. A press at or after the expiry expires
        the request instead, and the presser is told."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE card_id = ?", (action.card_id,)).fetchone()
            if row is None:
                return Step("unknown")  # a card another part of Clawden sent (an agent's send_card)
            if db.execute("SELECT 1 FROM clicks WHERE key = ?", (action.key,)).fetchone():
                return Step("duplicate")
            db.execute("INSERT INTO clicks (key, approval_id, at) VALUES (?, ?, ?)", (action.key, row["id"], now))
            clicker = policy.user_id(action.route.channel, action.sender.id)
            name = action.sender.name or clicker
            reply_id = f"{row['card_id']}:reply:{action.action_id}"[:200]
            outcome = policy.press(_settling(row), clicker, action.route, action.button_id, now)
            if isinstance(outcome, policy.Settle):
                decision, button = outcome.decision, outcome.button
                self._decide(
                    row["id"], decision, clicker, button.id, "", now, label=button.label, target=action.message_id
                )
                log.info("approval %s %s by %s (%s)", row["id"], decision, clicker, button.id)
                return Step(decision)
            if outcome.why == "refused":
                self._audit(row["id"], now, "refused", clicker, f"pressed {action.button_id}")
                who = row["approver"] or "an admin"
                self._reply(
                    action,
                    reply_id,
                    f"Sorry {name}, only {who} or another admin of"
                    f" {row['agent_group']} can decide this one. Nothing was changed.",
                )
            elif outcome.why == "already":
                self._audit(row["id"], now, "late_click", clicker, f"pressed {action.button_id} ({row['status']})")
                self._reply(action, reply_id, f"This was already settled: {_settled(row)}.")
            elif outcome.why == "expired":
                self._audit(row["id"], now, "late_click", clicker, f"pressed {action.button_id} after its expiry")
                self._decide(row["id"], "expired", "", "", TOO_LATE, now, target=action.message_id)
                self._reply(
                    action, reply_id, f"Sorry {name}, this had expired before you pressed it: nothing was decided."
                )
            else:
                self._audit(row["id"], now, "bad_button", clicker, action.button_id)
            return Step(outcome.why)

    def _reply(self, action: ev.InboundAction, reply_id: str, text: str) -> None:
        self.emit(
            subjects.outbound(action.route.channel, action.route.chat_id),
            reply_id,
            ev.OutboundMessage(id=reply_id, route=action.route, text=text),
        )

    # --- delivery receipts ----------------------------------------------------------------------

    def receipt(self, receipt: ev.DeliveryReceipt, now: float) -> Step:
        """A card's receipt: its platform id (to edit it later). A card that could not be delivered goes
        to the next approver in line with a reachable chat; when none is left the request is denied with
        the reason, rather than left to wait for nobody. An unconfirmed card (the platform lost its answer
        and the bridge did not send it twice) is most likely in the chat: it counts as shown, and the
        request waits for a press on it or its expiry."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE card_id = ?", (receipt.outbound_id,)).fetchone()
            if row is None:
                return Step("not_ours")
            if receipt.unconfirmed or (receipt.ok and receipt.platform_message_id):
                return self._shown(row, receipt, now)
            if not receipt.ok and receipt.final and row["status"] == "pending":
                error = receipt.error or "the platform refused it"
                self._audit(
                    row["id"], now, "card_undeliverable", row["approver"], f"{row['channel']}:{row['chat_id']}: {error}"
                )
                return self._next_approver(row, error, now)
            return Step("ignored")

    def _shown(self, row: sqlite3.Row, receipt: ev.DeliveryReceipt, now: float) -> Step:
        # An unconfirmed card may come without its platform id: a press on it then brings the id (`_decide`).
        if receipt.platform_message_id:
            self.conn.execute(
                "UPDATE approvals SET card_message_id = ? WHERE id = ?", (receipt.platform_message_id, row["id"])
            )
        if receipt.unconfirmed:
            detail = f"{row['channel']}:{row['chat_id']}: {receipt.error or 'unconfirmed'}"
            self._audit(row["id"], now, "card_unconfirmed", row["approver"], detail)
        if row["status"] != "pending":
            self._edit(row["id"])  # decided before its receipt came: edit it now
        return Step("unconfirmed" if receipt.unconfirmed else "delivered")

    def _next_approver(self, row: sqlite3.Row, error: str, now: float) -> Step:
        unreachable = [*json.loads(row["unreachable"]), row["approver"]]
        request = _request_decoder.decode(row["request"])
        rest = [a for a in json.loads(row["deciders"]) if a not in unreachable]
        delivery = policy.choose_delivery(request, rest, self._chats) if row["approver"] else None
        if delivery is None:
            self._decide(
                row["id"],
                "denied",
                DECIDER,
                "",
                f"the card could not be delivered to {row['approver'] or 'the chat'}: {error}",
                now,
            )
            return Step("undeliverable")
        card_id = self._new_card_id()  # a new card: its receipt and its clicks must name this one
        self.conn.execute(
            "UPDATE approvals SET card_id = ?, approver = ?, channel = ?, chat_id = ?, thread_id = ?, unreachable = ?"
            " WHERE id = ?",
            (
                card_id,
                delivery.approver,
                delivery.route.channel,
                delivery.route.chat_id,
                delivery.route.thread_id,
                json.dumps(unreachable),
                row["id"],
            ),
        )
        self._send_card(request, _card_decoder.decode(row["card"]), card_id, delivery, now)
        log.warning(
            "approval %s: card to %s undeliverable (%s); sent to %s instead",
            row["id"],
            row["approver"],
            error,
            delivery.approver,
        )
        return Step("next_approver")

    def decide(self, ref: str, choice: str, decider: str, now: float) -> Step:
        """A decision made at the machine (`clawden approvals approve|deny|answer`), whose owner may decide
        anything: `choice` names a button by id, label or number; the card is edited as for a click. The owner
        needs no router to say who may: a request waiting for it is recorded (its card sent to nobody) and decided
        at once, and waits no more (`routed` skips it; a copy of it is a duplicate)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM approvals WHERE id = ? OR card_id = ?", (ref, ref)).fetchone()
            waiting = None if row is not None else self._waiting(ref)
            if row is not None:
                settling = _settling(row)
            elif waiting is not None:
                settling = _unrouted_card(*waiting)
            else:
                return Step("unknown")
            outcome = policy.choose(settling, choice, now)
            if isinstance(outcome, policy.Unsettled):
                if outcome.why == "expired" and row is not None:  # the timer had not come to it yet: it expires now
                    self._decide(row["id"], "expired", "", "", TOO_LATE, now)
                elif outcome.why == "expired" and waiting is not None:
                    self._unrouted(waiting[0], "expired", UNROUTED, settling.expires_at, now)
                return Step(outcome.why)
            if waiting is not None:
                request = waiting[0]
                self._record(request, cards.card_for(request), now, settling.expires_at)
                self._audit(request.id, now, "unrouted", decider, f"decided at the machine while {ROUTING}")
            approval_id = row["id"] if row is not None else ref
            decision, button = outcome.decision, outcome.button
            self._decide(approval_id, decision, decider, button.id, "", now, label=button.label)
            log.info("approval %s %s by %s at the machine (%s)", approval_id, decision, decider, button.id)
            return Step(decision)

    # --- expiry ---------------------------------------------------------------------------------

    def expire_due(self, now: float) -> int:
        """Expire what is pending and due by `now`, once each: while running as each expiry comes, and at a
        start what came due while the service was down (a restart itself expires nothing)."""
        with self._tx() as db:
            due = [
                r[0]
                for r in db.execute("SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= ?", (now,))
            ]
            for approval_id in due:
                self._decide(approval_id, "expired", "", "", TOO_LATE, now)
            # Those the router never said who may approve (`routed` leaves them to this).
            unrouted = db.execute("SELECT request, expires_at FROM waiting WHERE expires_at <= ?", (now,)).fetchall()
            for request, expires_at in unrouted:
                self._unrouted(_request_decoder.decode(request), "expired", UNROUTED, expires_at, now)
            return len(due) + len(unrouted)

    def next_expiry(self) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(at) FROM (SELECT MIN(expires_at) AS at FROM approvals WHERE status = 'pending'"
            " UNION ALL SELECT MIN(expires_at) FROM waiting)"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # --- direct chats ---------------------------------------------------------------------------

    def learn_chat(self, user: str, route: ev.Route, now: float) -> bool:
        """Remember where a user writes to the assistant directly; False when nothing changed."""
        if self._chats.get(user) == route:
            return False
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO direct_chats (user_id, channel, chat_id, thread_id, seen_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user, route.channel, route.chat_id, route.thread_id, now),
            )
        self._chats[user] = route
        return True

    def move_chat(self, moved: ev.ChatMoved) -> int:
        """A chat got a new id on its platform (a Telegram group became a supergroup): cards and direct
        chats recorded under the old id follow it. Returns how many rows moved."""
        args = (moved.new_chat_id, moved.channel, moved.old_chat_id)
        with self._tx() as db:
            count = db.execute("UPDATE approvals SET chat_id = ? WHERE channel = ? AND chat_id = ?", args).rowcount
            count += db.execute("UPDATE direct_chats SET chat_id = ? WHERE channel = ? AND chat_id = ?", args).rowcount
        for user, route in list(self._chats.items()):
            if (route.channel, route.chat_id) == (moved.channel, moved.old_chat_id):
                self._chats[user] = msgspec.structs.replace(route, chat_id=moved.new_chat_id)
        return count

    # --- reading --------------------------------------------------------------------------------

    def list(self, status: str = "", limit: int = 200) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, card_id, kind, requester, agent_group, status, approver, channel, chat_id, created_at,"
            " expires_at, decided_at, decided_by, value, reason FROM approvals"
        )
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        rows = [dict(r) for r in self.conn.execute(sql, args)]
        if status not in ("", "pending"):
            return rows
        # Those waiting for the router are pending too (`_unrouted_row`), a few at most: merged here.
        waiting = self.conn.execute("SELECT * FROM waiting ORDER BY asked_at DESC LIMIT ?", (limit,)).fetchall()
        if not waiting:
            return rows
        merged = [*rows, *(_unrouted_row(_request_decoder.decode(w["request"]), w) for w in waiting)]
        return sorted(merged, key=lambda r: float(r["created_at"]), reverse=True)[:limit]

    def get(self, approval_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM approvals WHERE id = ? OR card_id = ?", (approval_id, approval_id)
        ).fetchone()
        if row is not None:
            out = dict(row)
            del out["request"], out["card"]
            card = _card_decoder.decode(row["card"])
            out["deciders"] = json.loads(row["deciders"])
        elif (waiting := self._waiting(approval_id)) is not None:
            out = _unrouted_row(*waiting)
            card = cards.card_for(waiting[0])  # the choices its owner has at the machine (`decide`)
            out.update(thread_id=None, card_message_id=None, edited=0, unreachable="[]", deciders=[])
        else:
            return None
        out["title"], out["body"] = card.title, card.body
        out["buttons"] = [{"id": b.id, "label": b.label} for b in card.buttons]
        out["audit"] = [
            dict(r)
            for r in self.conn.execute(
                "SELECT at, what, actor, detail FROM audit WHERE approval_id = ? ORDER BY seq", (out["id"],)
            )
        ]
        return out

    def request_of(self, approval_id: str) -> ev.ApprovalRequest | None:
        row = self.conn.execute("SELECT request FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return None if row is None else _request_decoder.decode(row[0])
