"""The vault's control verbs (`clawden.ctl.vault.<verb>`): gateways for runners, and the secrets, rules,
audit and egress behind `clawden secrets|rules|audit|egress`."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl.verb import Nothing, Reply, Request, declare

SERVICE = "vault"

SecretType = Literal["anthropic", "openai", "generic", "aws"]
RuleAction = Literal["block", "manual_approval", "rate_limit", "allow"]
Window = Literal["minute", "hour", "day"]
Egress = Literal["open", "allowlist"]
Operator = Literal["contains", "equals"]
LargeBody = Literal["match", "ignore"]
Sha256 = Annotated[str, Meta(pattern="^$|^[0-9a-f]{64}$")]  # lower-case hex; "" where the field may be empty


class Condition(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A test on the request body: ``contains`` a text (in the raw body, or in the JSON value at
    ``pointer``), or ``equals`` the JSON value at ``pointer`` (RFC 6901, e.g. /model)."""

    operator: Operator
    value: str
    pointer: str = ""


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
    path_template: str = ""  # generic: the value goes into the path, e.g. /bot{value}
    path_regex: str = ""  # generic: or the first match of this regex on the path...
    path_replacement: str = ""  # ...becomes this, holding {value}
    # The agent groups granted it. None given: the grants of the secret it replaces (`replace`), else every group
    # (OneCLI v1's default, which the HTTP API keeps; `clawden secrets add` names the groups itself).
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
    enabled: bool = True
    conditions: list[Condition] = []  # all must hold on the body (at most 10)
    large_body: LargeBody | None = None  # a body conditions cannot test: match or ignore (None: by action)


class UpdateRule(Request, frozen=True):
    """Only the fields given change; the result is checked as `rules-add` checks a new rule."""

    name: str
    action: str | None = None
    host: str | None = None
    path: str | None = None
    method: str | None = None  # "*": every method again
    agent: str | None = None
    limit: int | None = None
    window: str | None = None
    enabled: bool | None = None
    conditions: list[Condition] | None = None  # []: none any more
    large_body: str | None = None  # "default": by action again


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
    path_template: str = ""
    path_regex: str = ""
    path_replacement: str = ""

    def where(self) -> str:
        """Host and path as the owner reads them: `api.github.com*` would look like the host pattern the vault
        refuses, so any path is said in words."""
        return self.host_pattern + (" (any path)" if self.path_pattern == "*" else self.path_pattern)


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
    conditions: list[Condition] = []
    large_body: LargeBody | None = None


KeySourceKind = Literal["env", "file"]


class ModelKeySource(Reply, frozen=True):
    """A place the vault imports the model key from (its own ANTHROPIC_API_KEY, or keys/anthropic as it reads
    the file) that holds a key other than the model secret's: said because the vault imports it again once it
    changes. Only where: never the key, nor anything derived from it."""

    kind: KeySourceKind
    where: str  # the variable's name, or the file's path


class SecretAdded(Reply, frozen=True):
    secret: SecretInfo
    created: bool
    # The model secret (`anthropic`) set: the vault's import sources that hold another key. A vault from before
    # said none here (its log said it).
    model_key_sources: list[ModelKeySource] = []


class SecretGranted(Reply, frozen=True):
    secret: SecretInfo


class Secrets(Reply, frozen=True):
    secrets: list[SecretInfo]


class RuleAdded(Reply, frozen=True):
    rule: RuleInfo


class RuleReply(Reply, frozen=True):
    rule: RuleInfo


class Rules(Reply, frozen=True):
    rules: list[RuleInfo]


class Removed(Reply, frozen=True):
    removed: str
    model_key_sources: list[ModelKeySource] = []  # the model secret removed: its import sources that hold a key


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
    count: int = 1  # connections one record stands for (a burst refused over the group's cap)

    def said(self) -> str:
        """The decision as the CLI and the dashboard show it: with its rule, and how many it stands for."""
        return self.decision + (f" ({self.rule})" if self.rule else "") + (f" x{self.count}" if self.count != 1 else "")


class Audit(Reply, frozen=True):
    records: list[AuditRecord]


class EgressMode(Reply, frozen=True):
    agent_group: str
    egress: Egress


class ProxyToken(Reply, frozen=True):
    agent_group: str
    proxy_url: str  # carries the token: for the runner's container only


