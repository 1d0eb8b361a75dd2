"""`router.db`'s tables, as named migrations applied once each, in order."""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_skeleton",
        """
        CREATE TABLE agent_groups (
            name TEXT PRIMARY KEY,
            folder TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE wirings (
            agent_group TEXT NOT NULL REFERENCES agent_groups(name),
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            PRIMARY KEY (agent_group, channel, chat_id)
        );
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            agent_group TEXT NOT NULL REFERENCES agent_groups(name),
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT NOT NULL DEFAULT '',
            runner TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_message_at REAL NOT NULL,
            UNIQUE (agent_group, channel, chat_id, thread_id)
        );
        CREATE TABLE dropped_messages (
            key TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            sender_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
    """,
    ),
    # The entity model. The skeleton's wirings (agent group, channel, chat) become messaging
    # groups and wirings with the defaults that reproduce what they did: everyone engages.
    (
        "0002_entities",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        ALTER TABLE agent_groups ADD COLUMN assistant_name TEXT NOT NULL DEFAULT '';
        ALTER TABLE agent_groups ADD COLUMN provider TEXT NOT NULL DEFAULT 'claude';
        ALTER TABLE agent_groups ADD COLUMN model TEXT NOT NULL DEFAULT '';
        ALTER TABLE agent_groups ADD COLUMN container TEXT NOT NULL DEFAULT '{}';
        CREATE UNIQUE INDEX agent_groups_folder ON agent_groups (folder);

        CREATE TABLE messaging_groups (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,  -- '*': every chat of the channel without a row of its own
            name TEXT NOT NULL DEFAULT '',
            is_group INTEGER NOT NULL DEFAULT 0,
            -- NULL: inherit the channel's '*' row (request_approval when there is none)
            unknown_sender_policy TEXT
                CHECK (unknown_sender_policy IN ('strict', 'request_approval', 'public')),
            denied_at REAL,
            created_at REAL NOT NULL,
            UNIQUE (channel, chat_id)
        );
        INSERT INTO messaging_groups (channel, chat_id, unknown_sender_policy, created_at)
            SELECT DISTINCT channel, chat_id, 'public', CAST(strftime('%s', 'now') AS REAL) FROM wirings;

        CREATE TABLE wirings_v2 (
            messaging_group INTEGER NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
            agent_group TEXT NOT NULL REFERENCES agent_groups(name) ON DELETE CASCADE,
            engage_mode TEXT NOT NULL DEFAULT 'pattern'
                CHECK (engage_mode IN ('pattern', 'mention', 'mention-sticky')),
            engage_pattern TEXT NOT NULL DEFAULT '.',
            sender_scope TEXT NOT NULL DEFAULT 'all' CHECK (sender_scope IN ('all', 'known')),
            ignored_messages TEXT NOT NULL DEFAULT 'drop'
                CHECK (ignored_messages IN ('drop', 'accumulate')),
            session_mode TEXT NOT NULL DEFAULT 'shared'
                CHECK (session_mode IN ('shared', 'per-thread', 'agent-shared')),
            priority INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            PRIMARY KEY (messaging_group, agent_group)
        ) WITHOUT ROWID;
        INSERT INTO wirings_v2 (messaging_group, agent_group, created_at)
            SELECT mg.id, w.agent_group, CAST(strftime('%s', 'now') AS REAL) FROM wirings w
            JOIN messaging_groups mg ON mg.channel = w.channel AND mg.chat_id = w.chat_id;
        DROP TABLE wirings;
        ALTER TABLE wirings_v2 RENAME TO wirings;
        CREATE INDEX wirings_by_group ON wirings (agent_group);

        ALTER TABLE sessions ADD COLUMN messaging_group INTEGER;  -- NULL: agent-shared
        CREATE INDEX sessions_by_thread ON sessions (channel, chat_id, thread_id);
        CREATE INDEX dropped_by_time ON dropped_messages (at);

        CREATE TABLE users (
            id TEXT PRIMARY KEY,  -- <channel>:<handle>, one per platform identity
            display_name TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            last_seen REAL
        );
        CREATE TABLE roles (
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('owner', 'admin')),
            agent_group TEXT NOT NULL DEFAULT '',  -- '': global; an owner is always global
            granted_by TEXT NOT NULL DEFAULT '',
            granted_at REAL NOT NULL,
            PRIMARY KEY (user_id, role, agent_group),
            CHECK (role = 'admin' OR agent_group = '')
        );
        CREATE TABLE members (
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            agent_group TEXT NOT NULL REFERENCES agent_groups(name) ON DELETE CASCADE,
            added_by TEXT NOT NULL DEFAULT '',
            added_at REAL NOT NULL,
            PRIMARY KEY (user_id, agent_group)
        ) WITHOUT ROWID;
        CREATE TABLE destinations (
            agent_group TEXT NOT NULL REFERENCES agent_groups(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (agent_group, name)
        );
        CREATE TABLE unregistered_senders (
            user_id TEXT NOT NULL,
            messaging_group INTEGER NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
            agent_group TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL,
            message_count INTEGER NOT NULL DEFAULT 1,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (user_id, messaging_group, agent_group)
        );
        CREATE TABLE sender_denials (
            user_id TEXT NOT NULL,
            agent_group TEXT NOT NULL REFERENCES agent_groups(name) ON DELETE CASCADE,
            denied_by TEXT NOT NULL DEFAULT '',
            denied_at REAL NOT NULL,
            PRIMARY KEY (user_id, agent_group)
        );
        -- Approval requests the router sent and still waits on, with the messages they hold.
        CREATE TABLE approvals (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('sender', 'channel')),
            messaging_group INTEGER NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            agent_group TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX approvals_one_per_sender ON approvals (user_id, agent_group) WHERE kind = 'sender';
        CREATE UNIQUE INDEX approvals_one_per_chat ON approvals (messaging_group) WHERE kind = 'channel';
        CREATE TABLE held_messages (
            approval_id TEXT NOT NULL REFERENCES approvals(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            event BLOB NOT NULL,
            held_at REAL NOT NULL,
            PRIMARY KEY (approval_id, key)
        );
        CREATE TABLE pairing_codes (
            channel TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        -- Every inbound key routed, so a redelivery after JetStream's dedupe window (or after an
        -- ack that was lost) routes nothing twice.
        CREATE TABLE processed (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
        CREATE INDEX processed_by_time ON processed (at);
        -- What the router must publish, written in the same transaction as the state it follows
        -- from; deleted once NATS has it. Lanes keep per-session order.
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            lane TEXT NOT NULL,
            subject TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            payload BLOB NOT NULL
        );
    """,
    ),
    # When an agent group's settings last changed: wakes carry them to the runner, and of two
    # snapshots that arrive out of order the runner keeps the later one.
    (
        "0003_agent_group_changed_at",
        """
        ALTER TABLE agent_groups ADD COLUMN changed_at REAL NOT NULL DEFAULT 0;
        UPDATE agent_groups SET changed_at = created_at;
    """,
    ),
    # Which sessions each chat message went to, so a person's later edit or delete of it follows it
    # there (and one of a message that went nowhere goes nowhere). Kept as long as `processed`.
    (
        "0004_routed",
        """
        CREATE TABLE routed (
            key TEXT NOT NULL,  -- the message's `<channel>:<message id>`
            agent_group TEXT NOT NULL,
            session_id TEXT NOT NULL,
            row_id TEXT NOT NULL,  -- its session row: the wake's message id
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT,
            sender_id TEXT NOT NULL,
            trigger INTEGER NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (key, agent_group)
        ) WITHOUT ROWID;
        CREATE INDEX routed_by_time ON routed (at);
    """,
    ),
    # Agents that talk to each other (services/router/relay.py): a destination on the agent channel has its hop
    # limit, and each session the hop count of the last message an agent relayed into it (a person's message
    # resets it) and the limit of the conversation that opened it.
    (
        "0005_agent_hops",
        """
        ALTER TABLE destinations ADD COLUMN max_hops INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sessions ADD COLUMN hops INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sessions ADD COLUMN hop_limit INTEGER NOT NULL DEFAULT 0;
    """,
    ),
    # "New agent" on a channel-registration card (services/router/cards.py): the owner who chose it, asked for
    # the new agent's name; their `/newagent NAME` creates the group and connects the chat ('' when nobody is).
    (
        "0006_new_agent",
        """
        ALTER TABLE approvals ADD COLUMN naming_by TEXT NOT NULL DEFAULT '';
    """,
    ),
    # The runner an agent group's new sessions are placed on (`clawden groups update --runner`; '': any live one,
    # by load; services/router/placement.py).
    (
        "0007_group_runner",
        """
        ALTER TABLE agent_groups ADD COLUMN runner TEXT NOT NULL DEFAULT '';
    """,
    ),
    # A chat told that its session's runner went silent (notices.runner_away): once per absence, which `since`
    # (when the router last heard that runner) names.
    (
        "0008_runner_away",
        """
        CREATE TABLE runner_away_told (session_id TEXT NOT NULL, runner TEXT NOT NULL, since REAL NOT NULL,
            PRIMARY KEY (session_id, runner, since));
    """,
    ),
    # Each session's placement epoch: 1 when it is made, one more each time it is moved to another runner
    # (a runner declared gone, with `[runner] shared_storage`). Every wake carries it; the session's folder is
    # fenced with it, so a runner the session left writes nothing more there.
    (
        "0009_session_epoch",
        """
        ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
    """,
    ),
    # The failover look (every `dead_after / 3` with shared storage) asks which runners hold sessions, and then
    # for a gone runner's sessions: with the index both are a walk of the runners, not of every session.
    (
        "0010_sessions_by_runner",
        """
        CREATE INDEX sessions_by_runner ON sessions (runner);
    """,
    ),
    # A group's CLAUDE.md as it was made (/newagent's starter, create_agent's instructions), sent with its
    # settings: the runner that starts its containers writes it where the group's folder has none ('' : none).
    (
        "0011_starter_memory",
        """
        ALTER TABLE agent_groups ADD COLUMN starter_memory TEXT NOT NULL DEFAULT '';
    """,
    ),
    # An agent-shared session has no chat of its own (its row says `*`): each wake names the chat that spoke, and
    # its answer goes there. The route of its last wake (JSON, '' while none is known), so that what the router
    # sends it without a message (an adoption by another runner, an agent's answer) names that chat too. Sessions
    # made before take it from the last message routed to them, where one is still remembered.
    (
        "0012_session_last_route",
        """
        ALTER TABLE sessions ADD COLUMN last_route TEXT NOT NULL DEFAULT '';
        UPDATE sessions SET last_route = coalesce((
            SELECT json_object('channel', r.channel, 'chat_id', r.chat_id, 'thread_id', r.thread_id)
            FROM routed r WHERE r.session_id = sessions.id ORDER BY r.at DESC LIMIT 1), '')
        WHERE chat_id = '*';
    """,
    ),
    # A chat that moved onto an id with its own approval waiting (both asked to be connected before anyone
    # answered): the old approval's held messages join the new one's, and a decision on the old card counts for
    # it. Gone with the approval it names, once that is settled.
    (
        "0013_merged_approvals",
        """
        CREATE TABLE merged_approvals (
            id TEXT PRIMARY KEY,  -- the old card's approval id
            into_id TEXT NOT NULL REFERENCES approvals(id) ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE INDEX merged_approvals_into ON merged_approvals (into_id);
    """,
    ),
    # The cards of approvals the router no longer waits on (settled on another card, expired, or dropped with their
    # agent group or chat) that may still be open in the approvals service: a press on one is answered "not carried
    # out", with `why`, in the presser's own chat. Forgotten with the `processed` keys.
    (
        "0014_withdrawn_approvals",
        """
        CREATE TABLE withdrawn_approvals (
            id TEXT PRIMARY KEY,  -- the card's approval id
            kind TEXT NOT NULL,
            agent_group TEXT NOT NULL,
            about TEXT NOT NULL,  -- what it asked, in words
            why TEXT NOT NULL,
            at REAL NOT NULL
        ) WITHOUT ROWID;
    """,
    ),
    # When the owner asked for a new agent's name pressed "New agent" (`naming_by`): of several chats waiting for a
    # name from them, `/newagent NAME` names the one they were asked about last.
    (
        "0015_naming_at",
        """
        ALTER TABLE approvals ADD COLUMN naming_at REAL NOT NULL DEFAULT 0;
    """,
    ),
]
