"""The vault process: vault.db, the CA, one gateway socket per agent group, and the control endpoints
behind `clawden secrets|rules|audit|egress`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import resource
import secrets as tokens
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from nats.micro.request import Request, ServiceError

from clawden import httpserve, natsauth
from clawden.agentcontainer import container_user
from clawden.bus import events as ev
from clawden.bus import placements, subjects
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as api
from clawden.bus.ctl.verb import BadRequest, Subject
from clawden.config import Config
from clawden.pki import CertificateAuthority, is_loopback
from clawden.runtime import ConfigurationError, ControlError, ServiceContext, sleep_unless_stopping
from clawden.sdnotify import Notifier
from clawden.vaultfiles import CA_CERT, CA_KEY, SOCKET_NAME, VAULT_DB, VAULT_KEY, trust_dir, vault_dir
from clawden.vaultlisten import listener_names, split_listen, tls_on
from services.vault.approvals import BusApprover, HeldAsks
from services.vault.audit import AuditLog, AuditRecord
from services.vault.catalog import (
    GROUP,
    MODEL_SECRET,
    Catalog,
    CatalogError,
    Condition,
    Credential,
    Egress,
    Rule,
    Secret,
    check_rule,
    check_secret,
)
from services.vault.certs import ListenerTls, write_trust_files
from services.vault.gateway import Gateway
from services.vault.modelcheck import ModelChecker, Refusal, RefusedKeys
from services.vault.oauth_connect import AppConnections
from services.vault.precedence import all_ties, shared_place, ties
from services.vault.ratecounts import RateCounts
from services.vault.refusals import Conflict, NotFound
from services.vault.sealing import Sealer, SealError, load_key
from services.vault.sigv4 import compact_keys
from services.vault.store import Store
from services.vault.tcpauth import registration_refusal, token_hash

log = logging.getLogger("clawden.vault")

PRUNE_EVERY = 3600.0
REFUSALS_RETRY = 30.0  # a write of the refused model keys that failed (a full disk) is tried again so often
# A notify field (systemd passes on X_ fields it does not know) by which `clawden up` learns whether the
# assistant can answer at all: "missing", or the names of the model secrets.
MODEL_KEY_FIELD = "x_clawden_model_key"
NO_MODEL_KEY = "missing"
# Where a model key is given outside the vault, as key_imports names them (the file by its place in the home).
ENV_SOURCE = "ANTHROPIC_API_KEY"
FILE_SOURCE = "keys/anthropic"
API_KEY_PREFIX = "oc_"  # OneCLI's project keys look so; a client that checks the shape is satisfied
API_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Announce = Callable[[ev.AuditEvent], Awaitable[None]]


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def _nobody(_event: ev.AuditEvent) -> None:
    return None


def model_credential(cfg: Config) -> tuple[str, str]:
    """The model key given outside the vault and where: ANTHROPIC_API_KEY, else keys/anthropic; ('', '')."""
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if key:
        return key, ENV_SOURCE
    file = cfg.keys_dir / "anthropic"
    try:
        if file.stat().st_mode & 0o077:
            log.warning("%s is readable by others; chmod 600 it", file)
        return file.read_text().strip(), FILE_SOURCE
    except FileNotFoundError:
        return "", ""


def model_key_sources(cfg: Config, value: str | None) -> list[api.ModelKeySource]:
    """The places the model key is imported from, as this process sees them (its own environment, not a shell's),
    that hold a key other than ``value``, the model secret's now (None: it was removed). Both are said, though the
    variable hides the file while it is set: a stale key in either is easy to forget, and imported once it shows."""
    found = []
    if (given := os.environ.get(ENV_SOURCE, "").strip()) and given != value:
        found.append(api.ModelKeySource(kind="env", where=ENV_SOURCE))
    file = cfg.keys_dir / "anthropic"
    try:
        held = file.read_text().strip()
    except OSError:  # none (or unreadable, which the import at the start says)
        held = ""
    if held and held != value:
        found.append(api.ModelKeySource(kind="file", where=str(file)))
    return found


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


NO_KEY_STATUS = "no model key: `clawden secrets add anthropic --type anthropic`"


class Vault:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        sealer: Sealer,
        ca: CertificateAuthority,
        gateway: Gateway,
        notifier: Notifier | None = None,
        announce: Announce = _nobody,
    ) -> None:
        self.cfg = cfg
        self.announce = announce  # audit events of changes made through the API or to its keys
        self.notifier = notifier
        self.store = store
        self.sealer = sealer
        self.ca = ca
        self.gateway = gateway
        self.listening: dict[str, Path] = {}
        self.tcp_port = 0  # the TCP listener's bound port, once it listens ([vault] tcp_listen)
        self.tcp_tls_name = ""  # its certificate's first name where it speaks TLS ([vault] tcp_tls)
        self._lock = asyncio.Lock()
        self.ca_file, self.bundle_file = write_trust_files(ca, trust_dir(cfg))
        self._ties_told: set[tuple[str, str]] = set()
        self.refused: RefusedKeys | None = None  # model keys the API refused at their last check: the trouble

    # -- the catalog the gateway reads --

    def load_catalog(self) -> Catalog:
        credentials = []
        for secret, sealed in self.store.secrets():
            try:
                credentials.append(Credential(secret, self.sealer.open(sealed, f"secret:{secret.name}")))
            except SealError:
                log.error("secret %s does not open with this vault key; it is not used", secret.name)
        egress: dict[str, Egress] = {
            g: m  # type: ignore[misc]  # filtered below
            for g, m in self.store.egress_modes().items()
            if m in ("open", "allowlist")
        }
        default: Egress = "allowlist" if self.cfg.vault.default_egress == "allowlist" else "open"
        return Catalog(
            credentials=tuple(credentials), rules=tuple(self.store.rules()), egress=egress, default_egress=default
        )

    async def refresh(self) -> None:
        catalog = await self.store.run(self.load_catalog)
        self.gateway.update_catalog(catalog)
        tokens_by_hash = {}
        for group, sealed in (await self.store.run(self.store.proxy_tokens)).items():
            try:
                tokens_by_hash[token_hash(self.sealer.open(sealed, f"proxy-token:{group}"))] = group
            except SealError:
                log.error("the proxy token of %s does not open with this vault key", group)
        tokens_by_hash |= await self.store.run(self.store.container_tokens)
        self.gateway.update_tokens(tokens_by_hash)
        if self.refused is not None:
            self.refused.stored(catalog)
        self.tell_model_key(catalog)
        await self.tell_ties(catalog)

    async def tell_ties(self, catalog: Catalog) -> None:
        """Say once (a warning and an audit event) each tie the catalog holds: stored before `secrets add` refused
        them, they are settled at every request the same way, the secret added first injected (`precedence`)."""
        age = {c.name: (c.secret.created_at, c.name) for c in catalog.credentials}
        beaten: dict[str, tuple[Secret, Secret]] = {}  # a secret left out -> (the oldest it ties with, it)
        for pair in all_ties([c.secret for c in catalog.credentials]):
            kept, left = sorted(pair, key=lambda s: age[s.name])
            if left.name not in beaten or age[kept.name] < age[beaten[left.name][0].name]:
                beaten[left.name] = (kept, left)
        found = {(kept.name, left.name): (kept, left) for kept, left in beaten.values()}
        for key in sorted(found.keys() - self._ties_told):
            kept, left = found[key]
            summary = (
                f"secrets {kept.name} and {left.name} tie: both set {shared_place(kept, left)} on "
                f"{kept.host_pattern} for the same agent groups and neither is more specific; requests get "
                f"{kept.name}, added first, and never {left.name}. End it: remove {left.name}, or grant it to some "
                "agent groups only"
            )
            log.warning("%s", summary)
            event = ev.AuditEvent(
                service="vault",
                kind="secrets-tied",
                at=time.time(),
                summary=summary,
                fields={"actor": "vault", "injected": kept.name, "left_out": left.name},
            )
            try:
                await self.announce(event)
            except Exception as exc:  # said in the log above; only the bus copy is lost
                log.error("cannot publish the audit event of the tie of %s and %s: %s", kept.name, left.name, exc)
        self._ties_told = set(found)

    @staticmethod
    def model_secrets(catalog: Catalog) -> list[str]:
        return sorted(c.secret.name for c in catalog.credentials if c.secret.kind == "anthropic")

    def tell_model_key(self, catalog: Catalog) -> None:
        """Say to systemd / `clawden up` whether a model key is stored: without one nothing can answer."""
        if self.notifier is None:
            return
        names = self.model_secrets(catalog)
        status = f"model key: {', '.join(names)}" if names else NO_KEY_STATUS
        if self.refused is not None and self.refused.line:
            self.notifier.notify(**{MODEL_KEY_FIELD: ",".join(names) or NO_MODEL_KEY})  # the trouble stays the status
        else:
            self.notifier.notify(**{MODEL_KEY_FIELD: ",".join(names) or NO_MODEL_KEY, "status": status})

    def bootstrap_model_key(self) -> None:
        """Import the model key given as ANTHROPIC_API_KEY or keys/anthropic as the secret `anthropic`, when it
        is new or changed since it was last imported from there. The source is a way to give the key, not a
        standing override: a key replaced or removed with `clawden secrets` stays so until the source changes."""
        value, source = model_credential(self.cfg)
        current = self.store.secret_sealed(MODEL_SECRET)
        if not value:
            if not self.model_secrets_stored():
                log.warning(
                    "no model key: set ANTHROPIC_API_KEY for the vault, write %s, or "
                    "`clawden secrets add anthropic --type anthropic`",
                    self.cfg.keys_dir / "anthropic",
                )
            return
        held = self._opened(current)
        last = self.store.key_import(MODEL_SECRET, source)
        where = self._source_said(source)
        # In a vault.db from before imports were recorded ("" here) the source was imposed at every start: this one
        # start does as that version would have (a key written to the file since, the way it documented, is taken),
        # and the rule holds from then on.
        if last and self._opened_digest(last, source) == _digest(value):
            # Given before: what the vault holds now was set with `clawden secrets` since, and stands.
            if held != value:
                log.warning(
                    "%s holds a model key other than the secret %s (%s with `clawden secrets`); it is imported "
                    "again only if it changes: delete it, or write the key you want there",
                    where,
                    MODEL_SECRET,
                    "removed" if current is None else "changed",
                )
            return
        if held == value:
            self._record_import(source, value)
            return
        grants = current[0].grants if current is not None else ("*",)
        secret = check_secret(
            Secret(name=MODEL_SECRET, kind="anthropic", host_pattern="api.anthropic.com", grants=grants), value
        )
        others = [s for s, _ in self.store.secrets()]
        if clash := self.new_ties(secret, current[0] if current is not None else None, others):
            log.warning("the model key in %s is not imported: %s", where, tie_refusal(secret, clash[0]))
            return
        self.store.put_secret(secret, self.sealer.seal(value, f"secret:{MODEL_SECRET}"))
        self._record_import(source, value)
        log.info(
            "imported the model key from %s as secret %s (%s)",
            where,
            MODEL_SECRET,
            "new there" if last is None else "changed there since it was last imported",
        )

    def model_secrets_stored(self) -> bool:
        return any(s.kind == "anthropic" for s, _ in self.store.secrets())

    def _opened(self, stored: tuple[Secret, str] | None) -> str | None:
        if stored is None:
            return None
        try:
            return self.sealer.open(stored[1], f"secret:{stored[0].name}")
        except SealError:
            return None

    def _opened_digest(self, sealed: str, source: str) -> str | None:
        try:
            return self.sealer.open(sealed, f"key-import:{MODEL_SECRET}:{source}")
        except SealError:  # sealed under another vault key: as if nothing had been imported
            return None

    def _record_import(self, source: str, value: str) -> None:
        sealed = self.sealer.seal(_digest(value), f"key-import:{MODEL_SECRET}:{source}")
        self.store.record_key_import(MODEL_SECRET, source, sealed, time.time())

    def _source_said(self, source: str) -> str:
        return str(self.cfg.keys_dir / "anthropic") if source == FILE_SOURCE else source

    @staticmethod
    def new_ties(secret: Secret, old: Secret | None, others: list[Secret]) -> list[Secret]:
        """The secrets ``secret`` would tie with that its earlier version (``old``) did not: a tie stored before
        the check does not stop its secrets from being changed (or narrowed, to end it)."""
        before = {s.name for s in ties(old, others)} if old is not None else set()
        return [s for s in ties(secret, others) if s.name not in before]

    # -- sockets --

    async def open_gateway(self, agent_group: str) -> Path:
        if not ev.GROUP_NAME.match(agent_group):
            raise ControlError(f"bad agent group name {agent_group!r}")
        async with self._lock:
            path = self.listening.get(agent_group)
            if path is None:
                # Only the group's containers may connect, not every local user: they run as the install's
                # uid (the vault's), or, under a root install, as the image's user, who then owns the socket; the
                # folder stays root's, and others may pass through it (0711) but neither list nor write it.
                owner = container_user()[1]
                folder = self.cfg.gateway_dir / agent_group
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o700 if owner is None else 0o711)
                path = folder / SOCKET_NAME
                try:
                    await self.gateway.listen(agent_group, path, owner)
                except OSError as exc:
                    if owner is None or exc.errno not in (errno.EPERM, errno.EINVAL):
                        raise
                    # A root vault that may not chown (a sandbox without CAP_CHOWN, or one mapping no uid but root): the
                    # containers' user can reach the socket only as everyone can.
                    log.warning("cannot give %s to uid %d (%s); it is open to every local user", path, owner, exc)
                    await self.gateway.listen(agent_group, path, None, mode=0o666)
                self.listening[agent_group] = path
                log.info("gateway for %s listening on %s", agent_group, path, extra={"agent_group": agent_group})
        return path

    # -- control endpoints --

    async def on_model_key(self, _request: Nothing) -> api.ModelKey:
        """Read ANTHROPIC_API_KEY / keys/anthropic again (`clawden init` asks after writing the file), so a
        key given after the start is used without a restart; answers which model secrets are stored."""
        async with self._lock:
            await self.store.run(self.bootstrap_model_key)
            await self.refresh()
        names = self.model_secrets(self.gateway.catalog)
        return api.ModelKey(present=bool(names), secrets=names)

    async def on_gateway(self, request: api.GroupRequest) -> api.Gateway:
        path = await self.open_gateway(request.agent_group)
        return api.Gateway(
            socket=str(path),
            trust_dir=str(self.ca_file.parent),
            ca_file=str(self.ca_file),
            bundle_file=str(self.bundle_file),
            ca_sha256=self.ca.fingerprint,
        )

    async def on_secrets_add(self, request: api.AddSecret) -> api.SecretAdded:
        if request.type not in ("anthropic", "openai", "generic", "aws"):
            raise ControlError(f"--type must be anthropic, openai, generic or aws, not {request.type!r}")
        value = compact_keys(request.value) if request.type == "aws" else request.value
        try:
            secret = check_secret(
                Secret(
                    name=request.name,
                    kind=request.type,  # type: ignore[arg-type]  # type checked above
                    host_pattern=request.host,
                    path_pattern=request.path,
                    header_name=request.header,
                    value_format=request.format,
                    param_name=request.param,
                    path_template=request.path_template,
                    path_regex=request.path_regex,
                    path_replacement=request.path_replacement,
                    grants=tuple(request.agents or ["*"]),
                    created_at=time.time(),
                ),
                value,
                force=request.force,
            )
        except CatalogError as exc:
            raise ControlError(str(exc)) from None
        async with self._lock:  # two adds at once must not each miss the other's tie
            stored = [s for s, _ in await self.store.run(self.store.secrets)]
            old = next((s for s in stored if s.name == secret.name), None)
            if not request.replace and old is not None:
                raise Conflict(
                    f"a secret named {secret.name} exists; add --replace to replace it (its value and host; its "
                    "grants only where groups are named)"
                )
            if old is not None and not request.agents:
                # A replacement that names no groups keeps the grants it had: a value corrected must not silently
                # reach every agent group (it did, as "none given" meant "all" for a new secret).
                secret = msgspec.structs.replace(secret, grants=old.grants)
            if clash := self.new_ties(secret, old, stored):
                raise Conflict(tie_refusal(secret, clash[0]))
            sealed = self.sealer.seal(value, f"secret:{secret.name}")
            created = await self.store.run(self.store.put_secret, secret, sealed)
            await self.refresh()
        sources = await self._say_source_differs(secret.name, value)
        log.info(
            "secret %s %s (%s for %s, granted to %s)",
            secret.name,
            "added" if created else "replaced",
            secret.kind,
            secret.host_pattern,
            ", ".join(secret.grants) or "nobody",
        )
        return api.SecretAdded(secret=_secret(secret), created=created, model_key_sources=sources)

    async def _say_source_differs(self, name: str, value: str | None) -> list[api.ModelKeySource]:
        """The model key set or removed here while ANTHROPIC_API_KEY / keys/anthropic holds another: said in the log
        and answered for `clawden secrets` to say, as that source is imported again once it changes. The vault
        looks, since only it sees its own environment (a systemd unit's, not the shell's that runs the CLI)."""
        if name != MODEL_SECRET:
            return []
        sources = await asyncio.to_thread(model_key_sources, self.cfg, value)
        for source in sources:
            log.warning(
                "%s still holds %s; it is imported again only if it changes",
                source.where,
                f"a model key, though the secret {MODEL_SECRET} is removed"
                if value is None
                else f"a model key other than the secret {MODEL_SECRET}'s",
            )
        return sources

    async def on_secrets_list(self, _request: Nothing) -> api.Secrets:
        secrets = await self.store.run(self.store.secrets)
        return api.Secrets(secrets=[_secret(s) for s, _ in secrets])

    async def on_secrets_remove(self, request: api.Named) -> api.Removed:
        name = request.name
        removed = await self.store.run(self.store.remove_secret, name)
        if not removed:
            raise NotFound(f"no secret named {name!r}")
        await self.refresh()
        log.info("secret %s removed", name)
        return api.Removed(removed=name, model_key_sources=await self._say_source_differs(name, None))

    async def on_secrets_grant(self, request: api.Grant) -> api.SecretGranted:
        name, agents, revoke = request.name, request.agents, request.revoke
        for group in agents:
            if not GROUP.match(str(group)):
                raise ControlError(f"{group!r} is not an agent group name")
        async with self._lock:
            stored = [s for s, _ in await self.store.run(self.store.secrets)]
            old = next((s for s in stored if s.name == name), None)
            if old is not None and not revoke:  # taking a grant away never makes a tie
                widened = msgspec.structs.replace(old, grants=tuple(sorted({*old.grants, *agents})))
                if clash := self.new_ties(widened, old, stored):
                    raise Conflict(tie_refusal(widened, clash[0], granting=True))
            changed = await self.store.run(
                self.store.change_grants, name, () if revoke else agents, agents if revoke else ()
            )
            if not changed:
                raise ControlError(f"no secret named {name!r}")
            await self.refresh()
        secret = await self.store.run(self.store.secret, name)
        return api.SecretGranted(secret=_secret(secret))

    async def on_rules_add(self, request: api.AddRule) -> api.RuleAdded:
        _check_rule_fields(request.action, request.window, request.limit)
        rule = _checked(
            Rule(
                name=request.name,
                action=request.action,  # type: ignore[arg-type]  # checked above
                host_pattern=request.host,
                path_pattern=request.path,
                method=request.method,
                agent_group=request.agent,
                rate_limit=request.limit,
                rate_window=request.window or "minute",  # type: ignore[arg-type]  # checked above
                enabled=request.enabled,
                conditions=_conditions(request.conditions),
                large_body=request.large_body,
                created_at=time.time(),
            )
        )
        if not await self.store.run(self.store.add_rule, rule):
            raise Conflict(f"a rule named {rule.name!r} exists; change it with `clawden rules update`")
        await self.refresh()
        log.info("rule %s added: %s %s%s", rule.name, rule.action, rule.host_pattern, rule.path_pattern)
        return api.RuleAdded(rule=_rule(rule))

    async def _rule_named(self, name: str) -> Rule:
        rule = await self.store.run(self.store.rule, name)
        if rule is None:
            raise NotFound(f"no rule named {name!r}")
        return rule

    async def on_rules_get(self, request: api.Named) -> api.RuleReply:
        return api.RuleReply(rule=_rule(await self._rule_named(request.name)))

    async def on_rules_update(self, request: api.UpdateRule) -> api.RuleReply:
        """Only the fields given change; the rule that results is checked as a new one would be."""
        async with self._lock:
            old = await self._rule_named(request.name)
            rule = _checked(_updated(old, request))
            await self.store.run(self.store.update_rule, rule)
            await self.refresh()
        log.info("rule %s updated: %s %s%s", rule.name, rule.action, rule.host_pattern, rule.path_pattern)
        return api.RuleReply(rule=_rule(rule))

    async def on_rules_enable(self, request: api.Named) -> api.RuleReply:
        return await self._set_enabled(request.name, True)

    async def on_rules_disable(self, request: api.Named) -> api.RuleReply:
        return await self._set_enabled(request.name, False)

    async def _set_enabled(self, name: str, enabled: bool) -> api.RuleReply:
        async with self._lock:
            rule = msgspec.structs.replace(await self._rule_named(name), enabled=enabled)
            await self.store.run(self.store.update_rule, rule)
            await self.refresh()
        log.info("rule %s %s", name, "enabled" if enabled else "disabled (kept, not applied)")
        return api.RuleReply(rule=_rule(rule))

    async def on_rules_list(self, _request: Nothing) -> api.Rules:
        return api.Rules(rules=[_rule(r) for r in await self.store.run(self.store.rules)])

    async def on_rules_remove(self, request: api.Named) -> api.Removed:
        name = request.name
        if not await self.store.run(self.store.remove_rule, name):
            raise NotFound(f"no rule named {name!r}")
        await self.refresh()
        return api.Removed(removed=name)

    async def on_audit(self, request: api.AuditQuery) -> api.Audit:
        limit = max(1, min(request.limit or 100, 10_000))
        records = await self.store.run(self.store.audit, request.agent or None, request.since, limit)
        return api.Audit(records=msgspec.convert(records, list[api.AuditRecord]))

    async def on_egress(self, request: api.EgressRequest) -> api.EgressMode:
        group, mode = request.agent_group, request.mode
        if not ev.GROUP_NAME.match(group):
            raise ControlError(f"bad agent group name {group!r}")
        if mode is not None:
            if mode not in ("open", "allowlist"):
                raise ControlError("the egress mode is open or allowlist")
            await self.store.run(self.store.set_egress, group, mode)
            await self.refresh()
            log.info("egress of %s is now %s", group, mode)
        return api.EgressMode(agent_group=group, egress=self.gateway.catalog.view(group).egress)

    async def on_proxy_token(self, request: api.GroupRequest) -> api.ProxyToken:
        """The TCP listener's token for a group (made on first use); for runners that cannot mount sockets."""
        group = request.agent_group
        if not ev.GROUP_NAME.match(group):
            raise ControlError(f"bad agent group name {group!r}")
        if not self.cfg.vault.tcp_listen:
            raise ControlError("the TCP listener is off ([vault] tcp_listen)")
        sealed = (await self.store.run(self.store.proxy_tokens)).get(group)
        if sealed is None:
            token = f"clp_{tokens.token_hex(24)}"
            await self.store.run(self.store.set_proxy_token, group, self.sealer.seal(token, f"proxy-token:{group}"))
            await self.refresh()
        else:
            token = self.sealer.open(sealed, f"proxy-token:{group}")
        scheme = "https" if self.tcp_tls_name else "http"  # a listener that speaks TLS is an HTTPS proxy
        return api.ProxyToken(agent_group=group, proxy_url=f"{scheme}://{group}:{token}@{self.cfg.vault.tcp_listen}")

    async def on_container_token_shared(self, _request: api.ContainerToken) -> api.TcpGateway:
        """The subject every runner could ask at: refused, since it does not say which runner asks."""
        raise ControlError(
            "a runner registers a container token at its own subject, clawden.ctl.vault.container-token.<runner id>,"
            " where the vault checks that the session is placed on it: this runner is older than the vault"
        )

    async def on_container_token(
        self, request: api.ContainerToken, runner: str, placed: ev.SessionPlaced | None
    ) -> api.TcpGateway:
        """The runner `runner`'s container will show the token with this sha256 on the TCP listener (its session's
        earlier one stops working at once); an empty sha256 withdraws the session's token. Only for a session
        placed on that runner (`placed`: the router's record; tcpauth.registration_refusal), else refused and
        audited."""
        where = None if placed is None else (placed.runner, placed.agent_group)
        refusal = registration_refusal(runner, self.cfg.runner.id, request.session_id, request.agent_group, where)
        if refusal:
            log.warning("container token refused: %s", refusal, extra={"session_id": request.session_id})
            await self.audit_change(
                f"runner {runner}",
                "container-token-refused",
                refusal,
                runner=runner,
                session_id=request.session_id,
                agent_group=request.agent_group,
            )
            raise ControlError(refusal)
        if not self.tcp_port:
            raise ControlError(
                "the vault's TCP listener is off: set [vault] tcp_listen (e.g. 127.0.0.1:8471) for runners whose"
                " containers reach the vault over TCP ([runner] vault_transport)"
            )
        if request.sha256:
            await self.store.run(
                self.store.set_container_token, request.session_id, request.agent_group, request.sha256, time.time()
            )
        else:
            await self.store.run(self.store.drop_container_token, request.session_id)
        await self.refresh()
        log.info(
            "container token for %s/%s %s",
            request.agent_group,
            request.session_id,
            "registered" if request.sha256 else "withdrawn",
        )
        return api.TcpGateway(
            port=self.tcp_port,
            trust_dir=str(self.ca_file.parent),
            ca_sha256=self.ca.fingerprint,
            tls_name=self.tcp_tls_name,
            ca_pem=self.ca.cert_pem.decode(),
        )

    # -- the HTTP API's keys and agents (services/vault/api.py serves them) --

    async def on_api_keys_create(self, request: api.Named) -> api.ApiKeyCreated:
        """A new key, shown in this reply only: vault.db keeps its sha256."""
        name = request.name
        if not API_KEY_NAME.match(name):
            raise ControlError(f"{name!r}: a key's name is letters, digits, '.', '_' or '-' (at most 64)")
        key = API_KEY_PREFIX + tokens.token_hex(32)
        now = time.time()
        if not await self.store.run(self.store.add_api_key, name, api_key_hash(key), key[:8], now):
            raise Conflict(f"an API key named {name!r} exists (revoked keys keep their names)")
        log.info("API key %s created", name)
        await self.audit_change("cli", "api-key-created", f"API key {name} created", key=name)
        return api.ApiKeyCreated(info=api.ApiKeyInfo(name=name, prefix=key[:8], created_at=now), key=key)

    async def on_api_keys_list(self, _request: Nothing) -> api.ApiKeys:
        return api.ApiKeys(keys=msgspec.convert(await self.store.run(self.store.api_keys), list[api.ApiKeyInfo]))

    async def on_api_keys_revoke(self, request: api.Named) -> api.ApiKeyInfo:
        """The key is refused from the next request on: every request looks its hash up in vault.db."""
        row = await self.store.run(self.store.revoke_api_key, request.name, time.time())
        if row is None:
            raise NotFound(f"no API key named {request.name!r} (see `clawden api-keys list`)")
        log.info("API key %s revoked", request.name)
        await self.audit_change("cli", "api-key-revoked", f"API key {request.name} revoked", key=request.name)
        return msgspec.convert(row, api.ApiKeyInfo)

    async def api_key_user(self, key: str) -> str | None:
        """The name of the live API key ``key`` is, or None."""
        return await self.store.run(self.store.api_key_user, api_key_hash(key), time.time())

    async def add_api_agent(self, identifier: str, name: str) -> dict[str, Any]:
        """An agent for a third-party orchestrator: its group gets a name and a proxy token for the TCP listener."""
        if not ev.GROUP_NAME.match(identifier):
            raise ControlError(f"bad agent group name {identifier!r}")
        token = f"clp_{tokens.token_hex(24)}"
        now = time.time()
        sealed = self.sealer.seal(token, f"proxy-token:{identifier}")
        if not await self.store.run(self.store.add_api_agent, identifier, name, sealed, now):
            raise Conflict(f"an agent with identifier {identifier!r} exists")
        await self.refresh()
        log.info("agent %s (%s) created through the API", identifier, name)
        return {"identifier": identifier, "name": name, "created_at": now}

    async def rename_api_agent(self, identifier: str, name: str) -> dict[str, Any]:
        if not name.strip() or len(name) > 255:
            raise ControlError("name: 1 to 255 characters")
        if not await self.store.run(self.store.rename_api_agent, identifier, name):
            raise NotFound(f"no agent {identifier!r} made through the API")
        return next(a for a in await self.api_agents() if a["identifier"] == identifier)

    async def remove_api_agent(self, identifier: str) -> None:
        """Its name and proxy token go; the TCP listener refuses the token from the next connection on."""
        if not await self.store.run(self.store.remove_api_agent, identifier):
            raise NotFound(f"no agent {identifier!r} made through the API")
        await self.refresh()
        log.info("agent %s removed through the API", identifier)

    async def api_agents(self) -> list[dict[str, Any]]:
        return await self.store.run(self.store.api_agents)

    async def proxy_url(self, group: str) -> str:
        """The proxy URL (with its token) an agent group's container uses through the TCP listener."""
        return (await self.on_proxy_token(api.GroupRequest(agent_group=group))).proxy_url

    async def audit_change(self, actor: str, kind: str, summary: str, **fields: str) -> None:
        """A change made through the API (or to its keys): a log line and an AuditEvent naming who made it."""
        log.info("audit: %s by %s", summary, actor, extra={"actor": actor})
        event = ev.AuditEvent(
            service="vault",
            kind=kind,
            at=time.time(),
            summary=f"{summary} (by {actor})",
            fields={"actor": actor, **fields},
        )
        try:
            await self.announce(event)
        except Exception as exc:  # the change is made and logged; the bus copy is lost, and that is said
            log.error("cannot publish the audit event of %s: %s", summary, exc)


def tie_refusal(secret: Secret, other: Secret, *, granting: bool = False) -> str:
    """Why ``secret`` may not be stored (or granted so) beside ``other``: they tie (`precedence`); and the ways out."""
    path = "" if other.path_pattern == "*" else other.path_pattern
    grants = ", ".join(other.grants).replace("*", "every agent group")
    clash = (
        f"{secret.name} would set {shared_place(secret, other)} on the same requests as {other.name} "
        f"({other.host_pattern}{path}, granted to {grants}) and neither is more specific, so which one a request "
        "should carry is unclear"
    )
    narrower = "a grant naming a group wins over one to every group"
    remove = f"remove {other.name} first (`clawden secrets remove {other.name}`)"
    if granting:
        return (
            f"{clash}: granting it so is refused. Grant {secret.name} to agent groups by name ({narrower}), or {remove}"
        )
    return (
        f"{clash}: storing it is refused. Put the value in {other.name} instead (`clawden secrets add {other.name} "
        f"--type {other.kind} --replace`), grant {secret.name} to some agent groups only (--agent GROUP: {narrower}), "
        f"or {remove}"
    )


def _secret(secret: Secret | None) -> api.SecretInfo:
    return msgspec.convert(msgspec.to_builtins(secret), api.SecretInfo)


def _rule(rule: Rule) -> api.RuleInfo:
    return msgspec.convert(msgspec.to_builtins(rule), api.RuleInfo)


def _conditions(conditions: list[api.Condition]) -> tuple[Condition, ...]:
    return tuple(Condition(operator=c.operator, value=c.value, pointer=c.pointer) for c in conditions)


def _check_rule_fields(action: str, window: str | None, limit: int) -> None:
    if action not in ("block", "manual_approval", "rate_limit", "allow"):
        raise ControlError("--action must be block, manual_approval, rate_limit or allow")
    if window not in (None, "minute", "hour", "day"):
        raise ControlError("--window must be minute, hour or day")
    if action != "rate_limit" and (limit or window is not None):
        raise ControlError(f"--limit and --window belong to rate_limit rules, not to a {action} rule")


def _checked(rule: Rule) -> Rule:
    try:
        return check_rule(rule)
    except CatalogError as exc:
        raise ControlError(str(exc)) from None


def _updated(old: Rule, request: api.UpdateRule) -> Rule:
    """``old`` with the fields ``request`` gives; a rule that stops being a rate limit drops its limit."""
    action = request.action or old.action
    if request.action is not None or request.limit is not None or request.window is not None:
        _check_rule_fields(action, request.window, request.limit or 0)
    rate_limit = old.rate_limit if request.limit is None else request.limit
    window = request.window or old.rate_window
    if action != "rate_limit":
        rate_limit, window = 0, "minute"
    if request.large_body not in (None, "default", "match", "ignore"):
        raise ControlError("--large-body must be match, ignore or default")
    fields: dict[str, Any] = {
        "action": action,
        "host_pattern": old.host_pattern if request.host is None else request.host,
        "path_pattern": old.path_pattern if request.path is None else request.path,
        "method": old.method if request.method is None else (None if request.method == "*" else request.method),
        "agent_group": old.agent_group if request.agent is None else request.agent,
        "rate_limit": rate_limit,
        "rate_window": window,
        "enabled": old.enabled if request.enabled is None else request.enabled,
        "conditions": old.conditions if request.conditions is None else _conditions(request.conditions),
        "large_body": old.large_body
        if request.large_body is None
        else (None if request.large_body == "default" else request.large_body),
    }
    return msgspec.structs.replace(old, **fields)


def raise_open_files(wanted: int = 8192) -> None:
    """Room for every group's gateway connections (`vault.max_connections_per_group`) where the limit passed on is
    low: `clawden up` under a shell's 1024, or macOS's 256. The units set it themselves and refuse setrlimit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        allowed = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config
    raise_open_files()
    folder = vault_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    store = await Store.start(folder / VAULT_DB)
    sealer = Sealer(load_key(cfg.keys_dir / VAULT_KEY))
    ca = CertificateAuthority.load_or_create(
        cfg.keys_dir / CA_KEY, cfg.keys_dir / CA_CERT, f"Clawden gateway CA ({cfg.install_id})"
    )
    audit = AuditLog(
        lambda batch: store.run(store.write_audit, batch), publish=lambda record: _publish_audit(ctx, record)
    )
    # A restart must not forgive a daily cap.
    rates = RateCounts(lambda counts, now: store.run(store.save_rate_counts, counts, now))
    rates.load(await store.run(store.rate_counts, time.time()))
    approver = BusApprover(ctx.nc, ctx.js, StoredAsks(store))
    # Asks a stopped vault left open went with its memory: nobody waits on their cards any more.
    if withdrawn := await approver.withdraw_left(await store.run(store.open_asks)):
        log.warning("withdrew %d approval(s) the last vault process left waiting", withdrawn)
    held = HeldAsks(approver)  # what the HTTP API's long-poll shows
    gateway = Gateway(
        cfg.model.upstream,
        ca=ca,
        work_dir=folder,
        extra_ca_file=cfg.vault.extra_ca_file or None,
        host_map=cfg.vault.host_map,
        audit=audit,
        approver=held,
        rate_counts=rates,
        approval_timeout=cfg.vault.approval_timeout,
        read_timeout=cfg.vault.read_timeout,
        max_connections_per_group=cfg.vault.max_connections_per_group,
        max_unauthenticated=cfg.vault.max_tokenless_connections,
        unauthenticated_timeout=cfg.vault.tokenless_timeout,
    )
    vault = Vault(cfg, store, sealer, ca, gateway, ctx.notifier, announce=lambda e: _publish_change(ctx, e))
    await store.run(vault.bootstrap_model_key)

    # A model key the API refuses (`clawden doctor`'s check, or an agent's own call) is the vault's trouble (`clawden
    # status`: degraded) until one passes or it is replaced. A restart does not forget it while that key is still the
    # one stored: known before the first request is answered, from the first catalog (`refresh`).
    def say_refused(line: str) -> None:
        ctx.set_trouble(line)
        if not line:  # the model-key status line again, as before the trouble
            vault.tell_model_key(gateway.catalog)

    refusals = StoredRefusals(store, sealer)
    vault.refused = RefusedKeys(say_refused, refused=await refusals.load(), save=refusals.save)
    gateway.model_answered = vault.refused.answered
    await vault.refresh()
    apps = AppConnections(store, sealer, gateway.apps, vault.audit_change)
    await apps.load()
    last_flush = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(audit.run(last_flush), name="vault-audit")
            tg.create_task(rates.run(last_flush), name="vault-rates")
            tg.create_task(refusals.run(last_flush), name="vault-model-refusals")
            tg.create_task(_prune(store, cfg.vault.audit_retention_days, ctx.stopping), name="vault-prune")
            # Containers that outlived a vault restart reconnect to the same socket paths.
            if cfg.gateway_dir.is_dir():
                for sub in sorted(cfg.gateway_dir.iterdir()):
                    if sub.is_dir() and ev.GROUP_NAME.match(sub.name):
                        await vault.open_gateway(sub.name)
            if cfg.vault.tcp_listen:
                await _listen_tcp(cfg, vault, gateway, ca, folder)
            await ctx.endpoint(api.GATEWAY, vault.on_gateway)
            await ctx.endpoint(api.SECRETS_ADD, vault.on_secrets_add)
            await ctx.endpoint(api.SECRETS_LIST, vault.on_secrets_list)
            await ctx.endpoint(api.SECRETS_REMOVE, vault.on_secrets_remove)
            await ctx.endpoint(api.SECRETS_GRANT, vault.on_secrets_grant)
            await ctx.endpoint(api.RULES_ADD, vault.on_rules_add)
            await ctx.endpoint(api.RULES_LIST, vault.on_rules_list)
            await ctx.endpoint(api.RULES_REMOVE, vault.on_rules_remove)
            await ctx.endpoint(api.RULES_GET, vault.on_rules_get)
            await ctx.endpoint(api.RULES_UPDATE, vault.on_rules_update)
            await ctx.endpoint(api.RULES_ENABLE, vault.on_rules_enable)
            await ctx.endpoint(api.RULES_DISABLE, vault.on_rules_disable)
            await ctx.endpoint(api.AUDIT, vault.on_audit)
            await ctx.endpoint(api.EGRESS, vault.on_egress)
            await ctx.endpoint(api.PROXY_TOKEN, vault.on_proxy_token)
            await ctx.endpoint(api.CONTAINER_TOKEN, vault.on_container_token_shared)
            await _serve_container_tokens(ctx, vault)
            await ctx.endpoint(api.MODEL_KEY, vault.on_model_key)
            # The model key tried on api.anthropic.com as the gateway would send it, for `clawden doctor` only.
            checker = ModelChecker(
                lambda: gateway.catalog,
                extra_ca_file=cfg.vault.extra_ca_file or None,
                host_map=cfg.vault.host_map,
                refused=vault.refused,
            )
            await ctx.endpoint(api.MODEL_CHECK, checker.on_check)
            await ctx.endpoint(api.API_KEYS_CREATE, vault.on_api_keys_create)
            await ctx.endpoint(api.API_KEYS_LIST, vault.on_api_keys_list)
            await ctx.endpoint(api.API_KEYS_REVOKE, vault.on_api_keys_revoke)
            await ctx.endpoint(api.APPS_BEGIN, apps.on_begin)
            await ctx.endpoint(api.APPS_FINISH, apps.on_finish)
            await ctx.endpoint(api.APPS_LIST, apps.on_list)
            await ctx.endpoint(api.APPS_DISCONNECT, apps.on_disconnect)
            await ctx.endpoint(api.APPS_DEVICE_BEGIN, apps.on_device_begin)
            await ctx.endpoint(api.APPS_DEVICE_POLL, apps.on_device_poll)
            ctx.stats["audit"] = audit.stats
            ctx.stats["rates"] = rates.stats
            async with _serving_api(ctx, vault, held):
                await ctx.ready(f"vault: {len(vault.listening)} gateways, CA sha256 {ca.fingerprint[:16]}")
                vault.tell_model_key(gateway.catalog)  # after READY, so it is the status systemd keeps showing
                await ctx.stopping.wait()
            await gateway.close()  # requests in flight end (and are recorded) before the last flush
            last_flush.set()
    finally:
        last_flush.set()
        await gateway.close()
        await rates.flush()  # a no-op after a clean stop; after a failure, what can still be saved
        await refusals.flush()
        await store.stop()


class StoredAsks:
    """The asks being waited on, in `vault.db` (`approvals.OpenAsks`): each opening and closing synced to disk, so
    that a power cut neither leaves an ask nobody withdraws nor withdraws one whose request went through."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def opened(self, approval_id: str) -> None:
        await self.store.run(self.store.open_ask, approval_id, time.time())

    async def closed(self, approval_id: str) -> None:
        await self.store.run(self.store.close_ask, approval_id)


class StoredRefusals:
    """The model keys the API refused (`modelcheck.RefusedKeys`) in `vault.db`, written behind each change. The
    digest of the value refused is sealed, as `key_imports` seals it: a refused value need not be a real key (a
    placeholder, a typo, a password pasted by mistake), and the bare sha256 of a guessable value gives it away to
    whoever reads the file without the vault key."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self._unwritten: dict[str, tuple[str, str]] | None = None  # the latest refusals, sealed, not yet written
        self._wake = asyncio.Event()

    async def load(self) -> dict[str, Refusal]:
        """The refusals the last process recorded; one sealed under another vault key is as if never recorded."""
        refusals = {}
        for name, (sealed, answer) in (await self.store.run(self.store.model_key_refusals)).items():
            with contextlib.suppress(SealError):
                refusals[name] = Refusal(self.sealer.open(sealed, f"model-refusal:{name}"), answer)
        return refusals

    def save(self, refusals: dict[str, Refusal]) -> None:
        self._unwritten = {n: (self.sealer.seal(r.digest, f"model-refusal:{n}"), r.answer) for n, r in refusals.items()}
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Write each change until ``stopping``, then what is left."""
        while await sleep_unless_stopping(stopping, REFUSALS_RETRY, self._wake):
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        if (refusals := self._unwritten) is None:
            return
        try:
            # Each write is the whole set, and the store runs its steps in turn: the last one written is the truth.
            await self.store.run(self.store.save_model_key_refusals, refusals)
        except Exception:  # kept for the next try; the trouble in memory stands meanwhile
            log.exception("recording the refused model keys in vault.db failed")
            return
        if self._unwritten is refusals:  # nothing changed while it was written
            self._unwritten = None


async def _listen_tcp(cfg: Config, vault: Vault, gateway: Gateway, ca: CertificateAuthority, folder: Path) -> None:
    """The TCP listener on `[vault] tcp_listen`, speaking TLS where `[vault] tcp_tls` says (off loopback)."""
    host, port = split_listen(cfg.vault.tcp_listen)
    if port is None:
        raise ConfigurationError(f"[vault] tcp_listen = {cfg.vault.tcp_listen!r}: expected host:port, e.g. 127.0.0.1:0")
    tls, how = None, "plain"
    if tls_on(cfg.vault.tcp_tls, host):
        names = listener_names(host, cfg.vault.tcp_names, (socket.gethostname(),))
        tls = ListenerTls(ca, folder / "listener", names).context
        vault.tcp_tls_name, how = names[0], f"TLS for {', '.join(names)}"
    elif not is_loopback(host):
        log.warning("the TCP listener on %s is off loopback without TLS ([vault] tcp_tls = false)", host)
    vault.tcp_port = await gateway.listen_tcp(host, port, tls)
    log.info("gateway TCP listener on %s (proxy tokens; %s)", cfg.vault.tcp_listen, how)


@asynccontextmanager
async def _serving_api(ctx: ServiceContext, vault: Vault, held: HeldAsks) -> AsyncIterator[None]:
    """The HTTP API on `[vault] api_listen` while the block runs; nothing when it is empty."""
    listen = ctx.config.vault.api_listen
    if not listen:
        yield
        return
    from services.vault import api as http_api  # it names Vault: imported once both exist

    host, port = http_api.api_address(listen)
    if not is_loopback(host):
        log.warning("the vault's HTTP API listens on %s, not loopback ([vault] api_listen): keys guard it", host)
    sock = http_api.bind(host, port)
    async with httpserve.serving(http_api.build(http_api.Api(vault, held, ctx.nc)), sock, timeout_graceful_shutdown=3):
        log.info("HTTP API on http://%s:%d (OneCLI's v1 paths)", host if ":" not in host else f"[{host}]", port)
        yield


async def _serve_container_tokens(ctx: ServiceContext, vault: Vault) -> None:
    """`container-token` at each runner's own subject (`api.container_token_at`), which NATS lets only that
    runner publish: the subject says which runner asks, and the session's placement says whether it may."""
    contract = Subject(natsauth.identity(ctx.name), api.CONTAINER_TOKEN.name)

    async def serve(req: Request) -> None:
        try:
            runner = api.runner_of(req.subject)
            if runner is None:
                raise ControlError(f"{req.subject} names no runner")
            _verb, request = contract.decode(req.data)
            placed = await _placement(ctx, request.session_id)
            answer = await vault.on_container_token(request, runner, placed)
        except (ControlError, BadRequest) as exc:
            await req.respond_error("400", str(exc))
            return
        except ServiceError as exc:
            await req.respond_error(exc.code, exc.description)
            return
        except Exception as exc:  # never leak a traceback to a caller
            log.exception("container-token failed")
            await req.respond_error("500", f"container-token failed: {type(exc).__name__}")
            return
        await req.respond(msgspec.json.encode(answer))

    assert ctx._micro is not None
    await ctx._micro.add_endpoint(
        name="container-token-by-runner", subject=api.CONTAINER_TOKEN_BY_RUNNER, handler=serve
    )


async def _placement(ctx: ServiceContext, session_id: str) -> ev.SessionPlaced | None:
    try:
        return await placements.placed(ctx.js, session_id)
    except Exception as exc:
        raise ServiceError("503", f"session {session_id}'s placement cannot be read ({exc!r}); ask again") from None


async def _publish_change(ctx: ServiceContext, event: ev.AuditEvent) -> None:
    await ctx.nc.publish(subjects.event("vault", event.kind), ev.encode(event))


async def _publish_audit(ctx: ServiceContext, record: AuditRecord) -> None:
    await ctx.nc.publish(subjects.event("vault", "audit"), ev.encode(record.event()))


async def _prune(store: Store, days: float, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        removed = await store.run(store.prune_audit, time.time() - days * 86400)
        if removed:
            log.info("pruned %d audit records older than %g days", removed, days)
        await sleep_unless_stopping(stopping, PRUNE_EVERY)
