"""The control contract: every service's request/reply verbs (`clawden.ctl.<service>.<verb>`), each a `Verb`
naming its msgspec request and reply, so one place says what each verb takes and gives. The service side
serves them with `ServiceContext.endpoint`, callers ask with `clawden.control.ask`."""

from clawden.bus.ctl import approvals, common, router, runner, scheduler, vault, web
from clawden.bus.ctl.verb import (
    ANY_BRIDGE,
    ANY_SERVICE,
    VERBS,
    BadRequest,
    Nothing,
    Op,
    Reply,
    Request,
    Subject,
    Verb,
    served_by,
)

__all__ = [
    "ANY_BRIDGE",
    "ANY_SERVICE",
    "VERBS",
    "BadRequest",
    "Nothing",
    "Op",
    "Reply",
    "Request",
    "Subject",
    "Verb",
    "approvals",
    "common",
    "router",
    "runner",
    "scheduler",
    "served_by",
    "vault",
    "web",
]
