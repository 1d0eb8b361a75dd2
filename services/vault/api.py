"""The vault's HTTP API, shaped like OneCLI's v1 (`[vault] api_listen`): agents, secrets, rules, container
config, the gateway CA and approvals, for orchestrators and scripts. Bearer API keys (`clawden api-keys`).

Every change goes through the same handlers as `clawden secrets|rules` (so the same checks and messages),
and is audited with the key's name as the actor. No response carries a secret's value. Where OneCLI and
this API differ is written in the README's vault section."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clawden import control, httpserve
from clawden.agentcontainer import GATEWAY_MOUNT, RELAY_PORT
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import approvals as approvals_api
from clawden.bus.ctl import vault as api
from clawden.runtime import ConfigurationError, ControlError
from clawden.vaultfiles import SOCKET_NAME
from services.vault.approvals import ApprovalAsk, HeldAsks
from services.vault.catalog import Credential, GroupView
from services.vault.gateway import MODEL_HOST
from services.vault.injection import OAUTH_PREFIX
from services.vault.policy import RequestHead, injectable
from services.vault.precedence import choose
from services.vault.refusals import Conflict, NotFound

if TYPE_CHECKING:  # the service imports this module to serve it
    from services.vault.service import Vault

log = logging.getLogger("clawden.vault.api")

MAX_BODY = 64 * 1024  # bytes: a secret's value is at most 10,000 characters
MAX_VALUE = 10_000  # characters, as OneCLI
CA_CONTAINER_PATH = "/tmp/onecli-gateway-ca.pem"  # where OneCLI's SDK mounts the CA
# ?transport=socket: the agent's gateway socket mounted as in Clawden's own agent containers, and the relay
# inside (on the agent image's port) as the proxy.
CONTAINER_SOCKET = f"{GATEWAY_MOUNT}/{SOCKET_NAME}"
RELAY_PROXY = f"http://127.0.0.1:{RELAY_PORT}"
MODEL_CALL = RequestHead(method="POST", host=MODEL_HOST, port=443, target=b"/v1/messages", headers=())  # Claude Code's
POLL_DEFAULT = 30.0  # seconds a long-poll waits when nothing is held, as OneCLI's gateway
POLL_MAX = 60.0
APPROVALS_TIMEOUT = 5.0
IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")  # OneCLI's identifier: lowercase, digits, '-'
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


# --- request bodies, decoded once with OneCLI's field names --------------------------------------


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    pass


class NewAgent(Body, frozen=True):
    name: str
    identifier: str


class InjectionConfig(Body, frozen=True):
    header_name: str = ""
    value_format: str = ""
    param_name: str = ""
    path_template: str = ""
    path_regex: str = ""
    path_replacement: str = ""


class NewSecret(Body, frozen=True):
    name: str
    type: str
    value: str
    host_pattern: str = ""
    path_pattern: str | None = None
    injection_config: InjectionConfig | None = None
    agents: list[str] | None = None  # Clawden's: the agent groups granted it (none given: all)

    def __repr__(self) -> str:
        return f"NewSecret(name={self.name!r}, <value hidden>)"


class RuleCondition(Body, frozen=True):
    target: Literal["body"]
    operator: Literal["contains", "equals"]
    value: str
    key: str = ""


class NewRule(Body, frozen=True):
    name: str
    host_pattern: str
    action: str
    path_pattern: str | None = None
    method: str | None = None
    agent_id: str | None = None
    rate_limit: int | None = None
    rate_limit_window: str | None = None
    enabled: bool = True
    conditions: list[RuleCondition] = []


class AgentPatch(Body, frozen=True):
    name: str


class RulePatch(Body, frozen=True):
    """Only the fields given change; ``null`` for ``method`` or ``agentId`` means every method or agent."""

    host_pattern: str | None = None
    path_pattern: str | None = None
    method: str | msgspec.UnsetType | None = msgspec.UNSET
    action: str | None = None
    agent_id: str | msgspec.UnsetType | None = msgspec.UNSET
    rate_limit: int | None = None
    rate_limit_window: str | None = None
    enabled: bool | None = None
    conditions: list[RuleCondition] | None = None


class Decision(Body, frozen=True):
    decision: Literal["approve", "deny"]


# --- what goes out -------------------------------------------------------------------------------


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def secret_json(secret: api.SecretInfo) -> dict[str, Any]:
    """A secret as OneCLI lists it; the value is not in SecretInfo at all."""
    injection = {
        "headerName": secret.header_name,
        "valueFormat": secret.value_format,
        "paramName": secret.param_name,
        "pathTemplate": secret.path_template,
        "pathRegex": secret.path_regex,
        "pathReplacement": secret.path_replacement,
    }
    return {
        "id": secret.name,
        "name": secret.name,
        "type": secret.kind,
        "hostPattern": secret.host_pattern,
        "pathPattern": secret.path_pattern,
        "injectionConfig": {k: v for k, v in injection.items() if v} or None,
        "agents": secret.grants,
        "createdAt": iso(secret.created_at),
    }


def rule_json(rule: api.RuleInfo) -> dict[str, Any]:
    return {
        "id": rule.name,
        "name": rule.name,
        "hostPattern": rule.host_pattern,
        "pathPattern": rule.path_pattern,
        "method": rule.method,
        "action": rule.action,
        "enabled": rule.enabled,
        "agentId": None if rule.agent_group == "*" else rule.agent_group,
        "rateLimit": rule.rate_limit if rule.action == "rate_limit" else None,
        "rateLimitWindow": rule.rate_window if rule.action == "rate_limit" else None,
        "conditions": [
            {"target": "body", "operator": c.operator, "value": c.value, "key": c.pointer} for c in rule.conditions
        ],
        "createdAt": iso(rule.created_at),
    }


def agent_json(agent: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": agent["identifier"],
        "name": agent["name"],
        "identifier": agent["identifier"],
        "createdAt": iso(agent["created_at"]),
    }


def container_env(proxy_url: str, model_kinds: Collection[str], oauth: bool) -> dict[str, str]:
    """The env a container needs to go through the gateway: OneCLI's names, Clawden's proxy and CA."""
    env = dict.fromkeys(("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"), proxy_url)
    env |= dict.fromkeys(
        ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"),
        CA_CONTAINER_PATH,
    )
    env |= {"NODE_USE_ENV_PROXY": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_HTTP_PROXY_AUTHMETHOD": "basic"}
    if "anthropic" in model_kinds:
        env["CLAUDE_CODE_OAUTH_TOKEN" if oauth else "ANTHROPIC_API_KEY"] = "placeholder"
    if "openai" in model_kinds:
        env["OPENAI_API_KEY"] = "placeholder"
    return env


def model_key(view: GroupView) -> Credential | None:
    """The anthropic secret the gateway puts into the group's model calls: of several granted, the one `precedence`
    chooses for such a call, whose kind (an OAuth token or an API key) names the placeholder the container is given."""
    injected = choose(injectable(view.granted, MODEL_CALL), view.group).injected
    return next((c for c in injected if c.secret.kind == "anthropic"), None)


def pending_json(ask: ApprovalAsk, created: float, name: str) -> dict[str, Any]:
    return {
        "id": ask.id,
        "method": ask.method,
        "url": f"https://{ask.host}{ask.path}",
        "host": ask.host,
        "path": ask.path,
        "headers": {},
        "bodyPreview": ask.preview,
        "summary": f"{ask.method} {ask.host}{ask.path} (rule {ask.rule})",
        "agent": {"id": ask.agent_group, "name": name, "externalId": ask.agent_group},
        "createdAt": iso(created),
        "expiresAt": iso(ask.expires_at),
    }


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


# --- the endpoints -------------------------------------------------------------------------------

Handler = Callable[[Request, str], Awaitable[Response]]


class Api:
    def __init__(self, vault: Vault, held: HeldAsks, nc: Client) -> None:
        self.vault = vault
        self.held = held
        self.nc = nc

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the key check, with the handlers' refusals turned into OneCLI's error shape."""

        async def endpoint(request: Request) -> Response:
            try:
                actor = await self.authorise(request)
                return await handler(request, actor)
            except ApiError as exc:
                return error(exc.status, exc.error, exc.message)
            except NotFound as exc:
                return error(404, "not_found", str(exc))
            except Conflict as exc:
                return error(409, "conflict", str(exc))
            except ControlError as exc:
                return error(400, "invalid_request", str(exc))

        return endpoint

    async def authorise(self, request: Request) -> str:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>")
        actor = await self.vault.api_key_user(key.strip())
        if actor is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key")
        return f"api-key:{actor}"

    # -- agents --

    async def list_agents(self, _request: Request, _actor: str) -> Response:
        return JSONResponse([agent_json(a) for a in await self.vault.api_agents()])

    async def create_agent(self, request: Request, actor: str) -> Response:
        body = await decode(request, NewAgent)
        check_identifier(body.identifier)
        agent = await self.vault.add_api_agent(body.identifier, body.name)
        await self.vault.audit_change(
            actor, "api-agent-created", f"agent {body.identifier} created", agent=body.identifier
        )
        return JSONResponse(agent_json(agent), status_code=201)

    async def patch_agent(self, request: Request, actor: str) -> Response:
        identifier = request.path_params["id"]
        body = await decode(request, AgentPatch)
        agent = await self.vault.rename_api_agent(identifier, body.name)
        await self.vault.audit_change(actor, "api-agent-renamed", f"agent {identifier} renamed", agent=identifier)
        return JSONResponse(agent_json(agent))

    async def delete_agent(self, request: Request, actor: str) -> Response:
        identifier = request.path_params["id"]
        await self.vault.remove_api_agent(identifier)
        await self.vault.audit_change(actor, "api-agent-removed", f"agent {identifier} removed", agent=identifier)
        return JSONResponse({"success": True})

    # -- secrets --

    async def list_secrets(self, _request: Request, _actor: str) -> Response:
        return JSONResponse([secret_json(s) for s in (await self.vault.on_secrets_list(Nothing())).secrets])

    async def create_secret(self, request: Request, actor: str) -> Response:
        body = await decode(request, NewSecret)
        if len(body.value) > MAX_VALUE:
            raise ApiError(400, "invalid_request", f"value: at most {MAX_VALUE:,} characters")
        added = await self.vault.on_secrets_add(add_secret(body))
        await self.vault.audit_change(actor, "api-secret-added", f"secret {body.name} added", secret=body.name)
        return JSONResponse(secret_json(added.secret), status_code=201)

    async def delete_secret(self, request: Request, actor: str) -> Response:
        name = request.path_params["id"]
        await self.vault.on_secrets_remove(api.Named(name=name))
        await self.vault.audit_change(actor, "api-secret-removed", f"secret {name} removed", secret=name)
        return JSONResponse({"success": True})

    # -- rules --

    async def list_rules(self, _request: Request, _actor: str) -> Response:
        return JSONResponse([rule_json(r) for r in (await self.vault.on_rules_list(Nothing())).rules])

    async def create_rule(self, request: Request, actor: str) -> Response:
        body = await decode(request, NewRule)
        added = await self.vault.on_rules_add(add_rule(body))
        await self.vault.audit_change(actor, "api-rule-added", f"rule {body.name} added", rule=body.name)
        return JSONResponse(rule_json(added.rule), status_code=201)

    async def get_rule(self, request: Request, _actor: str) -> Response:
        return JSONResponse(rule_json((await self.vault.on_rules_get(api.Named(name=request.path_params["id"]))).rule))

    async def patch_rule(self, request: Request, actor: str) -> Response:
        name = request.path_params["id"]
        body = await decode(request, RulePatch)
        updated = await self.vault.on_rules_update(update_rule(name, body))
        await self.vault.audit_change(actor, "api-rule-updated", f"rule {name} updated", rule=name)
        return JSONResponse(rule_json(updated.rule))

    async def delete_rule(self, request: Request, actor: str) -> Response:
        name = request.path_params["id"]
        await self.vault.on_rules_remove(api.Named(name=name))
        await self.vault.audit_change(actor, "api-rule-removed", f"rule {name} removed", rule=name)
        return JSONResponse({"success": True})

    # -- what a container needs --

    async def container_config(self, request: Request, _actor: str) -> Response:
        """OneCLI's config (the proxy URL with the agent's token on the TCP listener), or with ``?transport=socket``
        Clawden's: the agent's gateway socket to mount, for a container with no network at all, whose relay
        (``python -m clawden_agent.relay SOCKET 3128`` in the agent image) is its proxy."""
        identifier = request.query_params.get("agent", "")
        if identifier not in {a["identifier"] for a in await self.vault.api_agents()}:
            raise ApiError(
                404,
                "agent_not_found",
                f"no agent {identifier!r}: create it with POST /v1/agents"
                if identifier
                else "no default agent: pass ?agent=<identifier>",
            )
        view = self.vault.gateway.catalog.view(identifier)
        kinds = {c.secret.kind for c in view.granted}
        key = model_key(view)
        oauth = key is not None and key.value.startswith(OAUTH_PREFIX)
        transport = request.query_params.get("transport", "tcp")
        if transport == "socket":
            socket_path = await self.vault.open_gateway(identifier)
            env = container_env(RELAY_PROXY, kinds, oauth) | {"CLAWDEN_GATEWAY_SOCKET": CONTAINER_SOCKET}
            mounts = [{"source": str(socket_path.parent), "target": GATEWAY_MOUNT, "readOnly": True}]
        elif transport == "tcp":
            if not self.vault.cfg.vault.tcp_listen:
                raise ApiError(503, "gateway_unavailable", "the gateway's TCP listener is off: set [vault] tcp_listen")
            env, mounts = container_env(await self.vault.proxy_url(identifier), kinds, oauth), []
        else:
            raise ApiError(400, "invalid_request", f"transport: tcp (the default) or socket, not {transport!r}")
        config: dict[str, Any] = {
            "env": env,
            "caCertificate": self.vault.ca.cert_pem.decode(),
            "caCertificateContainerPath": CA_CONTAINER_PATH,
            "warnings": [] if "anthropic" in kinds else ["no Anthropic secret is granted to this agent"],
        }
        return JSONResponse(config | ({"mounts": mounts} if mounts else {}))

    async def gateway_ca(self, _request: Request, _actor: str) -> Response:
        return Response(self.vault.ca.cert_pem, media_type="application/x-pem-file")

    # -- approvals: held here, decided by the approvals service --

    async def pending(self, request: Request, _actor: str) -> Response:
        exclude = {i for i in request.query_params.get("exclude", "").split(",") if i}
        timeout = poll_timeout(request.query_params.get("timeout", ""))
        deadline = time.monotonic() + timeout
        while True:
            version = self.held.version
            found = await self.still_pending([a for a in self.held.asks.values() if a.id not in exclude])
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or not await self.held.wait_past(version, remaining):
                break
        names = {a["identifier"]: a["name"] for a in await self.vault.api_agents()}
        requests = [
            pending_json(a, self.held.created.get(a.id, 0.0), names.get(a.agent_group, a.agent_group)) for a in found
        ]
        return JSONResponse({"requests": requests, "timeoutSeconds": timeout})

    async def still_pending(self, asks: list[ApprovalAsk]) -> list[ApprovalAsk]:
        """The asks the approvals service has not decided: one it has not recorded yet is pending too."""
        if not asks:
            return []
        try:
            rows = await control.ask_on(
                self.nc, approvals_api.LIST, approvals_api.ListRequest(limit=1000), timeout=APPROVALS_TIMEOUT
            )
        except control.ControlError as exc:
            raise ApiError(502, "approval_store_unavailable", str(exc)) from None
        decided = {r.id for r in rows if r.status != "pending"}
        return [a for a in asks if a.id not in decided]

    async def decide(self, request: Request, actor: str) -> Response:
        id = request.path_params["id"]
        body = await decode(request, Decision, status=422)
        if id not in self.held.asks:
            raise ApiError(*await self.gone_or_unknown(id))
        await self.recorded(id)
        try:
            await control.ask_on(
                self.nc,
                approvals_api.DECIDE,
                approvals_api.DecideRequest(id=id, choice=body.decision, by=actor),
                timeout=APPROVALS_TIMEOUT,
            )
        except control.Refused as exc:
            raise ApiError(410, "approval_expired", str(exc)) from None
        except control.ControlError as exc:
            raise ApiError(502, "approval_store_unavailable", str(exc)) from None
        await self.vault.audit_change(actor, "api-approval-decided", f"approval {id}: {body.decision}", approval=id)
        return JSONResponse({"success": True})

    async def recorded(self, id: str) -> None:
        """A held ask the approvals service has not stored yet cannot be decided yet: 503, ask again."""
        try:
            await control.ask_on(
                self.nc, approvals_api.SHOW, approvals_api.ShowRequest(id=id), timeout=APPROVALS_TIMEOUT
            )
        except control.Refused:
            raise ApiError(503, "approval_not_recorded", f"{id} is not recorded by the approvals service yet") from None
        except control.ControlError as exc:
            raise ApiError(502, "approval_store_unavailable", str(exc)) from None

    async def gone_or_unknown(self, id: str) -> tuple[int, str, str]:
        """An approval the gateway no longer holds: 410 when it was one (decided or expired), else 404."""
        try:
            found = await control.ask_on(
                self.nc, approvals_api.SHOW, approvals_api.ShowRequest(id=id), timeout=APPROVALS_TIMEOUT
            )
        except control.ControlError:
            return 404, "approval_not_found", f"no pending approval {id!r}"
        return 410, "approval_expired", f"approval {id} is {found.status}"


