"""``vault.db``: secrets (sealed), grants, rules, per-group settings, rate-limit counts and the audit trail.

Only the vault service opens it. Calls are synchronous and short steps; the service starts the store on
its own thread (`servicedb.Store.start`) and runs them there. Values are stored sealed
(``sealing.Sealer``) with the secret's name as associated data.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from clawden import servicedb
from services.vault.audit import AuditRecord
from services.vault.catalog import Condition, Rule, Secret
from services.vault.policy import RateKey

# Named, and each idempotent: a vault.db from before named migrations (numbered by user_version) has
# every table already and takes them as no-ops.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_vault",
        """
    CREATE TABLE IF NOT EXISTS secrets (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        host_pattern TEXT NOT NULL,
        path_pattern TEXT NOT NULL DEFAULT '*',
        header_name TEXT NOT NULL DEFAULT '',
        value_format TEXT NOT NULL DEFAULT '{value}',
        param_name TEXT NOT NULL DEFAULT '',
        sealed TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS grants (
        secret TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE,
        agent_group TEXT NOT NULL,
        PRIMARY KEY (secret, agent_group)
    );
    CREATE TABLE IF NOT EXISTS rules (
        name TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        host_pattern TEXT NOT NULL,
        path_pattern TEXT NOT NULL DEFAULT '*',
        method TEXT,
        agent_group TEXT NOT NULL DEFAULT '*',
        rate_limit INTEGER NOT NULL DEFAULT 0,
        rate_window TEXT NOT NULL DEFAULT 'minute',
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS groups (
        agent_group TEXT PRIMARY KEY,
        egress TEXT,
        proxy_token_sealed TEXT
    );
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        agent_group TEXT NOT NULL,
        method TEXT NOT NULL,
        host TEXT NOT NULL,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        decision TEXT NOT NULL,
        rule TEXT NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        injected TEXT NOT NULL,
        approval_id TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
    CREATE INDEX IF NOT EXISTS audit_group_at ON audit (agent_group, at);
    """,
    ),
    (
        "0002_rate_counts",
        """
    CREATE TABLE IF NOT EXISTS rate_counts (
        rule TEXT NOT NULL,
        agent_group TEXT NOT NULL,
        window_seconds INTEGER NOT NULL,
        window_index INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (rule, agent_group, window_seconds, window_index)
    ) WITHOUT ROWID;
    """,
    ),
    (
        "0003_path_injection_and_conditions",
        """
    ALTER TABLE secrets ADD COLUMN path_template TEXT NOT NULL DEFAULT '';
    ALTER TABLE secrets ADD COLUMN path_regex TEXT NOT NULL DEFAULT '';
    ALTER TABLE secrets ADD COLUMN path_replacement TEXT NOT NULL DEFAULT '';
    ALTER TABLE rules ADD COLUMN conditions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE rules ADD COLUMN large_body TEXT;
    """,
    ),
    (
        "0004_api_keys_and_agents",
        """
    CREATE TABLE IF NOT EXISTS api_keys (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL,
        last_used_at REAL
    );
    ALTER TABLE groups ADD COLUMN api_name TEXT;
    ALTER TABLE groups ADD COLUMN api_created_at REAL;
    """,
    ),
    (
        "0005_app_connections",
        """
    CREATE TABLE IF NOT EXISTS apps (
        provider TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        client_secret_sealed TEXT NOT NULL,
        refresh_sealed TEXT NOT NULL,
        access_sealed TEXT NOT NULL,
        expires_at REAL,
        scopes TEXT NOT NULL DEFAULT '',
        grants TEXT NOT NULL DEFAULT '["*"]',
        created_at REAL NOT NULL,
        refreshed_at REAL
    );
    """,
    ),
    (
        "0006_container_tokens",
        """
    CREATE TABLE IF NOT EXISTS container_tokens (
        session_id TEXT PRIMARY KEY,
        agent_group TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    """,
    ),
    (
        "0007_open_asks",
        """
    -- Approvals the gateway waits on (its waiters are in memory): a vault that stopped without withdrawing
    -- one withdraws it at its next start, so no card is left to approve what nobody waits for.
    CREATE TABLE IF NOT EXISTS open_asks (
        id TEXT PRIMARY KEY,
        opened_at REAL NOT NULL
    );
    """,
    ),
    (
        "0008_audit_count",
        """
    -- One record may stand for many: a burst of connections refused over their group's cap.
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    """,
    ),
    (
        "0009_key_imports",
        """
    -- What was last imported into a secret from where it is given outside the vault (ANTHROPIC_API_KEY,
    -- keys/anthropic): a sealed sha256 of the value, never the value. A source is imported again only when
    -- it holds something else, so a key changed or removed with `clawden secrets` stays so.
    CREATE TABLE IF NOT EXISTS key_imports (
        secret TEXT NOT NULL,
        source TEXT NOT NULL,
        digest_sealed TEXT NOT NULL,
        imported_at REAL NOT NULL,
        PRIMARY KEY (secret, source)
    );
    -- Before this table the file was imported at every start, so a stored model key is what it held then,
    -- or what `clawden secrets` made of it since: source '' marks it as given, whatever the source holds.
    INSERT OR IGNORE INTO key_imports (secret, source, digest_sealed, imported_at)
        SELECT name, '', '', updated_at FROM secrets WHERE name = 'anthropic';
    """,
    ),
    (
        "0010_model_key_refusals",
        """
    -- The model keys the API refused (`modelcheck.RefusedKeys`), so a restart does not forget the vault's trouble
    -- while the refused key is still stored: a sealed sha256 of the value refused (never the value), and the answer.
    CREATE TABLE IF NOT EXISTS model_key_refusals (
        secret TEXT PRIMARY KEY,
        digest_sealed TEXT NOT NULL,
        answer TEXT NOT NULL
    );
    """,
    ),
]
APP_COLUMNS = (
    "provider",
    "client_id",
    "client_secret_sealed",
    "refresh_sealed",
    "access_sealed",
    "expires_at",
    "scopes",
    "grants",
    "created_at",
    "refreshed_at",
)
_conditions = msgspec.json.Decoder(tuple[Condition, ...])

AUDIT_COLUMNS = (
    "at",
    "agent_group",
    "method",
    "host",
    "path",
    "status",
    "decision",
    "rule",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "injected",
    "approval_id",
    "count",
)


class Store(servicedb.Store):
    migrations = MIGRATIONS
    synchronous = "NORMAL"
    foreign_keys = True

    @classmethod
    def connect(cls, path: Path) -> sqlite3.Connection:
        # Sealed or not, secrets are nobody else's to read: the file (and the WAL SQLite makes with its
        # mode) is the owner's alone from the start.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        return super().connect(path)

    @contextmanager
    def _synced(self) -> Iterator[None]:
        """The block's commits synced to disk (`synchronous = FULL`: the WAL fsynced at each commit), then the file's
        own setting again. Outside a transaction only: SQLite refuses to change it inside one."""
        self.conn.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, tuple(args)).fetchall())

    # -- secrets --

    def put_secret(self, secret: Secret, sealed: str) -> bool:
        """Store or replace a secret; grants are replaced by the secret's own. True when it is new."""
        now = time.time()
        with self._tx():
            existed = self.conn.execute("SELECT 1 FROM secrets WHERE name = ?", (secret.name,)).fetchone()
            self.conn.execute(
                """INSERT INTO secrets (name, kind, host_pattern, path_pattern, header_name, value_format,
                                        param_name, sealed, created_at, updated_at, path_template, path_regex,
                                        path_replacement)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, host_pattern = excluded.host_pattern,
                       path_pattern = excluded.path_pattern, header_name = excluded.header_name,
                       value_format = excluded.value_format, param_name = excluded.param_name,
                       sealed = excluded.sealed, updated_at = excluded.updated_at,
                       path_template = excluded.path_template, path_regex = excluded.path_regex,
                       path_replacement = excluded.path_replacement""",
                (
                    secret.name,
                    secret.kind,
                    secret.host_pattern,
                    secret.path_pattern,
                    secret.header_name,
                    secret.value_format,
                    secret.param_name,
                    sealed,
                    now,
                    now,
                    secret.path_template,
                    secret.path_regex,
                    secret.path_replacement,
                ),
            )
            self.conn.execute("DELETE FROM grants WHERE secret = ?", (secret.name,))
            self.conn.executemany(
                "INSERT INTO grants (secret, agent_group) VALUES (?, ?)",
                [(secret.name, group) for group in secret.grants],
            )
        return existed is None

    def remove_secret(self, name: str) -> bool:
        return self.conn.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount > 0

    def change_grants(self, name: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> bool:
        if self.conn.execute("SELECT 1 FROM secrets WHERE name = ?", (name,)).fetchone() is None:
            return False
        self.conn.executemany(
            "INSERT OR IGNORE INTO grants (secret, agent_group) VALUES (?, ?)", [(name, group) for group in add]
        )
        self.conn.executemany(
            "DELETE FROM grants WHERE secret = ? AND agent_group = ?", [(name, group) for group in remove]
        )
        return True

    def secrets(self) -> list[tuple[Secret, str]]:
        """Every secret with its sealed value, in name order."""
        grants: dict[str, list[str]] = {}
        for row in self._rows("SELECT secret, agent_group FROM grants ORDER BY agent_group"):
            grants.setdefault(row["secret"], []).append(row["agent_group"])
        return [
            (
                Secret(
                    name=row["name"],
                    kind=row["kind"],
                    host_pattern=row["host_pattern"],
                    path_pattern=row["path_pattern"],
                    header_name=row["header_name"],
                    value_format=row["value_format"],
                    param_name=row["param_name"],
                    path_template=row["path_template"],
                    path_regex=row["path_regex"],
                    path_replacement=row["path_replacement"],
                    grants=tuple(grants.get(row["name"], ())),
                    created_at=row["created_at"],
                ),
                row["sealed"],
            )
            for row in self._rows("SELECT * FROM secrets ORDER BY name")
        ]

    def secret(self, name: str) -> Secret | None:
        return next((s for s, _ in self.secrets() if s.name == name), None)

    def secret_sealed(self, name: str) -> tuple[Secret, str] | None:
        return next(((s, sealed) for s, sealed in self.secrets() if s.name == name), None)

    # -- what was imported into a secret from outside the vault (``Vault.bootstrap_model_key``) --

    def key_import(self, secret: str, source: str) -> str | None:
        """The sealed digest last imported from ``source``; "" for a secret stored before imports were
        recorded (source ''), None when nothing was."""
        row = self.conn.execute(
            "SELECT digest_sealed FROM key_imports WHERE secret = ? AND source IN (?, '') ORDER BY source DESC",
            (secret, source),
        ).fetchone()
        return None if row is None else str(row[0])

    def record_key_import(self, secret: str, source: str, digest_sealed: str, now: float) -> None:
        with self._tx():
            self.conn.execute("DELETE FROM key_imports WHERE secret = ? AND source = ''", (secret,))
            self.conn.execute(
                """INSERT INTO key_imports (secret, source, digest_sealed, imported_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (secret, source) DO UPDATE SET digest_sealed = excluded.digest_sealed,
                       imported_at = excluded.imported_at""",
                (secret, source, digest_sealed, now),
            )

    # -- the model keys the API refused (``modelcheck.RefusedKeys``; the service seals and opens the digests) --

    def model_key_refusals(self) -> dict[str, tuple[str, str]]:
        """secret -> (sealed digest of the value refused, the API's answer)."""
        rows = self.conn.execute("SELECT secret, digest_sealed, answer FROM model_key_refusals").fetchall()
        return {secret: (sealed, answer) for secret, sealed, answer in rows}

    def save_model_key_refusals(self, refusals: dict[str, tuple[str, str]]) -> None:
        """The refusals now, in place of those stored: each save is the whole (small) set, so the last one written
        is the truth whatever came before."""
        with self._tx():
            self.conn.execute("DELETE FROM model_key_refusals")
            self.conn.executemany(
                "INSERT INTO model_key_refusals (secret, digest_sealed, answer) VALUES (?, ?, ?)",
                [(secret, sealed, answer) for secret, (sealed, answer) in refusals.items()],
            )

    # -- rules --

    def add_rule(self, rule: Rule) -> bool:
        """False when a rule of that name exists already."""
        try:
            self.conn.execute(
                """INSERT INTO rules (action, host_pattern, path_pattern, method, agent_group, rate_limit,
                                      rate_window, enabled, conditions, large_body, created_at, name)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (*_rule_row(rule), rule.created_at or time.time(), rule.name),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def update_rule(self, rule: Rule) -> bool:
        """Replace a rule's definition (its name and creation time stay); False when there is none."""
        return (
            self.conn.execute(
                """UPDATE rules SET action = ?, host_pattern = ?, path_pattern = ?, method = ?, agent_group = ?,
                                    rate_limit = ?, rate_window = ?, enabled = ?, conditions = ?, large_body = ?
                   WHERE name = ?""",
                (*_rule_row(rule), rule.name),
            ).rowcount
            > 0
        )

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules() if r.name == name), None)

    def remove_rule(self, name: str) -> bool:
        return self.conn.execute("DELETE FROM rules WHERE name = ?", (name,)).rowcount > 0

    def rules(self) -> list[Rule]:
        return [
            Rule(
                name=row["name"],
                action=row["action"],
                host_pattern=row["host_pattern"],
                path_pattern=row["path_pattern"],
                method=row["method"],
                agent_group=row["agent_group"],
                rate_limit=row["rate_limit"],
                rate_window=row["rate_window"],
                enabled=bool(row["enabled"]),
                created_at=row["created_at"],
                conditions=_conditions.decode(row["conditions"]),
                large_body=row["large_body"],
            )
            for row in self._rows("SELECT * FROM rules ORDER BY created_at, name")
        ]

    # -- rate-limit counts (``ratecounts.RateCounts`` writes them behind) --

    def rate_counts(self, now: float) -> list[tuple[RateKey, int]]:
        """The counts of windows still open at ``now``; rows of windows that ended are deleted."""
        self.conn.execute("DELETE FROM rate_counts WHERE (window_index + 1) * window_seconds <= ?", (now,))
        rows = self.conn.execute(
            "SELECT rule, agent_group, window_index, window_seconds, count FROM rate_counts"
        ).fetchall()
        return [(RateKey(rule, group, index, seconds), count) for rule, group, index, seconds, count in rows]

    def save_rate_counts(self, counts: list[tuple[RateKey, int]], now: float) -> None:
        """Store counts (a stored count is never lowered: writes may arrive out of order) and prune ended windows."""
        rows = [(key.rule, key.group, key.seconds, key.window, count) for key, count in counts]
        with self._tx():
            self.conn.executemany(
                """INSERT INTO rate_counts (rule, agent_group, window_seconds, window_index, count)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (rule, agent_group, window_seconds, window_index)
                   DO UPDATE SET count = max(count, excluded.count)""",
                rows,
            )
            self.conn.execute("DELETE FROM rate_counts WHERE (window_index + 1) * window_seconds <= ?", (now,))

    # -- approvals the gateway waits on (``approvals.BusApprover``) --

    # Both synced at their commit, unlike the file's other writes (NORMAL): a power cut must not lose either. A lost
    # `open_ask` leaves an ask nobody withdraws should the vault then die; a lost `close_ask`, after an approved
    # request went through, has the next start withdraw it, and its card say that nothing was let through. One
    # fdatasync of the WAL each (0.2-0.8 ms on the development VM, against 0.02 ms unsynced), per human decision.

    def open_ask(self, approval_id: str, now: float) -> None:
        with self._synced():
            self.conn.execute("INSERT OR IGNORE INTO open_asks (id, opened_at) VALUES (?, ?)", (approval_id, now))

    def close_ask(self, approval_id: str) -> None:
        with self._synced():
            self.conn.execute("DELETE FROM open_asks WHERE id = ?", (approval_id,))

    def open_asks(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT id FROM open_asks ORDER BY opened_at")]

    # -- per-group settings --

    def set_egress(self, group: str, mode: str | None) -> None:
        self.conn.execute(
            """INSERT INTO groups (agent_group, egress) VALUES (?, ?)
                             ON CONFLICT (agent_group) DO UPDATE SET egress = excluded.egress""",
            (group, mode),
        )

    def egress_modes(self) -> dict[str, str]:
        return {
            row["agent_group"]: row["egress"]
            for row in self._rows("SELECT agent_group, egress FROM groups WHERE egress IS NOT NULL")
        }

    def set_proxy_token(self, group: str, sealed: str) -> None:
        self.conn.execute(
            """INSERT INTO groups (agent_group, proxy_token_sealed) VALUES (?, ?)
                             ON CONFLICT (agent_group)
                             DO UPDATE SET proxy_token_sealed = excluded.proxy_token_sealed""",
            (group, sealed),
        )

    def proxy_tokens(self) -> dict[str, str]:
        """agent group -> sealed proxy token."""
        return {
            row["agent_group"]: row["proxy_token_sealed"]
            for row in self._rows(
                "SELECT agent_group, proxy_token_sealed FROM groups WHERE proxy_token_sealed IS NOT NULL"
            )
        }

    # -- the TCP listener's per-container tokens (only their sha256, which a runner sent) --

    def set_container_token(self, session_id: str, group: str, sha256: str, now: float) -> None:
        """The session's container presents this token from now on; its earlier one is forgotten."""
        with self._tx() as conn:
            conn.execute("DELETE FROM container_tokens WHERE session_id = ? OR sha256 = ?", (session_id, sha256))
            conn.execute(
                "INSERT INTO container_tokens (session_id, agent_group, sha256, created_at) VALUES (?, ?, ?, ?)",
                (session_id, group, sha256, now),
            )

    def drop_container_token(self, session_id: str) -> None:
        self.conn.execute("DELETE FROM container_tokens WHERE session_id = ?", (session_id,))

    def container_tokens(self) -> dict[str, str]:
        """sha256 of a container's token -> its agent group."""
        return {
            row["sha256"]: row["agent_group"] for row in self._rows("SELECT sha256, agent_group FROM container_tokens")
        }

    # -- the HTTP API's keys (only their sha256 is kept) and agents --

    def add_api_key(self, name: str, sha256: str, prefix: str, now: float) -> bool:
        """False when a key of that name exists (revoked or not: a name means one key in the audit)."""
        try:
            self.conn.execute(
                "INSERT INTO api_keys (name, sha256, prefix, created_at) VALUES (?, ?, ?, ?)",
                (name, sha256, prefix, now),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def api_keys(self) -> list[dict[str, Any]]:
        return [
            dict(row)
            for row in self._rows(
                "SELECT name, prefix, created_at, revoked_at, last_used_at FROM api_keys ORDER BY created_at, name"
            )
        ]

    def revoke_api_key(self, name: str, now: float) -> dict[str, Any] | None:
        """The key after revoking it (a revoked key stays revoked at its first time); None when there is none."""
        self.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
        return next((k for k in self.api_keys() if k["name"] == name), None)

    def api_key_user(self, sha256: str, now: float) -> str | None:
        """The name of the live key with this hash, marked used; None for an unknown or revoked key."""
        row = self.conn.execute(
            "SELECT name FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL", (sha256,)
        ).fetchone()
        if row is None:
            return None
        self.conn.execute("UPDATE api_keys SET last_used_at = ? WHERE name = ?", (now, row["name"]))
        return str(row["name"])

    def add_api_agent(self, group: str, name: str, sealed_token: str, now: float) -> bool:
        """An agent made through the API: its group gets a name and a proxy token. False when it has one."""
        with self._tx():
            row = self.conn.execute("SELECT api_name FROM groups WHERE agent_group = ?", (group,)).fetchone()
            if row is not None and row["api_name"] is not None:
                return False
            self.conn.execute(
                """INSERT INTO groups (agent_group, proxy_token_sealed, api_name, api_created_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (agent_group) DO UPDATE SET
                       proxy_token_sealed = coalesce(groups.proxy_token_sealed, excluded.proxy_token_sealed),
                       api_name = excluded.api_name, api_created_at = excluded.api_created_at""",
                (group, sealed_token, name, now),
            )
        return True

    def rename_api_agent(self, group: str, name: str) -> bool:
        return (
            self.conn.execute(
                "UPDATE groups SET api_name = ? WHERE agent_group = ? AND api_name IS NOT NULL", (name, group)
            ).rowcount
            > 0
        )

    def remove_api_agent(self, group: str) -> bool:
        """Forget an API agent's name and its proxy token (so its proxy URL stops working); False when none."""
        return (
            self.conn.execute(
                """UPDATE groups SET api_name = NULL, api_created_at = NULL, proxy_token_sealed = NULL
                   WHERE agent_group = ? AND api_name IS NOT NULL""",
                (group,),
            ).rowcount
            > 0
        )

    def api_agents(self) -> list[dict[str, Any]]:
        """The agents made through the API: identifier (the agent group), name, created_at."""
        return [
            dict(row)
            for row in self._rows(
                """SELECT agent_group AS identifier, api_name AS name, api_created_at AS created_at
                   FROM groups WHERE api_name IS NOT NULL ORDER BY api_created_at, agent_group"""
            )
        ]

    # -- app connections (tokens and the client secret sealed; ``oauth_connect`` seals and opens them) --

    def put_app(self, row: dict[str, Any]) -> None:
        """Store a connection, replacing the provider's previous one (one connection per provider)."""
        self.conn.execute(
            f"INSERT OR REPLACE INTO apps ({', '.join(APP_COLUMNS)}) VALUES ({', '.join('?' * len(APP_COLUMNS))})",
            tuple(row[c] for c in APP_COLUMNS),
        )

    def apps(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._rows(f"SELECT {', '.join(APP_COLUMNS)} FROM apps ORDER BY provider")]

    def save_app_tokens(
        self, provider: str, refresh_sealed: str, access_sealed: str, expires_at: float | None, now: float
    ) -> bool:
        """A refresh's outcome; False when the connection is gone (disconnected while it ran)."""
        return (
            self.conn.execute(
                """UPDATE apps SET refresh_sealed = ?, access_sealed = ?, expires_at = ?, refreshed_at = ?
                   WHERE provider = ?""",
                (refresh_sealed, access_sealed, expires_at, now, provider),
            ).rowcount
            > 0
        )

    def remove_app(self, provider: str) -> bool:
        return self.conn.execute("DELETE FROM apps WHERE provider = ?", (provider,)).rowcount > 0

    # -- audit --

    def write_audit(self, records: list[AuditRecord]) -> None:
        rows = [
            (
                r.at,
                r.agent_group,
                r.method,
                r.host,
                r.path,
                r.status,
                r.decision,
                r.rule,
                r.bytes_in,
                r.bytes_out,
                round(r.duration_ms, 3),
                ",".join(r.injected),
                r.approval_id,
                r.count,
            )
            for r in records
        ]
        with self._tx():
            self.conn.executemany(
                f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})", rows
            )

    def audit(self, group: str | None = None, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` records matching, oldest first."""
        where: list[str] = []
        args: list[Any] = []
        if group:
            where.append("agent_group = ?")
            args.append(group)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        sql = (
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit {'WHERE ' + ' AND '.join(where) if where else ''} "
            "ORDER BY id DESC LIMIT ?"
        )
        rows = self._rows(sql, [*args, limit])
        return [dict(row) for row in reversed(rows)]

    def prune_audit(self, before: float) -> int:
        return self.conn.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount


def _rule_row(rule: Rule) -> tuple[Any, ...]:
    return (
        rule.action,
        rule.host_pattern,
        rule.path_pattern,
        rule.method,
        rule.agent_group,
        rule.rate_limit,
        rule.rate_window,
        int(rule.enabled),
        msgspec.json.encode(rule.conditions).decode(),
        rule.large_body,
    )