class ContainerToken(Request, frozen=True):
    """A runner's word that one container presents this token on the vault's TCP listener (vault_transport
    = "tcp"): only its sha256 travels, so neither the bus nor the vault ever holds the token. It replaces the
    session's earlier one (a container made again gets a new token); an empty `sha256` withdraws it.

    Asked at the runner's own subject (`container_token_at`), which NATS lets only that runner's identity
    publish: the vault takes the runner from the subject and accepts only a session placed on it."""

    agent_group: ev.GroupName
    session_id: ev.SessionId
    sha256: Sha256 = ""


class TcpGateway(Reply, frozen=True):
    """Where the TCP listener is (its bound port; the host part is the runner's `vault_tcp_host`) and the
    trust folder the runner mounts, as `gateway` gives it for the socket."""

    port: int
    trust_dir: str
    ca_sha256: str
    # The listener speaks TLS (`[vault] tcp_tls`) when set: its certificate's first name. The relay dials
    # tls://<vault_tcp_host>, verifying that name with the CA (this one, through a unix: route); "": plain.
    tls_name: str = ""
    ca_pem: str = ""  # the gateway CA's certificate, for a runner whose host does not have trust_dir


class ModelKey(Reply, frozen=True):
    present: bool
    secrets: list[str]


class ApiKeyInfo(Reply, frozen=True):
    """A key of the HTTP API (`clawden api-keys`): never the key itself, only its first characters."""

    name: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


class ApiKeyCreated(Reply, frozen=True):
    info: ApiKeyInfo
    key: str  # shown once: the vault keeps only its sha256

    def __repr__(self) -> str:
        return f"ApiKeyCreated(name={self.info.name!r}, <key hidden>)"


class ApiKeys(Reply, frozen=True):
    keys: list[ApiKeyInfo]


GATEWAY = declare(SERVICE, "gateway", GroupRequest, Gateway)
SECRETS_ADD = declare(SERVICE, "secrets-add", AddSecret, SecretAdded)
SECRETS_LIST = declare(SERVICE, "secrets-list", Nothing, Secrets)
SECRETS_REMOVE = declare(SERVICE, "secrets-remove", Named, Removed)
SECRETS_GRANT = declare(SERVICE, "secrets-grant", Grant, SecretGranted)
RULES_ADD = declare(SERVICE, "rules-add", AddRule, RuleAdded)
RULES_LIST = declare(SERVICE, "rules-list", Nothing, Rules)
RULES_REMOVE = declare(SERVICE, "rules-remove", Named, Removed)
RULES_GET = declare(SERVICE, "rules-get", Named, RuleReply)
RULES_UPDATE = declare(SERVICE, "rules-update", UpdateRule, RuleReply)
RULES_ENABLE = declare(SERVICE, "rules-enable", Named, RuleReply)
RULES_DISABLE = declare(SERVICE, "rules-disable", Named, RuleReply)
AUDIT = declare(SERVICE, "audit", AuditQuery, Audit)
EGRESS = declare(SERVICE, "egress", EgressRequest, EgressMode)
PROXY_TOKEN = declare(SERVICE, "proxy-token", GroupRequest, ProxyToken)
CONTAINER_TOKEN = declare(SERVICE, "container-token", ContainerToken, TcpGateway)
# The shared subject is refused: a runner asks at its own (`container_token_at`), so the vault knows who asks.
CONTAINER_TOKEN_BY_RUNNER = f"{CONTAINER_TOKEN.subject}.*"  # what the vault serves


def container_token_at(runner_id: str) -> str:
    """Where the runner `runner_id` registers its containers' tokens: `clawden.ctl.vault.container-token.<id>`."""
    return f"{CONTAINER_TOKEN.subject}.{subjects.token(runner_id)}"


def runner_of(subject: str) -> str | None:
    """The runner a `container_token_at` subject names; None for any other subject."""
    prefix = f"{CONTAINER_TOKEN.subject}."
    if not subject.startswith(prefix):
        return None
    try:
        return subjects.token(subject.removeprefix(prefix))
    except ValueError:
        return None


MODEL_KEY = declare(SERVICE, "model-key", Nothing, ModelKey)

# -- the model key checked live (`clawden doctor`): the vault asks api.anthropic.com, so the key never leaves it --

ModelOutcome = Literal["accepted", "rejected", "unreachable", "other"]
# Where an unreachable API stopped: its name did not resolve, resolved to a private address (the gateway reaches
# public ones only), refused or dropped the connection, or presented a certificate that does not verify, or the
# vault's bound passed.
Unreached = Literal["", "dns", "private", "connect", "tls", "timeout"]
MODEL_CHECK_WAIT = 10.0  # the vault answers within this, whatever api.anthropic.com does