def api_address(listen: str) -> tuple[str, int]:
    """`[vault] api_listen` as (host, port): `:port` is loopback. Any other host must be written as an address,
    not a name that could resolve anywhere: serving every secret's writer off the machine is said, not implied."""
    try:
        host, port = httpserve.parse_listen(listen, "", "vault")
    except ConfigurationError:
        raise ConfigurationError(
            f"[vault] api_listen = {listen!r}: expected host:port or :port, e.g. ':8792'"
        ) from None
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(
            f"[vault] api_listen = {listen!r}: write an address (127.0.0.1:{port}, or the one to serve on), not a name"
        ) from None
    return host, port


def bind(host: str, port: int) -> socket.socket:
    try:
        return httpserve.bind(host, port, "vault", backlog=64)
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).replace("[vault] listen", "[vault] api_listen")) from None


def check_identifier(identifier: str) -> None:
    """OneCLI's rule for an identifier; it is also a valid agent group name."""
    if not IDENTIFIER.match(identifier):
        raise ApiError(400, "invalid_request", "identifier: lowercase letters, digits and '-', at most 50 characters")


def poll_timeout(text: str) -> float:
    if not text:
        return POLL_DEFAULT
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, "invalid_request", f"timeout: {text!r} is not a number of seconds") from None
    return max(0.0, min(value, POLL_MAX))


