"""The vault's control verbs (`clawden.ctl.vault.<verb>`): gateways for runners, and the secrets, rules,
audit and egress behind `clawden secrets|rules|audit|egress`."""

from __future__ import annotations

from typing import Literal

from clawden.bus.ctl.verb import Nothing, Reply, Request, declare

SERVICE = "vault"

SecretType = Literal["anthropic", "openai", "generic"]
RuleAction = Literal["block", "manual_approval", "rate_limit", "allow"]
Window = Literal["minute", "hour", "day"]
Egress = Literal["open", "allowlist"]


class Named(Request, frozen=True):
    name: str


class GroupRequest(Request, frozen=True):
    agent_group: str


class AddSecret(Request, frozen=True):
    name: str
    type: str
    value: str
    host: str = ""
    path: str = "*"
    header: str = ""
    format: str = "{value}"
    param: str = ""
    agents: list[str] = []
    replace: bool = False  # a secret of that name exists: replace it (else refused)
    force: bool = False  # a non-model secret may match the model API's host

    def __repr__(self) -> str:  # this one carries a value: never let it print
        return f"AddSecret(name={self.name!r}, <value hidden>)"


class Grant(Request, frozen=True):
    name: str
    agents: list[str] = []
    revoke: bool = False


class AddRule(Request, frozen=True):
    name: str
    action: str
    host: str
    path: str = "*"
    method: str | None = None
    agent: str = "*"
    limit: int = 0
    window: str | None = None  # rate_limit only: minute (the default), hour or day


class AuditQuery(Request, frozen=True):
    agent: str | None = None
    since: float | None = None
    limit: int | None = None  # None: the last 100


class EgressRequest(Request, frozen=True):
    agent_group: str
    mode: str | None = None  # None: only say it


class Gateway(Reply, frozen=True):
    socket: str
    trust_dir: str
    ca_file: str
    bundle_file: str
    ca_sha256: str


class SecretInfo(Reply, frozen=True):
    """A secret as the vault describes it: never its value."""

    name: str
    kind: SecretType
    host_pattern: str
    path_pattern: str
    header_name: str
    value_format: str
    param_name: str
    grants: list[str]
    created_at: float


class RuleInfo(Reply, frozen=True):
    name: str
    action: RuleAction
    host_pattern: str
    path_pattern: str
    method: str | None
    agent_group: str
    rate_limit: int
    rate_window: Window
    enabled: bool
    created_at: float


class SecretAdded(Reply, frozen=True):
    secret: SecretInfo
    created: bool


class SecretGranted(Reply, frozen=True):
    secret: SecretInfo


class Secrets(Reply, frozen=True):
    secrets: list[SecretInfo]


class RuleAdded(Reply, frozen=True):
    rule: RuleInfo


class Rules(Reply, frozen=True):
    rules: list[RuleInfo]


class Removed(Reply, frozen=True):
    removed: str


class AuditRecord(Reply, frozen=True):
    at: float
    agent_group: str
    method: str
    host: str
    path: str
    status: int
    decision: str
    rule: str
    bytes_in: int
    bytes_out: int
    duration_ms: float
    injected: str
    approval_id: str


class Audit(Reply, frozen=True):
    records: list[AuditRecord]


class EgressMode(Reply, frozen=True):
    agent_group: str
    egress: Egress


class ProxyToken(Reply, frozen=True):
    agent_group: str
    proxy_url: str  # carries the token: for the runner's container only


class ModelKey(Reply, frozen=True):
    present: bool
    secrets: list[str]


GATEWAY = declare(SERVICE, "gateway", GroupRequest, Gateway)
SECRETS_ADD = declare(SERVICE, "secrets-add", AddSecret, SecretAdded)
SECRETS_LIST = declare(SERVICE, "secrets-list", Nothing, Secrets)
SECRETS_REMOVE = declare(SERVICE, "secrets-remove", Named, Removed)
SECRETS_GRANT = declare(SERVICE, "secrets-grant", Grant, SecretGranted)
RULES_ADD = declare(SERVICE, "rules-add", AddRule, RuleAdded)
RULES_LIST = declare(SERVICE, "rules-list", Nothing, Rules)
RULES_REMOVE = declare(SERVICE, "rules-remove", Named, Removed)
AUDIT = declare(SERVICE, "audit", AuditQuery, Audit)
EGRESS = declare(SERVICE, "egress", EgressRequest, EgressMode)
PROXY_TOKEN = declare(SERVICE, "proxy-token", GroupRequest, ProxyToken)
MODEL_KEY = declare(SERVICE, "model-key", Nothing, ModelKey)
