"""What a control verb is: the one descriptor that says which service serves it, at which subject, what it
takes and what it gives. Every module beside this one declares its service's verbs with `declare`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, Union

import msgspec

from clawden.bus import subjects

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")

# Verbs served by many: every service (at `clawden.ctl.<identity>.<verb>`), or every channel bridge.
ANY_SERVICE = "*"
ANY_BRIDGE = "channel-*"


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A control request: a field the service does not know is a caller's mistake, refused with its name."""


class Nothing(Request, frozen=True):
    """A request that carries nothing: `{}`."""


class Op(Request, frozen=True, tag_field="op"):
    """A request among several at one subject (the router's resources), told apart by `"op"`."""


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """A control reply: a client ignores fields it does not know, so a service may add some."""


@dataclass(frozen=True)
class Verb(Generic[Req, Rep]):
    service: str  # the bus identity that serves it (`natsauth.identity`), or ANY_BRIDGE
    name: str  # the subject's last token
    request: type[Req]
    reply: type[Rep]

    @property
    def op(self) -> str | None:
        """The request's `"op"` tag where several verbs share the subject, else None."""
        config = self.request.__struct_config__
        return config.tag if config.tag_field == "op" and isinstance(config.tag, str) else None

    @property
    def subject(self) -> str:
        """Where a caller asks: an op's own subject (`clawden.ctl.router.groups.create`) where several ops
        share one, so a NATS identity can be granted one op and refused its neighbours; else the verb's."""
        if self.service.endswith("*"):
            raise ValueError(f"{self.label} is served by many: say by which with .at(<identity>)")
        shared = subjects.ctl(self.service, self.name)
        return f"{shared}.{subjects.token(self.own_op)}" if self.own_op else shared

    @property
    def own_op(self) -> str | None:
        """The op, where other verbs' ops share this verb's subject (so it has a subject of its own too)."""
        op = self.op
        if op and any(v.service == self.service and v.name == self.name and v.op != op for v in VERBS):
            return op
        return None

    @property
    def key(self) -> str:
        """The verb within its service: `tasks`, or `groups list` where ops share the subject."""
        return self.name + (f" {self.op}" if self.op else "")

    @property
    def label(self) -> str:
        return f"{self.service}.{self.key}"

    def at(self, identity: str) -> Verb[Req, Rep]:
        """A verb many serve (ping, a bridge's capabilities), as the one with this bus identity serves it."""
        if not self.service.endswith("*") or not self.served_by(identity):
            raise ValueError(f"{self.label} is not served by {identity!r}")
        return replace(self, service=subjects.token(identity))

    def served_by(self, identity: str) -> bool:
        if self.service.endswith("*"):
            return identity.startswith(self.service[:-1])
        return self.service == identity


VERBS: list[Verb[Any, Any]] = []


def declare(service: str, name: str, request: type[Req], reply: type[Rep]) -> Verb[Req, Rep]:
    verb = Verb(service, name, request, reply)
    subjects.token(name)
    if any(v.service == service and v.name == name and v.op == verb.op for v in VERBS):
        raise ValueError(f"{verb.label} is declared twice")
    VERBS.append(verb)
    return verb


def served_by(identity: str) -> list[Verb[Any, Any]]:
    """Every verb the service with this bus identity must serve."""
    return [v for v in VERBS if v.served_by(identity)]


class BadRequest(ValueError):
    """A request that does not decode as any verb at its subject: the caller's mistake, said with the JSON path."""


class Subject:
    """The verbs declared at one control subject of one service (one, or several told apart by "op"), and one
    decoder for all of them, so a request is decoded once into the verb it is for."""

    def __init__(self, identity: str, name: str, op: str | None = None) -> None:
        """All the verbs at the shared subject, or with `op` only that op's (its own subject decodes
        nothing else, so a grant of `groups.list` never reaches `groups delete`)."""
        self.verbs = {
            v.request: v.at(identity) if v.service.endswith("*") else v
            for v in served_by(identity)
            if v.name == name and (op is None or v.op == op)
        }
        if not self.verbs:
            raise ValueError(f"{identity} serves no verb {name!r}{f' {op}' if op else ''}: see clawden/bus/ctl")
        kinds = tuple(self.verbs)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            kinds[0] if len(kinds) == 1 else Union[kinds]  # noqa: UP007  # a Union built at run time
        )

    def decode(self, data: bytes) -> tuple[Verb[Any, Any], Any]:
        """The verb and its request; no body is an empty object."""
        try:
            request = self._decoder.decode(data or b"{}")
        except msgspec.ValidationError as exc:
            raise BadRequest(f"bad request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"bad request: not JSON ({exc})") from None
        return self.verbs[type(request)], request