async def decode(request: Request, kind: type[T], status: int = 400) -> T:
    """The body as ``kind``: at most MAX_BODY bytes (413 beyond), JSON, OneCLI's field names."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"the body is over {MAX_BODY:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "payload_too_large", f"the body is over {MAX_BODY:,} bytes")
    try:
        return msgspec.json.decode(bytes(body), type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(status, "invalid_request", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_request", f"the body is not JSON: {exc}") from None


def add_secret(body: NewSecret) -> api.AddSecret:
    inject = body.injection_config or InjectionConfig()
    return api.AddSecret(
        name=body.name,
        type=body.type,
        value=body.value,
        host=body.host_pattern,
        path=body.path_pattern or "*",
        header=inject.header_name,
        format=inject.value_format or "{value}",
        param=inject.param_name,
        path_template=inject.path_template,
        path_regex=inject.path_regex,
        path_replacement=inject.path_replacement,
        agents=body.agents or [],
    )


def conditions(body: list[RuleCondition]) -> list[api.Condition]:
    """OneCLI's ``key`` is a JSON key or pointer: ``model`` is ``/model``."""
    return [
        api.Condition(
            operator=c.operator, value=c.value, pointer=c.key if not c.key or c.key.startswith("/") else f"/{c.key}"
        )
        for c in body
    ]