class ModelCheck(Reply, frozen=True):
    """What api.anthropic.com said to `GET /v1/models?limit=1` carrying one model secret, injected as the
    gateway injects it: accepted (200), rejected (401/403: the key is wrong or revoked), unreachable, or
    another status. Never the secret: `message` is Anthropic's error message, or why it could not be reached."""

    name: str
    outcome: ModelOutcome
    oauth: bool = False  # a Claude subscription token (sk-ant-oat…), sent as a bearer token
    status: int = 0  # the HTTP status; 0 when none came
    error_type: str = ""  # Anthropic's error.type: authentication_error, permission_error, …
    message: str = ""
    unreached: Unreached = ""


class ModelChecks(Reply, frozen=True):
    host: str  # the API asked: api.anthropic.com
    mapped_to: str = ""  # where `[vault] host_map` sends it instead; "": where its name resolves
    checks: list[ModelCheck] = []  # one per anthropic secret for that host; none stored: empty


MODEL_CHECK = declare(SERVICE, "model-check", Nothing, ModelChecks)
API_KEYS_CREATE = declare(SERVICE, "api-keys-create", Named, ApiKeyCreated)
API_KEYS_LIST = declare(SERVICE, "api-keys-list", Nothing, ApiKeys)
API_KEYS_REVOKE = declare(SERVICE, "api-keys-revoke", Named, ApiKeyInfo)


# -- app connections (`clawden apps`): the CLI asks for an authorize URL, brings back the code --

AppName = Literal["google", "github"]


class AppBegin(Request, frozen=True):
    """Start connecting an app: the vault keeps the PKCE verifier and answers the URL to open."""

    provider: str
    client_id: str
    redirect_uri: str  # http://127.0.0.1:<port>/… where `clawden apps connect` listens
    client_secret: str = ""
    scopes: list[str] = []  # none: the provider's defaults
    agents: list[str] = []  # agent groups that may use it; none: every agent

    def __repr__(self) -> str:
        return f"AppBegin(provider={self.provider!r}, <client secret hidden>)"


class AppAuthorize(Reply, frozen=True):
    authorize_url: str
    state: str
    expires_at: float  # the code must come back before this


class AppFinish(Request, frozen=True):
    state: str
    code: str

    def __repr__(self) -> str:
        return f"AppFinish(state={self.state[:6]!r}…, <code hidden>)"


class AppInfo(Reply, frozen=True):
    """A connection as the vault describes it: never a token or the client secret."""

    provider: AppName
    client_id: str
    scopes: str
    grants: list[str]
    created_at: float
    expires_at: float | None = None  # the access token's end; None: it does not expire
    refreshed_at: float | None = None


class Apps(Reply, frozen=True):
    apps: list[AppInfo]


class AppDisconnected(Reply, frozen=True):
    provider: AppName
    revoked_at_provider: bool  # False: the provider could not be told; the vault forgot it anyway


APPS_BEGIN = declare(SERVICE, "apps-begin", AppBegin, AppAuthorize)
APPS_FINISH = declare(SERVICE, "apps-finish", AppFinish, AppInfo)
APPS_LIST = declare(SERVICE, "apps-list", Nothing, Apps)
APPS_DISCONNECT = declare(SERVICE, "apps-disconnect", Named, AppDisconnected)


class AppDeviceBegin(Request, frozen=True):
    """Start connecting by device code (RFC 8628; GitHub): no browser on this machine, no redirect."""

    provider: str
    client_id: str
    client_secret: str = ""
    scopes: list[str] = []
    agents: list[str] = []

    def __repr__(self) -> str:
        return f"AppDeviceBegin(provider={self.provider!r}, <client secret hidden>)"


class AppDevice(Reply, frozen=True):
    state: str
    user_code: str  # what the owner types at verification_uri
    verification_uri: str
    interval: int  # seconds between polls, as the provider asks
    expires_at: float


class AppPoll(Request, frozen=True):
    state: str


class AppPolled(Reply, frozen=True):
    done: bool  # False: the owner has not confirmed yet; poll again after `interval` seconds
    interval: int = 0
    info: AppInfo | None = None


APPS_DEVICE_BEGIN = declare(SERVICE, "apps-device-begin", AppDeviceBegin, AppDevice)
APPS_DEVICE_POLL = declare(SERVICE, "apps-device-poll", AppPoll, AppPolled)
