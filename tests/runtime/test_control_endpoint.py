"""A control endpoint's answers, without NATS: a request decoded once and handed to its verb's handler, the
reply encoded, and every error in one shape (400 for the caller's mistake, 500 without a traceback)."""

from __future__ import annotations

import json

import pytest
from nats.micro.request import ServiceError

from clawden.bus import ctl
from clawden.runtime import ControlError, _Subject


async def test_the_handler_gets_the_request_struct_and_its_reply_is_sent_as_json() -> None:
    seen: list[object] = []

    async def get(request: ctl.router.GroupGet) -> ctl.router.Approvers:
        seen.append(request)
        return ctl.router.Approvers(agent_group=request.name, approvers=["telegram:1"])

    served = _Subject("router", "groups")
    served.handlers[ctl.router.GroupGet] = get
    answer = await served.answer(b'{"op": "get", "name": "main"}')
    assert seen == [ctl.router.GroupGet(name="main")]
    assert json.loads(answer) == {"agent_group": "main", "approvers": ["telegram:1"]}


async def test_a_bad_request_is_the_callers_mistake_with_its_json_path() -> None:
    served = _Subject("approvals", "list")
    served.handlers[ctl.approvals.ListRequest] = pytest.fail  # never reached
    with pytest.raises(ControlError, match=r"bad request: Expected `int`, got `str` - at `\$.limit`"):
        await served.answer(b'{"limit": "ten"}')


async def test_a_handlers_refusal_is_said_as_is() -> None:
    async def refuse(_request: ctl.approvals.ShowRequest) -> ctl.approvals.ApprovalDetail:
        raise ControlError("no approval 'x' (see `clawden approvals list`)")

    served = _Subject("approvals", "show")
    served.handlers[ctl.approvals.ShowRequest] = refuse
    with pytest.raises(ControlError, match="no approval 'x'"):
        await served.answer(b'{"id": "x"}')


async def test_a_handlers_failure_is_a_500_naming_only_its_kind() -> None:
    async def crash(_request: ctl.Nothing) -> ctl.vault.Secrets:
        raise RuntimeError("/var/lib/clawden/vault.db: a path the caller must not see")

    served = _Subject("vault", "secrets-list")
    served.handlers[ctl.Nothing] = crash
    with pytest.raises(ServiceError) as failed:
        await served.answer(b"{}")
    assert (failed.value.code, failed.value.description) == ("500", "secrets-list failed: RuntimeError")


async def test_an_op_declared_but_not_yet_registered_asks_to_be_asked_again() -> None:
    served = _Subject("router", "groups")
    served.handlers[ctl.router.ListAll] = pytest.fail
    with pytest.raises(ServiceError) as early:
        await served.answer(b'{"op": "delete", "name": "main"}')
    assert early.value.code == "503"
