"""`approvals.db`'s tables, as named migrations applied once each, in order."""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_approvals",
        """
        -- One row per request, kept after the decision: it is the record of who decided what.
        CREATE TABLE approvals (
            id TEXT PRIMARY KEY,              -- the requester's id; decisions go out under it
            card_id TEXT NOT NULL UNIQUE,     -- short: what buttons carry
            kind TEXT NOT NULL,
            requester TEXT NOT NULL,
            agent_group TEXT NOT NULL,
            request BLOB NOT NULL,            -- the ApprovalRequest as received
            card BLOB NOT NULL,               -- the Card as shown
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'answered')),
            approver TEXT NOT NULL DEFAULT '',  -- who the card went to ('' for a question's chat)
            deciders TEXT NOT NULL DEFAULT '[]',  -- JSON list of users who may press its buttons
            channel TEXT NOT NULL DEFAULT '',
            chat_id TEXT NOT NULL DEFAULT '',
            thread_id TEXT,
            card_message_id TEXT,             -- the platform's id, from the delivery receipt
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            decided_at REAL,
            decided_by TEXT NOT NULL DEFAULT '',
            value TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            edited INTEGER NOT NULL DEFAULT 0  -- the card shows its outcome
        );
        CREATE INDEX approvals_status ON approvals (status, expires_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            approval_id TEXT NOT NULL,
            at REAL NOT NULL,
            what TEXT NOT NULL,
            actor TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX audit_approval ON audit (approval_id, seq);
        -- Clicks applied, by `<channel>:<action id>`: a redelivered click does nothing twice.
        CREATE TABLE clicks (key TEXT PRIMARY KEY, approval_id TEXT NOT NULL, at REAL NOT NULL);
        -- The direct chat each user last wrote in, per user id: where their cards go.
        CREATE TABLE direct_chats (
            user_id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT,
            seen_at REAL NOT NULL
        );
        -- Events committed with the state that caused them, published after the commit.
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            subject TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            payload BLOB NOT NULL
        );
    """,
    ),
    # Approvers whose card could not be delivered: the next one in line gets it instead.
    ("0002_undeliverable", "ALTER TABLE approvals ADD COLUMN unreachable TEXT NOT NULL DEFAULT '[]'"),
    # The kernel's outbox (clawden/outbox.py): rows by `id`, in one lane, so published in order as before.
    (
        "0003_kernel_outbox",
        """
        ALTER TABLE outbox RENAME COLUMN seq TO id;
        ALTER TABLE outbox ADD COLUMN lane TEXT NOT NULL DEFAULT '';
    """,
    ),
    # The requester's word on a decided request, shown under the card's outcome (`ApprovalRequest.amends`).
    ("0004_amended", "ALTER TABLE approvals ADD COLUMN note TEXT NOT NULL DEFAULT ''"),
    # Requests their requester withdrew (`ApprovalWithdrawn`): settled as expired, the card saying "Withdrawn". A
    # withdrawal applied before its request (held while the router is asked) waits here for it.
    (
        "0005_withdrawals",
        """
        CREATE TABLE withdrawals (
            id TEXT NOT NULL,
            requester TEXT NOT NULL,          -- counts only for a request of this requester's
            reason TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (id, requester)
        );
    """,
    ),
    # A withdrawn request says so in its own row (its requester's reason), so `withdrawals` need keep only those
    # whose request is not recorded yet, and no longer than a copy of it could still come (`forget_withdrawals`).
    (
        "0006_withdrawn",
        """
        ALTER TABLE approvals ADD COLUMN withdrawn TEXT;  -- NULL: not withdrawn
        UPDATE approvals SET withdrawn = (
            SELECT w.reason FROM withdrawals w WHERE w.id = approvals.id AND w.requester = approvals.requester
        ) WHERE status = 'expired';
        DELETE FROM withdrawals WHERE id IN (SELECT id FROM approvals);
    """,
    ),
    # Requests held while the router is asked who may approve them (no row in `approvals` yet), from the first try
    # until they are recorded: listed and shown as pending, decided by the machine's owner, and expired at their own
    # time, right from a start, rather than only once JetStream delivers the held request again.
    (
        "0007_waiting",
        """
        CREATE TABLE waiting (
            id TEXT PRIMARY KEY,
            request BLOB NOT NULL,            -- the ApprovalRequest as received (its msgspec JSON)
            asked_at REAL NOT NULL,           -- when it reached the bus
            expires_at REAL NOT NULL
        );
        CREATE INDEX waiting_expiry ON waiting (expires_at);
    """,
    ),
    # One ask of the router serves every request of an agent group waiting for it (`Store.routed`): the group, for
    # the service's rounds of asking. Rows from 0007 take it from the request they keep.
    (
        "0008_waiting_group",
        """
        ALTER TABLE waiting ADD COLUMN agent_group TEXT NOT NULL DEFAULT '';
        UPDATE waiting SET agent_group = COALESCE(json_extract(CAST(request AS TEXT), '$.agent_group'), '');
        CREATE INDEX waiting_group ON waiting (agent_group, expires_at);
    """,
    ),
]