def update_rule(name: str, body: RulePatch) -> api.UpdateRule:
    method = None if body.method is msgspec.UNSET else (body.method or "*")
    agent = None if body.agent_id is msgspec.UNSET else (body.agent_id or "*")
    return api.UpdateRule(
        name=name,
        action=body.action,
        host=body.host_pattern,
        path=body.path_pattern,
        method=method,
        agent=agent,
        limit=body.rate_limit,
        window=body.rate_limit_window,
        enabled=body.enabled,
        conditions=None if body.conditions is None else conditions(body.conditions),
    )


def add_rule(body: NewRule) -> api.AddRule:
    return api.AddRule(
        name=body.name,
        action=body.action,
        host=body.host_pattern,
        path=body.path_pattern or "*",
        method=body.method,
        agent=body.agent_id or "*",
        limit=body.rate_limit or 0,
        window=body.rate_limit_window,
        enabled=body.enabled,
        conditions=conditions(body.conditions),
    )


def build(api_: Api) -> Starlette:
    g = api_.guarded
    routes = [
        Route("/v1/agents", g(api_.list_agents), methods=["GET"]),
        Route("/v1/agents", g(api_.create_agent), methods=["POST"]),
        Route("/v1/agents/{id}", g(api_.patch_agent), methods=["PATCH"]),
        Route("/v1/agents/{id}", g(api_.delete_agent), methods=["DELETE"]),
        Route("/v1/secrets", g(api_.list_secrets), methods=["GET"]),
        Route("/v1/secrets", g(api_.create_secret), methods=["POST"]),
        Route("/v1/secrets/{id}", g(api_.delete_secret), methods=["DELETE"]),
        Route("/v1/rules", g(api_.list_rules), methods=["GET"]),
        Route("/v1/rules", g(api_.create_rule), methods=["POST"]),
        Route("/v1/rules/{id}", g(api_.get_rule), methods=["GET"]),
        Route("/v1/rules/{id}", g(api_.patch_rule), methods=["PATCH"]),
        Route("/v1/rules/{id}", g(api_.delete_rule), methods=["DELETE"]),
        Route("/v1/container-config", g(api_.container_config), methods=["GET"]),
        Route("/v1/gateway/ca", g(api_.gateway_ca), methods=["GET"]),
        Route("/v1/approvals/pending", g(api_.pending), methods=["GET"]),
        Route("/v1/approvals/{id}/decision", g(api_.decide), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in OneCLI's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return error(status, "not_found" if status == 404 else "bad_request", str(getattr(exc, "detail", exc)))
